"""Reading a packed folder: memory-mapped shards, one pack at a time as zero-copy numpy views.

The I/O layer under :mod:`packer.torch` (it imports no torch). Everything about the layout comes from
:mod:`packer.format`: the manifest lists the shards in order with their ``rows``, ``bytes`` and checksum; every
shard is an Arrow IPC *stream* file with one row per pack.

Opening a folder reads the manifest, checks every listed shard exists and has the size the manifest records, and
memory-maps the shards (``pa.ipc.open_stream(pa.memory_map(path))``): only the stream's message headers are
parsed, so opening costs milliseconds and almost no memory however large the folder is; token data is paged in
when a pack is read. A reader pickles without its memory maps (it reopens them lazily on first use), so it can be
handed to ``DataLoader`` worker processes cheaply.

Example:
    >>> r = PackedReader("packed")                                   # doctest: +SKIP
    >>> ids, labels, cu = r.pack(0)                                  # doctest: +SKIP
    >>> int(cu[-1]) == ids.shape[0]                                  # doctest: +SKIP
    True
"""
from __future__ import annotations

import bisect
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from packer import format as fmt
from packer.errors import PackerError

_HASH_BLOCK = 8 << 20


@dataclass
class _Column:
    """One list column of one record batch: ``values[offsets[r]:offsets[r + 1]]`` is row ``r``."""

    offsets: np.ndarray  # int64 (rows + 1,)
    values: np.ndarray  # read-only view into the memory map


@dataclass
class _Batch:
    row_start: int  # first row of this record batch within its shard
    ids: _Column
    labels: _Column
    cu: _Column


@dataclass
class _Shard:
    """An opened shard: its record batches (nearly always one) and the memory map that backs them."""

    path: Path
    batches: list[_Batch]
    batch_starts: np.ndarray  # int64 (n_batches,)
    table: pa.Table  # keeps the memory map alive


def _list_column(path: Path, batch: pa.RecordBatch, name: str) -> _Column:
    arr = batch.column(batch.schema.get_field_index(name))
    if arr.null_count:
        raise PackerError(f"{path}: column {name!r} has null rows; the shard is damaged, re-run 'packer pack'")
    # numpy views of the Arrow buffers themselves: Array.to_numpy imports pandas, which took 0.29 s and 26 MiB on
    # the first open in a process. ``offsets`` index the child array from its start (a slice's offset included)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32, count=len(arr) + 1, offset=arr.offset * 4)
    offsets = offsets.astype(np.int64)
    child = arr.values
    if child.null_count:
        raise PackerError(f"{path}: column {name!r} has null values; the shard is damaged, re-run 'packer pack'")
    values = np.frombuffer(child.buffers()[1], dtype=np.int32, count=len(child), offset=child.offset * 4)
    if offsets.shape[0] and (offsets[0] < 0 or offsets[-1] > values.shape[0]):
        raise PackerError(f"{path}: column {name!r} has offsets outside its values; the shard is damaged")
    return _Column(offsets=offsets, values=values)


def open_shard(path: str | os.PathLike, *, rows: int | None = None) -> _Shard:
    """Memory-map one shard and check its columns (and its row count, when ``rows`` is given).

    Raises:
        PackerError: the file is missing, not an Arrow stream, truncated, lacks a column or has another type.
    """
    path = Path(path)
    try:
        source = pa.memory_map(str(path), "r")
        table = pa.ipc.open_stream(source).read_all()
    except FileNotFoundError:
        raise PackerError(f"{path}: shard is missing; the packed folder is incomplete, re-run 'packer pack'") from None
    except (OSError, pa.ArrowException) as e:
        raise PackerError(
            f"{path}: not a readable Arrow stream shard ({str(e).splitlines()[0]}); it is truncated or damaged, "
            "re-run 'packer pack'"
        ) from None
    for name in (fmt.INPUT_IDS, fmt.LABELS, fmt.CU_SEQLENS):
        field = table.schema.field(name) if name in table.schema.names else None
        if field is None:
            raise PackerError(f"{path}: no column {name!r}; not a packer shard, re-run 'packer pack'")
        if field.type != fmt.SCHEMA.field(name).type:
            raise PackerError(f"{path}: column {name!r} is {field.type}, expected {fmt.SCHEMA.field(name).type}")
    if rows is not None and table.num_rows != rows:
        raise PackerError(
            f"{path}: holds {table.num_rows:,} packs but the manifest lists {rows:,}; the shard is truncated or "
            "was replaced, re-run 'packer pack'"
        )
    batches, starts, start = [], [], 0
    for batch in table.to_batches():
        if batch.num_rows == 0:
            continue
        batches.append(
            _Batch(
                row_start=start,
                ids=_list_column(path, batch, fmt.INPUT_IDS),
                labels=_list_column(path, batch, fmt.LABELS),
                cu=_list_column(path, batch, fmt.CU_SEQLENS),
            )
        )
        starts.append(start)
        start += batch.num_rows
    return _Shard(path=path, batches=batches, batch_starts=np.asarray(starts, dtype=np.int64), table=table)


