"""The comparison of padding and packing: :class:`Report`, its padding and packing columns, warnings and notes,
built from a plan.

:func:`build_report` takes the input rows' lengths, the sequences the packs hold and the plan's pack offsets
(from whichever source, :mod:`packer.report.sources`) and computes every figure: the padding column from a
:func:`packer.report.padding.simulate_padding` run, the packing column as ``PackSampler`` trains the packs, the
cost rows under the chosen cost model, the rescaled step settings, the warnings and the notes. Plain data out;
:mod:`packer.report.render` writes it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from packer.errors import PackerError
from packer.plan import DEFAULT_FILLER
from packer.report.padding import PaddingSimulation, simulate_padding
from packer.report.training import COST_MODELS, ModelShape, TrainingSetup
from packer.schedule import epoch_schedule, exact_epochs, run_counts, total_steps
from packer.stats import loss_shares

MIN_STEPS_PER_EPOCH = 10
"""Fewer optimizer steps per epoch than this is too few for a learning-rate schedule (warmup, decay)."""
TRAINING_ARGUMENTS_STEP_FIELDS = ("eval_steps", "save_steps", "logging_steps", "warmup_steps", "max_steps")
"""Step settings that are Hugging Face ``TrainingArguments`` fields; other names go in a block of their own."""
WARNING_CODES = ("under_one_step_per_epoch", "few_steps_per_epoch", "data_loss", "packs_left_out", "different_data",
                 "step_setting_floored")
OPTIONAL_STATS = (("sequences_untrainable", "left with no trained token"),)
"""Statistics a manifest may hold (newer packers); shown in the notes when present."""


@dataclass(frozen=True)
class Distributions:
    """The arrays behind the report, for plots (not part of :meth:`Report.to_dict`).

    Attributes:
        lengths: int64 (rows,), every input row's length (0 for empty rows).
        trained_lengths: int64 (sequences,), the padding run's rows: the sequences after the overflow policy
            (the same as the packs hold), or every non-empty row with ``padding_full_rows``.
        pack_tokens: int64 (packs,), tokens in each pack.
        pack_sequences: int64 (packs,), sequences (segments) in each pack.
        capacity: tokens per pack.
    """

    lengths: np.ndarray
    trained_lengths: np.ndarray
    pack_tokens: np.ndarray
    pack_sequences: np.ndarray
    capacity: int


@dataclass(frozen=True)
class ReportWarning:
    """Something that makes the comparison or the recommendation doubtful.

    Attributes:
        code: stable identifier (:data:`WARNING_CODES`).
        message: what is wrong, with the numbers, and what to change.
    """

    code: str
    message: str


@dataclass(frozen=True)
class Report:
    """The comparison, every figure computed (see the module docstring for the definitions).

    Attributes:
        source: what was analysed (``kind`` "tokenized" or "packed", paths, capacity, strategy, overflow, ...).
        setup: the :class:`TrainingSetup`.
        padding: the padding-mode column: row name -> number.
        packing: the packing-mode column: row name -> number.
        cost_model: ``{"name", "description", "model"?}``.
        recommended_config: Hugging Face ``TrainingArguments`` fields for the packing run (step settings
            rescaled); ``TrainingArguments(output_dir=..., **recommended_config)`` accepts it.
        other_step_settings: the rescaled step settings that are not ``TrainingArguments`` fields.
        packer_settings: ``packer pack`` options and ``PackSampler`` arguments for the packing run.
        step_ratio: packing optimizer steps / padding optimizer steps, both as the epoch loop counts them.
        notes: row name -> the Notes column text.
        warnings: what makes the comparison or the recommendation doubtful.
        use_packing: whether the report recommends packing (faster, and no warning).
        distributions: arrays for plots.
    """

    source: dict
    setup: TrainingSetup
    padding: dict
    packing: dict
    cost_model: dict
    recommended_config: dict
    other_step_settings: dict
    packer_settings: dict
    step_ratio: float
    notes: dict
    warnings: tuple
    use_packing: bool
    distributions: Distributions = field(repr=False, compare=False)

    def to_dict(self) -> dict:
        """JSON-ready content (no arrays)."""
        return {
            "source": dict(self.source),
            "setup": {
                "num_gpus": self.setup.num_gpus,
                "effective_batch_size": self.setup.effective_batch_size,
                "epochs": self.setup.epochs,
                "padding_batch_size": self.setup.padding_batch_size,
                "packing_batch_size": self.setup.packing_batch_size,
                "padding_seed": self.setup.padding_seed,
                "sampler_seed": self.setup.sampler_seed,
                "padding_full_rows": self.setup.padding_full_rows,
                "loss_warning": self.setup.loss_warning,
                "step_settings": dict(self.setup.step_settings),
            },
            "padding": dict(self.padding),
            "packing": dict(self.packing),
            "notes": dict(self.notes),
            "warnings": [{"code": w.code, "message": w.message} for w in self.warnings],
            "use_packing": self.use_packing,
            "cost_model": dict(self.cost_model),
            "step_ratio": self.step_ratio,
            "recommended_config": dict(self.recommended_config),
            "other_step_settings": dict(self.other_step_settings),
            "packer_settings": dict(self.packer_settings),
            "rounding": dict(ROUNDING),
        }


ROUNDING = {
    "steps_per_epoch": "packing: ceil(packs_per_rank / (per_device_batch x accumulation)), packs_per_rank = "
    "packs // num_gpus (PackSampler); padding: rows / effective_batch_size, exact (the reference's count)",
    "total_optimizer_steps": "packing: ceil(epochs x steps_per_epoch) (Trainer's max_steps); padding: "
    "ceil(rows x epochs / effective_batch_size) (the reference's count)",
    "loop_steps_per_epoch": "padding as an epoch loop counts it: ceil(ceil(rows / num_gpus) / (per_device_batch x "
    "accumulation)) (DistributedSampler + Trainer)",
    "total_samples_seen": "packing: the sequences in the packs each epoch keeps (PackSampler's seeded shuffle "
    "leaves packs // num_gpus x num_gpus); padding: round(rows x epochs)",
    "rescaled_steps": "max(1, floor(steps x step_ratio + 1/2)) (rounded half up), step_ratio from the loop counts",
}


def _reference_steps(samples: int, epochs, batch: int) -> tuple[float, int]:
    # the reference's count: batches across epochs; Fraction keeps 0.1 epochs 1/10, so 99,388 x 4 / 128 is never
    # 3105.8750000001 -> 3107
    return float(Fraction(samples, batch)), math.ceil(Fraction(samples) * exact_epochs(epochs) / batch)


def _count(stats: dict, key: str) -> int:
    """An optional count of the statistics (0 when absent: packed by an older packer)."""
    v = stats.get(key, 0)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise PackerError(f"the statistics' {key!r} is {v!r:.40}, not a count; the manifest is damaged, re-run "
                          "'packer pack'")
    return v


def _lost(stats: dict) -> tuple[int, int]:
    """Rows and tokens the overflow policy left out of the packs (dropped, or cut off by truncation)."""
    rows = int(stats["sequences_dropped"]) + int(stats["sequences_truncated"])
    return rows, int(stats["tokens_dropped"]) + int(stats["tokens_truncated"])


def _padding_column(trained: np.ndarray, *, n_rows: int, stats: dict, setup: TrainingSetup, source: dict):
    """The padding column and its simulation; ``trained`` holds the lengths of the rows the padding run trains."""
    epochs, ebs = setup.epochs, setup.effective_batch_size
    shuffles = max(1, math.ceil(epochs))
    sim = simulate_padding(trained, batch_size=setup.padding_batch_size, seed=setup.padding_seed, shuffles=shuffles)
    n_pad = int(np.count_nonzero(trained))
    if n_pad == 0:
        raise PackerError(f"{source.get('path', 'the input')}: no row holds a token; nothing to report")
    longest = int(trained.max())
    mean = sim.tokens / n_pad
    spe, total = _reference_steps(n_pad, epochs, ebs)
    loop = epoch_schedule(n_pad, world=setup.num_gpus, batch_size=setup.padding_batch_size,
                          grad_accum=setup.padding_accumulation, remainder="repeat")
    lost_rows, lost_tokens = (0, 0) if setup.padding_full_rows else _lost(stats)
    padding = {
        "total_samples": n_rows,
        "samples_analyzed": n_pad,
        "per_device_train_batch_size": setup.padding_batch_size,
        "effective_batch_size": ebs,
        "num_gpus": setup.num_gpus,
        "gradient_accumulation_steps": setup.padding_accumulation,
        "global_max_length": longest,
        "avg_sequence_length": mean,
        "padding_overhead": sim.overhead,
        "padding_overhead_global_max": 1.0 - mean / longest,
        "num_train_epochs": epochs,
        "steps_per_epoch": spe,
        "total_optimizer_steps": total,
        "loop_steps_per_epoch": loop.steps_per_epoch,
        "loop_total_optimizer_steps": total_steps(loop.steps_per_epoch, epochs),
        "rows_repeated_per_epoch": loop.repeated,
        "samples_per_step": ebs,
        "total_samples_seen": round(n_pad * exact_epochs(epochs)),
        "packing_efficiency": 1.0 - sim.overhead,
        "samples_per_pack": 1.0,
        "data_loss": lost_rows / n_rows if n_rows else 0.0,
        "data_loss_tokens": lost_tokens / stats["tokens_in"] if stats["tokens_in"] else 0.0,
        "tokens_lost": lost_tokens,
        "tokens_per_epoch": sim.tokens,
        "token_slots_per_epoch": sim.slots,
        "peak_micro_batch_slots": sim.peak_slots,
        "simulated_shuffles": shuffles,
    }
    return padding, sim


def _packing_column(seg_lengths: np.ndarray, pack_offsets: np.ndarray, *, n_rows: int, capacity: int, stats: dict,
                    setup: TrainingSetup, source: dict) -> dict:
    """The packing column: the plan's packs, trained as a ``PackSampler`` loop trains them."""
    n_packs = int(pack_offsets.shape[0] - 1)
    n_seg = int(seg_lengths.shape[0])
    if n_packs == 0:
        raise PackerError(f"{source.get('path', 'the input')}: every row was dropped or empty at capacity "
                          f"{capacity:,}; pass a larger --max-length or --overflow split")
    if n_packs < setup.num_gpus:
        raise PackerError(f"{source.get('path', 'the input')}: {n_packs:,} packs cannot give each of "
                          f"{setup.num_gpus} GPUs one (PackSampler refuses it); pass fewer --num-gpus or a "
                          "smaller --max-length")
    pack_sequences = np.diff(pack_offsets).astype(np.int64)
    tokens_out = int(seg_lengths.sum())
    efficiency = tokens_out / (n_packs * capacity)
    per_pack = n_seg / n_packs
    sched = epoch_schedule(n_packs, world=setup.num_gpus, batch_size=setup.packing_batch_size,
                           grad_accum=setup.packing_accumulation)
    run = run_counts(pack_sequences, world=setup.num_gpus, batch_size=setup.packing_batch_size,
                     grad_accum=setup.packing_accumulation, epochs=setup.epochs, seed=setup.sampler_seed)
    lost_rows, lost_tokens = _lost(stats)
    # what the data_loss warning weighs: the definition packer pack warns with (untrainable sequences included)
    loss_sequences, loss_tokens = loss_shares(
        rows=n_rows, tokens=int(stats["tokens_in"]), dropped_rows=int(stats["sequences_dropped"]),
        dropped_tokens=int(stats["tokens_dropped"]), truncated_tokens=int(stats["tokens_truncated"]),
        untrainable_rows=_count(stats, "sequences_untrainable"), untrainable_tokens=_count(stats, "tokens_untrainable"))
    return {
        "total_samples": n_rows,
        "samples_analyzed": n_seg,
        "loss_sequences": loss_sequences,
        "loss_tokens": loss_tokens,
        "sequences_untrainable": _count(stats, "sequences_untrainable"),
        "per_device_train_batch_size": setup.packing_batch_size,
        "effective_batch_size": setup.effective_batch_size,
        "num_gpus": setup.num_gpus,
        "gradient_accumulation_steps": setup.packing_accumulation,
        "global_max_length": capacity,
        "avg_sequence_length": tokens_out / n_seg,
        "padding_overhead": 1.0 - efficiency,
        "num_train_epochs": setup.epochs,
        "steps_per_epoch": sched.steps_per_epoch,
        "total_optimizer_steps": run.steps,
        "packs_per_epoch": sched.samples_per_epoch,
        "packs_left_out_per_epoch": sched.left_out,
        "last_step_packs": (sched.per_rank - (sched.steps_per_epoch - 1) * sched.batch_size * sched.grad_accum)
        * sched.world,
        "total_packs_seen": run.samples,
        "samples_per_step": setup.effective_batch_size * per_pack,
        "total_samples_seen": run.sequences,
        "total_samples_seen_exact": run.exact,
        "packing_efficiency": efficiency,
        "samples_per_pack": per_pack,
        "data_loss": lost_rows / n_rows if n_rows else 0.0,
        "data_loss_tokens": lost_tokens / stats["tokens_in"] if stats["tokens_in"] else 0.0,
        "tokens_lost": lost_tokens,
        "packs": n_packs,
        "lower_bound_packs": math.ceil(tokens_out / capacity),
        "sequences_dropped": int(stats["sequences_dropped"]),
        "sequences_truncated": int(stats["sequences_truncated"]),
        "sequences_split": int(stats["sequences_split"]),
        "empty_sequences_skipped": int(stats["empty_sequences_skipped"]),
        "tokens_per_epoch": tokens_out,
        "token_slots_per_epoch": n_packs * capacity,
        "peak_micro_batch_slots": setup.packing_batch_size * capacity,
        "samples_per_pack_min": int(pack_sequences.min()),
        "samples_per_pack_max": int(pack_sequences.max()),
    }


