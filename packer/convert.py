"""Tokenized shards in, packed shards out: the converter behind ``packer pack``.

Phases (each timed): scan the inputs (:mod:`packer.input`: lengths from the list offsets, Parquet staged as Arrow),
apply the overflow policy and plan the packs (a numba kernel; one global plan or one per group of input files,
:mod:`packer.jobs`), then run one shard job per output shard (:mod:`packer.engines`: in this process, in worker
processes or as Ray tasks), each gathering its tokens from memory-mapped inputs and writing its shard. Memory holds
the per-sequence plan arrays plus at most ``2 * workers`` shards in flight; see ``docs/scale.md``.
"""
from __future__ import annotations

import logging
import math
import os
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from packer import __version__
from packer import format as fmt
from packer.errors import ConfigError, PackerError
from packer.plan import (
    DEFAULT_FILLER,
    DEFAULT_OVERFLOW,
    DEFAULT_STRATEGY,
    MAX_CAPACITY,
    OVERFLOW_POLICIES,
    PAD_NOT_DIVISOR,
    PAD_NOT_POSITIVE,
    STRATEGIES,
    Segments,
    pad_to_multiple_of_fault,
)
from packer.engines import DEFAULT_ENGINE, check_engine, import_ray, run_jobs
from packer.jobs import DEFAULT_PLAN, PLANS, ShardResult, iter_jobs, make_plan
from packer.input import (
    Columns,
    TokenizedInput,
    filesystem,
    input_fingerprint,
    is_uri,
    scan_inputs,
    text_input_hint,
)
from packer.shards import INT32_MAX, LabelCounts
from packer.stats import LOSS_WARNING, alignment_stats, compute_stats, loss_counts
from packer.verify import verify_packed
from packer.writer import PackedWriter

log = logging.getLogger(__name__)



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
        max_loss: the largest share of the input's tokens or sequences the run may lose (dropped, truncated, or
            left with no trained token) before it fails; None: any loss is allowed, and one above
            :data:`LOSS_WARNING` is logged as a warning.
        pad_to_multiple_of: ``--pad-to-multiple-of N``: every sequence is planned at its length rounded up to a
            multiple of N and the shards get :data:`packer.format.CU_SEQLENS_PADDED` (see
            ``docs/context_parallel.md``); the capacity must be a multiple of N. None (default): no alignment, and
            the manifest's ``config`` has no such key.

    Raises:
        ConfigError: a field out of range, naming the parameter (checked here, before any file is read).
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
    max_loss: float | None = None
    pad_to_multiple_of: int | None = None

    def __post_init__(self):
        def bad(param, rule):
            raise ConfigError("PackConfig", param, getattr(self, param), rule)

        def whole(param, lo, hi=None):
            v = getattr(self, param)
            return not isinstance(v, bool) and isinstance(v, (int, np.integer)) and v >= lo and (hi is None or v <= hi)

        if not whole("capacity", 1):
            bad("capacity", "capacity must be positive: a whole number of tokens per pack, such as 20000")
        if self.capacity > MAX_CAPACITY:
            bad("capacity", f"capacity is more than packer supports ({MAX_CAPACITY:,} tokens: the kernels keep "
                "tables of that size)")
        if self.strategy not in STRATEGIES:
            bad("strategy", f"unknown strategy; choose one of {', '.join(STRATEGIES)}")
        if not whole("seed", 0):
            bad("seed", "seed must be a non-negative integer")
        f = self.filler
        if isinstance(f, bool) or not isinstance(f, (int, float, np.floating)) or not 0 <= f < 1:
            bad("filler", "filler must be a fraction in [0, 1)")
        if self.overflow not in OVERFLOW_POLICIES:
            bad("overflow", f"unknown overflow policy; choose one of {', '.join(OVERFLOW_POLICIES)}")
        if not whole("shard_size", 1):
            bad("shard_size", "shard size must be a positive number of packs")
        if not isinstance(self.columns, Columns):
            bad("columns", "must be a packer.input.Columns")
        if self.plan not in PLANS:
            bad("plan", f"unknown plan; choose one of {', '.join(PLANS)}")
        if not whole("group_size", 1):
            bad("group_size", "group size must be a positive number of input files")
        m = self.max_loss
        if m is not None and (isinstance(m, bool) or not isinstance(m, (int, float, np.floating)) or not 0 <= m <= 1):
            bad("max_loss", "must be a fraction in [0, 1] (0: lose nothing), or None")
        n = self.pad_to_multiple_of
        fault = pad_to_multiple_of_fault(n, self.capacity)
        if fault == PAD_NOT_POSITIVE:
            bad("pad_to_multiple_of", "must be a positive whole number of tokens")
        if fault == PAD_NOT_DIVISOR:
            lower = self.capacity // n * n
            bad("capacity", f"must be a multiple of the alignment, {int(n)} tokens, so that an aligned sequence "
                f"that fits still fits: use {lower:,} or {lower + int(n):,}")
        # numpy scalars pass the checks above; the manifest (JSON) and the kernels take Python numbers
        for name in ("capacity", "seed", "shard_size", "group_size", "pad_to_multiple_of"):
            if isinstance(getattr(self, name), np.integer):
                object.__setattr__(self, name, int(getattr(self, name)))
        for name in ("filler", "max_loss"):
            if isinstance(getattr(self, name), (np.floating, np.integer)):
                object.__setattr__(self, name, float(getattr(self, name)))

    def to_json(self) -> dict:
        d = asdict(self)
        d["columns"] = asdict(self.columns)
        if d[fmt.CONFIG_PAD_TO_MULTIPLE_OF] is None:  # written only when set: unaligned manifests keep their bytes
            del d[fmt.CONFIG_PAD_TO_MULTIPLE_OF]
        return d


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


