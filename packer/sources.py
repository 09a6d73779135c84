"""Input sources for out-of-core conversion: a catalog of record batches, and the batches a shard job needs.

The parent process *scans* the inputs once (:func:`scan_inputs`): it validates the schema and every record batch
(types, nulls, equal label lengths) and keeps only per-sequence lengths (from the Arrow list offsets; no token is
read) and the row count of every record batch. Shard jobs, in the parent, a worker process or a Ray task, then open
only the batches they need (:class:`BatchChunks`): memory-mapped for local files, so only the pages holding the
gathered sequences are read; through a :mod:`pyarrow.fs` filesystem (``s3://``, ``gs://``, ``hdfs://`` ...)
otherwise, one record batch at a time.

Parquet is compressed, so it cannot be memory-mapped: the scan decodes it one row group at a time and writes the
needed columns to an Arrow IPC file in a staging folder (next to the output, removed at the end), which jobs then
read like any Arrow input. Memory stays bounded by one row group; the cost is one write of the decoded columns.
"""
from __future__ import annotations

import logging
import os
import posixpath
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from packer import reader
from packer.errors import PackerError
from packer.format import MANIFEST_FILE
from packer.reader import Chunk, Columns

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class InputFile:
    """One input file as a shard job sees it (picklable, small).

    Attributes:
        name: the path or URI as given (for messages and the manifest).
        read: the path or URI jobs read: ``name``, or the staged Arrow file of a Parquet input.
        kind: ``arrow-file`` or ``arrow-stream`` (of ``read``).
        rows: rows in the file.
        bytes: size of ``name`` in bytes.
    """

    name: str
    read: str
    kind: str
    rows: int
    bytes: int


