"""Shard jobs: the unit of work of a conversion, small and picklable, run the same way by every engine.

A :class:`ShardJob` describes one output shard: its packs (as the plan slices it needs: each sequence's input row,
first token and length, laid out pack by pack), the input files and record batches holding those sequences, and the
folder to write into. :func:`run_shard_job` opens those batches itself (memory-mapped, or through a pyarrow
filesystem), gathers the tokens, writes the shard file and returns its :class:`ShardResult`. The parent assembles
the manifest in shard order, so the output bytes are the same whichever process ran which job.

Plans are *global* (one plan over every sequence: the fewest packs) or *grouped* (consecutive groups of
``group_size`` input files planned independently and laid one after the other: a shard then reads at most two
groups' files, at a cost of at most about one extra pack per group).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from packer import format as fmt
from packer.plan import PackPlan, Segments, make_segments, plan_packs
from packer.input import BatchChunks, Columns, InputFile, TokenizedInput
from packer.shards import Gatherer, LabelCounts, ShardBuffers, build_shard
from packer.writer import ShardInfo, write_shard

PLANS = {
    "global": "one plan over the whole dataset: the fewest packs (default)",
    "grouped": "plan each group of --group-size input files on its own: shards read only their group's files, "
    "at most about one extra pack per group",
}
DEFAULT_PLAN = "global"


@dataclass(frozen=True)
class ShardJob:
    """Everything needed to build and write output shard ``index`` (a few hundred KB pickled).

    Attributes:
        index, n_shards: which shard, out of how many.
        dest: the folder to write into (a local path or a URI).
        files: all input files (names for messages; the chunks below index them).
        columns: the input columns.
        chunks: int64 (k, 3), ``(file, batch, first global row)`` of the record batches this shard reads, ascending.
        row, start: int64 (m,), each sequence's input row and first token, pack by pack.
        length: int32 (m,), each sequence's length.
        pack_offsets: int64 (packs + 1,), pack ``p`` holds sequences ``pack_offsets[p]:pack_offsets[p + 1]``.
        pack_tokens: int64 (packs,), tokens per pack.
        n_rows: rows in the whole input.
        seq_index, seq_start: int64 (m,), the provenance to write for each sequence when it is not ``row`` and
            ``start`` (a packed folder repacked: the rows and offsets of its original input); else None.
        pad_to_multiple_of: ``config.pad_to_multiple_of``: write :data:`packer.format.CU_SEQLENS_PADDED` (None: no).
    """

    index: int
    n_shards: int
    dest: str
    files: tuple[InputFile, ...]
    columns: Columns
    chunks: np.ndarray
    row: np.ndarray
    start: np.ndarray
    length: np.ndarray
    pack_offsets: np.ndarray
    pack_tokens: np.ndarray
    n_rows: int
    seq_index: np.ndarray | None = None
    seq_start: np.ndarray | None = None
    pad_to_multiple_of: int | None = None

    @property
    def tokens(self) -> int:
        return int(self.pack_tokens.sum())


@dataclass(frozen=True)
class ShardResult:
    """What a job returns: the shard's manifest entry, its label counts and its timings (seconds)."""

    index: int
    info: ShardInfo
    label_tokens: int
    tokens: int
    gather_s: float
    write_s: float
    untrainable_sequences: int = 0
    untrainable_tokens: int = 0


def make_plan(lengths: np.ndarray, *, config, file_rows: np.ndarray) -> tuple[Segments, PackPlan, dict]:
    """Segments and plan for ``config.plan``; the dict describes the plan for the manifest's statistics."""
    kw = dict(capacity=config.capacity, strategy=config.strategy, seed=config.seed, filler=config.filler,
              pad_to_multiple_of=getattr(config, "pad_to_multiple_of", None))
    if config.plan == "global":
        segments = make_segments(lengths, capacity=config.capacity, overflow=config.overflow)
        return segments, plan_packs(segments.length, **kw), {"plan": "global", "groups": 1}
    bounds = np.concatenate([[0], np.cumsum(file_rows)])[:: config.group_size]
    if bounds[-1] != lengths.shape[0]:
        bounds = np.append(bounds, lengths.shape[0])
    segs, plans, over = [], [], 0
    for r0, r1 in zip(bounds[:-1], bounds[1:]):
        s = make_segments(lengths[r0:r1], capacity=config.capacity, overflow=config.overflow)
        p = plan_packs(s.length, **kw)
        segs.append((s, int(r0)))
        plans.append(p)
        over += p.n_packs - p.lower_bound
    segments = Segments(
        row=np.concatenate([s.row + r0 for s, r0 in segs]),
        start=np.concatenate([s.start for s, _ in segs]),
        length=np.concatenate([s.length for s, _ in segs]).astype(np.int32, copy=False),
        **{k: sum(getattr(s, k) for s, _ in segs) for k in (
            "tokens_in", "empty_rows", "dropped_rows", "dropped_tokens", "truncated_rows", "truncated_tokens",
            "split_rows")},
        n_rows=int(lengths.shape[0]),
    )
    seg_base = np.cumsum([0] + [s.row.shape[0] for s, _ in segs])
    pack_base = np.cumsum([0] + [p.n_packs for p in plans])
    plan = PackPlan(
        pack_ids=np.concatenate([p.pack_ids + np.int32(b) for p, b in zip(plans, pack_base)]),
        members=np.concatenate([p.members + b for p, b in zip(plans, seg_base)]),
        pack_offsets=np.concatenate([[0]] + [p.pack_offsets[1:] + b for p, b in zip(plans, seg_base)]).astype(
            np.int64),
        pack_tokens=np.concatenate([p.pack_tokens for p in plans]).astype(np.int64, copy=False),
        capacity=config.capacity,
        strategy=config.strategy,
        seed=config.seed,
        filler=config.filler,
        pack_tokens_padded=None if plans[0].pack_tokens_padded is None else np.concatenate(
            [p.pack_tokens_padded for p in plans]).astype(np.int64, copy=False),
    )
    info = {"plan": "grouped", "group_size": config.group_size, "groups": len(plans),
            "group_packs_over_lower_bound": int(over)}
    return segments, plan, info


