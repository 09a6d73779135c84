"""Reading tokenized input: the one input layer (discovery, sniffing, validation, record batches as numpy views).

Accepted inputs, given as one or many paths (a path may be a glob) or as URIs that :mod:`pyarrow.fs` supports
(``s3://bucket/prefix``, ``gs://``, ``hdfs://``, ``file://``; all inputs of one kind):

* a ``datasets.Dataset.save_to_disk`` folder (``state.json`` lists its ``.arrow`` shards, in order);
* ``.arrow`` files in the Arrow IPC *file* or *stream* format (told apart by their magic bytes);
* ``.parquet`` files;
* folders holding any of the above (searched recursively, in sorted path order; hidden folders and packed
  folders, those with a ``packer.json``, are skipped).

:func:`scan_inputs` reads every input once, one record batch at a time: it validates the schema and every batch
(types, nulls, equal column lengths; each message names the file, column and row, and the fix) and keeps only
per-row lengths (from the Arrow list offsets; no token is read) and the record-batch layout, a
:class:`TokenizedInput`. Its ``chunks`` open the batches on demand (:class:`BatchChunks`): memory-mapped for local
Arrow IPC files, so only the pages holding the gathered sequences are read; through a pyarrow filesystem
otherwise, one record batch at a time. Nothing holds all inputs at once:

* ``packer pack`` scans with a staging folder: Parquet is compressed and cannot be memory-mapped, so the scan
  decodes it one row group at a time and writes the needed columns to an Arrow IPC file there, which shard jobs
  (in any process) read like any Arrow input. Memory stays bounded by one row group; the cost is one write.
  Remote inputs (object stores) are staged too when the staging folder is local: under a global plan nearly every
  shard job needs nearly every record batch, so reading them remotely would transfer the data once per shard;
  staged, it crosses the network once, during the scan, and the jobs memory-map the local copy.
* ``packer report`` needs the lengths alone.
* ``packer verify --input`` (:func:`open_input`) revisits the input's batches once per packed shard, so it keeps
  the scanned batches: views of the memory maps for Arrow IPC (no heap), decoded in memory for Parquet.

Rows are numbered globally: the rows of the first file, then the second, and so on.
"""
from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from packer.errors import PackerError
from packer.format import MANIFEST_FILE

log = logging.getLogger(__name__)

ARROW_FILE_MAGIC = b"ARROW1"
PARQUET_MAGIC = b"PAR1"
ARROW_STREAM_CONTINUATION = b"\xff\xff\xff\xff"
ARROW_STREAM_EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"
INPUT_SUFFIXES = (".arrow", ".parquet", ".parq")


@dataclass(frozen=True)
class Columns:
    """Which input columns to read.

    Attributes:
        input_ids: the token column (a list of integers per row).
        labels: a label column of the same lengths (``-100`` = not trained on), or None.
        loss_mask: a 0/1 column of the same lengths (1 = trained on), or None. At most one of labels/loss_mask.
    """

    input_ids: str = "input_ids"
    labels: str | None = None
    loss_mask: str | None = None

    def __post_init__(self):
        if self.labels is not None and self.loss_mask is not None:
            raise PackerError("give either a labels column or a loss-mask column, not both")

    @property
    def names(self) -> list[str]:
        """The columns to read: ``input_ids`` first, then the labels or loss-mask column if any."""
        return [self.input_ids] + [c for c in (self.labels, self.loss_mask) if c is not None]


@dataclass
class Chunk:
    """One contiguous run of rows whose token buffers are single numpy arrays (an Arrow record batch).

    ``offsets`` (int64, rows + 1) index ``ids`` (and ``labels``/``mask``, which share the same offsets).
    """

    file: str
    row_start: int
    offsets: np.ndarray
    ids: np.ndarray
    labels: np.ndarray | None = None
    mask: np.ndarray | None = None

    @property
    def n_rows(self) -> int:
        return self.offsets.shape[0] - 1


@dataclass(frozen=True)
class InputFile:
    """One input file as a shard job sees it (picklable, small).

    Attributes:
        name: the path or URI as given (for messages and the manifest).
        read: the path or URI to read batches from: ``name``, or the staged Arrow file of a Parquet input.
        kind: ``arrow-file``, ``arrow-stream`` or ``parquet`` (of ``read``).
        rows: rows in the file.
        bytes: size of ``name`` in bytes.
    """

    name: str
    read: str
    kind: str
    rows: int
    bytes: int


