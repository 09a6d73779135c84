"""The scanned input as the rest of packer sees it: :class:`TokenizedInput`, its files and its chunks.

A :class:`TokenizedInput` holds what the scan measured (per-row lengths, each record batch's first row) and its
record batches as :class:`Chunk` objects (numpy views of the token buffers), either kept in memory or opened on
demand, one at a time (:class:`BatchChunks`: memory-mapped for local Arrow IPC files, so only the pages holding
the gathered sequences are read). :func:`input_fingerprint` identifies it in the manifest. Rows are numbered
globally: the rows of the first file, then the second, and so on.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from packer.input import formats
from packer.input.columns import Columns, numpy_values
from packer.input.paths import is_local


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
        origin: for a packed folder read back (:func:`scan_packed`): int64 (n_rows,) arrays ``(seq_index,
            seq_offset)``, each sequence's row and offset in the *original* input; None otherwise.
        source: for a packed folder read back: ``{"folder": ..., "input": its manifest's input}``.
    """

    files: list[InputFile]
    columns: Columns
    batches: np.ndarray
    chunks: Sequence[Chunk]
    lengths: np.ndarray | None = None
    staging: str | None = None
    origin: tuple[np.ndarray, np.ndarray] | None = None
    source: dict | None = None

    @property
    def n_rows(self) -> int:
        return sum(f.rows for f in self.files)

    @property
    def file_rows(self) -> np.ndarray:
        return np.asarray([f.rows for f in self.files], dtype=np.int64)

    def chunk_row_starts(self) -> np.ndarray:
        """int64 (n_chunks + 1,): chunk ``c`` holds global rows ``[starts[c], starts[c + 1])``."""
        return np.append(self.batches[:, 2], self.n_rows).astype(np.int64)

    def locate(self, row: int) -> tuple[str, int]:
        """The name of the file holding global ``row`` and the row's index inside that file."""
        ends = np.cumsum(self.file_rows)
        f = int(np.searchsorted(ends, row, side="right"))
        return self.files[f].name, int(row - (ends[f] - self.files[f].rows))


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
        chunk = to_chunk(info.name, self.columns, self._batch(f, b), row_start, row_start - int(self._file_row0[f]))
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
            return pa.ipc.open_file(formats.open_source(info.read)).get_batch(b)
        if entry is None:
            if info.kind == "arrow-file":
                entry = pa.ipc.open_file(formats.open_source(info.read))
            else:  # streams and Parquet go forward: the batch iterator, index of the last batch read, that batch
                entry = [formats.open_batches(info.read, info.kind, self.columns.names)[1], -1, None]
            self._open = {f: entry}  # one input open at a time
        if info.kind == "arrow-file":
            return entry.get_batch(b)
        if entry[1] > b:  # reopen to go back (does not happen with ascending chunks)
            entry[:] = [formats.open_batches(info.read, info.kind, self.columns.names)[1], -1, None]
        while entry[1] < b:
            entry[2] = next(entry[0])
            entry[1] += 1
        return entry[2]


def to_chunk(name: str, columns: Columns, batch: pa.RecordBatch, row_start: int, local_row: int) -> Chunk:
    """A validated record batch as a :class:`Chunk` (numpy views of its buffers)."""
    ids = batch.column(columns.input_ids)
    offsets = ids.offsets.to_numpy().astype(np.int64, copy=False)
    chunk = Chunk(file=name, row_start=row_start, offsets=offsets,
                  ids=numpy_values(name, columns.input_ids, ids, local_row))
    other = columns.labels or columns.loss_mask
    if other is not None:
        o = batch.column(other)
        vals = numpy_values(name, other, o, local_row)
        # re-base so that the ids offsets index the other column too (the scan checked equal lengths)
        shift = int(o.offsets[0].as_py() - offsets[0])
        if shift:
            vals = vals[shift:] if shift > 0 else np.concatenate([np.zeros(-shift, vals.dtype), vals])
        if columns.labels:
            chunk.labels = vals
        else:
            chunk.mask = vals
    return chunk


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
