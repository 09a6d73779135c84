"""The scan: every input read once, one record batch at a time, into a :class:`TokenizedInput`
(:func:`scan_inputs`, :func:`open_input`); see :mod:`packer.input` for what it accepts and who uses it."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from packer.errors import PackerError
from packer.input import formats, paths
from packer.input.columns import ATTENTION_MASK, Columns, check_batch, check_padding, resolve_columns
from packer.input.formats import check_stream_end, read_schema, sniff, stage, stage_name, unreadable
from packer.input.packed import scan_packed
from packer.input.paths import packed_folder, resolve_paths
from packer.input.tokenized import BatchChunks, Chunk, InputFile, TokenizedInput, to_chunk

log = logging.getLogger(__name__)


def scan_inputs(inputs, *, columns: Columns = Columns(), staging: str | None = None,
                keep: bool = False, split: str | None = None) -> TokenizedInput:
    """Find, validate and measure the inputs, one record batch at a time.

    Before any row is read (or anything staged), the schemas of all files are read and the columns decided once
    for all of them (:func:`resolve_columns`). A packed folder given alone, with a staging folder, is read back
    as its sequences (:func:`scan_packed`); without one it is refused. A file with an ``attention_mask`` column
    is checked for padding (a 0 in the mask): padded input is refused (:func:`check_padding`).

    Args:
        inputs: a path or paths, folders, globs (local) or URIs.
        columns: the columns to read (by default the labels or loss-mask column is detected).
        split: the split to take from folders that hold several (see :func:`resolve_paths`).
        staging: a folder (path or URI) to convert Parquet inputs into Arrow IPC files in (created on first
            use), so that shard jobs can memory-map them, and, when it is local, to copy remote inputs into; None
            reads every batch from its own file.
        keep: hold the scanned batches as the result's chunks (memory-mapped views for local Arrow IPC, decoded
            for Parquet and remote files) instead of opening them again on demand.

    Returns:
        The :class:`TokenizedInput`, with ``lengths``.

    Raises:
        PackerError: naming the file, column and row, for anything packer cannot read.
    """
    folder = packed_folder(inputs)
    if folder is not None and staging is not None:
        if split is not None:
            raise PackerError(f"{folder}: is a packed folder, which has no splits; drop --split")
        return scan_packed(folder, columns=columns, staging=staging)
    uris = resolve_paths(inputs, split=split)
    kinds = [sniff(uri) for uri in uris]
    schemas = [read_schema(uri, kind) for uri, kind in zip(uris, kinds)]
    columns = resolve_columns(uris, schemas, columns)
    found = _Scanned()
    staging_local = staging is not None and paths.filesystem(staging)[2]
    for uri, kind, schema in zip(uris, kinds, schemas):
        _scan_file(found, uri, kind, schema, columns, staging=staging, staging_local=staging_local, keep=keep)
    index = np.asarray(found.batches, dtype=np.int64).reshape(-1, 3)
    return TokenizedInput(
        files=found.files,
        columns=columns,
        batches=index,
        chunks=found.kept if keep else BatchChunks(found.files, columns, index),
        lengths=np.concatenate(found.lengths) if found.lengths else np.zeros(0, dtype=np.int64),
        staging=staging if found.staged else None,
    )


def open_input(paths, *, columns: Columns = Columns()) -> TokenizedInput:
    """Scan tokenized input files and keep their record batches (see :func:`scan_inputs` with ``keep=True``).

    Raises:
        PackerError: naming the file, column and row, for anything packer cannot pack.
    """
    return scan_inputs(paths, columns=columns, keep=True)


@dataclass
class _Scanned:
    """What :func:`scan_inputs` has collected so far, file by file (see :class:`TokenizedInput`)."""

    files: list[InputFile] = field(default_factory=list)
    batches: list[tuple[int, int, int]] = field(default_factory=list)  # (file, batch, first global row)
    lengths: list[np.ndarray] = field(default_factory=list)  # int64 row lengths of each non-empty batch
    kept: list[Chunk] = field(default_factory=list)  # with keep=True: each non-empty batch as a Chunk
    rows: int = 0
    staged: bool = False  # the staging folder was made (on the first file staged)


def _scan_file(found: _Scanned, uri: str, kind: str, schema: pa.Schema, columns: Columns, *, staging: str | None,
               staging_local: bool, keep: bool) -> None:
    """Read, validate and measure the next input file, one record batch at a time, adding it to ``found``.

    With ``staging``, a Parquet file (and a remote one when the staging folder is local) is written to an Arrow
    IPC file there as its batches pass, and that file is the one shard jobs read.

    Raises:
        PackerError: naming the file, column and row, for anything packer cannot read.
    """
    f, row = len(found.files), found.rows
    names = columns.names
    read, read_kind = uri, kind
    padded = ATTENTION_MASK in schema.names and ATTENTION_MASK not in names
    scan_names = names + [ATTENTION_MASK] if padded else names
    fs, inner, local = paths.filesystem(uri)
    try:
        size = fs.get_file_info(inner).size
        if kind == "arrow-stream":
            check_stream_end(uri)
        schema, it = formats.open_batches(uri, kind, scan_names)
        if staging is not None and (kind == "parquet" or (not local and staging_local)):
            read, read_kind = stage_name(staging, f, uri), "arrow-file"
            if not found.staged:
                sfs, sinner, _ = paths.filesystem(staging)
                sfs.create_dir(sinner, recursive=True)
                found.staged = True
            it = stage(it, read, pa.schema([schema.field(n) for n in names]))
        row0 = row
        for b, batch in enumerate(it):
            if padded:
                check_padding(uri, batch, row - row0, columns.input_ids)
            n = check_batch(uri, batch, names, row - row0)
            if batch.num_rows:
                found.batches.append((f, b, row))
                found.lengths.append(n)
                if keep:
                    found.kept.append(to_chunk(uri, columns, batch, row, row - row0))
            row += batch.num_rows
    except PackerError:
        raise
    except (pa.ArrowException, OSError, ValueError, MemoryError) as e:
        raise unreadable(uri, kind, e) from None
    found.files.append(InputFile(name=uri, read=read, kind=read_kind, rows=row - row0, bytes=int(size)))
    found.rows = row
    log.debug("scanned %s (%s, %d rows)", uri, kind, row - row0)