@dataclass
class TokenizedInput:
    """Tokenized rows from one or many files: what the scan measured, and their record batches as chunks.

    Attributes:
        files: the inputs, in row order.
        columns: the columns read.
        batches: int64 (n_chunks, 3): ``(file, batch, first global row)`` of every non-empty record batch, in row
            order (in a shard job: of the batches the job reads).
        chunks: chunk ``c`` is batch ``batches[c]`` as a :class:`Chunk` (a list, or :class:`BatchChunks`).
        lengths: int64 (n_rows,), tokens per row; None in a shard job, which gets its sequences from the plan.
        staging: the staging folder holding converted Parquet inputs, or None.
    """

    files: list[InputFile]
    columns: Columns
    batches: np.ndarray
    chunks: Sequence[Chunk]
    lengths: np.ndarray | None = None
    staging: str | None = None

    @property
    def n_rows(self) -> int:
        return sum(f.rows for f in self.files)

    @property
    def file_rows(self) -> np.ndarray:
        return np.asarray([f.rows for f in self.files], dtype=np.int64)

    @property
    def file_bytes(self) -> np.ndarray:
        return np.asarray([f.bytes for f in self.files], dtype=np.int64)

    def chunk_row_starts(self) -> np.ndarray:
        """int64 (n_chunks + 1,): chunk ``c`` holds global rows ``[starts[c], starts[c + 1])``."""
        return np.append(self.batches[:, 2], self.n_rows).astype(np.int64)

    def locate(self, row: int) -> tuple[str, int]:
        """The name of the file holding global ``row`` and the row's index inside that file."""
        ends = np.cumsum(self.file_rows)
        f = int(np.searchsorted(ends, row, side="right"))
        return self.files[f].name, int(row - (ends[f] - self.files[f].rows))


# ---------------------------------------------------------------------------------------------- discovery


def is_uri(path) -> bool:
    """Whether ``path`` names a location through a URI scheme (``s3://...``) rather than a local path."""
    return "://" in str(path)


def is_local(path) -> bool:
    """Whether ``path`` is on the local filesystem (a plain path or a ``file://`` URI)."""
    return not is_uri(path) or str(path).startswith("file://")


def filesystem(path) -> tuple[pafs.FileSystem, str, bool]:
    """``(filesystem, path inside it, is_local)`` for a local path or a URI pyarrow supports."""
    p = str(path)
    if not is_uri(p):
        return pafs.LocalFileSystem(), os.path.abspath(p), True
    try:
        fs, inner = pafs.FileSystem.from_uri(p)
    except (pa.ArrowException, ValueError) as e:
        raise PackerError(f"{p}: pyarrow cannot open this URI ({e}); use a local path or a supported scheme") from None
    return fs, inner, isinstance(fs, pafs.LocalFileSystem)


