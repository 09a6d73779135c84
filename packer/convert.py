"""Tokenized shards in, packed shards out: the converter behind ``packer pack``.

Phases (each timed): scan the inputs (:mod:`packer.reader`: lengths from the list offsets, Parquet staged as Arrow),
apply the overflow policy and plan the packs (a numba kernel; one global plan or one per group of input files,
:mod:`packer.jobs`), then run one shard job per output shard (:mod:`packer.engines`: in this process, in worker
processes or as Ray tasks), each gathering its tokens from memory-mapped inputs and writing its shard. Memory holds
the per-sequence plan arrays plus at most ``2 * workers`` shards in flight; see ``docs/scale.md``.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

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
    check_pad_to_multiple_of,
    padded_lengths,
)
from packer.engines import DEFAULT_ENGINE, check_engine, import_ray, run_jobs
from packer.jobs import DEFAULT_PLAN, PLANS, ShardResult, UriWriter, iter_jobs, make_plan
from packer.reader import Columns, TokenizedInput, filesystem, is_uri, scan_inputs
from packer.stats import alignment_stats, compute_stats
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
        plan: a key of :data:`packer.jobs.PLANS`: one global plan, or groups of input files planned apart.
        group_size: input files per group for ``plan="grouped"``.
        pad_to_multiple_of: ``--pad-to-multiple-of N``: every sequence is planned at its length rounded up to a
            multiple of N and the shards get :data:`packer.format.CU_SEQLENS_PADDED` (see
            ``docs/context_parallel.md``); the capacity must be a multiple of N. None (default): no alignment, and
            the manifest's ``config`` has no such key.
    """

    capacity: int = fmt.DEFAULT_CAPACITY
    strategy: str = DEFAULT_STRATEGY
    seed: int = 0
    filler: float = DEFAULT_FILLER
    overflow: str = DEFAULT_OVERFLOW
    shard_size: int = fmt.DEFAULT_SHARD_SIZE
    columns: Columns = field(default_factory=Columns)
    plan: str = DEFAULT_PLAN
    group_size: int = 1
    pad_to_multiple_of: int | None = None

    def __post_init__(self):
        if self.plan not in PLANS:
            raise PackerError(f"unknown plan {self.plan!r}; choose one of {', '.join(PLANS)}")
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or self.group_size <= 0:
            raise PackerError(f"group size must be a positive number of input files, got {self.group_size!r}")
        if isinstance(self.shard_size, bool) or not isinstance(self.shard_size, int) or self.shard_size <= 0:
            raise PackerError(f"shard size must be a positive number of packs, got {self.shard_size!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise PackerError(f"seed must be a non-negative integer, got {self.seed!r}")
        check_pad_to_multiple_of(self.pad_to_multiple_of, self.capacity)

    def to_json(self) -> dict:
        d = asdict(self)
        d["columns"] = asdict(self.columns)
        if d[fmt.CONFIG_PAD_TO_MULTIPLE_OF] is None:  # written only when set: unaligned manifests keep their bytes
            del d[fmt.CONFIG_PAD_TO_MULTIPLE_OF]
        return d


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


class _Gatherer:
    """Copies the tokens of a run of packs out of the memory-mapped inputs into flat int32 arrays."""

    def __init__(self, inp: TokenizedInput, segments: Segments, *, buffers: ShardBuffers | None = None):
        self.inp = inp
        self.segments = segments
        self.chunk_starts = inp.chunk_row_starts()
        self._buffers = buffers if buffers is not None else ShardBuffers()

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
        ids, labels = self._buffers.take(total)
        chunk_of = self._where(rows)
        # in input order: chunks come one after the other (one open batch at a time for remote inputs) and
        # memory-mapped reads move forward through each file, which lets the kernel's readahead help
        by_chunk = np.argsort(rows, kind="stable")
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


def build_shard(gatherer: _Gatherer, plan: PackPlan, p0: int, p1: int, *, pad_to_multiple_of: int | None = None):
    """The table of packs ``p0:p1`` and its number of label tokens (with :data:`packer.format.CU_SEQLENS_PADDED`
    when ``pad_to_multiple_of`` is given)."""
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
        seq_lengths_padded=None if pad_to_multiple_of is None else padded_lengths(lens, pad_to_multiple_of),
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


def _verify_or_raise(folder, inp: TokenizedInput | list[str], *, published: bool = False) -> None:
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


def _staging_for(output: str, engine: str) -> str:
    """A fresh staging folder (for Parquet inputs converted to Arrow, and remote inputs copied); removed at the end.

    Beside ``output`` when that is local (same filesystem), or when Ray tasks, which may run on other machines,
    must read it. Otherwise (a remote output, packed by this machine's processes) in the system's temporary
    folder (``TMPDIR``), so that the shard jobs memory-map local copies instead of reading the inputs remotely once
    per shard.
    """
    import tempfile
    import uuid

    if is_uri(output) and not filesystem(output)[2] and engine != "ray":
        parent, name = tempfile.gettempdir(), output.rstrip("/").rsplit("/", 1)[-1]
    else:
        parent, name = (output.rstrip("/").rsplit("/", 1) if is_uri(output)
                        else (str(Path(output).resolve().parent), Path(output).name))
    return f"{parent}/{fmt.TMP_DIR_PREFIX}stage-{name}-{uuid.uuid4().hex[:12]}"


def _remove(folder: str | None) -> None:
    if folder is None:
        return
    fs, inner, _ = filesystem(folder)
    try:
        fs.delete_dir(inner)
    except (OSError, pa.ArrowException, FileNotFoundError):
        pass


def pack_dataset(
    inputs,
    output: str | os.PathLike,
    *,
    config: PackConfig = PackConfig(),
    overwrite: bool = False,
    progress: bool = True,
    verify: bool = False,
    workers: int = 1,
    engine: str = DEFAULT_ENGINE,
    ray_address: str | None = None,
) -> dict:
    """Pack tokenized input files into a packed folder (see :mod:`packer.format`) and return its manifest.

    Memory holds the per-sequence plan (about 40 bytes per sequence) plus at most ``2 * workers`` shards in flight,
    whatever the number of tokens; see ``docs/scale.md``.

    Args:
        inputs: a path or a list of paths (files, folders, globs; see :mod:`packer.reader`), or URIs that
            :mod:`pyarrow.fs` supports (``s3://bucket/prefix``).
        output: the packed folder to create (a path, or a URI).
        config: how to pack.
        overwrite: replace ``output`` if it exists.
        progress: show a tqdm bar counting tokens.
        verify: check the finished folder against the input (:func:`packer.verify.verify_packed`) before it
            takes its final name; a defect raises and leaves no output. Local inputs only.
        workers: processes that gather and write shards (``engine="local"``), or Ray CPUs to start a local Ray
            instance with (``engine="ray"``). The output is byte-identical whatever the number.
        engine: ``"local"`` or ``"ray"`` (see :data:`packer.engines.ENGINES`).
        ray_address: the Ray cluster to join (``engine="ray"``); default: start a local instance.

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
    check_engine(engine, workers)
    if engine == "ray":
        import_ray()
    output = str(output)
    timings: dict[str, float] = {}
    t_start = t = time.perf_counter()
    staging = _staging_for(output, engine)
    try:
        catalog = scan_inputs(inputs, columns=config.columns, staging=staging)
        fingerprint = input_fingerprint(catalog)
        timings["open"] = time.perf_counter() - t
        if verify and (is_uri(output) or any(is_uri(f.name) for f in catalog.files)):
            raise PackerError("--verify reads the input and the output through local paths; pack URIs without "
                              "--verify, or verify a local copy with 'packer verify'")
        verify_inputs = [f.name for f in catalog.files]
        if not overwrite:
            done = _already_packed(output, config, fingerprint)
            if done is not None:
                if verify:
                    _verify_or_raise(output, verify_inputs, published=True)
                return done
        t = time.perf_counter()
        segments, plan, plan_info = make_plan(catalog.lengths, config=config, file_rows=catalog.file_rows)
        timings["plan"] = time.perf_counter() - t
        if plan.n_packs == 0:
            raise PackerError(f"{catalog.files[0].name}: the input holds no tokens to pack ({segments.n_rows} rows, "
                              f"all empty{' or dropped' if segments.dropped_rows else ''})")
        if segments.empty_rows:
            log.warning("skipped %d empty sequences (no tokens); they are counted in the statistics",
                        segments.empty_rows)
        shard_tokens = np.add.reduceat(plan.pack_tokens, np.arange(0, plan.n_packs, config.shard_size))
        if shard_tokens.max() > INT32_MAX:
            raise PackerError(f"--shard-size {config.shard_size:,} puts {int(shard_tokens.max()):,} tokens in one "
                              "shard, more than int32 list offsets hold (2**31 - 1); pass a smaller --shard-size")

        t = time.perf_counter()
        n_shards = math.ceil(plan.n_packs / config.shard_size)
        Writer = UriWriter if is_uri(output) else PackedWriter
        label_tokens = 0
        phase = {"gather": 0.0, "write": 0.0}
        with Writer(output, n_shards=n_shards, overwrite=overwrite) as writer, _progress(plan.tokens, progress) as bar:
            def on_result(r: ShardResult) -> None:
                nonlocal label_tokens
                writer.add_shard(r.index, r.info)
                label_tokens += r.label_tokens
                phase["gather"] += r.gather_s
                phase["write"] += r.write_s
                bar.update(r.tokens)

            jobs = iter_jobs(catalog, segments, plan, shard_size=config.shard_size, dest=str(writer.tmp),
                             pad_to_multiple_of=config.pad_to_multiple_of)
            slots = run_jobs(jobs, on_result, engine=engine, workers=workers, ray_address=ray_address)
            timings["write"] = time.perf_counter() - t
            timings["total"] = time.perf_counter() - t_start
            stats = compute_stats(catalog.lengths, segments, plan, label_tokens=label_tokens)
            stats.update(plan_info)
            if config.pad_to_multiple_of is not None:
                stats.update(alignment_stats(segments, plan, config.pad_to_multiple_of))
            out_bytes = sum(s.bytes for s in writer.shards)
            manifest = {
                fmt.MANIFEST_FORMAT: fmt.FORMAT_NAME,
                fmt.MANIFEST_VERSION: fmt.FORMAT_VERSION,
                "packer_version": __version__,
                fmt.MANIFEST_CONFIG: config.to_json(),
                fmt.MANIFEST_INPUT: {
                    "files": [
                        {"path": f.name if is_uri(f.name) else os.path.abspath(f.name), "rows": int(f.rows),
                         "bytes": int(f.bytes)}
                        for f in catalog.files
                    ],
                    "rows": catalog.n_rows,
                    "tokens": segments.tokens_in,
                    "fingerprint": fingerprint,
                },
                fmt.MANIFEST_STATS: stats,
                fmt.MANIFEST_RUN: {
                    "seconds": {k: round(v, 4) for k, v in timings.items()},
                    # summed over workers: which phase the shard jobs spend their time in
                    "job_seconds": {k: round(v, 4) for k, v in phase.items()},
                    "engine": engine,
                    "workers": slots,
                    "tokens_per_second": round(plan.tokens / timings["total"], 1),
                    "output_bytes": out_bytes,
                },
            }
            manifest = writer.finish(
                manifest, before_publish=(lambda tmp: _verify_or_raise(tmp, verify_inputs)) if verify else None)
    finally:
        _remove(catalog.staging if "catalog" in locals() else staging)
    log.info("%s", summary_line(manifest))
    return manifest


def summary_line(manifest: dict) -> str:
    """One line: what was packed, how long it took, and the throughput."""
    s, run = manifest[fmt.MANIFEST_STATS], manifest[fmt.MANIFEST_RUN]
    secs = run["seconds"]["total"]
    n_shards = len(manifest[fmt.MANIFEST_SHARDS])
    return (
        f"packed {s['tokens_out']:,} tokens ({s['sequences_out']:,} sequences) into {s['packs']:,} packs "
        f"({n_shards} shard{'s' if n_shards != 1 else ''}, {run['output_bytes'] / 1e6:,.1f} MB) in {secs:.2f}s: "
        f"{s['tokens_out'] / max(secs, 1e-9) / 1e6:,.2f} M tok/s, {run['output_bytes'] / max(secs, 1e-9) / 1e6:,.1f} "
        f"MB/s written ({run['engine']} engine, {run['workers']} worker{'s' if run['workers'] != 1 else ''})"
    )