def _apply_cost(padding: dict, packing: dict, sim: PaddingSimulation, seg_lengths: np.ndarray,
                pack_tokens: np.ndarray, capacity: int, model: ModelShape | None) -> dict:
    """Fill in the cost rows of both columns (per epoch, each mode on its own micro-batches); the cost model."""
    n_packs = int(pack_tokens.shape[0])
    cost_pad = float(sim.slots)
    cost_pack = float(n_packs * capacity)
    cost_model = {"name": "tokens", "description": COST_MODELS["tokens"]}
    if model is not None:
        shape = model.resolve()
        tail = (capacity - pack_tokens).astype(np.float64)
        att_pack = float((seg_lengths.astype(np.float64) ** 2).sum() + (tail**2).sum())
        per_token = 6.0 * shape["num_params"]
        per_sq = 6.0 * shape["num_layers"] * shape["hidden_size"]
        cost_pad = per_token * sim.slots + per_sq * sim.attention
        cost_pack = per_token * n_packs * capacity + per_sq * att_pack
        cost_model = {"name": "flops", "description": COST_MODELS["flops"], "model": shape}
        padding["attention_share"] = per_sq * sim.attention / cost_pad
        packing["attention_share"] = per_sq * att_pack / cost_pack
    padding["cost_per_epoch"] = cost_pad
    packing["cost_per_epoch"] = cost_pack
    # speed = useful tokens per unit of cost (throughput); the run-time ratio differs from it only by the tokens
    # each mode trains on (the same, unless --padding-full-rows pads rows the packs do not hold)
    padding["relative_training_speed"] = 1.0
    packing["relative_training_speed"] = (packing["tokens_per_epoch"] / cost_pack) / (sim.tokens / cost_pad)
    padding["relative_run_time"] = 1.0
    packing["relative_run_time"] = cost_pack / cost_pad
    padding["gpu_memory_usage"] = 1.0
    packing["gpu_memory_usage"] = packing["peak_micro_batch_slots"] / sim.peak_slots
    return cost_model