def resolve_paths(paths) -> list[str]:
    """Expand folders, globs, ``save_to_disk`` folders and folder URIs into an ordered list of data files."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [str(p) for p in paths]
    if not paths:
        raise PackerError("no input given; pass one or more tokenized .arrow/.parquet files or folders")
    uris = [p for p in paths if is_uri(p)]
    if uris and len(uris) != len(paths):
        raise PackerError("mix of local paths and URIs; pass inputs of one kind (or file:// URIs for local files)")
    files: list[str] = []
    for p in paths:
        if uris:
            files.extend(_expand_uri(p))
        elif any(ch in p for ch in "*?["):
            matches = sorted(glob.glob(p, recursive=True))
            if not matches:
                raise PackerError(f"{p}: the pattern matches no file")
            for m in matches:
                files.extend(_expand(Path(m)))
        else:
            files.extend(_expand(Path(p)))
    seen = set()
    for f in files:
        if f in seen:
            raise PackerError(f"{f}: given twice (directly or through a folder or pattern); pass each input once")
        seen.add(f)
    return files


def _expand(path: Path) -> list[str]:
    if not path.exists():
        raise PackerError(f"{path}: no such file or folder")
    if path.is_file():
        return [str(path)]
    if (path / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in path.iterdir() if p.is_dir())
        raise PackerError(
            f"{path}: is a DatasetDict folder; pass one split folder instead (one of: {', '.join(splits)})"
        )
    state = path / "state.json"
    if state.is_file():
        try:
            data_files = json.loads(state.read_text())["_data_files"]
            names = [d["filename"] for d in data_files]
        except (ValueError, KeyError, TypeError) as e:
            raise PackerError(f"{state}: not a readable datasets state.json ({e}); re-save the dataset") from None
        missing = [n for n in names if not (path / n).is_file()]
        if missing:
            raise PackerError(f"{path}: state.json lists {missing[0]}, which is missing; re-save the dataset")
        return [str(path / n) for n in names]
    found = []
    for root, dirs, names in os.walk(path):
        # skip hidden folders (temporary outputs) and packed folders (a previous output next to its input)
        dirs[:] = [d for d in dirs if not d.startswith(".") and not os.path.exists(os.path.join(root, d, MANIFEST_FILE))]
        found += [os.path.join(root, n) for n in names if n.endswith(INPUT_SUFFIXES) and not n.startswith(".")]
    found.sort()
    if not found:
        raise PackerError(f"{path}: the folder holds no .arrow or .parquet file")
    return found


def _expand_uri(uri: str) -> list[str]:
    """A file URI, or every Arrow/Parquet file below a folder URI, skipped and ordered as for local folders."""
    fs, inner, _ = filesystem(uri)
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.NotFound:
        raise PackerError(f"{uri}: no such file or folder")
    if info.type == pafs.FileType.File:
        return [uri]
    root = inner.rstrip("/")
    listing = fs.get_file_info(pafs.FileSelector(inner, recursive=True))
    packed = [posixpath.dirname(i.path) + "/" for i in listing if posixpath.basename(i.path) == MANIFEST_FILE]
    found = sorted(
        i.path for i in listing
        if i.type == pafs.FileType.File and i.path.endswith(INPUT_SUFFIXES)
        and not any(part.startswith(".") for part in i.path[len(root):].split("/"))
        and not any(i.path.startswith(d) for d in packed)
    )
    if not found:
        raise PackerError(f"{uri}: the folder holds no .arrow or .parquet file")
    scheme = uri[: uri.index("://") + 3]
    prefix = uri[len(scheme):].rstrip("/")
    return [scheme + (prefix + p[len(root):] if p.startswith(root) else p) for p in found]


# ---------------------------------------------------------------------------------------------- one file


def _sniff(uri: str) -> str:
    """``arrow-file``, ``arrow-stream`` or ``parquet``, from the file's first bytes."""
    fs, inner, local = filesystem(uri)
    try:
        with (open(inner, "rb") if local else fs.open_input_file(inner)) as fh:
            head = fh.read(8)
    except OSError as e:
        raise PackerError(f"{uri}: cannot be read ({e.strerror or e})") from None
    if not head:
        raise PackerError(f"{uri}: the file is empty; remove it from the input")
    if head.startswith(ARROW_FILE_MAGIC):
        return "arrow-file"
    if head.startswith(PARQUET_MAGIC):
        return "parquet"
    if head.startswith(ARROW_STREAM_CONTINUATION) or uri.endswith(".arrow"):
        return "arrow-stream"
    raise PackerError(f"{uri}: neither Arrow IPC nor Parquet (unknown magic bytes {head[:4]!r})")


def _check_stream_end(uri: str) -> None:
    """An Arrow IPC stream cut at a record-batch boundary still parses, minus its last batches; only the
    end-of-stream marker that every writer's ``close()`` appends tells it from a complete one."""
    fs, inner, _ = filesystem(uri)
    size = fs.get_file_info(inner).size
    if size < len(ARROW_STREAM_EOS):
        raise PackerError(f"{uri}: too short to be an Arrow IPC stream; the file is truncated")
    with fs.open_input_file(inner) as fh:
        tail = fh.read_at(len(ARROW_STREAM_EOS), size - len(ARROW_STREAM_EOS))
    if tail != ARROW_STREAM_EOS:
        raise PackerError(
            f"{uri}: the Arrow IPC stream has no end-of-stream marker, so it is truncated (or its writer was "
            "never closed); re-create the file"
        )


def _open_source(uri: str):
    fs, inner, local = filesystem(uri)
    return pa.memory_map(inner, "r") if local else fs.open_input_file(inner)


