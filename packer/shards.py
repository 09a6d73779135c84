"""Gathering a shard's tokens out of the inputs and building its table: the work inside one shard job.

Below :mod:`packer.jobs` (which describes and runs shard jobs) and :mod:`packer.engines` (which runs them in
threads, processes or Ray tasks); it knows nothing of plans, only of the sequences a shard holds, pack by pack.

The gather is also where the input's token values are checked (the scan reads only lengths): ids non-negative and
within int32, labels -100 or non-negative, a loss mask 0 or 1; the error names the file, column and row.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pyarrow as pa

from packer import format as fmt
from packer import kernels
from packer.errors import PackerError
from packer.plan import padded_lengths
from packer.input import TokenizedInput
from packer.writer import shard_table

INT32_MAX = 2**31 - 1


class LabelCounts(NamedTuple):
    """What the labels of a built shard hold: tokens trained on, and the sequences with none (and their tokens)."""

    label_tokens: int
    untrainable_sequences: int
    untrainable_tokens: int


class ShardBuffers:
    """Output token and label buffers that successive shards reuse.

    Fresh 80 MB arrays per shard cost a page fault and a zeroing per 4 KiB page, measured at a third of the gather
    time on the reference set. A buffer set must not be reused before the shard built in it has been written.
    """

    def __init__(self):
        self._ids = np.empty(0, dtype=np.int32)
        self._labels = np.empty(0, dtype=np.int32)

    def take(self, total: int) -> tuple[np.ndarray, np.ndarray]:
        if self._ids.shape[0] < total:
            self._ids = np.empty(total, dtype=np.int32)
            self._labels = np.empty(total, dtype=np.int32)
        return self._ids[:total], self._labels[:total]


class Gatherer:
    """Copies the tokens of a run of packs out of the memory-mapped inputs into flat int32 arrays."""

    def __init__(self, inp: TokenizedInput, *, buffers: ShardBuffers | None = None):
        self.inp = inp
        self.chunk_starts = inp.chunk_row_starts()
        self._buffers = buffers if buffers is not None else ShardBuffers()

    def _where(self, rows: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.chunk_starts, rows, side="right") - 1

    def gather(self, rows: np.ndarray, starts: np.ndarray, lengths: np.ndarray):
        """Tokens and labels (int32, boundary labels not yet masked) of the sequences laid back to back.

        Args:
            rows, starts: int64 (m,), each sequence's global input row and first token in that row.
            lengths: int (m,), each sequence's length.

        Returns:
            ``(ids, labels, lengths, dst)``: int32 (tokens,) twice, then int64 (m,) lengths and each sequence's
            first position in ``ids``. The arrays are views of buffers that the next call overwrites: write them
            out first.
        """
        lens = lengths.astype(np.int64)
        dst = np.zeros(rows.shape[0], dtype=np.int64)
        np.cumsum(lens[:-1], out=dst[1:])
        total = int(lens.sum())
        ids, labels = self._buffers.take(total)
        chunk_of = self._where(rows)
        # in input order: chunks come one after the other (one open batch at a time for remote inputs) and
        # memory-mapped reads move forward through each file, which lets the kernel's readahead help
        by_chunk = np.argsort(rows, kind="stable")
        bounds = np.flatnonzero(np.diff(chunk_of[by_chunk])) + 1
        mode = "labels" if self.inp.columns.labels else "mask" if self.inp.columns.loss_mask else "ids"
        for group in np.split(by_chunk, bounds) if rows.shape[0] else []:
            c = int(chunk_of[group[0]])
            chunk = self.inp.chunks[c]
            src = chunk.offsets[rows[group] - chunk.row_start] + starts[group]
            lo, hi = kernels.gather(chunk.ids, src, lens[group], dst[group], ids)
            if lo < 0 or hi > INT32_MAX:
                self._bad_token(chunk, rows[group], src, lens[group], self.inp.columns.input_ids, ok=(0, INT32_MAX))
            if mode == "labels":
                lo, hi = kernels.gather(chunk.labels, src, lens[group], dst[group], labels)
                if lo < fmt.IGNORE_INDEX or hi > INT32_MAX:
                    self._bad_token(chunk, rows[group], src, lens[group], self.inp.columns.labels,
                                    ok=(fmt.IGNORE_INDEX, INT32_MAX))
            elif mode == "mask":
                lo, hi = kernels.gather(chunk.mask, src, lens[group], dst[group], labels)
                if lo < 0 or hi > 1:
                    self._bad_token(chunk, rows[group], src, lens[group], self.inp.columns.loss_mask, ok=(0, 1))
        if mode == "ids":
            labels[:] = ids
        elif mode == "mask":
            np.copyto(labels, np.where(labels != 0, ids, np.int32(fmt.IGNORE_INDEX)).astype(np.int32))
        else:
            bad = kernels.first_not_label(labels, fmt.IGNORE_INDEX)
            if bad >= 0:
                k = int(np.searchsorted(dst, bad, side="right") - 1)
                path, local = self.inp.locate(int(rows[k]))
                raise PackerError(
                    f"{path}: column {self.inp.columns.labels!r} row {local} holds {int(labels[bad])}, a negative "
                    f"label other than {fmt.IGNORE_INDEX}; use {fmt.IGNORE_INDEX} for tokens that are not trained on"
                )
        return ids, labels, lens, dst

    def _bad_token(self, chunk, rows, src, lens, column, *, ok):
        values = chunk.ids if column == self.inp.columns.input_ids else (
            chunk.labels if chunk.labels is not None else chunk.mask)
        for r, s, n in zip(rows, src, lens):
            v = values[s : s + n]  # native dtype: an int64 cast would show uint64 ids above 2**63 as negative
            out = (v < ok[0]) | (v > ok[1])
            if out.any():
                path, local = self.inp.locate(int(r))
                bad = int(v[int(np.argmax(out))])
                raise PackerError(
                    f"{path}: column {column!r} row {local} holds {bad}, outside [{ok[0]}, {ok[1]:,}]; "
                    "token ids must be non-negative and fit int32"
                    if column == self.inp.columns.input_ids
                    else f"{path}: column {column!r} row {local} holds {bad}, outside [{ok[0]}, {ok[1]:,}]"
                )
        raise AssertionError("gather reported an out-of-range value that the rescan did not find")


def build_shard(gatherer: Gatherer, rows: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
                pack_offsets: np.ndarray, pack_tokens: np.ndarray, *,
                provenance: tuple[np.ndarray, np.ndarray] | None = None,
                pad_to_multiple_of: int | None = None) -> tuple[pa.Table, LabelCounts]:
    """The table of a run of packs and its :class:`LabelCounts` (label tokens, and the sequences left with no
    trained token and their tokens).

    Args:
        gatherer: reads the input.
        rows, starts, lengths: (m,) each sequence's global input row, first token and length, pack by pack.
        pack_offsets: int64 (packs + 1,), pack ``p`` holds sequences ``pack_offsets[p]:pack_offsets[p + 1]``.
        pack_tokens: int64 (packs,), tokens per pack.
        provenance: ``(seq_index, seq_start)``, (m,) each, written instead of ``rows`` and ``starts`` (a repacked
            folder points at its original input's rows); None: ``rows`` and ``starts`` themselves.
        pad_to_multiple_of: also write :data:`packer.format.CU_SEQLENS_PADDED`, each sequence's length rounded up
            to a multiple of it (``--pad-to-multiple-of``); None: no such column.
    """
    ids, labels, lens, dst = gatherer.gather(rows, starts, lengths)
    labels[dst] = fmt.IGNORE_INDEX  # no sequence is trained to predict the first token of the next one
    token_offsets = np.zeros(pack_tokens.shape[0] + 1, dtype=np.int64)
    np.cumsum(pack_tokens, out=token_offsets[1:])
    seq_index, seq_start = (rows, starts) if provenance is None else provenance
    table = shard_table(
        input_ids=ids,
        labels=labels,
        token_offsets=token_offsets,
        seq_lengths=lens.astype(np.int32),
        seq_offsets=pack_offsets - pack_offsets[0],
        seq_index=seq_index,
        seq_start=seq_start,
        seq_lengths_padded=None if pad_to_multiple_of is None else padded_lengths(lens, pad_to_multiple_of),
    )
    trained = labels != fmt.IGNORE_INDEX
    # per sequence: a sequence with no trained token costs compute and teaches nothing (a prompt cut before its
    # answer, a row of -100s, a one-token row whose only label the boundary mask took)
    # max over int8 views: 0.8 ms per 20M-token shard, where an int64 sum took 49 ms
    none = (np.maximum.reduceat(trained.view(np.int8), dst) == 0) if dst.shape[0] else np.zeros(0, bool)
    return table, LabelCounts(int(np.count_nonzero(trained)), int(np.count_nonzero(none)), int(lens[none].sum()))