def _recommended(setup: TrainingSetup, padding: dict, packing: dict, source: dict):
    """(TrainingArguments fields, other rescaled step settings, packer settings, step ratio)."""
    ratio = Fraction(packing["total_optimizer_steps"], padding["loop_total_optimizer_steps"])
    config = {
        "per_device_train_batch_size": setup.packing_batch_size,
        "gradient_accumulation_steps": setup.packing_accumulation,
        "num_train_epochs": setup.epochs,
    }
    other = {}
    for name, steps in setup.step_settings:
        rescaled = max(1, math.floor(steps * ratio + Fraction(1, 2)))  # half up: 62.5 -> 63
        (config if name in TRAINING_ARGUMENTS_STEP_FIELDS else other)[name] = rescaled
    packer_settings = {
        "max_length": int(source["capacity"]),
        "strategy": source["strategy"],
        "overflow": source["overflow"],
        "seed": source.get("seed", 0),
        "num_gpus": setup.num_gpus,
        "effective_batch_size": setup.effective_batch_size,
        "sampler": {"batch_size": setup.packing_batch_size, "grad_accum": setup.packing_accumulation,
                    "seed": setup.sampler_seed},
    }
    if source["strategy"] == "mixed":
        packer_settings["filler"] = source.get("filler", DEFAULT_FILLER)
    return config, other, packer_settings, ratio


