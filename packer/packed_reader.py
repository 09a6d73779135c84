"""Reading a packed folder: memory-mapped shards, one pack at a time as zero-copy numpy views.

The I/O layer under :mod:`packer.torch` (it imports no torch). Everything about the layout comes from
:mod:`packer.format`: the manifest lists the shards in order with their ``rows``, ``bytes`` and checksum; every
shard is an Arrow IPC *stream* file with one row per pack.

Opening a folder reads the manifest and checks it (its checksum and schema, :func:`packer.format.read_manifest`),
then opens every listed shard through one descriptor of the folder, as a regular file only (no symlink, FIFO or
device), checks its size and memory-maps it: only the stream's message headers are parsed, so opening costs
milliseconds and almost no memory however large the folder is; token data is paged in when a pack is read.

What is checked, and when. Nothing read from disk reaches numba's unchecked indexing before it is checked:

* at open, per shard and vectorised over its offsets (``rows + 1`` integers per column, not the tokens): every
  list column's offsets are in range and non-decreasing, ``labels`` has as many entries as ``input_ids`` in every
  pack, every pack holds 1..capacity tokens and at least one sequence; the shards' packs, tokens and sequences
  equal the manifest's counts.
* per pack read, before the fill kernel: its ``cu_seqlens`` starts at 0, strictly increases and ends at the pack's
  length (:func:`packer.kernels.check_cu_seqlens`, 0.27 us for a 100-sequence pack, mostly numba's dispatch).
* :meth:`PackedReader.attention_costs` and :meth:`PackedReader.sequences` check every pack's ``cu_seqlens`` at
  once, since they read them all.

Anything else is a :class:`packer.errors.PackerError` naming the shard and the row. What no structural check can
see is a changed token or label *value*: only the checksums do (``verify=True``, or ``packer verify``).

One version per reader. ``packer pack --overwrite`` swaps a new folder into place while readers may be reading the
old one. The manifest and all shards are opened through one directory descriptor, so they are of one version; each
shard's identity (device, inode, size, modification time) is recorded. A reader pickles without its memory maps
(DataLoader workers under spawn/forkserver), and a worker reopens each shard by path and compares its identity:
another file there means the folder was replaced, and reading stops with a PackerError that says to reopen the
dataset, rather than mixing packs of two versions. Fork workers inherit the maps and keep reading the version that
was opened.

Example:
    >>> r = PackedReader("packed")                                   # doctest: +SKIP
    >>> ids, labels, cu = r.pack(0)                                  # doctest: +SKIP
    >>> int(cu[-1]) == ids.shape[0]                                  # doctest: +SKIP
    True
"""
from __future__ import annotations

import bisect
import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from packer import format as fmt
from packer import kernels
from packer.errors import PackerError

REPLACED = ("the folder was replaced or changed while reading (e.g. by 'packer pack --overwrite'); reopen the "
            "dataset to read the new version")


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
    record: pa.RecordBatch


@dataclass
class _Shard:
    """An opened shard: its record batches (nearly always one) and the memory map that backs them."""

    path: Path
    batches: list[_Batch]
    batch_starts: np.ndarray  # int64 (n_batches,)
    table: pa.Table
    buffer: pa.Buffer  # the whole file, memory-mapped (keeps the map alive)
    identity: tuple  # (st_dev, st_ino, st_size, st_mtime_ns) of the file mapped
    columns: dict = field(default_factory=dict)  # checked columns read on first use: {name: [_Column per batch]}


def _damaged(path: Path, row: int | None, what: str) -> PackerError:
    where = f"{path}: row {row}: " if row is not None else f"{path}: "
    return PackerError(f"{where}{what}; the shard is damaged, re-run 'packer pack'")