def _verify_or_raise(folder, inp: TokenizedInput | list[str], *, output: str, published: bool = False) -> None:
    """Verify ``folder`` against the input (``pack_dataset(verify=True)``); its report and errors name ``output``,
    the name the folder has or is about to take (not the temporary folder it is checked in)."""
    report = replace(verify_packed(folder, inputs=inp), folder=output)
    if report.ok:
        log.info("%s", report.summary())
        return
    log.error("%s", report.format())
    if published:
        raise PackerError(f"{output}: verification failed with {report.n_defects} defect(s) (listed above); "
                          "re-pack with --overwrite")
    raise PackerError(f"{output}: verification failed with {report.n_defects} defect(s) (listed above), so the "
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


def _repacked(catalog: TokenizedInput) -> dict:
    """The manifest's input fields of a repacked folder: ``rows`` is the original input's row count (what
    ``seq_index`` numbers), ``sequences`` the sequences read, ``repacked_from`` the folder and its own input."""
    if catalog.source is None:
        return {}
    original = catalog.source.get("input") or {}
    return {"rows": int(original.get("rows", catalog.n_rows)), "sequences": catalog.n_rows,
            "repacked_from": catalog.source}


def _check_loss(segments: Segments, config: PackConfig, counts: LabelCounts, *, final: bool) -> None:
    """Warn (once, when ``final``) or raise (``config.max_loss``) when the run loses too much of its input.

    Before the shards are written (``final=False``) only the dropped and truncated tokens are known, so an excess
    there is refused before any shard is built; the sequences with no trained token are known once they are.
    """
    n_rows, n_tokens = segments.n_rows, segments.tokens_in
    lost_rows, lost_tokens = loss_counts(
        dropped_rows=segments.dropped_rows, dropped_tokens=segments.dropped_tokens,
        truncated_tokens=segments.truncated_tokens, untrainable_rows=counts.untrainable_sequences,
        untrainable_tokens=counts.untrainable_tokens)
    share_rows = lost_rows / n_rows if n_rows else 0.0
    share_tokens = lost_tokens / n_tokens if n_tokens else 0.0
    worst = max(share_rows, share_tokens)
    limit = config.max_loss
    if not ((limit is not None and worst > limit) or (final and worst > LOSS_WARNING)):
        return
    parts = []
    cap = f"{config.capacity:,}"
    if segments.dropped_rows:
        parts.append(f"{segments.dropped_rows:,} sequences longer than the capacity ({cap}) dropped "
                     f"({segments.dropped_tokens:,} tokens; --overflow split / overflow='split' keeps them)")
    if segments.truncated_rows:
        parts.append(f"{segments.truncated_rows:,} sequences truncated to {cap} tokens "
                     f"({segments.truncated_tokens:,} tokens cut; --overflow split / overflow='split' keeps them)")
    if counts.untrainable_sequences:
        parts.append(f"{counts.untrainable_sequences:,} packed sequences with no trained token "
                     f"({counts.untrainable_tokens:,} tokens: every label -100, e.g. a prompt cut before its answer"
                     + ("; with --overflow split the rest of the row trains in a later piece, a larger capacity keeps "
                        "prompt and answer together" if config.overflow == "split"
                        else "; a larger capacity or --overflow split keeps the answers, else filter such rows out")
                     + ")")
    what = (f"loses {share_tokens:.1%} of the input's tokens ({lost_tokens:,} of {n_tokens:,}) and "
            f"{share_rows:.1%} of its sequences ({lost_rows:,} of {n_rows:,} dropped or with no trained token): "
            + "; ".join(parts))
    if limit is not None and worst > limit:
        raise PackerError(f"this packing {what}; more than --max-loss {limit:g} (max_loss={limit!r}) allows, "
                          "so nothing was written")
    log.warning("this packing %s. Pass --max-loss FRACTION (PackConfig.max_loss) to make such a loss an error",
                what)


def _datasets_input(inputs, split: str | None, staging: str, input_ids: str):
    """``(inputs, split, label)`` for the scan: a ``datasets.Dataset`` (or a ``DatasetDict``'s ``split``) becomes an
    Arrow file in the staging folder (its rows as the dataset shows them: selections and shuffles applied, only list
    columns), named in the manifest by ``label`` (``datasets.Dataset(fingerprint=...)``); paths pass through with
    no label."""
    mod = type(inputs).__module__ or ""
    if not mod.startswith("datasets"):
        return inputs, split, None
    import datasets

    if isinstance(inputs, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        names = ", ".join(inputs)
        if split is None:
            raise PackerError(f"a DatasetDict with splits {names}; packing them together would mix them (test rows "
                              "into training). Pass split=NAME (--split), or one split: dataset['train']")
        if split not in inputs:
            raise PackerError(f"the DatasetDict has no split {split!r} (splits: {names})")
        inputs, split = inputs[split], None
    if not isinstance(inputs, datasets.Dataset):
        raise PackerError(f"a {type(inputs).__name__} is not read by packer; pass a datasets.Dataset (for an "
                          "IterableDataset, save it first: Dataset.from_generator or save_to_disk) or files")
    if split is not None:
        raise PackerError(f"split={split!r} picks a split of a DatasetDict; this is one Dataset")
    schema = inputs.data.schema
    keep = [f.name for f in schema if pa.types.is_list(f.type) or pa.types.is_large_list(f.type)]
    hint = text_input_hint("the datasets.Dataset", schema, input_ids)
    if hint:
        raise PackerError(hint)
    fs, inner, _ = filesystem(staging)
    fs.create_dir(inner, recursive=True)
    fingerprint = getattr(inputs, "_fingerprint", None) or "unknown"
    path = f"{staging.rstrip('/')}/dataset-{fingerprint}.arrow"
    fs2, inner2, _ = filesystem(path)
    out_schema = pa.schema([schema.field(n) for n in keep])
    with fs2.open_output_stream(inner2) as sink, pa.ipc.new_file(sink, out_schema) as w:
        for batch in inputs.select_columns(keep).with_format("arrow").iter(batch_size=4096):
            w.write_table(batch.cast(out_schema) if batch.schema != out_schema else batch)
    log.info("wrote the datasets.Dataset's %d rows to %s for the scan", len(inputs), path)
    return [path], None, f"datasets.Dataset(fingerprint={fingerprint})"


def pack_dataset(
    inputs, output: str | os.PathLike, *, config: PackConfig = PackConfig(), overwrite: bool = False,
    progress: bool = True, verify: bool = False, workers: int = 1, engine: str = DEFAULT_ENGINE,
    ray_address: str | None = None, split: str | None = None,
) -> dict:
    """Pack tokenized input files into a packed folder (see :mod:`packer.format`) and return its manifest.

    Memory holds the per-sequence plan (about 40 bytes per sequence) plus at most ``2 * workers`` shards in flight,
    whatever the number of tokens; see ``docs/scale.md``.

    Args:
        inputs: a path or a list of paths (files, folders, globs; see :mod:`packer.input`), URIs that
            :mod:`pyarrow.fs` supports (``s3://bucket/prefix``), or a ``datasets.Dataset`` (its rows are written
            to the staging folder first) or ``datasets.DatasetDict`` (with ``split``).
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
        split: the split to pack of a ``DatasetDict`` or of a folder that holds several datasets (``--split``);
            such inputs are refused without it.

    The columns are decided once over all input files (:func:`packer.input.resolve_columns`): by default the
    ``labels`` (or ``loss_mask``) column if every file has one, as ``packer pack`` does; the manifest's config
    records the columns used. A run that loses more than :data:`LOSS_WARNING` of its tokens or sequences logs a
    warning; ``config.max_loss`` makes that an error (raised before the output takes its name).

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
        scan = _scan_input(inputs, split=split, staging=staging, config=config)
        timings["open"] = time.perf_counter() - t
        verify_inputs = _verify_inputs(output, scan, verify=verify)
        if not overwrite and (done := _already_packed(output, scan.config, scan.fingerprint)) is not None:
            if verify:
                _verify_or_raise(output, verify_inputs, output=output, published=True)
            return done
        t = time.perf_counter()
        segments, plan, plan_info = _checked_plan(scan.catalog, scan.config)
        timings["plan"] = time.perf_counter() - t
        t = time.perf_counter()
        n_shards = math.ceil(plan.n_packs / scan.config.shard_size)
        with PackedWriter(output, n_shards=n_shards, overwrite=overwrite) as writer, _progress(plan.tokens, progress) as bar:
            totals = _write_shards(writer, bar, scan, segments, plan, engine=engine, workers=workers,
                                   ray_address=ray_address)
            timings["write"] = time.perf_counter() - t
            timings["total"] = time.perf_counter() - t_start
            stats = _checked_stats(scan, segments, plan, plan_info, totals)
            manifest = _manifest(scan, segments, stats, timings=timings, totals=totals, tokens=plan.tokens,
                                 engine=engine, output_bytes=sum(s.bytes for s in writer.shards))
            # seal the manifest and give the folder its name; a failed verification (verify=True) leaves no output
            check = (lambda tmp: _verify_or_raise(tmp, verify_inputs, output=output)) if verify else None
            manifest = writer.finish(manifest, before_publish=check)
    finally:
        _remove(staging)
    log.info("%s", summary_line(manifest))
    return manifest


@dataclass(frozen=True)
class _ScannedInput:
    """The input as this run reads it.

    Attributes:
        catalog: the scan (lengths, files, columns; local copies of remote or Parquet inputs in the staging folder).
        config: the caller's config with the columns as decided over all files (what the manifest records).
        label: how the manifest names a ``datasets.Dataset`` input (not its staged copy); None for paths.
        fingerprint: :func:`packer.input.input_fingerprint` of the catalog.
    """

    catalog: TokenizedInput
    config: PackConfig
    label: str | None
    fingerprint: str


def _scan_input(inputs, *, split: str | None, staging: str, config: PackConfig) -> _ScannedInput:
    """Scan the input (a ``datasets.Dataset`` is first written to ``staging``): no token is read, only lengths.

    Raises:
        PackerError: an input packer cannot read; an error about a staged ``datasets.Dataset`` names the dataset.
    """
    inputs, split, label = _datasets_input(inputs, split, staging, config.columns.input_ids)
    try:
        catalog = scan_inputs(inputs, columns=config.columns, staging=staging, split=split)
    except PackerError as e:
        if label is None:
            raise
        # name the user's datasets.Dataset, not the staged copy of it the scan read
        raise PackerError(str(e).replace(str(inputs[0]), label)) from None
    if label is not None:  # the manifest names the dataset, not the staged copy that is removed at the end
        catalog.files = [replace(f, name=label) for f in catalog.files]
    config = replace(config, columns=catalog.columns)  # as decided over all files: what the manifest records
    return _ScannedInput(catalog, config, label, input_fingerprint(catalog))


def _verify_inputs(output: str, scan: _ScannedInput, *, verify: bool) -> TokenizedInput | list[str] | None:
    """What ``verify=True`` checks the output against: the input files, the staged ``datasets.Dataset``, or None
    for a repacked folder (checked on its own: its provenance points at rows of an input it was not read from).

    Raises:
        PackerError: ``verify`` with a URI input or output (verify reads local paths).
    """
    catalog = scan.catalog
    if verify and (is_uri(output) or any(is_uri(f.name) for f in catalog.files)):
        raise PackerError("verify=True (--verify) reads the input and the output through local paths; pack "
                          "URIs without it, or verify a local copy with 'packer verify'")
    return (None if catalog.origin is not None else catalog if scan.label is not None
            else [f.name for f in catalog.files])


def _checked_plan(catalog: TokenizedInput, config: PackConfig):
    """``make_plan``'s ``(segments, plan, info)``, refused before any shard is written when it packs nothing, loses
    more than ``config.max_loss`` to the overflow policy, or puts more tokens in a shard than int32 offsets hold."""
    segments, plan, plan_info = make_plan(catalog.lengths, config=config, file_rows=catalog.file_rows)
    if plan.n_packs == 0:
        raise PackerError(f"{catalog.files[0].name}: the input holds no tokens to pack ({segments.n_rows} rows, "
                          f"all empty{' or dropped' if segments.dropped_rows else ''})")
    if segments.empty_rows:
        log.warning("skipped %d empty sequences (no tokens); they are counted in the statistics", segments.empty_rows)
    _check_loss(segments, config, LabelCounts(0, 0, 0), final=False)
    shard_tokens = np.add.reduceat(plan.pack_tokens, np.arange(0, plan.n_packs, config.shard_size))
    if shard_tokens.max() > INT32_MAX:
        raise PackerError(f"shard_size (--shard-size) {config.shard_size:,} puts {int(shard_tokens.max()):,} "
                          "tokens in one shard, more than int32 list offsets hold (2**31 - 1); pass a smaller one")
    return segments, plan, plan_info


@dataclass
class _ShardTotals:
    """The shard jobs' results, summed: label counts, seconds each phase took (over all workers), workers used."""

    label_tokens: int = 0
    untrainable_sequences: int = 0
    untrainable_tokens: int = 0
    gather_s: float = 0.0
    write_s: float = 0.0
    workers: int = 0

    def add(self, r: ShardResult) -> None:
        self.label_tokens += r.label_tokens
        self.untrainable_sequences += r.untrainable_sequences
        self.untrainable_tokens += r.untrainable_tokens
        self.gather_s += r.gather_s
        self.write_s += r.write_s

    @property
    def counts(self) -> LabelCounts:
        return LabelCounts(self.label_tokens, self.untrainable_sequences, self.untrainable_tokens)


def _write_shards(writer: PackedWriter, bar, scan: _ScannedInput, segments: Segments, plan, *, engine: str,
                  workers: int, ray_address: str | None) -> _ShardTotals:
    """Gather and write every shard into ``writer``'s temporary folder (``engine``, ``workers``), each added to the
    writer as it lands and counted on ``bar`` in tokens; returns the jobs' totals."""
    totals = _ShardTotals()

    def on_result(r: ShardResult) -> None:
        writer.add_shard(r.index, r.info)
        totals.add(r)
        bar.update(r.tokens)

    jobs = iter_jobs(scan.catalog, segments, plan, shard_size=scan.config.shard_size, dest=str(writer.tmp),
                     pad_to_multiple_of=scan.config.pad_to_multiple_of)
    totals.workers = run_jobs(jobs, on_result, engine=engine, workers=workers, ray_address=ray_address)
    return totals


def _checked_stats(scan: _ScannedInput, segments: Segments, plan, plan_info: dict, totals: _ShardTotals) -> dict:
    """The manifest's statistics, once every shard's labels are counted; the run's loss (the sequences with no
    trained token now included) is warned about, or refused by ``config.max_loss`` before the output is named."""
    config = scan.config
    _check_loss(segments, config, totals.counts, final=True)
    stats = compute_stats(scan.catalog.lengths, segments, plan, label_tokens=totals.label_tokens,
                          untrainable=(totals.untrainable_sequences, totals.untrainable_tokens))
    stats.update(plan_info)
    if config.pad_to_multiple_of is not None:
        stats.update(alignment_stats(segments, plan, config.pad_to_multiple_of))
    return stats


def _manifest(scan: _ScannedInput, segments: Segments, stats: dict, *, timings: dict, totals: _ShardTotals,
              tokens: int, engine: str, output_bytes: int) -> dict:
    """The manifest to seal: format, version, config, input, statistics and the run's timings (seconds)."""
    return {
        fmt.MANIFEST_FORMAT: fmt.FORMAT_NAME,
        fmt.MANIFEST_VERSION: fmt.FORMAT_VERSION,
        "packer_version": __version__,
        fmt.MANIFEST_CONFIG: scan.config.to_json(),
        fmt.MANIFEST_INPUT: _input_entry(scan.catalog, segments, scan.fingerprint, scan.label),
        fmt.MANIFEST_STATS: stats,
        fmt.MANIFEST_RUN: {
            "seconds": {k: round(v, 4) for k, v in timings.items()},
            # summed over workers: which phase the shard jobs spend their time in
            "job_seconds": {"gather": round(totals.gather_s, 4), "write": round(totals.write_s, 4)},
            "engine": engine,
            "workers": totals.workers,
            "tokens_per_second": round(tokens / timings["total"], 1),
            "output_bytes": output_bytes,
        },
    }


def _input_entry(catalog: TokenizedInput, segments, fingerprint: str, label: str | None) -> dict:
    """The manifest's ``input``: the files (local paths absolute; a ``datasets.Dataset`` by ``label``), rows,
    tokens, fingerprint, and for a repacked folder where it came from."""
    return {
        "files": [
            {"path": f.name if is_uri(f.name) or f.name == label else os.path.abspath(f.name),
             "rows": int(f.rows),
             "bytes": int(f.bytes)}
            for f in catalog.files
        ],
        "rows": catalog.n_rows,
        "tokens": segments.tokens_in,
        "fingerprint": fingerprint,
        **_repacked(catalog),
    }


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