def build_report(
    *,
    lengths: np.ndarray,
    trained: np.ndarray,
    stats: dict,
    seg_lengths: np.ndarray,
    pack_offsets: np.ndarray,
    capacity: int,
    setup: TrainingSetup,
    model: ModelShape | None,
    source: dict,
) -> Report:
    """The :class:`Report` for one plan: both columns, the cost model, the recommendation, warnings and notes.

    Args:
        lengths: int (rows,), every input row's length (0 for an empty row).
        trained: int (sequences,), the sequences the packs hold, in input order (row, then piece): the rows the
            padding run trains unless ``setup.padding_full_rows``.
        stats: the plan's statistics (:func:`packer.stats.compute_stats`, or a manifest's).
        seg_lengths: int (sequences,), the packed sequences' lengths in pack order.
        pack_offsets: int (packs + 1,), pack ``p`` holds ``seg_lengths[pack_offsets[p]:pack_offsets[p + 1]]``.
        capacity: tokens per pack.
        setup: the training run; model: the model's shape for the FLOPs cost model, None for tokens.
        source: what was analysed (``overflow``, ``strategy``, ``capacity`` and, for messages, ``path``).

    Raises:
        PackerError: no row holds a token, no pack was made, or fewer packs than GPUs.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    seg_lengths = np.asarray(seg_lengths, dtype=np.int64)
    # the padding run trains the same sequences as the packs hold (same max length and overflow policy), unless
    # the user asks for full rows (the reference's padding run); only then can the two columns differ in data
    padding_rows = lengths[lengths > 0] if setup.padding_full_rows else np.asarray(trained, dtype=np.int64)
    source = dict(source, padding_data="full rows" if setup.padding_full_rows else "same as packing")
    n_rows = int(lengths.shape[0])
    if not lengths.any():
        raise PackerError(f"{source.get('path', 'the input')}: no row holds a token; nothing to report")
    packing = _packing_column(seg_lengths, pack_offsets, n_rows=n_rows, capacity=capacity, stats=stats,
                              setup=setup, source=source)
    padding, sim = _padding_column(padding_rows, n_rows=n_rows, stats=stats, setup=setup, source=source)
    pack_sequences = np.diff(pack_offsets).astype(np.int64)
    pack_tokens = np.add.reduceat(seg_lengths, pack_offsets[:-1]) if seg_lengths.size else np.zeros(
        pack_sequences.shape[0], np.int64)
    cost_model = _apply_cost(padding, packing, sim, seg_lengths, pack_tokens, capacity, model)
    config, other, packer_settings, ratio = _recommended(setup, padding, packing, source)
    warnings = tuple(_warnings(padding, packing, setup, source["overflow"]))
    return Report(
        source=source,
        setup=setup,
        padding=padding,
        packing=packing,
        cost_model=cost_model,
        recommended_config=config,
        other_step_settings=other,
        packer_settings=packer_settings,
        step_ratio=float(ratio),
        notes=_notes(padding, packing, setup, stats, cost_model),
        warnings=warnings,
        use_packing=packing["relative_training_speed"] > 1.0 and not warnings,
        distributions=Distributions(
            lengths=lengths, trained_lengths=padding_rows, pack_tokens=pack_tokens.astype(np.int64),
            pack_sequences=pack_sequences, capacity=capacity,
        ),
    )


def _warnings(pad: dict, pack: dict, setup: TrainingSetup, overflow: str):
    """Yield a :class:`ReportWarning` for each thing that makes the comparison or the recommendation doubtful."""
    spe, m = pack["steps_per_epoch"], setup.packing_batch_size * setup.packing_accumulation
    per_rank = pack["packs_per_epoch"] // setup.num_gpus
    if per_rank < m:
        yield ReportWarning(
            "under_one_step_per_epoch",
            f"an epoch holds {pack['packs_per_epoch']:,} packs, less than one optimizer step of "
            f"{setup.effective_batch_size:,}: each epoch is a single step over {per_rank:,} packs per GPU instead "
            f"of {m:,}, so the effective batch is {pack['packs_per_epoch']:,}, not {setup.effective_batch_size:,}; "
            "pass a smaller --effective-batch-size or --max-length")
    if spe < MIN_STEPS_PER_EPOCH:
        yield ReportWarning(
            "few_steps_per_epoch",
            f"packing trains {spe:,} optimizer step{'s' if spe != 1 else ''} per epoch "
            f"({pack['total_optimizer_steps']:,} in all): too few for a learning-rate schedule (warmup and decay "
            f"need at least {MIN_STEPS_PER_EPOCH} per epoch); lower --effective-batch-size or --max-length")
    threshold = setup.loss_warning
    if pack["loss_sequences"] > threshold or pack["loss_tokens"] > threshold:
        how = {"drop": "dropped", "truncate": "cut by truncation"}.get(overflow, "lost")
        untrainable = pack["sequences_untrainable"]
        yield ReportWarning(
            "data_loss",
            f"the packing loses {pack['loss_sequences']:.2%} of the rows and {pack['loss_tokens']:.2%} of the "
            f"tokens ({pack['tokens_lost']:,} tokens {how} by the overflow policy"
            + (f", {untrainable:,} sequences with no trained token" if untrainable else "")
            + f"), more than {threshold:.0%} (the threshold packer pack warns at); pass --overflow split to keep "
            "every token, or a larger --max-length")
    left = pack["packs_left_out_per_epoch"]
    if left and left / pack["packs"] > threshold:
        yield ReportWarning(
            "packs_left_out",
            f"each epoch leaves out {left:,} of {pack['packs']:,} packs ({left / pack['packs']:.1%}) so that every "
            f"one of {setup.num_gpus} GPUs gets as many (PackSampler; different packs each epoch); pack more data "
            "or use fewer GPUs")
    if setup.padding_full_rows and (pack["data_loss"] or pack["sequences_split"]):
        yield ReportWarning(
            "different_data",
            "the padding column trains every row whole (--padding-full-rows) but the packs hold the rows after "
            f"--overflow {overflow}: the two modes train different data and the comparison is not like for "
            "like; omit --padding-full-rows")
    ratio = pack["total_optimizer_steps"] / pad["loop_total_optimizer_steps"]
    for name, steps in setup.step_settings:
        if steps * ratio < 0.5:
            yield ReportWarning(
                "step_setting_floored",
                f"{name} {steps:,} x {ratio:.4f} rounds to less than one step; it is set to 1, which is not "
                "proportional: choose it for the packing run's "
                f"{pack['total_optimizer_steps']:,} steps")


def _notes(pad: dict, pack: dict, setup: TrainingSetup, stats: dict, cost: dict) -> dict:
    lost = []
    for key, what in (("sequences_dropped", "dropped (longer than the capacity)"),
                      ("sequences_truncated", "truncated to the capacity"),
                      ("sequences_split", "split into capacity-sized pieces"),
                      ("empty_sequences_skipped", "empty, skipped")):
        if pack[key]:
            lost.append(f"{pack[key]:,} {what}")
    for key, what in OPTIONAL_STATS:  # counted by newer packers only
        if _count(stats, key):
            lost.append(f"{_count(stats, key):,} {what}")
    both = "padding: every row whole (--padding-full-rows); packing: " if setup.padding_full_rows else "both: "
    analysed = both + "; ".join(lost) if lost else "every non-empty row in both"
    speed = f"real tokens per unit of cost, {cost['name']} cost model (below); run time " \
        f"{pack['relative_run_time']:.2f}× of padding's"
    if "attention_share" in pack:
        speed += f"; attention {pad['attention_share']:.0%} of padding cost, {pack['attention_share']:.0%} of packing"
    left = pack["packs_left_out_per_epoch"]
    seen = "padding: rows x epochs; packing: the sequences in the packs each epoch trains"
    seen += f" ({left:,} of {pack['packs']:,} packs left out per epoch, PackSampler seed {setup.sampler_seed})" \
        if left else ""
    if not pack["total_samples_seen_exact"]:
        seen += "; the fractional last epoch's share estimated at the mean sequences per pack"
    return {
        "total_samples": "rows in the input",
        "samples_analyzed": analysed,
        "per_device_train_batch_size": "packing: packs per device",
        "effective_batch_size": "padding: rows per step; packing: packs per step",
        "num_gpus": "same hardware",
        "gradient_accumulation_steps": "effective / (GPUs x per-device)",
        "global_max_length": "padding: the longest row trained (dynamic); packing: the capacity"
        + ("" if setup.padding_full_rows else "; same max length and overflow policy in both"),
        "avg_sequence_length": "same sequences in both" if not setup.padding_full_rows or not lost
        else "packing: the sequences in packs",
        "padding_overhead": f"measured: {pad['simulated_shuffles']} seeded "
        f"shuffle{'s' if pad['simulated_shuffles'] > 1 else ''} in micro-batches of "
        f"{setup.padding_batch_size}, each padded to its longest; padding every row to "
        f"{pad['global_max_length']:,} would be {pad['padding_overhead_global_max']:.1%}",
        "num_train_epochs": "same",
        "steps_per_epoch": f"padding: rows / effective batch (the reference's count; an epoch loop makes "
        f"{pad['loop_steps_per_epoch']:,}); packing: as PackSampler, "
        f"ceil({pack['packs_per_epoch'] // setup.num_gpus:,} packs per GPU / "
        f"{setup.packing_batch_size * setup.packing_accumulation:,})",
        "total_optimizer_steps": f"padding: ceil(rows x epochs / effective batch) (an epoch loop makes "
        f"{pad['loop_total_optimizer_steps']:,}); packing: ceil(epochs x steps per epoch)",
        "samples_per_step": "packing: effective batch x sequences per pack",
        "total_samples_seen": seen,
        "packing_efficiency": "real tokens / processed token slots",
        "samples_per_pack": f"min {pack['samples_per_pack_min']}, max {pack['samples_per_pack_max']}",
        "data_loss": f"rows lost to the overflow policy; tokens: {pack['data_loss_tokens']:.3%}",
        "relative_training_speed": speed,
        "gpu_memory_usage": f"token slots per micro-batch: padding peaks at {pad['peak_micro_batch_slots']:,} "
        f"(varies), packing {pack['peak_micro_batch_slots']:,} (constant)",
    }