@dataclass
class Catalog:
    """What the parent keeps after the scan: per-sequence lengths and the record-batch layout.

    Attributes:
        files: the inputs, in row order.
        columns: the columns read.
        lengths: int64 (n_rows,), tokens per row.
        chunks: int64 (n_chunks, 3): ``(file, batch, first global row)`` of every non-empty record batch.
        chunk_rows: int64 (n_chunks,), rows per chunk.
        staging: the staging folder holding converted Parquet inputs, or None.
    """

    files: list[InputFile]
    columns: Columns
    lengths: np.ndarray
    chunks: np.ndarray
    chunk_rows: np.ndarray
    staging: str | None = None

    @property
    def n_rows(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def file_rows(self) -> np.ndarray:
        return np.asarray([f.rows for f in self.files], dtype=np.int64)

    @property
    def file_bytes(self) -> np.ndarray:
        return np.asarray([f.bytes for f in self.files], dtype=np.int64)


def _resolve(inputs: list) -> list[str]:
    """Local paths through :func:`packer.reader.resolve_paths`; URIs: a file, or every Arrow/Parquet file below."""
    local = [p for p in inputs if not is_uri(p)]
    if local and len(local) != len(inputs):
        raise PackerError("mix of local paths and URIs; pass inputs of one kind (or file:// URIs for local files)")
    if local:
        return reader.resolve_paths(local)
    out: list[str] = []
    for uri in map(str, inputs):
        fs, inner, _ = filesystem(uri)
        info = fs.get_file_info(inner)
        if info.type == pafs.FileType.NotFound:
            raise PackerError(f"{uri}: no such file or folder")
        if info.type == pafs.FileType.File:
            out.append(uri)
            continue
        scheme = uri[: uri.index("://") + 3]
        listing = fs.get_file_info(pafs.FileSelector(inner, recursive=True))
        root = inner.rstrip("/")
        # as for local folders: skip hidden entries (temporary outputs) and packed folders (a previous output)
        packed = [posixpath.dirname(i.path) + "/" for i in listing if posixpath.basename(i.path) == MANIFEST_FILE]
        found = sorted(
            i.path for i in listing
            if i.type == pafs.FileType.File and i.path.endswith(reader.INPUT_SUFFIXES)
            and not any(part.startswith(".") for part in i.path[len(root):].split("/"))
            and not any(i.path.startswith(d) for d in packed)
        )
        if not found:
            raise PackerError(f"{uri}: the folder holds no .arrow or .parquet file")
        prefix = uri[len(scheme):]
        out.extend(scheme + (prefix.rstrip("/") + p[len(inner.rstrip("/")):] if p.startswith(inner.rstrip("/"))
                             else p) for p in found)
    return out


def _sniff(uri: str) -> str:
    if not is_uri(uri):
        return reader._sniff(uri)
    fs, inner, _ = filesystem(uri)
    with fs.open_input_file(inner) as fh:
        head = fh.read(8)
    if not head:
        raise PackerError(f"{uri}: the file is empty; remove it from the input")
    if head.startswith(reader.ARROW_FILE_MAGIC):
        return "arrow-file"
    if head.startswith(reader.PARQUET_MAGIC):
        return "parquet"
    if head.startswith(reader.ARROW_STREAM_CONTINUATION) or uri.endswith(".arrow"):
        return "arrow-stream"
    raise PackerError(f"{uri}: neither Arrow IPC nor Parquet (unknown magic bytes {head[:4]!r})")


def has_column(inputs, name: str) -> bool:
    """Whether the first input file (a local path or a URI) has a column ``name`` (reads its schema only)."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if not any(is_uri(p) for p in inputs):
        return reader.has_column(list(inputs), name)
    uri = _resolve(list(inputs))[0]
    kind = _sniff(uri)
    fs, inner, _ = filesystem(uri)
    try:
        if kind == "parquet":
            return name in pq.read_schema(fs.open_input_file(inner)).names
        return name in _ipc_batches(uri, kind)[0].names
    except (pa.ArrowException, OSError) as e:
        raise PackerError(f"{uri}: cannot read its schema ({e}); the file may be truncated or corrupted") from None


def _check_stream_end(uri: str) -> None:
    """Refuse an Arrow IPC stream without its end-of-stream marker (cut at a batch boundary, it parses silently)."""
    if not is_uri(uri):
        return reader._check_stream_end(uri)
    fs, inner, _ = filesystem(uri)
    size = fs.get_file_info(inner).size
    with fs.open_input_file(inner) as fh:
        tail = fh.read_at(len(reader.ARROW_STREAM_EOS), max(0, size - len(reader.ARROW_STREAM_EOS)))
    if size < len(reader.ARROW_STREAM_EOS) or tail != reader.ARROW_STREAM_EOS:
        raise PackerError(f"{uri}: the Arrow IPC stream has no end-of-stream marker, so it is truncated (or its "
                          "writer was never closed); re-create the file")


def _open_source(uri: str):
    fs, inner, local = filesystem(uri)
    return pa.memory_map(inner, "r") if local else fs.open_input_file(inner)


def _ipc_batches(uri: str, kind: str):
    """(schema, iterator over record batches) of an Arrow IPC file or stream."""
    source = _open_source(uri)
    if kind == "arrow-file":
        r = pa.ipc.open_file(source)
        return r.schema, (r.get_batch(i) for i in range(r.num_record_batches))
    r = pa.ipc.open_stream(source)
    return r.schema, iter(r)


def _check_schema(uri: str, schema: pa.Schema, columns: Columns, names: list[str]) -> None:
    reader._require_columns(uri, schema.names, names)
    reader._check_list_type(uri, columns.input_ids, schema.field(columns.input_ids).type)
    if columns.labels:
        reader._check_list_type(uri, columns.labels, schema.field(columns.labels).type)
    if columns.loss_mask:
        reader._check_list_type(uri, columns.loss_mask, schema.field(columns.loss_mask).type, allow_bool=True)


def _check_batch(uri: str, batch: pa.RecordBatch, names: list[str], row0: int) -> np.ndarray:
    """Validate one batch (offsets, nulls, equal lengths) and return its row lengths, int64 (rows,)."""
    # full validation checks every list offset against its values buffer: a corrupted offset would otherwise send
    # the gather kernel outside the memory map (raises ArrowInvalid, reported as a corrupted file)
    batch.validate(full=True)
    lengths = None
    for name in names:
        col = batch.column(name)
        if col.null_count:
            bad = int(np.argmax(col.is_null().to_numpy(zero_copy_only=False)))
            raise PackerError(f"{uri}: column {name!r} row {row0 + bad} is null; drop or fill null rows first")
        if col.values.null_count:
            reader._numpy_values(uri, name, col, row0)  # raises naming the row
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


def _stage_name(staging: str, index: int, uri: str) -> str:
    base = posixpath.basename(uri.rstrip("/"))
    return f"{staging.rstrip('/')}/{index:05d}-{base}.arrow"


def scan_inputs(inputs, *, columns: Columns, staging: str | None = None) -> Catalog:
    """Find, validate and measure the inputs; stage Parquet inputs as Arrow IPC files under ``staging``.

    Args:
        inputs: paths, folders, globs (local) or URIs.
        columns: the columns to read.
        staging: a folder (path or URI) for the converted Parquet inputs; created on first use.

    Raises:
        PackerError: naming the file, column and row, for anything packer cannot pack.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    uris = _resolve(list(inputs))
    names = [columns.input_ids] + [c for c in (columns.labels, columns.loss_mask) if c is not None]
    files: list[InputFile] = []
    lengths: list[np.ndarray] = []
    chunks: list[tuple[int, int, int]] = []
    chunk_rows: list[int] = []
    row = 0
    staged_any = False
    for f, uri in enumerate(uris):
        kind = _sniff(uri)
        read, read_kind = uri, kind
        fs, inner, _ = filesystem(uri)
        try:
            size = fs.get_file_info(inner).size
            if kind == "parquet":
                if staging is None:
                    raise PackerError(f"{uri}: Parquet input needs a staging folder")
                read, read_kind = _stage_name(staging, f, uri), "arrow-file"
                if not staged_any:
                    sfs, sinner, _ = filesystem(staging)
                    sfs.create_dir(sinner, recursive=True)
                    staged_any = True
                batches = _stage_parquet(uri, read, columns, names)
                schema = None
            else:
                if kind == "arrow-stream":
                    _check_stream_end(uri)
                schema, batches = _ipc_batches(uri, kind)
                _check_schema(uri, schema, columns, names)
            row0 = row
            for b, batch in enumerate(batches):
                n = _check_batch(uri, batch, names, row - row0)
                if batch.num_rows:
                    chunks.append((f, b, row))
                    chunk_rows.append(batch.num_rows)
                    lengths.append(n)
                row += batch.num_rows
        except PackerError:
            raise
        except (pa.ArrowException, OSError, ValueError, MemoryError) as e:
            what = "Parquet" if kind == "parquet" else "Arrow IPC"
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise PackerError(f"{uri}: cannot be read as {what} ({msg}); the file may be truncated or corrupted") \
                from None
        files.append(InputFile(name=uri, read=read, kind=read_kind, rows=row - row0, bytes=int(size)))
        log.debug("scanned %s (%s, %d rows)", uri, kind, row - row0)
    return Catalog(
        files=files,
        columns=columns,
        lengths=np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64),
        chunks=np.asarray(chunks, dtype=np.int64).reshape(-1, 3),
        chunk_rows=np.asarray(chunk_rows, dtype=np.int64),
        staging=staging if staged_any else None,
    )


