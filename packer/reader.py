"""Reading tokenized input: find the shards, memory-map them, expose lengths and token buffers as numpy views.

Accepted inputs, given as one or many paths (a path may be a glob):

* a ``datasets.Dataset.save_to_disk`` folder (``state.json`` lists its ``.arrow`` shards, in order);
* ``.arrow`` files in the Arrow IPC *file* or *stream* format (told apart by their magic bytes);
* ``.parquet`` files;
* folders holding any of the above (searched recursively, in sorted path order; hidden folders and packed
  folders, those with a ``packer.json``, are skipped).

Arrow IPC inputs are memory-mapped: lengths come from the list offsets, token data is paged in only when the
converter gathers it. Parquet is compressed on disk, so its needed columns are decoded into memory.

Rows are numbered globally: the rows of the first file, then the second, and so on.
"""
from __future__ import annotations

import glob
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from packer.errors import PackerError
from packer.format import MANIFEST_FILE

log = logging.getLogger(__name__)

ARROW_FILE_MAGIC = b"ARROW1"
PARQUET_MAGIC = b"PAR1"
ARROW_STREAM_CONTINUATION = b"\xff\xff\xff\xff"
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


@dataclass
class TokenizedInput:
    """Tokenized rows from one or many files, memory-mapped where the format allows.

    Attributes:
        files: the input files, in row order.
        columns: the columns read.
        chunks: every record batch, in row order.
        file_rows: int64 (n_files,), rows per file.
        file_bytes: int64 (n_files,), bytes per file.
    """

    files: list[str]
    columns: Columns
    chunks: list[Chunk]
    file_rows: np.ndarray
    file_bytes: np.ndarray
    _tables: list = field(default_factory=list, repr=False)

    @property
    def n_rows(self) -> int:
        return int(self.file_rows.sum())

    def lengths(self) -> np.ndarray:
        """Tokens per row, int64 (n_rows,), from the list offsets alone (no token data is read)."""
        parts = [np.diff(c.offsets) for c in self.chunks]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def chunk_row_starts(self) -> np.ndarray:
        """int64 (n_chunks + 1,): chunk ``c`` holds global rows ``[starts[c], starts[c + 1])``."""
        starts = [c.row_start for c in self.chunks] + [self.n_rows]
        return np.asarray(starts, dtype=np.int64)

    def locate(self, row: int) -> tuple[str, int]:
        """The file holding global ``row`` and the row's index inside that file."""
        ends = np.cumsum(self.file_rows)
        f = int(np.searchsorted(ends, row, side="right"))
        return self.files[f], int(row - (ends[f] - self.file_rows[f]))


def resolve_paths(paths: list[str | os.PathLike]) -> list[str]:
    """Expand folders, globs and ``save_to_disk`` folders into an ordered list of data files."""
    if not paths:
        raise PackerError("no input given; pass one or more tokenized .arrow/.parquet files or folders")
    files: list[str] = []
    for raw in paths:
        p = str(raw)
        if any(ch in p for ch in "*?["):
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