def _open_batches(uri: str, kind: str, names: list[str]):
    """(schema, iterator over record batches) of one file; the batches are read as the iterator advances.

    Parquet batches are those of each row group decoded in turn (only the columns ``names``).
    """
    if kind == "parquet":
        fs, inner, local = filesystem(uri)
        pf = pq.ParquetFile(inner if local else fs.open_input_file(inner), memory_map=local)

        def row_groups():
            for g in range(pf.num_row_groups):
                yield from pf.read_row_group(g, columns=names, use_threads=True).select(names).to_batches()

        return pf.schema_arrow, row_groups()
    source = _open_source(uri)
    if kind == "arrow-file":
        r = pa.ipc.open_file(source)
        return r.schema, (r.get_batch(i) for i in range(r.num_record_batches))
    r = pa.ipc.open_stream(source)
    return r.schema, iter(r)


def _unreadable(uri: str, kind: str, e: Exception) -> PackerError:
    what = "Parquet" if kind == "parquet" else "Arrow IPC"
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    return PackerError(f"{uri}: cannot be read as {what} ({msg}); the file may be truncated or corrupted")


def has_column(inputs, name: str) -> bool:
    """Whether the first input file (a local path or a URI) has a column ``name`` (reads its schema only)."""
    uri = resolve_paths(inputs)[0]
    kind = _sniff(uri)
    try:
        return name in _open_batches(uri, kind, [])[0].names
    except (pa.ArrowException, OSError) as e:
        raise PackerError(f"{uri}: cannot read its schema ({e}); the file may be truncated or corrupted") from None


# ---------------------------------------------------------------------------------------------- validation


def _require_columns(uri: str, have: list[str], want: list[str]) -> None:
    for name in want:
        if name not in have:
            raise PackerError(
                f"{uri}: no column {name!r} (columns: {', '.join(have) or 'none'}); "
                "name the right one with --input-column/--labels-column/--loss-mask-column"
            )


def _check_list_type(uri: str, name: str, typ: pa.DataType, *, allow_bool: bool = False) -> None:
    if not (pa.types.is_list(typ) or pa.types.is_large_list(typ)):
        raise PackerError(f"{uri}: column {name!r} is {typ}, not a list of integers (one token list per row)")
    vt = typ.value_type
    if not (pa.types.is_integer(vt) or (allow_bool and pa.types.is_boolean(vt))):
        raise PackerError(f"{uri}: column {name!r} is {typ}; its items must be integers, not {vt}")


def _check_schema(uri: str, schema: pa.Schema, columns: Columns) -> None:
    _require_columns(uri, schema.names, columns.names)
    _check_list_type(uri, columns.input_ids, schema.field(columns.input_ids).type)
    if columns.labels:
        _check_list_type(uri, columns.labels, schema.field(columns.labels).type)
    if columns.loss_mask:
        _check_list_type(uri, columns.loss_mask, schema.field(columns.loss_mask).type, allow_bool=True)


def _check_batch(uri: str, batch: pa.RecordBatch, names: list[str], row0: int) -> np.ndarray:
    """Validate one batch (offsets, nulls, equal lengths) and return its row lengths, int64 (rows,).

    ``row0`` is the batch's first row inside the file (for messages).
    """
    # Full validation checks every list offset against its values buffer (about 10 us per 1,000-row batch of the
    # reference set): without it a corrupted offset would send the gather kernel past the memory map (raises
    # ArrowInvalid, reported as a corrupted file).
    batch.validate(full=True)
    lengths = None
    for name in names:
        col = batch.column(name)
        if col.null_count:
            bad = int(np.argmax(col.is_null().to_numpy(zero_copy_only=False)))
            raise PackerError(f"{uri}: column {name!r} row {row0 + bad} is null; drop or fill null rows first")
        if col.values.null_count:
            _numpy_values(uri, name, col, row0)  # raises naming the row
        n = np.diff(col.offsets.to_numpy()).astype(np.int64, copy=False)
        if lengths is None:
            lengths = n
        elif not np.array_equal(lengths, n):
            bad = int(np.argmax(lengths != n))
            raise PackerError(
                f"{uri}: row {row0 + bad} has {int(lengths[bad])} {names[0]} but {int(n[bad])} {name}; "
                "the two columns must have the same length in every row"
            )
    return lengths