def _list_column(path: Path, batch: pa.RecordBatch, name: str, row_start: int, dtype=np.int32) -> _Column:
    """Column ``name`` of a record batch through :func:`packer.format.list_column_arrays`; damage names the shard."""
    try:
        offsets, values = fmt.list_column_arrays(batch.column(batch.schema.get_field_index(name)), dtype)
    except fmt.ShardLayoutError as e:
        raise _damaged(path, None if e.row is None else row_start + e.row, f"column {name!r} {e.what}") from None
    return _Column(offsets=offsets, values=values)


def _map_fd(fd: int, path: Path) -> tuple[pa.Table, pa.Buffer]:
    """The Arrow stream in the open file ``fd``, memory-mapped (zero-copy), and the file's buffer; the caller closes
    ``fd`` (the map stays valid)."""
    try:
        mapped = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    except (ValueError, OSError) as e:  # ValueError: an empty file
        raise PackerError(f"{path}: not a readable Arrow stream shard ({e}); it is truncated or damaged, re-run "
                          "'packer pack'") from None
    buffer = pa.py_buffer(mapped)
    try:
        table = pa.ipc.open_stream(buffer).read_all()
        table.schema.names  # noqa: B018  (decoded here: a damaged name is not UTF-8, a UnicodeDecodeError)
        return table, buffer
    except (OSError, ValueError, pa.ArrowException) as e:
        raise PackerError(
            f"{path}: not a readable Arrow stream shard ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
            "it is truncated or damaged, re-run 'packer pack'"
        ) from None


def _identity(st: os.stat_result) -> tuple:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _open_shard_fd(fd: int, st: os.stat_result, path: Path, *, rows: int | None, capacity: int | None) -> _Shard:
    table, buffer = _map_fd(fd, path)
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
        b = _Batch(
            row_start=start,
            ids=_list_column(path, batch, fmt.INPUT_IDS, start),
            labels=_list_column(path, batch, fmt.LABELS, start),
            cu=_list_column(path, batch, fmt.CU_SEQLENS, start),
            record=batch,
        )
        tokens = np.diff(b.ids.offsets)
        limit = capacity if capacity is not None else fmt.MAX_CAPACITY
        checks = (
            np.diff(b.labels.offsets) != tokens,
            (tokens < 1) | (tokens > limit),
            np.diff(b.cu.offsets) < 2,
        )
        if any(bad.any() for bad in checks):  # one pass each; the row and the words only for the message
            k = next(k for k, bad in enumerate(checks) if bad.any())
            r = int(np.argmax(checks[k]))
            what = ("labels and input_ids differ in length",
                    f"the pack holds {int(tokens[r]):,} tokens; a pack holds 1 to the capacity {limit:,} in "
                    f"{fmt.MANIFEST_FILE}", f"{fmt.CU_SEQLENS} has fewer than 2 entries")[k]
            raise _damaged(path, start + r, what)
        batches.append(b)
        starts.append(start)
        start += batch.num_rows
    return _Shard(path=path, batches=batches, batch_starts=np.asarray(starts, dtype=np.int64), table=table,
                  buffer=buffer, identity=_identity(st))