def _sniff(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as e:
        raise PackerError(f"{path}: cannot be read ({e.strerror})") from None
    if len(head) == 0:
        raise PackerError(f"{path}: the file is empty; remove it from the input")
    if head.startswith(ARROW_FILE_MAGIC):
        return "arrow-file"
    if head.startswith(PARQUET_MAGIC):
        return "parquet"
    if head.startswith(ARROW_STREAM_CONTINUATION) or path.endswith(".arrow"):
        return "arrow-stream"
    raise PackerError(f"{path}: neither Arrow IPC nor Parquet (unknown magic bytes {head[:4]!r})")


def has_column(paths: list[str | os.PathLike], name: str) -> bool:
    """Whether the first input file has a column ``name`` (reads its schema only)."""
    path = resolve_paths(paths)[0]
    kind = _sniff(path)
    try:
        if kind == "parquet":
            return name in pq.read_schema(path).names
        source = pa.memory_map(path, "r")
        reader = pa.ipc.open_file(source) if kind == "arrow-file" else pa.ipc.open_stream(source)
        return name in reader.schema.names
    except (pa.ArrowException, OSError) as e:
        raise PackerError(f"{path}: cannot read its schema ({e}); the file may be truncated or corrupted") from None


def _read_table(path: str, kind: str, names: list[str]) -> pa.Table:
    try:
        if kind == "parquet":
            pf = pq.ParquetFile(path, memory_map=True)
            _require_columns(path, pf.schema_arrow.names, names)
            table = pf.read(columns=names, use_threads=True)
        else:
            if kind == "arrow-stream":
                _check_stream_end(path)
            source = pa.memory_map(path, "r")
            reader = pa.ipc.open_file(source) if kind == "arrow-file" else pa.ipc.open_stream(source)
            _require_columns(path, reader.schema.names, names)
            table = reader.read_all().select(names)
        # Full validation checks every list offset against its values buffer (about 10 us per 1,000-row batch of
        # the reference set): without it a corrupted offset would send the gather kernel past the memory map.
        for batch in table.to_batches():
            batch.validate(full=True)
        return table
    except PackerError:
        raise
    except (pa.ArrowException, OSError, ValueError, MemoryError) as e:
        what = "Parquet" if kind == "parquet" else "Arrow IPC"
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PackerError(f"{path}: cannot be read as {what} ({msg}); the file may be truncated or corrupted") from None


ARROW_STREAM_EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"


def _check_stream_end(path: str) -> None:
    """An Arrow IPC stream cut at a record-batch boundary still parses, minus its last batches; only the
    end-of-stream marker that every writer's ``close()`` appends tells it from a complete one."""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        if fh.tell() < len(ARROW_STREAM_EOS):
            raise PackerError(f"{path}: too short to be an Arrow IPC stream; the file is truncated")
        fh.seek(-len(ARROW_STREAM_EOS), os.SEEK_END)
        if fh.read() != ARROW_STREAM_EOS:
            raise PackerError(
                f"{path}: the Arrow IPC stream has no end-of-stream marker, so it is truncated (or its writer was "
                "never closed); re-create the file"
            )


def _require_columns(path: str, have: list[str], want: list[str]) -> None:
    for name in want:
        if name not in have:
            raise PackerError(
                f"{path}: no column {name!r} (columns: {', '.join(have) or 'none'}); "
                "name the right one with --input-column/--labels-column/--loss-mask-column"
            )


def _check_list_type(path: str, name: str, typ: pa.DataType, *, allow_bool: bool = False) -> None:
    if not (pa.types.is_list(typ) or pa.types.is_large_list(typ)):
        raise PackerError(f"{path}: column {name!r} is {typ}, not a list of integers (one token list per row)")
    vt = typ.value_type
    if not (pa.types.is_integer(vt) or (allow_bool and pa.types.is_boolean(vt))):
        raise PackerError(f"{path}: column {name!r} is {typ}; its items must be integers, not {vt}")


def _numpy_values(path: str, name: str, arr: pa.Array, row_start: int) -> np.ndarray:
    values = arr.values
    if values.null_count:
        # the row holding the first null item, for the message (arr.offsets index arr.values)
        item = int(np.argmax(values.is_null().to_numpy(zero_copy_only=False)))
        offsets = arr.offsets.to_numpy()
        row = int(np.searchsorted(offsets, item, side="right")) - 1
        if 0 <= row < len(arr) and offsets[row] <= item < offsets[row + 1]:
            raise PackerError(f"{path}: column {name!r} row {row_start + row} holds a null token; fix or drop it")
        values = values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
        if values.null_count:  # pragma: no cover - the search above finds it
            raise PackerError(f"{path}: column {name!r} holds a null token; fix or drop it")
        return np.concatenate([np.zeros(int(offsets[0]), _numpy_dtype(values.type)), values.to_numpy()])
    if pa.types.is_boolean(values.type):
        return values.to_numpy(zero_copy_only=False).astype(np.uint8)
    return values.to_numpy(zero_copy_only=True)


def _numpy_dtype(typ: pa.DataType):
    return np.uint8 if pa.types.is_boolean(typ) else typ.to_pandas_dtype()


def _first_null(arr: pa.ChunkedArray) -> int:
    mask = arr.is_null().to_numpy(zero_copy_only=False)
    return int(np.argmax(mask))


def open_input(paths: list[str | os.PathLike], *, columns: Columns = Columns()) -> TokenizedInput:
    """Open tokenized input files, validating schema, nulls and column lengths.

    Raises:
        PackerError: naming the file, column and row, for anything packer cannot pack.
    """
    files = resolve_paths(paths)
    names = [columns.input_ids] + [c for c in (columns.labels, columns.loss_mask) if c is not None]
    chunks: list[Chunk] = []
    tables = []
    file_rows = []
    file_bytes = []
    row = 0
    for path in files:
        kind = _sniff(path)
        table = _read_table(path, kind, names)
        tables.append(table)
        _check_list_type(path, columns.input_ids, table.schema.field(columns.input_ids).type)
        if columns.labels:
            _check_list_type(path, columns.labels, table.schema.field(columns.labels).type)
        if columns.loss_mask:
            _check_list_type(path, columns.loss_mask, table.schema.field(columns.loss_mask).type, allow_bool=True)
        for name in names:
            col = table.column(name)
            if col.null_count:
                raise PackerError(
                    f"{path}: column {name!r} row {_first_null(col)} is null; drop or fill null rows first"
                )
        file_row_start = row
        ids_col = table.column(columns.input_ids)
        other = table.column(names[1]) if len(names) > 1 else None
        for c in range(ids_col.num_chunks):
            ids = ids_col.chunk(c)
            if len(ids) == 0:
                continue
            offsets = ids.offsets.to_numpy().astype(np.int64, copy=False)
            chunk = Chunk(
                file=path,
                row_start=row,
                offsets=offsets,
                ids=_numpy_values(path, columns.input_ids, ids, row - file_row_start),
            )
            if other is not None:
                # align the second column's chunks with the ids chunks (they can be chunked differently)
                part = other.slice(row - file_row_start, len(ids))
                o = part.chunk(0) if part.num_chunks == 1 else part.combine_chunks()
                o_offsets = o.offsets.to_numpy().astype(np.int64, copy=False)
                o_len = np.diff(o_offsets)
                i_len = np.diff(offsets)
                if not np.array_equal(o_len, i_len):
                    bad = int(np.argmax(o_len != i_len))
                    raise PackerError(
                        f"{path}: row {row - file_row_start + bad} has {int(i_len[bad])} {columns.input_ids} but "
                        f"{int(o_len[bad])} {names[1]}; the two columns must have the same length in every row"
                    )
                vals = _numpy_values(path, names[1], o, row - file_row_start)
                # re-base so that the chunk's ids offsets index the other column too
                shift = int(o_offsets[0] - offsets[0])
                if shift:
                    vals = vals[shift:] if shift > 0 else np.concatenate([np.zeros(-shift, vals.dtype), vals])
                if columns.labels:
                    chunk.labels = vals
                else:
                    chunk.mask = vals
            chunks.append(chunk)
            row += len(ids)
        file_rows.append(row - file_row_start)
        file_bytes.append(os.path.getsize(path))
        log.debug("opened %s (%s, %d rows)", path, kind, file_rows[-1])
    return TokenizedInput(
        files=files,
        columns=columns,
        chunks=chunks,
        file_rows=np.asarray(file_rows, dtype=np.int64),
        file_bytes=np.asarray(file_bytes, dtype=np.int64),
        _tables=tables,
    )