def _numpy_values(uri: str, name: str, arr: pa.Array, row_start: int) -> np.ndarray:
    """The list array's item buffer as numpy (zero-copy; bool items as uint8), indexed by ``arr.offsets``."""
    values = arr.values
    if values.null_count:
        # the row holding the first null item, for the message (arr.offsets index arr.values)
        item = int(np.argmax(values.is_null().to_numpy(zero_copy_only=False)))
        offsets = arr.offsets.to_numpy()
        row = int(np.searchsorted(offsets, item, side="right")) - 1
        if 0 <= row < len(arr) and offsets[row] <= item < offsets[row + 1]:
            raise PackerError(f"{uri}: column {name!r} row {row_start + row} holds a null token; fix or drop it")
        values = values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
        if values.null_count:  # pragma: no cover - the search above finds it
            raise PackerError(f"{uri}: column {name!r} holds a null token; fix or drop it")
        dtype = np.uint8 if pa.types.is_boolean(values.type) else values.type.to_pandas_dtype()
        return np.concatenate([np.zeros(int(offsets[0]), dtype), values.to_numpy()])
    if pa.types.is_boolean(values.type):
        return values.to_numpy(zero_copy_only=False).astype(np.uint8)
    return values.to_numpy(zero_copy_only=True)


def _to_chunk(name: str, columns: Columns, batch: pa.RecordBatch, row_start: int, local_row: int) -> Chunk:
    """A validated record batch as a :class:`Chunk` (numpy views of its buffers)."""
    ids = batch.column(columns.input_ids)
    offsets = ids.offsets.to_numpy().astype(np.int64, copy=False)
    chunk = Chunk(file=name, row_start=row_start, offsets=offsets,
                  ids=_numpy_values(name, columns.input_ids, ids, local_row))
    other = columns.labels or columns.loss_mask
    if other is not None:
        o = batch.column(other)
        vals = _numpy_values(name, other, o, local_row)
        # re-base so that the ids offsets index the other column too (the scan checked equal lengths)
        shift = int(o.offsets[0].as_py() - offsets[0])
        if shift:
            vals = vals[shift:] if shift > 0 else np.concatenate([np.zeros(-shift, vals.dtype), vals])
        if columns.labels:
            chunk.labels = vals
        else:
            chunk.mask = vals
    return chunk


# ---------------------------------------------------------------------------------------------- the scan


