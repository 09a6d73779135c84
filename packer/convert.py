"""Tokenized shards in, packed shards out: the converter behind ``packer pack``.

Phases (each timed): open the inputs (memory-mapped), read the lengths from the list offsets, apply the overflow
policy, plan the packs (a numba kernel), then for every output shard gather its tokens from the inputs and write
it. Memory holds the per-sequence plan arrays plus one output shard at a time.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from packer import __version__
from packer import format as fmt
from packer import kernels
from packer.errors import PackerError
from packer.plan import (
    DEFAULT_OVERFLOW,
    DEFAULT_STRATEGY,
    DEFAULT_FILLER,
    PackPlan,
    Segments,
    make_segments,
    plan_packs,
)
from packer.reader import Columns, TokenizedInput, open_input
from packer.stats import compute_stats
from packer.writer import PackedWriter, shard_table

log = logging.getLogger(__name__)

INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class PackConfig:
    """How to pack. Stored in the manifest under ``config``.

    Attributes:
        capacity: tokens per pack (``--max-length``).
        strategy: a key of :data:`packer.plan.STRATEGIES`.
        seed: seeds the shuffling strategies.
        filler: for the ``mixed`` strategy, the share of (shortest) sequences held back to fill gaps.
        overflow: a key of :data:`packer.plan.OVERFLOW_POLICIES`.
        shard_size: packs per output shard.
        columns: which input columns to read.
    """

    capacity: int = fmt.DEFAULT_CAPACITY
    strategy: str = DEFAULT_STRATEGY
    seed: int = 0
    filler: float = DEFAULT_FILLER
    overflow: str = DEFAULT_OVERFLOW
    shard_size: int = fmt.DEFAULT_SHARD_SIZE
    columns: Columns = field(default_factory=Columns)

    def __post_init__(self):
        if isinstance(self.shard_size, bool) or not isinstance(self.shard_size, int) or self.shard_size <= 0:
            raise PackerError(f"shard size must be a positive number of packs, got {self.shard_size!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise PackerError(f"seed must be a non-negative integer, got {self.seed!r}")

    def to_json(self) -> dict:
        d = asdict(self)
        d["columns"] = asdict(self.columns)
        return d


def input_fingerprint(inp: TokenizedInput, lengths: np.ndarray) -> str:
    """sha256 over each file's name, size and row count and over all row lengths.

    Cheap (no token data is read) yet it changes whenever rows are added, removed, reordered across files or
    resized; ``packer verify --input`` compares the tokens themselves.
    """
    h = hashlib.sha256()
    for path, rows, size in zip(inp.files, inp.file_rows, inp.file_bytes):
        h.update(f"{os.path.basename(path)}\0{int(rows)}\0{int(size)}\n".encode())
    h.update(np.ascontiguousarray(lengths, dtype=np.int64).tobytes())
    return h.hexdigest()


class _Gatherer:
    """Copies the tokens of a run of packs out of the memory-mapped inputs into flat int32 arrays."""

    def __init__(self, inp: TokenizedInput, segments: Segments):
        self.inp = inp
        self.segments = segments
        self.chunk_starts = inp.chunk_row_starts()
        # Output buffers are reused from shard to shard: fresh 80 MB arrays per shard cost a page fault and a
        # zeroing per 4 KiB page, measured at a third of the gather time on the reference set.
        self._ids = np.empty(0, dtype=np.int32)
        self._labels = np.empty(0, dtype=np.int32)

    def _buffers(self, total: int):
        if self._ids.shape[0] < total:
            self._ids = np.empty(total, dtype=np.int32)
            self._labels = np.empty(total, dtype=np.int32)
        return self._ids[:total], self._labels[:total]

    def _where(self, rows: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.chunk_starts, rows, side="right") - 1

    def gather(self, seg: np.ndarray):
        """Tokens and labels (int32, boundary labels not yet masked) of segments ``seg`` laid back to back.

        The returned arrays are views of buffers that the next call overwrites: write them out first.
        """
        segs = self.segments
        rows = segs.row[seg]
        lens = segs.length[seg].astype(np.int64)
        dst = np.zeros(seg.shape[0], dtype=np.int64)
        np.cumsum(lens[:-1], out=dst[1:])
        total = int(lens.sum())
        ids, labels = self._buffers(total)
        chunk_of = self._where(rows)
        by_chunk = np.argsort(chunk_of, kind="stable")
        bounds = np.flatnonzero(np.diff(chunk_of[by_chunk])) + 1
        mode = "labels" if self.inp.columns.labels else "mask" if self.inp.columns.loss_mask else "ids"
        for group in np.split(by_chunk, bounds) if seg.shape[0] else []:
            c = int(chunk_of[group[0]])
            chunk = self.inp.chunks[c]
            src = chunk.offsets[rows[group] - chunk.row_start] + segs.start[seg[group]]
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


def build_shard(gatherer: _Gatherer, plan: PackPlan, p0: int, p1: int):
    """The table of packs ``p0:p1`` and its number of label tokens."""
    m0, m1 = int(plan.pack_offsets[p0]), int(plan.pack_offsets[p1])
    seg = plan.members[m0:m1]
    ids, labels, lens, dst = gatherer.gather(seg)
    labels[dst] = fmt.IGNORE_INDEX  # no sequence is trained to predict the first token of the next one
    seq_offsets = plan.pack_offsets[p0 : p1 + 1] - m0
    token_offsets = np.zeros(p1 - p0 + 1, dtype=np.int64)
    np.cumsum(plan.pack_tokens[p0:p1], out=token_offsets[1:])
    table = shard_table(
        input_ids=ids,
        labels=labels,
        token_offsets=token_offsets,
        seq_lengths=lens.astype(np.int32),
        seq_offsets=seq_offsets,
        seq_index=gatherer.segments.row[seg],
        seq_start=gatherer.segments.start[seg],
    )
    return table, int(np.count_nonzero(labels != fmt.IGNORE_INDEX))


def _already_packed(output, config: PackConfig, fingerprint: str) -> dict | None:
    """The manifest of ``output`` if it was packed from this input with this config, else None."""
    if not os.path.isdir(output) or not os.path.isfile(os.path.join(output, fmt.MANIFEST_FILE)):
        return None
    try:
        manifest = fmt.read_manifest(output)
    except PackerError:
        return None
    if (manifest[fmt.MANIFEST_CONFIG] != config.to_json()
            or manifest.get(fmt.MANIFEST_INPUT, {}).get("fingerprint") != fingerprint):
        return None
    log.info("%s already holds this input packed with this configuration; nothing to do (pass --overwrite to "
             "pack again)", output)
    return manifest


def _verify_or_raise(folder, inp: TokenizedInput, *, published: bool = False) -> None:
    from packer.verify import verify_packed

    report = verify_packed(folder, inputs=inp)
    if report.ok:
        log.info("%s", report.summary())
        return
    log.error("%s", report.format())
    if published:
        raise PackerError(f"{folder}: verification failed with {report.n_defects} defect(s) (listed above); "
                          "re-pack with --overwrite")
    raise PackerError(f"{folder}: verification failed with {report.n_defects} defect(s) (listed above), so the "
                      "output was not written; this is a bug in packer, please report it")


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="tok", unit_scale=True, desc="packing", disable=not enabled, leave=False)


def pack_dataset(
    inputs,
    output: str | os.PathLike,
    *,
    config: PackConfig = PackConfig(),
    overwrite: bool = False,
    progress: bool = True,
    verify: bool = False,
) -> dict:
    """Pack tokenized input files into a packed folder (see :mod:`packer.format`) and return its manifest.

    Args:
        inputs: a path or a list of paths (files, folders, globs; see :mod:`packer.reader`).
        output: the packed folder to create.
        config: how to pack.
        overwrite: replace ``output`` if it exists.
        progress: show a tqdm bar counting tokens.
        verify: check the finished folder against the input (:func:`packer.verify.verify_packed`) before it
            takes its final name; a defect raises and leaves no output.

    If ``output`` already holds this input packed with this configuration (same ``config`` and input
    fingerprint in its manifest), nothing is rewritten and its manifest is returned: rerunning a command after a
    crash that happened once the output was in place succeeds.

    Raises:
        PackerError: for any input or option packer cannot use; nothing is left at ``output`` then.

    Example:
        >>> manifest = pack_dataset("data_samples/reference_like", "/tmp/packed")   # doctest: +SKIP
        >>> manifest["stats"]["packing_efficiency"] > 0.99                          # doctest: +SKIP
        True
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    timings: dict[str, float] = {}
    t = time.perf_counter()
    inp = open_input(list(inputs), columns=config.columns)
    lengths = inp.lengths()
    fingerprint = input_fingerprint(inp, lengths)
    timings["open"] = time.perf_counter() - t
    if not overwrite:
        done = _already_packed(output, config, fingerprint)
        if done is not None:
            if verify:
                _verify_or_raise(output, inp, published=True)
            return done

    t = time.perf_counter()
    segments = make_segments(lengths, capacity=config.capacity, overflow=config.overflow)
    plan = plan_packs(
        segments.length, capacity=config.capacity, strategy=config.strategy, seed=config.seed, filler=config.filler
    )
    timings["plan"] = time.perf_counter() - t
    if plan.n_packs == 0:
        raise PackerError(f"{inp.files[0]}: the input holds no tokens to pack ({segments.n_rows} rows, all empty"
                          f"{' or dropped' if segments.dropped_rows else ''})")
    if segments.empty_rows:
        log.warning("skipped %d empty sequences (no tokens); they are counted in the statistics", segments.empty_rows)

    t = time.perf_counter()
    n_shards = math.ceil(plan.n_packs / config.shard_size)
    shard_tokens = np.add.reduceat(plan.pack_tokens, np.arange(0, plan.n_packs, config.shard_size))
    if shard_tokens.max() > INT32_MAX:
        raise PackerError(f"--shard-size {config.shard_size:,} puts {int(shard_tokens.max()):,} tokens in one shard, "
                          "more than int32 list offsets hold (2**31 - 1); pass a smaller --shard-size")
    gatherer = _Gatherer(inp, segments)
    label_tokens = 0
    with PackedWriter(output, n_shards=n_shards, overwrite=overwrite) as writer, _progress(
        plan.tokens, progress
    ) as bar:
        for s in range(n_shards):
            p0, p1 = s * config.shard_size, min((s + 1) * config.shard_size, plan.n_packs)
            table, n_labels = build_shard(gatherer, plan, p0, p1)
            writer.write_shard(s, table)
            label_tokens += n_labels
            bar.update(int(plan.pack_tokens[p0:p1].sum()))
        timings["write"] = time.perf_counter() - t
        timings["total"] = sum(timings.values())
        stats = compute_stats(lengths, segments, plan, label_tokens=label_tokens)
        manifest = {
            fmt.MANIFEST_FORMAT: fmt.FORMAT_NAME,
            fmt.MANIFEST_VERSION: fmt.FORMAT_VERSION,
            "packer_version": __version__,
            fmt.MANIFEST_CONFIG: config.to_json(),
            fmt.MANIFEST_INPUT: {
                "files": [
                    {"path": os.path.abspath(p), "rows": int(r), "bytes": int(b)}
                    for p, r, b in zip(inp.files, inp.file_rows, inp.file_bytes)
                ],
                "rows": inp.n_rows,
                "tokens": segments.tokens_in,
                "fingerprint": fingerprint,
            },
            fmt.MANIFEST_STATS: stats,
            fmt.MANIFEST_RUN: {"seconds": {k: round(v, 4) for k, v in timings.items()}},
        }
        manifest = writer.finish(manifest, before_publish=(lambda tmp: _verify_or_raise(tmp, inp)) if verify else None)
    log.info("packed %s tokens into %s packs in %.2fs", f"{plan.tokens:,}", f"{plan.n_packs:,}", timings["total"])
    return manifest