class PackedReader:
    """A packed folder, read pack by pack (see the module docstring).

    Args:
        path: the packed folder (written by ``packer pack`` / :func:`packer.convert.pack_dataset`).
        verify: also hash every shard and compare with the manifest's checksum (reads the whole folder once).
            Needed to notice a changed token or label value, which no structural check can see.
        allow_unsealed: accept a manifest without its checksum (a folder of a packer before manifest checksums;
            ``packer verify DIR --reseal`` adds one). Refused by default.

    Raises:
        PackerError: not a packed folder, another format version, a manifest modified or damaged after packing (its
            own checksum differs) or without a checksum, a malformed manifest (the message names the field), a shard
            missing, not a regular file, truncated, of the wrong size, with offsets out of range or (with
            ``verify``) with another checksum, or a folder replaced while it was being opened. The message names the
            file (and the row).

    Attributes:
        path: the folder.
        manifest: the parsed manifest.
        capacity: tokens per pack (the manifest's ``config.capacity``).
        shard_paths: the shards in order.
        row_starts: int64 (n_shards + 1,), shard ``s`` holds packs ``row_starts[s]:row_starts[s + 1]``.
    """

    def __init__(self, path: str | os.PathLike, *, verify: bool = False, allow_unsealed: bool = False):
        self.path = Path(path)
        dfd = fmt.open_folder(self.path)
        try:
            self._open(dfd, verify=verify, allow_unsealed=allow_unsealed)
        except PackerError as e:
            if self._replaced(dfd):
                raise PackerError(f"{self.path}: {REPLACED} ({e})") from None
            raise
        finally:
            os.close(dfd)

    def _replaced(self, dfd: int) -> bool:
        """Whether ``self.path`` is no longer the folder ``dfd`` was opened on."""
        try:
            now, then = os.stat(self.path), os.fstat(dfd)
        except OSError:
            return True
        return (now.st_dev, now.st_ino) != (then.st_dev, then.st_ino)

    def _open(self, dfd: int, *, verify: bool, allow_unsealed: bool) -> None:
        self.manifest = fmt.read_manifest(self.path, allow_unsealed=allow_unsealed, dir_fd=dfd)
        self.capacity = self.manifest[fmt.MANIFEST_CONFIG][fmt.CONFIG_CAPACITY]
        entries = self.manifest[fmt.MANIFEST_SHARDS]  # well-formed: read_manifest checked the schema
        self.shard_paths = [self.path / e[fmt.SHARD_FILE] for e in entries]
        self.shard_rows = np.asarray([e[fmt.SHARD_ROWS] for e in entries], dtype=np.int64)
        self.row_starts = np.zeros(len(entries) + 1, dtype=np.int64)
        np.cumsum(self.shard_rows, out=self.row_starts[1:])
        self._row_starts_list = self.row_starts.tolist()
        self._shards: list[_Shard | None] = [None] * len(entries)
        # open (and so check) every shard now, through the folder's descriptor, so that a damaged folder fails here
        # rather than mid-epoch and all shards are of the manifest's version
        for s, entry in enumerate(entries):
            p = self.shard_paths[s]
            fd, st = fmt.open_regular_file(entry[fmt.SHARD_FILE], dir_fd=dfd, folder=self.path)
            try:
                if st.st_size != entry[fmt.SHARD_BYTES]:
                    raise PackerError(
                        f"{p}: {st.st_size:,} bytes on disk but the manifest records {entry[fmt.SHARD_BYTES]:,}; the "
                        "shard is truncated or was replaced, re-run 'packer pack'"
                    )
                shard = _open_shard_fd(fd, st, p, rows=entry[fmt.SHARD_ROWS], capacity=self.capacity)
            finally:
                os.close(fd)
            tokens = sum(int(b.ids.offsets[-1] - b.ids.offsets[0]) for b in shard.batches)
            sequences = sum(int(b.cu.offsets[-1] - b.cu.offsets[0]) - b.record.num_rows for b in shard.batches)
            for key, have in (("tokens", tokens), ("sequences", sequences)):
                if have != entry[key]:
                    raise PackerError(f"{p}: holds {have:,} {key} but the manifest records {entry[key]:,}; the shard "
                                      "is damaged or was replaced, re-run 'packer pack'")
            if verify:
                h = fmt.new_checksum()
                h.update(shard.buffer)  # the bytes just mapped and checked, not the path again
                got, want = h.hexdigest(), entry[fmt.SHARD_CHECKSUM]
                if got != want:
                    raise PackerError(
                        f"{p}: {fmt.CHECKSUM} checksum {got[:16]}... does not match the manifest's {want[:16]}...; the "
                        "shard is damaged, re-run 'packer pack'"
                    )
            self._shards[s] = shard
        self._identity = [sh.identity for sh in self._shards]

    # Pickling (DataLoader workers under spawn/forkserver) carries the manifest, offsets and shard identities but no
    # memory map; each process maps the shards again on first use and checks they are the files opened here.
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_shards"] = [None] * len(self.shard_paths)
        return state

    def __len__(self) -> int:
        return int(self.row_starts[-1])

    @property
    def n_shards(self) -> int:
        return len(self.shard_paths)

    def _shard(self, s: int) -> _Shard:
        shard = self._shards[s]
        if shard is None:
            shard = self._shards[s] = self._reopen(s)
        return shard

    def _reopen(self, s: int) -> _Shard:
        """Shard ``s`` mapped again by path (in a worker process), if it is still the file opened at first."""
        p = self.shard_paths[s]
        try:
            dfd = fmt.open_folder(self.path)
            try:
                fd, st = fmt.open_regular_file(p.name, dir_fd=dfd, folder=self.path)
            finally:
                os.close(dfd)
        except PackerError as e:
            raise PackerError(f"{p}: {REPLACED} ({e})") from None
        try:
            if _identity(st) != self._identity[s]:
                raise PackerError(f"{p}: not the file this reader opened: {REPLACED}")
            return _open_shard_fd(fd, st, p, rows=int(self.shard_rows[s]), capacity=self.capacity)
        finally:
            os.close(fd)

    def record_batches(self, s: int) -> list[pa.RecordBatch]:
        """Shard ``s``'s non-empty record batches, from the memory map opened (and checked) with the folder: the same
        version of the file as the manifest, never reopened by path in this process."""
        return [b.record for b in self._shard(s).batches]

    def locate(self, index: int) -> tuple[int, int]:
        """``(shard, row)`` of global pack ``index`` (0 <= index < len(self))."""
        s = int(np.searchsorted(self.row_starts, index, side="right")) - 1
        return s, index - int(self.row_starts[s])

    def _batch_of(self, index: int) -> tuple[_Shard, int, int]:
        """``(shard, k, row)``: pack ``index`` (negative counts from the end) is row ``row`` of record batch ``k``.

        Raises:
            IndexError: index out of range.
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
            return shard, 0, row
        k = int(np.searchsorted(shard.batch_starts, row, side="right")) - 1
        return shard, k, row - shard.batches[k].row_start

    def pack(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pack ``index`` as read-only zero-copy views: ``input_ids``, ``labels`` (int32, (tokens,)) and
        ``cu_seqlens`` (int32, (sequences + 1,), from 0 to tokens, strictly increasing, no padding).

        Raises:
            IndexError: index out of range.
            PackerError: the pack's ``cu_seqlens`` is not 0, strictly increasing, its length (a damaged shard); the
                message names shard and row.
        """
        shard, k, row = self._batch_of(index)
        b = shard.batches[k]
        # offsets were checked at open: in range, non-decreasing, labels as long as input_ids, >= 2 cu entries
        a0, a1 = b.ids.offsets[row], b.ids.offsets[row + 1]
        l0 = b.labels.offsets[row]
        ids = b.ids.values[a0:a1]
        labels = b.labels.values[l0 : l0 + (a1 - a0)]
        cu = b.cu.values[b.cu.offsets[row] : b.cu.offsets[row + 1]]
        bad = kernels.check_cu_seqlens(cu, a1 - a0)
        if bad >= 0:
            raise _damaged(shard.path, row + b.row_start, _cu_problem(cu, int(a1 - a0), bad))
        return ids, labels, cu

    def pack_sequences(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``seq_index`` (int64) and ``seq_offset`` (int32) of pack ``index``, one entry per sequence (see
        :mod:`packer.format`): the input row each sequence came from and its first token's offset in that row.
        Read-only views; a shard's two columns are checked once, when first used (type, offsets, one entry per
        sequence of ``cu_seqlens``).

        Raises:
            IndexError: index out of range.
            PackerError: a shard's provenance columns are missing, of another type or of another count than its
                sequences; the message names the shard and the row.
        """
        shard, k, row = self._batch_of(index)
        out = []
        for name, dtype in ((fmt.SEQ_INDEX, np.int64), (fmt.SEQ_OFFSET, np.int32)):
            col = self._sequence_column(shard, name, dtype)[k]
            out.append(col.values[col.offsets[row] : col.offsets[row + 1]])
        return out[0], out[1]

    def _sequence_column(self, shard: _Shard, name: str, dtype) -> list[_Column]:
        """A per-sequence column of ``shard`` (one list entry per sequence in ``cu_seqlens``), checked, per batch."""
        cols = shard.columns.get(name)
        if cols is None:
            want = fmt.SCHEMA.field(name).type
            schema = shard.table.schema
            if name not in schema.names or schema.field(name).type != want:
                raise PackerError(f"{shard.path}: no {name!r} column of type {want}; re-run 'packer pack'")
            cols = []
            for b in shard.batches:
                col = _list_column(shard.path, b.record, name, b.row_start, dtype)
                bad = np.flatnonzero(np.diff(col.offsets) != np.diff(b.cu.offsets) - 1)
                if bad.shape[0]:
                    raise _damaged(shard.path, b.row_start + int(bad[0]),
                                   f"{name} and {fmt.CU_SEQLENS} disagree on the number of sequences")
                cols.append(col)
            shard.columns[name] = cols
        return cols

    def _per_shard(self, fn) -> np.ndarray:
        parts = []
        for s in range(self.n_shards):
            shard = self._shard(s)
            for b in shard.batches:
                parts.append(fn(shard, b))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def num_tokens(self) -> np.ndarray:
        """Real (unpadded) tokens per pack, int64 (n_packs,), from the list offsets alone."""
        return self._per_shard(lambda sh, b: np.diff(b.ids.offsets))

    def num_sequences(self) -> np.ndarray:
        """Sequences per pack, int64 (n_packs,)."""
        return self._per_shard(lambda sh, b: np.diff(b.cu.offsets) - 1)

    def sequences(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every packed sequence: ``(lengths, pack_offsets, seq_index)``.

        ``lengths`` (int64 (sequences,)) in pack order from ``cu_seqlens`` (all checked); pack ``p`` holds sequences
        ``pack_offsets[p]:pack_offsets[p + 1]`` (int64 (packs + 1,)); ``seq_index`` (int64 (sequences,)) is each
        sequence's input row (the ``seq_index`` column, checked to have one entry per sequence).

        Raises:
            PackerError: a shard's ``cu_seqlens`` or ``seq_index`` is damaged; the message names shard and row.
        """
        lengths, index = [], []
        for s in range(self.n_shards):
            shard = self._shard(s)
            for b in shard.batches:
                lengths.append(_sequence_lengths(shard, b))
            for col in self._sequence_column(shard, fmt.SEQ_INDEX, np.int64):
                index.append(col.values[col.offsets[0] : col.offsets[-1]].astype(np.int64))
        counts = self.num_sequences()
        offsets = np.zeros(counts.shape[0] + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        return np.concatenate(lengths), offsets, np.concatenate(index)

    @property
    def pad_to_multiple_of(self) -> int | None:
        """N of a folder packed with ``--pad-to-multiple-of N`` (``config.pad_to_multiple_of``), else None: a
        positive integer that divides the capacity (a manifest with another value was refused at open, by
        :func:`packer.format.manifest_problems`)."""
        return fmt.pad_to_multiple_of(self.manifest)

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
        shard, k, row = self._batch_of(index)
        columns = shard.columns.get(fmt.CU_SEQLENS_PADDED)
        if columns is None:
            columns = shard.columns[fmt.CU_SEQLENS_PADDED] = self._padded_columns(shard, multiple)
        col = columns[k]
        return col.values[col.offsets[row] : col.offsets[row + 1]]

    def _padded_columns(self, shard: _Shard, multiple: int) -> list[_Column]:
        """The shard's padded boundaries per record batch, checked against its ``cu_seqlens``."""
        schema = shard.table.schema
        if fmt.CU_SEQLENS_PADDED not in schema.names:
            raise PackerError(f"{shard.path}: no column {fmt.CU_SEQLENS_PADDED!r}, but {fmt.MANIFEST_FILE} records "
                              f"{fmt.CONFIG_PAD_TO_MULTIPLE_OF} {multiple}; the folder is damaged, re-run 'packer pack'")
        want = fmt.ALIGNED_SCHEMA.field(fmt.CU_SEQLENS_PADDED).type
        if schema.field(fmt.CU_SEQLENS_PADDED).type != want:
            raise _damaged(shard.path, None, f"column {fmt.CU_SEQLENS_PADDED!r} is "
                           f"{schema.field(fmt.CU_SEQLENS_PADDED).type}, expected {want}")
        columns = []
        for b in shard.batches:
            col = _list_column(shard.path, b.record, fmt.CU_SEQLENS_PADDED, b.row_start)
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
        """The longest sequence of every pack, int64 (n_packs,), from ``cu_seqlens`` only, all of which are checked
        (a PackerError names the first damaged shard and row)."""
        return self._per_shard(lambda shard, b: np.maximum.reduceat(_sequence_lengths(shard, b), _pack_starts(b)))

    def attention_costs(self) -> np.ndarray:
        """Sum of squared sequence lengths per pack, int64 (n_packs,): the variable part of a pack's attention cost.

        Every pack is padded to the same capacity, so the cost linear in tokens (MLP, projections) is the same for
        all packs; what differs is attention, quadratic in each sequence's length. Read from ``cu_seqlens`` only,
        all of which are checked (a PackerError names the first damaged shard and row).
        """

        def costs(shard: _Shard, b: _Batch) -> np.ndarray:
            lengths = _sequence_lengths(shard, b)
            return np.add.reduceat(lengths * lengths, _pack_starts(b))

        return self._per_shard(costs)


def _pack_starts(b: _Batch) -> np.ndarray:
    """Each pack's first sequence in :func:`_sequence_lengths`'s output (every pack holds at least one, checked)."""
    return b.cu.offsets[:-1] - b.cu.offsets[0] - np.arange(b.cu.offsets.shape[0] - 1)


def _cu_problem(cu: np.ndarray, n: int, bad: int) -> str:
    shown = ", ".join(str(int(v)) for v in cu[max(0, bad - 2) : bad + 3])
    if bad == 0:
        why = f"starts at {int(cu[0])}, not 0"
    elif bad == cu.shape[0] - 1 and int(cu[bad - 1]) < int(cu[bad]) and cu[bad] != n:
        why = f"ends at {int(cu[bad])}, but the pack has {n:,} tokens"
    else:
        why = f"does not strictly increase within 0..{n:,} at entry {bad} ([..., {shown}, ...])"
    return f"{fmt.CU_SEQLENS} {why}"


def _sequence_lengths(shard: _Shard, b: _Batch) -> np.ndarray:
    """Per-sequence lengths (int64) of a batch's packs from its ``cu_seqlens``, checked (vectorised) first."""
    off = b.cu.offsets
    v = b.cu.values[off[0] : off[-1]].astype(np.int64)
    rel = off - off[0]
    tokens = np.diff(b.ids.offsets)
    step = np.diff(v)
    inside = np.ones(step.shape[0], dtype=bool)
    inside[rel[1:-1] - 1] = False  # the step from a pack's last entry to the next pack's first is not a sequence
    bad = (v[rel[:-1]] != 0) | (v[rel[1:] - 1] != tokens)
    down = np.flatnonzero(inside & (step <= 0))
    if down.shape[0]:
        bad[np.searchsorted(rel, down, side="right") - 1] = True
    rows = np.flatnonzero(bad)
    if rows.shape[0]:
        r = int(rows[0])
        cu = b.cu.values[off[r] : off[r + 1]]
        raise _damaged(shard.path, b.row_start + r,
                       _cu_problem(cu, int(tokens[r]), kernels.check_cu_seqlens(cu, int(tokens[r]))))
    return step[inside]