def _stage_parquet(uri: str, dest: str, columns: Columns, names: list[str]):
    """Decode ``uri`` one row group at a time into the Arrow IPC file ``dest``, yielding each batch written."""
    fs, inner, local = filesystem(uri)
    pf = pq.ParquetFile(inner if local else fs.open_input_file(inner), memory_map=local)
    schema = pf.schema_arrow
    _check_schema(uri, schema, columns, names)
    out_schema = pa.schema([schema.field(n) for n in names])
    dfs, dinner, _ = filesystem(dest)
    with dfs.open_output_stream(dinner) as sink, pa.ipc.new_file(sink, out_schema) as w:
        for g in range(pf.num_row_groups):
            table = pf.read_row_group(g, columns=names, use_threads=True).select(names)
            for batch in table.to_batches():
                w.write_batch(batch)
                yield batch


class BatchChunks:
    """The record batches a shard job needs, opened on demand as :class:`packer.reader.Chunk`, one at a time.

    Indexing with ``c`` returns chunk ``c`` of ``chunks`` (the job's subset of :attr:`Catalog.chunks`). The
    gatherer visits chunks in ascending order, so one open batch at a time bounds memory for remote inputs;
    local files are memory-mapped and cost only the pages gathered.
    """

    def __init__(self, files: list[InputFile], columns: Columns, chunks: np.ndarray):
        self.files = files
        self.columns = columns
        self.chunks = chunks
        self._cached: tuple[int, Chunk] | None = None
        self._open: dict[int, object] = {}

    def __len__(self) -> int:
        return self.chunks.shape[0]

    def __getitem__(self, c: int) -> Chunk:
        if self._cached is not None and self._cached[0] == c:
            return self._cached[1]
        f, b, row_start = (int(x) for x in self.chunks[c])
        batch = self._batch(f, b)
        chunk = self._chunk(self.files[f], batch, row_start, row_start - int(self._file_row0(f)))
        self._cached = (c, chunk)
        return chunk

    def _file_row0(self, f: int) -> int:
        return sum(x.rows for x in self.files[:f])

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
            source = _open_source(info.read)
            if info.kind == "arrow-file":
                entry = pa.ipc.open_file(source)
            else:
                entry = [pa.ipc.open_stream(source), -1, None]  # reader, index of the last batch read, that batch
            self._open = {f: entry}  # one input open at a time
        if info.kind == "arrow-file":
            return entry.get_batch(b)
        if entry[1] > b:  # streams only go forward; reopen (does not happen with ascending chunks)
            entry[:] = [pa.ipc.open_stream(_open_source(info.read)), -1, None]
        while entry[1] < b:
            entry[2] = entry[0].read_next_batch()
            entry[1] += 1
        return entry[2]

    def _chunk(self, info: InputFile, batch: pa.RecordBatch, row_start: int, local_row: int) -> Chunk:
        ids = batch.column(self.columns.input_ids)
        offsets = ids.offsets.to_numpy().astype(np.int64, copy=False)
        chunk = Chunk(file=info.name, row_start=row_start, offsets=offsets,
                      ids=reader._numpy_values(info.name, self.columns.input_ids, ids, local_row))
        other = self.columns.labels or self.columns.loss_mask
        if other is not None:
            o = batch.column(other)
            vals = reader._numpy_values(info.name, other, o, local_row)
            # re-base so that the ids offsets index the other column too (the scan checked equal lengths)
            shift = int(o.offsets[0].as_py() - offsets[0])
            if shift:
                vals = vals[shift:] if shift > 0 else np.concatenate([np.zeros(-shift, vals.dtype), vals])
            if self.columns.labels:
                chunk.labels = vals
            else:
                chunk.mask = vals
        return chunk