def scan_inputs(inputs, *, columns: Columns = Columns(), staging: str | None = None,
                keep: bool = False) -> TokenizedInput:
    """Find, validate and measure the inputs, one record batch at a time.

    Args:
        inputs: a path or paths, folders, globs (local) or URIs.
        columns: the columns to read.
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
    uris = resolve_paths(inputs)
    names = columns.names
    files: list[InputFile] = []
    lengths: list[np.ndarray] = []
    batches: list[tuple[int, int, int]] = []
    kept: list[Chunk] = []
    row = 0
    staged_any = False
    staging_local = staging is not None and filesystem(staging)[2]
    for f, uri in enumerate(uris):
        kind = _sniff(uri)
        read, read_kind = uri, kind
        fs, inner, local = filesystem(uri)
        try:
            size = fs.get_file_info(inner).size
            if kind == "arrow-stream":
                _check_stream_end(uri)
            schema, it = _open_batches(uri, kind, names)
            _check_schema(uri, schema, columns)
            if staging is not None and (kind == "parquet" or (not local and staging_local)):
                read, read_kind = _stage_name(staging, f, uri), "arrow-file"
                if not staged_any:
                    sfs, sinner, _ = filesystem(staging)
                    sfs.create_dir(sinner, recursive=True)
                    staged_any = True
                it = _stage(it, read, pa.schema([schema.field(n) for n in names]))
            row0 = row
            for b, batch in enumerate(it):
                n = _check_batch(uri, batch, names, row - row0)
                if batch.num_rows:
                    batches.append((f, b, row))
                    lengths.append(n)
                    if keep:
                        kept.append(_to_chunk(uri, columns, batch, row, row - row0))
                row += batch.num_rows
        except PackerError:
            raise
        except (pa.ArrowException, OSError, ValueError, MemoryError) as e:
            raise _unreadable(uri, kind, e) from None
        files.append(InputFile(name=uri, read=read, kind=read_kind, rows=row - row0, bytes=int(size)))
        log.debug("scanned %s (%s, %d rows)", uri, kind, row - row0)
    index = np.asarray(batches, dtype=np.int64).reshape(-1, 3)
    return TokenizedInput(
        files=files,
        columns=columns,
        batches=index,
        chunks=kept if keep else BatchChunks(files, columns, index),
        lengths=np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64),
        staging=staging if staged_any else None,
    )


def open_input(paths, *, columns: Columns = Columns()) -> TokenizedInput:
    """Scan tokenized input files and keep their record batches (see :func:`scan_inputs` with ``keep=True``).

    Raises:
        PackerError: naming the file, column and row, for anything packer cannot pack.
    """
    return scan_inputs(paths, columns=columns, keep=True)


def _stage_name(staging: str, index: int, uri: str) -> str:
    base = posixpath.basename(uri.rstrip("/"))
    return f"{staging.rstrip('/')}/{index:05d}-{base}.arrow"


def _stage(batches, dest: str, schema: pa.Schema):
    """Write ``batches`` to the Arrow IPC file ``dest`` as they pass, yielding each one written."""
    dfs, dinner, _ = filesystem(dest)
    with dfs.open_output_stream(dinner) as sink, pa.ipc.new_file(sink, schema) as w:
        for batch in batches:
            w.write_batch(batch)
            yield batch


class BatchChunks:
    """The record batches of ``chunks`` (``(file, batch, first global row)`` rows), opened on demand as
    :class:`Chunk`, one at a time.

    Indexing with ``c`` returns the batch of row ``c`` of ``chunks`` (a job's subset of
    :attr:`TokenizedInput.batches`). The gatherer visits chunks in ascending order, so one open batch at a time
    bounds memory for remote inputs; local Arrow files are memory-mapped and cost only the pages gathered.
    """

    def __init__(self, files: Sequence[InputFile], columns: Columns, chunks: np.ndarray):
        self.files = list(files)
        self.columns = columns
        self.chunks = chunks
        self._cached: tuple[int, Chunk] | None = None
        self._open: dict[int, object] = {}
        self._file_row0 = np.concatenate([[0], np.cumsum([x.rows for x in self.files])]).astype(np.int64)

    def __len__(self) -> int:
        return self.chunks.shape[0]

    def __getitem__(self, c: int) -> Chunk:
        if self._cached is not None and self._cached[0] == c:
            return self._cached[1]
        f, b, row_start = (int(x) for x in self.chunks[c])
        info = self.files[f]
        chunk = _to_chunk(info.name, self.columns, self._batch(f, b), row_start, row_start - int(self._file_row0[f]))
        self._cached = (c, chunk)
        return chunk

    def _batch(self, f: int, b: int) -> pa.RecordBatch:
        entry = self._open.get(f)
        info = self.files[f]
        if info.kind == "arrow-file" and is_local(info.read):
            # reopen per batch: the previous batch's memory map goes with it, so the file-backed pages this process
            # maps stay within one record batch (the page cache keeps them; with one map per file the job's
            # mapped pages grew to the whole file: 680 MB RSS per worker on 530 MB inputs)
            self._open = {}
            return pa.ipc.open_file(_open_source(info.read)).get_batch(b)
        if entry is None:
            if info.kind == "arrow-file":
                entry = pa.ipc.open_file(_open_source(info.read))
            else:  # streams and Parquet go forward: the batch iterator, index of the last batch read, that batch
                entry = [_open_batches(info.read, info.kind, self.columns.names)[1], -1, None]
            self._open = {f: entry}  # one input open at a time
        if info.kind == "arrow-file":
            return entry.get_batch(b)
        if entry[1] > b:  # reopen to go back (does not happen with ascending chunks)
            entry[:] = [_open_batches(info.read, info.kind, self.columns.names)[1], -1, None]
        while entry[1] < b:
            entry[2] = next(entry[0])
            entry[1] += 1
        return entry[2]


def input_fingerprint(inp: TokenizedInput) -> str:
    """sha256 over each file's name, size and row count and over all row lengths.

    Cheap (no token data is read) yet it changes whenever rows are added, removed, reordered across files or
    resized; ``packer verify --input`` compares the tokens themselves.
    """
    h = hashlib.sha256()
    for f in inp.files:
        h.update(f"{os.path.basename(f.name)}\0{int(f.rows)}\0{int(f.bytes)}\n".encode())
    h.update(np.ascontiguousarray(inp.lengths, dtype=np.int64).tobytes())
    return h.hexdigest()