def iter_jobs(catalog: TokenizedInput, segments: Segments, plan: PackPlan, *, shard_size: int, dest: str,
              pad_to_multiple_of: int | None = None):
    """The shard jobs of a plan, in shard order (a generator: jobs are built as the engine asks for them)."""
    n_shards = -(-plan.n_packs // shard_size)
    starts = catalog.batches[:, 2]
    files = tuple(catalog.files)
    for s in range(n_shards):
        p0, p1 = s * shard_size, min((s + 1) * shard_size, plan.n_packs)
        m0, m1 = int(plan.pack_offsets[p0]), int(plan.pack_offsets[p1])
        seg = plan.members[m0:m1]
        row = segments.row[seg]
        need = np.unique(np.searchsorted(starts, row, side="right") - 1)
        origin = {}
        if catalog.origin is not None:  # a packed folder read back: point at the rows of its original input
            origin = {"seq_index": catalog.origin[0][row], "seq_start": catalog.origin[1][row] + segments.start[seg]}
        yield ShardJob(
            index=s,
            n_shards=n_shards,
            dest=dest,
            files=files,
            columns=catalog.columns,
            chunks=catalog.batches[need],
            row=row,
            start=segments.start[seg],
            length=segments.length[seg],
            pack_offsets=plan.pack_offsets[p0 : p1 + 1] - m0,
            pack_tokens=plan.pack_tokens[p0:p1],
            n_rows=catalog.n_rows,
            **origin,
            pad_to_multiple_of=pad_to_multiple_of,
        )


def build_job_table(job: ShardJob, *, buffers: ShardBuffers | None = None) -> tuple[pa.Table, LabelCounts]:
    """The shard's table and its :class:`LabelCounts` (the same table for the same job, in any process).

    ``buffers`` lets successive jobs reuse their output arrays; the table is a view of them until it has been
    written.
    """
    # only the batches this job reads, opened on demand
    inp = TokenizedInput(files=list(job.files), columns=job.columns, batches=job.chunks,
                         chunks=BatchChunks(job.files, job.columns, job.chunks))
    provenance = None if job.seq_index is None else (job.seq_index, job.seq_start)
    return build_shard(Gatherer(inp, buffers=buffers), job.row, job.start, job.length, job.pack_offsets,
                       job.pack_tokens, provenance=provenance, pad_to_multiple_of=job.pad_to_multiple_of)


def run_shard_job(job: ShardJob) -> ShardResult:
    """Build shard ``job.index``, write it into ``job.dest`` and describe it. Runs in any process."""
    t0 = time.perf_counter()
    table, n_labels = build_job_table(job)
    return write_job_table(job, table, n_labels, gather_s=time.perf_counter() - t0)


def write_job_table(job: ShardJob, table: pa.Table, n_labels: LabelCounts, *, gather_s: float) -> ShardResult:
    """Write a built shard table (the second half of :func:`run_shard_job`; safe to run in another thread)."""
    t1 = time.perf_counter()
    info = write_shard(job.dest, fmt.shard_name(job.index, job.n_shards), table)
    return ShardResult(index=job.index, info=info, label_tokens=n_labels.label_tokens, tokens=job.tokens,
                       gather_s=gather_s, write_s=time.perf_counter() - t1,
                       untrainable_sequences=n_labels.untrainable_sequences,
                       untrainable_tokens=n_labels.untrainable_tokens)