class PackedReader:
    """A packed folder, read pack by pack (see the module docstring).

    Args:
        path: the packed folder (written by ``packer pack`` / :func:`packer.convert.pack_dataset`).
        verify: also hash every shard and compare with the manifest's checksum (reads the whole folder once).

    Raises:
        PackerError: not a packed folder, another format version, a manifest modified or damaged after packing (its
            own checksum differs), a shard missing, truncated, of the wrong size or
            (with ``verify``) with another checksum. The message names the file.

    Attributes:
        path: the folder.
        manifest: the parsed manifest.
        capacity: tokens per pack (the manifest's ``config.capacity``).
        shard_paths: the shards in order.
        row_starts: int64 (n_shards + 1,), shard ``s`` holds packs ``row_starts[s]:row_starts[s + 1]``.
    """

    def __init__(self, path: str | os.PathLike, *, verify: bool = False):
        self.path = Path(path)
        self.manifest = fmt.read_manifest(self.path)
        manifest_path = self.path / fmt.MANIFEST_FILE
        config = self.manifest[fmt.MANIFEST_CONFIG]
        capacity = config.get(fmt.CONFIG_CAPACITY) if isinstance(config, dict) else None
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity <= 0:
            raise PackerError(f"{manifest_path}: config has no positive {fmt.CONFIG_CAPACITY!r}; re-run 'packer pack'")
        self.capacity = capacity
        shards = self.manifest[fmt.MANIFEST_SHARDS]
        if not isinstance(shards, list) or not shards:
            raise PackerError(f"{manifest_path}: the manifest lists no shards; re-run 'packer pack'")
        paths, rows = [], []
        for k, entry in enumerate(shards):
            try:
                name, n, size = entry[fmt.SHARD_FILE], entry[fmt.SHARD_ROWS], entry[fmt.SHARD_BYTES]
            except (TypeError, KeyError):
                raise PackerError(
                    f"{manifest_path}: shard entry {k} lacks {fmt.SHARD_FILE!r}, {fmt.SHARD_ROWS!r} or "
                    f"{fmt.SHARD_BYTES!r}; re-run 'packer pack'"
                ) from None
            if not isinstance(name, str) or os.path.basename(name) != name:
                raise PackerError(f"{manifest_path}: shard entry {k} has a bad file name {name!r}")
            p = self.path / name
            try:
                on_disk = p.stat().st_size
            except FileNotFoundError:
                raise PackerError(
                    f"{p}: shard listed in the manifest is missing; the packed folder is incomplete, re-run "
                    "'packer pack'"
                ) from None
            if on_disk != size:
                raise PackerError(
                    f"{p}: {on_disk:,} bytes on disk but the manifest records {size:,}; the shard is truncated or "
                    "was replaced, re-run 'packer pack'"
                )
            if verify:
                want = entry.get(fmt.SHARD_CHECKSUM)
                got = fmt.file_checksum(p)
                if got != want:
                    raise PackerError(
                        f"{p}: {fmt.CHECKSUM} checksum {got[:16]}... does not match the manifest's {str(want)[:16]}...; the shard "
                        "is damaged, re-run 'packer pack'"
                    )
            paths.append(p)
            rows.append(int(n))
        self.shard_paths = paths
        self.shard_rows = np.asarray(rows, dtype=np.int64)
        self.row_starts = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(self.shard_rows, out=self.row_starts[1:])
        self._row_starts_list = self.row_starts.tolist()
        self._shards: list[_Shard | None] = [None] * len(paths)
        # open (and so check) every shard now, so that a damaged folder fails here rather than mid-epoch
        for s in range(len(paths)):
            self._shard(s)

    # Pickling (DataLoader workers under spawn/forkserver) carries the manifest and offsets but no memory map;
    # each process maps the shards again on first use.
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_shards"] = [None] * len(self.shard_paths)
        state.pop("_padded", None)  # views of the memory maps, rebuilt on first use
        return state

    def __len__(self) -> int:
        return int(self.row_starts[-1])

    @property
    def n_shards(self) -> int:
        return len(self.shard_paths)

    def _shard(self, s: int) -> _Shard:
        shard = self._shards[s]
        if shard is None:
            shard = self._shards[s] = open_shard(self.shard_paths[s], rows=int(self.shard_rows[s]))
        return shard

    def locate(self, index: int) -> tuple[int, int]:
        """``(shard, row)`` of global pack ``index`` (0 <= index < len(self))."""
        s = int(np.searchsorted(self.row_starts, index, side="right")) - 1
        return s, index - int(self.row_starts[s])

    def pack(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pack ``index`` as read-only zero-copy views: ``input_ids``, ``labels`` (int32, (tokens,)) and
        ``cu_seqlens`` (int32, (sequences + 1,), from 0 to tokens, no padding).

        Raises:
            IndexError: index out of range.
            PackerError: the pack's lists disagree (a damaged shard); the message names shard and row.
        """
        n = self._row_starts_list[-1]
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"pack index {index} out of range for {n:,} packs")
        # bisect on a list: a third of np.searchsorted's cost for one scalar (this runs once per item)
        s = bisect.bisect_right(self._row_starts_list, index) - 1
        row = index - self._row_starts_list[s]
        shard = self._shards[s] or self._shard(s)
        if len(shard.batches) == 1:
            b = shard.batches[0]
        else:
            b = shard.batches[int(np.searchsorted(shard.batch_starts, row, side="right")) - 1]
            row -= b.row_start
        a0, a1 = b.ids.offsets[row], b.ids.offsets[row + 1]
        c0, c1 = b.cu.offsets[row], b.cu.offsets[row + 1]
        ids = b.ids.values[a0:a1]
        labels = b.labels.values[b.labels.offsets[row] : b.labels.offsets[row + 1]]
        cu = b.cu.values[c0:c1]
        if c1 - c0 < 2 or cu[0] != 0 or cu[-1] != a1 - a0 or labels.shape[0] != ids.shape[0]:
            raise PackerError(
                f"{shard.path}: row {row + b.row_start} has inconsistent input_ids/labels/cu_seqlens; the shard is "
                "damaged, re-run 'packer pack'"
            )
        return ids, labels, cu

    def sequences(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``seq_index`` (int64) and ``seq_offset`` (int32) of pack ``index``, one entry per sequence (see
        :mod:`packer.format`): the input row each sequence came from and its first token's offset in that row.

        Raises:
            IndexError: index out of range.
        """
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"pack index {index} out of range for {n:,} packs")
        s, row = self.locate(index % n)
        table = self._shard(s).table
        out = []
        for name, dtype in ((fmt.SEQ_INDEX, np.int64), (fmt.SEQ_OFFSET, np.int32)):
            values = table.column(name)[row].values  # numpy views of the Arrow buffers: no pandas import
            width = np.dtype(dtype).itemsize
            out.append(np.frombuffer(values.buffers()[1], dtype=dtype, count=len(values), offset=values.offset * width))
        return out[0], out[1]

    def _per_shard(self, fn) -> np.ndarray:
        parts = []
        for s in range(self.n_shards):
            for b in self._shard(s).batches:
                parts.append(fn(b))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def num_tokens(self) -> np.ndarray:
        """Real (unpadded) tokens per pack, int64 (n_packs,), from the list offsets alone."""
        return self._per_shard(lambda b: np.diff(b.ids.offsets))

    def num_sequences(self) -> np.ndarray:
        """Sequences per pack, int64 (n_packs,)."""
        return self._per_shard(lambda b: np.diff(b.cu.offsets) - 1)

    def attention_costs(self) -> np.ndarray:
        """Sum of squared sequence lengths per pack, int64 (n_packs,): the variable part of a pack's attention cost.

        Every pack is padded to the same capacity, so the cost linear in tokens (MLP, projections) is the same for
        all packs; what differs is attention, quadratic in each sequence's length. Read from ``cu_seqlens`` only.
        """
        return self._per_shard(_squared_lengths)

    @property
    def pad_to_multiple_of(self) -> int | None:
        """N of a folder packed with ``--pad-to-multiple-of N`` (``config.pad_to_multiple_of``), else None.

        Raises:
            PackerError: the manifest's N is not a positive integer dividing the capacity.
        """
        multiple = fmt.pad_to_multiple_of(self.manifest)
        if multiple is not None and (isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1
                                     or self.capacity % multiple):
            raise PackerError(f"{self.path / fmt.MANIFEST_FILE}: config.{fmt.CONFIG_PAD_TO_MULTIPLE_OF} is "
                              f"{multiple!r}, not a positive integer dividing the capacity {self.capacity:,}; "
                              "re-run 'packer pack'")
        return multiple

    def cu_seqlens_padded(self, index: int) -> np.ndarray | None:
        """:data:`packer.format.CU_SEQLENS_PADDED` of pack ``index``: int32 (sequences + 1,), a read-only view; None
        for a folder packed without ``--pad-to-multiple-of``.

        A shard's column is checked against its ``cu_seqlens`` once, when first used (vectorised: as many entries
        per pack, 0 first, every span at least its sequence's length and a multiple of N, the last entry within the
        capacity), so that kernels can index with it.

        Raises:
            IndexError: index out of range.
            PackerError: the manifest records N but a shard lacks the column, or its padded boundaries do not fit
                its ``cu_seqlens``; the message names the shard and the row.
        """
        multiple = self.pad_to_multiple_of
        if multiple is None:
            return None
        n = self._row_starts_list[-1]
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"pack index {index} out of range for {n:,} packs")
        s = bisect.bisect_right(self._row_starts_list, index) - 1
        row = index - self._row_starts_list[s]
        padded = self.__dict__.setdefault("_padded", {})
        columns = padded.get(s)
        if columns is None:
            columns = padded[s] = self._padded_columns(s, multiple)
        shard = self._shards[s]
        k = 0 if len(columns) == 1 else int(np.searchsorted(shard.batch_starts, row, side="right")) - 1
        col = columns[k]
        row -= shard.batches[k].row_start
        return col.values[col.offsets[row] : col.offsets[row + 1]]

    def _padded_columns(self, s: int, multiple: int) -> list[_Column]:
        """Shard ``s``'s padded boundaries per record batch, checked against its ``cu_seqlens``."""
        shard = self._shard(s)
        if fmt.CU_SEQLENS_PADDED not in shard.table.schema.names:
            raise PackerError(f"{shard.path}: no column {fmt.CU_SEQLENS_PADDED!r}, but {fmt.MANIFEST_FILE} records "
                              f"{fmt.CONFIG_PAD_TO_MULTIPLE_OF} {multiple}; the folder is damaged, re-run 'packer pack'")
        columns = []
        for b, batch in zip(shard.batches, (x for x in shard.table.to_batches() if x.num_rows)):
            col = _list_column(shard.path, batch, fmt.CU_SEQLENS_PADDED)
            cu = b.cu
            bad = np.zeros(col.offsets.shape[0] - 1, dtype=bool)
            same = (np.diff(col.offsets) == np.diff(cu.offsets)) & (np.diff(col.offsets) >= 2)
            bad |= ~same
            if same.all() and col.offsets.shape[0] > 1:
                lo, hi = int(col.offsets[0]), int(col.offsets[-1])
                pad = col.values[lo:hi].astype(np.int64)
                real = cu.values[int(cu.offsets[0]) : int(cu.offsets[-1])].astype(np.int64)
                first, last = col.offsets[:-1] - lo, col.offsets[1:] - lo - 1
                span, length = np.diff(pad), np.diff(real)
                inside = np.ones(span.shape[0], dtype=bool)
                inside[last[:-1]] = False  # the step from one pack's last entry to the next pack's 0
                wrong = inside & ((span < length) | (span % multiple != 0))
                bad |= (pad[first] != 0) | (pad[last] > self.capacity)
                bad[np.searchsorted(first, np.flatnonzero(wrong), side="right") - 1] = True
            if bad.any():
                row = b.row_start + int(np.argmax(bad))
                raise PackerError(
                    f"{shard.path}: row {row} has {fmt.CU_SEQLENS_PADDED} that do not fit its {fmt.CU_SEQLENS} with "
                    f"{fmt.CONFIG_PAD_TO_MULTIPLE_OF} {multiple} and capacity {self.capacity:,}; the shard is "
                    "damaged, re-run 'packer pack'"
                )
            columns.append(col)
        return columns

    def longest_sequences(self) -> np.ndarray:
        """The longest sequence of every pack, int64 (n_packs,), from ``cu_seqlens`` only."""
        return self._per_shard(_longest)


def _longest(b: _Batch) -> np.ndarray:
    off = b.cu.offsets
    v = b.cu.values[off[0] : off[-1]].astype(np.int64)
    d = np.diff(v)
    d[off[1:-1] - off[0] - 1] = 0  # diffs across two rows' lists are not sequences
    return np.maximum.reduceat(d, off[:-1] - off[0]) if d.shape[0] else np.zeros(len(off) - 1, dtype=np.int64)


def _squared_lengths(b: _Batch) -> np.ndarray:
    off = b.cu.offsets
    v = b.cu.values[off[0] : off[-1]].astype(np.int64)
    sq = np.diff(v) ** 2
    # diffs across two rows' lists (last boundary of row r to the 0 of row r + 1) are not sequences
    sq[off[1:-1] - off[0] - 1] = 0
    cs = np.zeros(sq.shape[0] + 1, dtype=np.int64)
    np.cumsum(sq, out=cs[1:])
    rel = off - off[0]
    return cs[rel[1:] - 1] - cs[rel[:-1]]
