"""The padding-vs-packing report: the user's configuration comparison, computed from the data and the plan.

The user's reference (``shared/seed/padding_vs_packing.md``) compares a padded and a packed training run by hand,
with estimates (``~40-50%`` padding, ``~1.3-1.5x`` faster). This module computes every row of that table from the
sequence lengths and the actual packing plan:

* **Padding mode** is simulated: the rows are shuffled (seeded) and cut into micro-batches of the per-device batch
  size, each padded to its longest sequence (dynamic padding, as ``DataCollatorWithPadding`` does). One shuffle per
  epoch (``ceil(epochs)`` of them); the figures are per-epoch means. Padding every row to the longest one (a
  fixed global max length) is stated next to it.
* **Packing mode** comes from the plan: packs of ``capacity`` tokens, each padded to the capacity when the torch
  layer reads it (the only padding left).
* **Steps** are counted in samples, with one rounding rule for both modes (a "sample" is a row in padding mode and
  a pack in packing mode)::

      gradient_accumulation_steps = effective_batch / (num_gpus * per_device_batch)    # must divide exactly
      steps_per_epoch            = samples / effective_batch                          # exact, not rounded
      total_optimizer_steps      = ceil(samples * epochs / effective_batch)           # a last partial step counts
      total_samples_seen         = round(rows trained on * epochs)

  Batches flow across epoch boundaries and only the very last, partial optimizer step is rounded up. The reference
  run gives 99,388 / 128 = 776.47 steps per epoch (shown as 776.5) and ceil(397,552 / 128) = 3,106 steps.
  Hugging Face ``Trainer`` counts a little differently (it steps at the end of every epoch even on a partial
  accumulation, so up to one more step per epoch); the report's JSON keeps the exact fractions.
* **Relative training speed** follows a stated cost model (:data:`COST_MODELS`): tokens processed, padding
  included; or, given the model's shape, training FLOPs with the attention term (``sum(L**2)`` over the segments of
  a pack with varlen attention; ``batch * longest**2`` for a padded micro-batch).

Everything returned is plain data: :class:`Report` (a frozen dataclass) and its :meth:`Report.to_dict`; the
renderers turn it into Markdown (:func:`render_markdown`) or JSON (:func:`render_json`).

Example:
    >>> import numpy as np
    >>> from packer.report import TrainingSetup, report_from_lengths
    >>> r = report_from_lengths(np.array([4] * 12), capacity=16,
    ...                         setup=TrainingSetup(num_gpus=1, effective_batch_size=4, epochs=1))
    >>> r.padding["gradient_accumulation_steps"], r.packing["gradient_accumulation_steps"]
    (2, 4)
    >>> r.packing["packs"], r.packing["packing_efficiency"], r.packing["samples_per_pack"]
    (3, 1.0, 4.0)
    >>> r.padding["total_optimizer_steps"], r.packing["total_optimizer_steps"]   # ceil(12 / 4), ceil(3 / 4)
    (3, 1)
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from packer import format as fmt
from packer.errors import PackerError
from packer.packed_reader import PackedReader
from packer.plan import (
    DEFAULT_OVERFLOW,
    DEFAULT_STRATEGY,
    DEFAULT_FILLER,
    make_segments,
    plan_packs,
)
from packer.stats import compute_stats

log = logging.getLogger(__name__)

# The reference run's setup (shared/seed/padding_vs_packing.md); the CLI's defaults.
REFERENCE_NUM_GPUS = 4
REFERENCE_EFFECTIVE_BATCH = 128
REFERENCE_EPOCHS = 4
REFERENCE_PADDING_BATCH = 2
REFERENCE_PACKING_BATCH = 1

COST_MODELS = {
    "tokens": "cost = token slots processed, padding included (a padded micro-batch costs batch x its longest "
    "sequence; a pack costs its capacity). Every slot costs the same: right when the linear layers dominate.",
    "flops": "cost = training FLOPs = 6 x N_params per token slot (forward + backward of the weights, padding "
    "included) + 6 x num_layers x hidden_size x L^2 per attention block of length L (causal attention whose kernel "
    "skips the masked half: half of Megatron's 12 l h L^2). Packing with varlen attention: one block per segment, "
    "plus one for the padding at the end of a pack; padding: batch x longest^2 per micro-batch.",
}
ASPECT_RATIO = 128
"""hidden_size / num_layers assumed when only a parameter count is given (Llama 7B/13B, GPT-3 175B: 128)."""

ROW_ORDER = (
    ("Dataset", ("total_samples", "samples_analyzed")),
    ("Batch Configuration",
     ("per_device_train_batch_size", "effective_batch_size", "num_gpus", "gradient_accumulation_steps")),
    ("Sequence Configuration", ("global_max_length", "avg_sequence_length", "padding_overhead")),
    ("Training Dynamics",
     ("num_train_epochs", "steps_per_epoch", "total_optimizer_steps", "samples_per_step", "total_samples_seen")),
    ("Efficiency Metrics", ("packing_efficiency", "samples_per_pack", "data_loss")),
    ("Performance Estimates", ("relative_training_speed", "gpu_memory_usage")),
)
ROW_LABELS = {
    "total_samples": "Total samples",
    "samples_analyzed": "Samples analyzed",
}

_STEP_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_COUNT = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMbBtT]?)\s*$")
_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "t": 10**12}


def _positive_int(value, what: str, fix: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise PackerError(f"{what} must be a positive integer, got {value!r}; {fix}")
    return int(value)


@dataclass(frozen=True)
class TrainingSetup:
    """The training run both modes are compared on (defaults: the reference run).

    Attributes:
        num_gpus: data-parallel GPUs (``--num-gpus``).
        effective_batch_size: samples per optimizer step over all GPUs and accumulation steps; a sample is a row
            in padding mode and a pack in packing mode (``--effective-batch-size``).
        epochs: passes over the data, > 0, may be fractional (``--epochs``).
        padding_batch_size: per-device micro-batch in padding mode (``--padding-batch-size``).
        packing_batch_size: per-device micro-batch in packing mode, in packs (``--packing-batch-size``).
        padding_seed: seeds the simulated padding-mode shuffles (``--padding-seed``).
        step_settings: step-based trainer settings to rescale, as ``(name, steps)`` pairs (a dict is accepted),
            e.g. ``{"eval_steps": 500}``; given for the padding run, rescaled to the packing run.

    Raises:
        PackerError: a non-positive count, or an effective batch that ``num_gpus x per-device batch`` does not
            divide (the gradient accumulation steps would not be whole).
    """

    num_gpus: int = REFERENCE_NUM_GPUS
    effective_batch_size: int = REFERENCE_EFFECTIVE_BATCH
    epochs: float = REFERENCE_EPOCHS
    padding_batch_size: int = REFERENCE_PADDING_BATCH
    packing_batch_size: int = REFERENCE_PACKING_BATCH
    padding_seed: int = 0
    step_settings: tuple = ()

    def __post_init__(self):
        _positive_int(self.num_gpus, "--num-gpus", "pass the number of data-parallel GPUs, e.g. --num-gpus 4")
        _positive_int(self.effective_batch_size, "--effective-batch-size",
                      "pass the samples per optimizer step over all GPUs, e.g. --effective-batch-size 128")
        _positive_int(self.padding_batch_size, "--padding-batch-size", "e.g. --padding-batch-size 2")
        _positive_int(self.packing_batch_size, "--packing-batch-size", "e.g. --packing-batch-size 1")
        if isinstance(self.padding_seed, bool) or not isinstance(self.padding_seed, (int, np.integer)) \
                or self.padding_seed < 0:
            raise PackerError(f"--padding-seed must be a non-negative integer, got {self.padding_seed!r}")
        epochs = self.epochs
        if isinstance(epochs, bool) or not isinstance(epochs, (int, float, np.integer, np.floating)) \
                or not math.isfinite(epochs) or epochs <= 0:
            raise PackerError(f"--epochs must be a positive number, got {epochs!r}; e.g. --epochs 4 or --epochs 0.5")
        object.__setattr__(self, "epochs", int(epochs) if float(epochs).is_integer() else float(epochs))
        for mode, per_device in (("padding", self.padding_batch_size), ("packing", self.packing_batch_size)):
            per_step = self.num_gpus * per_device
            if self.effective_batch_size % per_step:
                lo = self.effective_batch_size // per_step * per_step
                hint = f"{lo:,} or {lo + per_step:,}" if lo else f"{per_step:,}"
                raise PackerError(
                    f"--effective-batch-size {self.effective_batch_size:,} is not divisible by --num-gpus "
                    f"{self.num_gpus} x --{mode}-batch-size {per_device} = {per_step:,}, so the gradient "
                    f"accumulation steps would not be whole; pass an effective batch size of {hint}, or change "
                    f"the GPUs or the per-device batch"
                )
        pairs = self.step_settings.items() if isinstance(self.step_settings, dict) else self.step_settings
        checked = []
        for item in pairs:
            if not (isinstance(item, (tuple, list)) and len(item) == 2):
                raise PackerError(f"step settings are (name, steps) pairs, got {item!r}")
            name, steps = item
            if not isinstance(name, str) or not _STEP_NAME.match(name):
                raise PackerError(f"step setting name {name!r} is not an identifier; "
                                  "e.g. --step-setting eval_steps=500")
            checked.append((name, _positive_int(steps, name, f"pass a positive number of steps for {name}")))
        names = [n for n, _ in checked]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise PackerError(f"step setting {dupes[0]!r} given twice; give each once")
        object.__setattr__(self, "step_settings", tuple(checked))

    @property
    def padding_accumulation(self) -> int:
        return self.effective_batch_size // (self.num_gpus * self.padding_batch_size)

    @property
    def packing_accumulation(self) -> int:
        return self.effective_batch_size // (self.num_gpus * self.packing_batch_size)


def parse_count(text: str | int | float) -> int:
    """A parameter count written as ``7000000000``, ``7e9``, ``7B``, ``350M`` or ``1.5k``, as an int.

    Example:
        >>> parse_count("7B"), parse_count("350M"), parse_count("1.3e9")
        (7000000000, 350000000, 1300000000)
    """
    if isinstance(text, (int, np.integer)) and not isinstance(text, bool):
        value = int(text)
    else:
        m = _COUNT.match(str(text))
        if not m:
            raise PackerError(f"cannot read {text!r} as a parameter count; write e.g. 7B, 350M, 7e9 or 7000000000")
        value = round(float(m.group(1)) * _SUFFIX[m.group(2).lower()])
    if value <= 0:
        raise PackerError(f"the parameter count must be positive, got {text!r}")
    return value


@dataclass(frozen=True)
class ModelShape:
    """The model the FLOPs cost model needs; any of the three, the rest estimated (and said so).

    Estimates: ``num_params = 12 x num_layers x hidden_size**2`` (the transformer blocks, embeddings left out);
    with only a parameter count, ``hidden_size = 128 x num_layers`` (:data:`ASPECT_RATIO`).

    Attributes:
        hidden_size: model width (``--hidden-size``).
        num_layers: transformer blocks (``--num-layers``).
        num_params: parameters (``--num-params``, e.g. ``7B``).
    """

    hidden_size: int | None = None
    num_layers: int | None = None
    num_params: int | None = None

    def __post_init__(self):
        for name, flag in (("hidden_size", "--hidden-size"), ("num_layers", "--num-layers"),
                           ("num_params", "--num-params")):
            value = getattr(self, name)
            if value is not None:
                _positive_int(value, flag, f"pass the model's {name.replace('_', ' ')}")
        if self.hidden_size is None and self.num_layers is None and self.num_params is None:
            raise PackerError("a model shape needs --hidden-size, --num-layers or --num-params (at least one)")
        if self.num_params is None and (self.hidden_size is None or self.num_layers is None):
            given = "--hidden-size" if self.hidden_size is not None else "--num-layers"
            raise PackerError(
                f"{given} alone does not fix the model's size; also pass "
                f"{'--num-layers' if given == '--hidden-size' else '--hidden-size'} or --num-params"
            )

    def resolve(self) -> dict:
        """``{"num_params", "num_layers", "hidden_size", "estimated": [names]}`` with every value filled in."""
        n, layers, hidden = self.num_params, self.num_layers, self.hidden_size
        estimated = []
        if n is None:
            n = 12 * layers * hidden**2
            estimated.append("num_params")
        elif layers is None and hidden is None:
            layers = max(1, round((n / (12 * ASPECT_RATIO**2)) ** (1 / 3)))
            hidden = max(1, round(ASPECT_RATIO * layers))
            estimated += ["num_layers", "hidden_size"]
        elif layers is None:
            layers = max(1, round(n / (12 * hidden**2)))
            estimated.append("num_layers")
        elif hidden is None:
            hidden = max(1, round(math.sqrt(n / (12 * layers))))
            estimated.append("hidden_size")
        return {"num_params": int(n), "num_layers": int(layers), "hidden_size": int(hidden), "estimated": estimated}


@dataclass(frozen=True)
class PaddingSimulation:
    """Padding-mode micro-batches, simulated: per-epoch means over ``shuffles`` seeded shuffles.

    Attributes:
        batch_size: per-device micro-batch.
        shuffles: epochs simulated (one seeded permutation each).
        tokens: real tokens per epoch.
        slots: token slots per epoch (each micro-batch: its size x its longest sequence).
        attention: sum over micro-batches of size x longest**2, per epoch (float: it passes 2**63 on big sets).
        peak_slots: the largest micro-batch seen (size x longest).
    """

    batch_size: int
    shuffles: int
    tokens: int
    slots: float
    attention: float
    peak_slots: int

    @property
    def overhead(self) -> float:
        """Share of the processed slots that hold padding."""
        return 1.0 - self.tokens / self.slots if self.slots else 0.0


def simulate_padding(lengths: np.ndarray, *, batch_size: int, seed: int = 0, shuffles: int = 1) -> PaddingSimulation:
    """Simulate dynamic padding: seeded shuffles cut into micro-batches, each padded to its longest sequence.

    Args:
        lengths: int (n,), the lengths of the rows trained on (zeros are left out).
        batch_size: per-device micro-batch; the last micro-batch of a shuffle may be smaller.
        seed: seeds ``numpy.random.default_rng``; shuffle ``k`` is its ``k``-th permutation.
        shuffles: how many shuffles (epochs) to average over.

    Example:
        >>> s = simulate_padding(np.array([1, 3]), batch_size=2)
        >>> s.tokens, s.slots, s.overhead
        (4, 6.0, 0.33333333333333337)
    """
    batch_size = _positive_int(batch_size, "batch_size", "pass the per-device batch")
    shuffles = _positive_int(shuffles, "shuffles", "simulate at least one epoch")
    lengths = np.asarray(lengths, dtype=np.int64)
    lengths = lengths[lengths > 0]
    n = lengths.shape[0]
    if n == 0:
        return PaddingSimulation(batch_size, shuffles, 0, 0.0, 0.0, 0)
    rng = np.random.default_rng(seed)
    n_batches = -(-n // batch_size)
    padded = np.zeros(n_batches * batch_size, dtype=np.int64)
    slots = 0
    attention = 0.0
    peak = 0
    for _ in range(shuffles):
        padded[:n] = lengths[rng.permutation(n)]
        grid = padded.reshape(n_batches, batch_size)
        longest = grid.max(axis=1)
        size = np.count_nonzero(grid, axis=1)
        cost = size * longest
        slots += int(cost.sum())
        attention += float((cost.astype(np.float64) * longest).sum())
        peak = max(peak, int(cost.max()))
    return PaddingSimulation(
        batch_size=batch_size,
        shuffles=shuffles,
        tokens=int(lengths.sum()),
        slots=slots / shuffles,
        attention=attention / shuffles,
        peak_slots=peak,
    )


@dataclass(frozen=True)
class Distributions:
    """The arrays behind the report, for plots (not part of :meth:`Report.to_dict`).

    Attributes:
        lengths: int64 (rows,), every input row's length (0 for empty rows).
        pack_tokens: int64 (packs,), tokens in each pack.
        pack_sequences: int64 (packs,), sequences (segments) in each pack.
        capacity: tokens per pack.
    """

    lengths: np.ndarray
    pack_tokens: np.ndarray
    pack_sequences: np.ndarray
    capacity: int


@dataclass(frozen=True)
class Report:
    """The comparison, every figure computed (see the module docstring for the definitions).

    Attributes:
        source: what was analysed (``kind`` "tokenized" or "packed", paths, capacity, strategy, overflow, ...).
        setup: the :class:`TrainingSetup`.
        padding: the padding-mode column: row name -> number.
        packing: the packing-mode column: row name -> number.
        cost_model: ``{"name", "description", "model"?}``.
        recommended_config: the packing-mode trainer settings, step settings rescaled.
        step_ratio: packing optimizer steps / padding optimizer steps (the rescaling factor).
        notes: row name -> the Notes column text.
        distributions: arrays for plots.
    """

    source: dict
    setup: TrainingSetup
    padding: dict
    packing: dict
    cost_model: dict
    recommended_config: dict
    step_ratio: float
    notes: dict
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
                "step_settings": dict(self.setup.step_settings),
            },
            "padding": dict(self.padding),
            "packing": dict(self.packing),
            "notes": dict(self.notes),
            "cost_model": dict(self.cost_model),
            "step_ratio": self.step_ratio,
            "recommended_config": dict(self.recommended_config),
            "rounding": {
                "steps_per_epoch": "samples / effective_batch_size, exact (a sample is a row, or a pack)",
                "total_optimizer_steps": "ceil(samples x epochs / effective_batch_size)",
                "total_samples_seen": "round(sequences trained on x epochs)",
                "rescaled_steps": "max(1, floor(steps x step_ratio + 1/2)) (rounded half up)",
            },
        }


def _steps(samples: int, epochs: float, batch: int) -> tuple[float, int]:
    # Fraction(str(...)) keeps 0.1 epochs exactly 1/10, so 99,388 x 4 / 128 is never 3105.8750000001 -> 3107
    exact = Fraction(samples) * Fraction(str(float(epochs))) / batch
    return float(Fraction(samples, batch)), math.ceil(exact)


def _seen(sequences: int, epochs: float) -> int:
    return round(Fraction(sequences) * Fraction(str(float(epochs))))


def _build(
    *,
    lengths: np.ndarray,
    stats: dict,
    seg_lengths: np.ndarray,
    pack_offsets: np.ndarray,
    capacity: int,
    setup: TrainingSetup,
    model: ModelShape | None,
    source: dict,
) -> Report:
    lengths = np.asarray(lengths, dtype=np.int64)
    seg_lengths = np.asarray(seg_lengths, dtype=np.int64)
    n_rows = int(lengths.shape[0])
    epochs = setup.epochs
    ebs = setup.effective_batch_size

    # ---- padding mode: every non-empty row, micro-batches padded to their longest
    shuffles = max(1, math.ceil(epochs))
    sim = simulate_padding(lengths, batch_size=setup.padding_batch_size, seed=setup.padding_seed, shuffles=shuffles)
    n_pad = int(np.count_nonzero(lengths))
    if n_pad == 0:
        raise PackerError(f"{source.get('path', 'the input')}: no row holds a token; nothing to report")
    longest = int(lengths.max())
    mean_pad = sim.tokens / n_pad
    spe_pad, total_pad = _steps(n_pad, epochs, ebs)
    padding = {
        "total_samples": n_rows,
        "samples_analyzed": n_pad,
        "per_device_train_batch_size": setup.padding_batch_size,
        "effective_batch_size": ebs,
        "num_gpus": setup.num_gpus,
        "gradient_accumulation_steps": setup.padding_accumulation,
        "global_max_length": longest,
        "avg_sequence_length": mean_pad,
        "padding_overhead": sim.overhead,
        "padding_overhead_global_max": 1.0 - mean_pad / longest,
        "num_train_epochs": epochs,
        "steps_per_epoch": spe_pad,
        "total_optimizer_steps": total_pad,
        "samples_per_step": ebs,
        "total_samples_seen": _seen(n_pad, epochs),
        "packing_efficiency": 1.0 - sim.overhead,
        "samples_per_pack": 1.0,
        "data_loss": 0.0,
        "data_loss_tokens": 0.0,
        "tokens_per_epoch": sim.tokens,
        "token_slots_per_epoch": sim.slots,
        "peak_micro_batch_slots": sim.peak_slots,
        "simulated_shuffles": shuffles,
    }

    # ---- packing mode: the plan
    n_packs = int(pack_offsets.shape[0] - 1)
    n_seg = int(seg_lengths.shape[0])
    if n_packs == 0:
        raise PackerError(
            f"{source.get('path', 'the input')}: every row was dropped or empty at capacity {capacity:,}; "
            "pass a larger --max-length or --overflow split"
        )
    pack_tokens = np.add.reduceat(seg_lengths, pack_offsets[:-1]) if n_seg else np.zeros(n_packs, np.int64)
    pack_sequences = np.diff(pack_offsets).astype(np.int64)
    tokens_out = int(seg_lengths.sum())
    efficiency = tokens_out / (n_packs * capacity)
    spe_pack, total_pack = _steps(n_packs, epochs, ebs)
    per_pack = n_seg / n_packs
    lost_rows = int(stats["sequences_dropped"] + stats["sequences_truncated"])
    lost_tokens = int(stats["tokens_dropped"] + stats["tokens_truncated"])
    packing = {
        "total_samples": n_rows,
        "samples_analyzed": n_seg,
        "per_device_train_batch_size": setup.packing_batch_size,
        "effective_batch_size": ebs,
        "num_gpus": setup.num_gpus,
        "gradient_accumulation_steps": setup.packing_accumulation,
        "global_max_length": capacity,
        "avg_sequence_length": tokens_out / n_seg,
        "padding_overhead": 1.0 - efficiency,
        "num_train_epochs": epochs,
        "steps_per_epoch": spe_pack,
        "total_optimizer_steps": total_pack,
        "samples_per_step": ebs * per_pack,
        "total_samples_seen": _seen(n_seg, epochs),
        "packing_efficiency": efficiency,
        "samples_per_pack": per_pack,
        "data_loss": lost_rows / n_rows if n_rows else 0.0,
        "data_loss_tokens": lost_tokens / stats["tokens_in"] if stats["tokens_in"] else 0.0,
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

    # ---- cost model: per epoch, each mode on its own data
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
    # the overflow policy dropped, which packing never has to process
    padding["relative_training_speed"] = 1.0
    packing["relative_training_speed"] = (tokens_out / cost_pack) / (sim.tokens / cost_pad)
    padding["relative_run_time"] = 1.0
    packing["relative_run_time"] = cost_pack / cost_pad
    padding["gpu_memory_usage"] = 1.0
    packing["gpu_memory_usage"] = packing["peak_micro_batch_slots"] / sim.peak_slots

    # ---- the recommended packing configuration
    ratio = Fraction(total_pack, total_pad)
    config = {
        "global_max_length": capacity,
        "per_device_train_batch_size": setup.packing_batch_size,
        "effective_batch_size": ebs,
        "gradient_accumulation_steps": setup.packing_accumulation,
        "num_train_epochs": epochs,
    }
    for name, steps in setup.step_settings:
        config[name] = max(1, math.floor(steps * ratio + Fraction(1, 2)))  # half up: 62.5 -> 63

    notes = _notes(padding, packing, setup, source, cost_model)
    return Report(
        source=source,
        setup=setup,
        padding=padding,
        packing=packing,
        cost_model=cost_model,
        recommended_config=config,
        step_ratio=float(ratio),
        notes=notes,
        distributions=Distributions(
            lengths=lengths, pack_tokens=pack_tokens.astype(np.int64), pack_sequences=pack_sequences,
            capacity=capacity,
        ),
    )


def _notes(pad: dict, pack: dict, setup: TrainingSetup, source: dict, cost: dict) -> dict:
    lost = []
    for key, what in (("sequences_dropped", "dropped (longer than the capacity)"),
                      ("sequences_truncated", "truncated to the capacity"),
                      ("sequences_split", "split into capacity-sized pieces"),
                      ("empty_sequences_skipped", "empty, skipped")):
        if pack[key]:
            lost.append(f"{pack[key]:,} {what}")
    analysed = "packing: " + "; ".join(lost) if lost else "every non-empty row in both"
    speed = f"real tokens per unit of cost, {cost['name']} cost model (below); run time " \
        f"{pack['relative_run_time']:.2f}× of padding's"
    if "attention_share" in pack:
        speed += f"; attention {pad['attention_share']:.0%} of padding cost, {pack['attention_share']:.0%} of packing"
    return {
        "total_samples": "rows in the input",
        "samples_analyzed": analysed,
        "per_device_train_batch_size": "packing: packs per device",
        "effective_batch_size": "padding: rows per step; packing: packs per step",
        "num_gpus": "same hardware",
        "gradient_accumulation_steps": "effective / (GPUs x per-device)",
        "global_max_length": "padding: the longest row (dynamic); packing: the capacity",
        "avg_sequence_length": "packing: the sequences in packs" if lost else "same input data",
        "padding_overhead": f"measured: {pad['simulated_shuffles']} seeded "
        f"shuffle{'s' if pad['simulated_shuffles'] > 1 else ''} in micro-batches of "
        f"{setup.padding_batch_size}, each padded to its longest; padding every row to "
        f"{pad['global_max_length']:,} would be {pad['padding_overhead_global_max']:.1%}",
        "num_train_epochs": "same",
        "steps_per_epoch": "samples / effective batch (exact)",
        "total_optimizer_steps": "ceil(samples x epochs / effective batch)",
        "samples_per_step": "packing: effective batch x sequences per pack",
        "total_samples_seen": "sequences trained on x epochs",
        "packing_efficiency": "real tokens / processed token slots",
        "samples_per_pack": f"min {pack['samples_per_pack_min']}, max {pack['samples_per_pack_max']}",
        "data_loss": f"sequences; tokens: {pack['data_loss_tokens']:.3%}",
        "relative_training_speed": speed,
        "gpu_memory_usage": f"token slots per micro-batch: padding peaks at {pad['peak_micro_batch_slots']:,} "
        f"(varies), packing {pack['peak_micro_batch_slots']:,} (constant)",
    }


def report_from_lengths(
    lengths: np.ndarray,
    *,
    capacity: int = fmt.DEFAULT_CAPACITY,
    strategy: str = DEFAULT_STRATEGY,
    overflow: str = DEFAULT_OVERFLOW,
    seed: int = 0,
    filler: float = DEFAULT_FILLER,
    setup: TrainingSetup = TrainingSetup(),
    model: ModelShape | None = None,
    source: dict | None = None,
) -> Report:
    """The report for rows of the given lengths, planned as ``packer pack`` would plan them.

    Args:
        lengths: int (rows,), tokens per row (zeros are empty rows).
        capacity, strategy, overflow, seed, filler: the packing options (see :func:`packer.plan.plan_packs`).
        setup: the training run.
        model: the model's shape, for the FLOPs cost model; None for the token cost model.
        source: what to record as the report's source (defaults to ``{"kind": "lengths"}``).

    Returns:
        A :class:`Report`.
    """
    lengths = np.asarray(lengths)
    segments = make_segments(lengths, capacity=capacity, overflow=overflow)
    plan = plan_packs(segments.length, capacity=capacity, strategy=strategy, seed=seed, filler=filler)
    stats = compute_stats(lengths.astype(np.int64), segments, plan)
    src = {"kind": "lengths"} if source is None else dict(source)
    src.update(capacity=plan.capacity, strategy=strategy, overflow=overflow, seed=seed, filler=filler,
               rows=segments.n_rows, tokens=segments.tokens_in, lengths_exact=True)
    return _build(
        lengths=lengths,
        stats=stats,
        seg_lengths=segments.length[plan.members],
        pack_offsets=plan.pack_offsets,
        capacity=plan.capacity,
        setup=setup,
        model=model,
        source=src,
    )


def is_packed_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding a packer manifest (of any file type: reading it checks that)."""
    return Path(path).is_dir() and os.path.lexists(Path(path) / fmt.MANIFEST_FILE)


def _read_plan_columns(reader: PackedReader) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Segment lengths (int64, in pack order), pack offsets (int64, packs + 1) and seq_index (int64) from shards.

    Read through :class:`packer.packed_reader.PackedReader`, which opens only the manifest's shard names inside the
    folder, regular files only, and checks the offsets and ``cu_seqlens`` it returns."""
    return reader.sequences()


def _spread(total: int, count: int, longest: int) -> np.ndarray:
    """``count`` lengths summing to ``total``: one ``longest``, the rest as even as integers allow."""
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    if count == 1:
        return np.array([total], dtype=np.int64)
    rest = total - longest
    out = np.full(count, rest // (count - 1), dtype=np.int64)
    out[1 : 1 + rest % (count - 1)] += 1
    out[0] = longest
    return out


def recover_lengths(manifest: dict, seg_lengths: np.ndarray, seq_index: np.ndarray) -> tuple[np.ndarray, bool]:
    """The input rows' lengths, from the packed sequences and the manifest's statistics.

    Rows that are in the packs whole (or split into pieces) get their exact length. The shards do not hold the
    rows that ``--overflow drop`` left out or the tokens ``truncate`` cut off; for those the manifest gives the
    count, the total and the longest row, and the lengths are spread evenly around that longest one. Returns
    the lengths (int64, rows) and whether they are all exact.
    """
    stats = manifest[fmt.MANIFEST_STATS]
    capacity = int(manifest[fmt.MANIFEST_CONFIG]["capacity"])
    n_rows = int(stats["sequences_in"])
    try:
        lengths = np.zeros(n_rows, dtype=np.int64)
    except (MemoryError, ValueError):
        raise PackerError(f"the manifest counts {n_rows:,} input rows, too many to hold their lengths; the folder is "
                          "damaged, re-run 'packer pack'") from None
    if seq_index.size and (seq_index.min() < 0 or seq_index.max() >= n_rows):
        raise PackerError(f"{fmt.SEQ_INDEX} holds a row outside [0, {n_rows:,}); the folder is damaged")
    np.add.at(lengths, seq_index, seg_lengths)
    longest = int(stats["max_length_in"])
    exact = True
    dropped, truncated = int(stats["sequences_dropped"]), int(stats["sequences_truncated"])
    if dropped:
        missing = np.flatnonzero(lengths == 0)
        if missing.shape[0] < dropped:
            raise PackerError(f"the manifest counts {dropped:,} dropped rows but only {missing.shape[0]:,} rows are "
                              "missing from the packs; the folder is damaged")
        lengths[missing[:dropped]] = _spread(int(stats["tokens_dropped"]), dropped, longest)
        # exact only when one row was dropped and no empty row competes for its position
        exact = dropped == 1 and missing.shape[0] == 1
    if truncated:
        at_cap = np.flatnonzero(lengths == capacity)
        exact = exact and truncated == 1 and at_cap.shape[0] == 1
        at_cap = at_cap[:truncated]
        if at_cap.shape[0] < truncated:
            raise PackerError(f"the manifest counts {truncated:,} truncated rows but fewer rows have {capacity:,} "
                              "tokens; the folder is damaged")
        lengths[at_cap] += _spread(int(stats["tokens_truncated"]), truncated, longest - capacity)
        exact = exact and truncated <= 1
    if int(lengths.sum()) != int(stats["tokens_in"]):
        raise PackerError(f"the packs and the manifest disagree on the input's tokens ({int(lengths.sum()):,} vs "
                          f"{int(stats['tokens_in']):,}); the folder is damaged, re-run 'packer pack'")
    return lengths, exact


def report_from_packed(
    folder: str | os.PathLike, *, setup: TrainingSetup = TrainingSetup(), model: ModelShape | None = None,
    allow_unsealed: bool = False,
) -> Report:
    """The report for an already packed folder: the plan and the lengths are read back from its shards.

    Only the ``cu_seqlens`` and ``seq_index`` columns are touched (memory-mapped); no token is read.
    ``allow_unsealed``: read a manifest without its checksum (an older packer's); refused by default.
    """
    folder = Path(folder)
    reader = PackedReader(folder, allow_unsealed=allow_unsealed)  # checks the manifest's schema and the shards
    manifest = reader.manifest
    cfg = manifest[fmt.MANIFEST_CONFIG]
    stats = manifest[fmt.MANIFEST_STATS]
    seg, offsets, index = _read_plan_columns(reader)
    if offsets.shape[0] - 1 != int(stats["packs"]):
        raise PackerError(f"{folder}: the shards hold {offsets.shape[0] - 1:,} packs, the manifest says "
                          f"{int(stats['packs']):,}; the folder is damaged, re-run 'packer pack'")
    lengths, exact = recover_lengths(manifest, seg, index)
    if not exact:
        log.debug("%s: the lengths of %d over-capacity rows are not in the packs; spread from the manifest's totals",
                 folder, int(stats["sequences_dropped"]) + int(stats["sequences_truncated"]))
    source = {
        "kind": "packed",
        "path": str(folder),
        "capacity": int(cfg["capacity"]),
        "strategy": cfg["strategy"],
        "overflow": cfg["overflow"],
        "seed": cfg.get("seed", 0),
        "filler": cfg.get("filler", DEFAULT_FILLER),
        "rows": int(stats["sequences_in"]),
        "tokens": int(stats["tokens_in"]),
        "lengths_exact": exact,
    }
    return _build(lengths=lengths, stats=stats, seg_lengths=seg, pack_offsets=offsets,
                  capacity=int(cfg["capacity"]), setup=setup, model=model, source=source)


def report_from_input(
    inputs,
    *,
    columns=None,
    capacity: int = fmt.DEFAULT_CAPACITY,
    strategy: str = DEFAULT_STRATEGY,
    overflow: str = DEFAULT_OVERFLOW,
    seed: int = 0,
    filler: float = DEFAULT_FILLER,
    setup: TrainingSetup = TrainingSetup(),
    model: ModelShape | None = None,
) -> Report:
    """The report for tokenized input (files, folders, globs; see :mod:`packer.reader`).

    Lengths come from the Arrow list offsets; no token is read.
    """
    from packer.reader import Columns, scan_inputs

    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    inp = scan_inputs(list(inputs), columns=columns or Columns())
    source = {"kind": "tokenized", "path": ", ".join(str(p) for p in inputs), "files": len(inp.files)}
    return report_from_lengths(inp.lengths, capacity=capacity, strategy=strategy, overflow=overflow, seed=seed,
                               filler=filler, setup=setup, model=model, source=source)


# ---------------------------------------------------------------------------------------------- rendering


def _int(v) -> str:
    return f"{int(v):,}"


def _steps_text(v: float) -> str:
    return f"{v:,.1f}" if abs(v - round(v)) > 1e-9 else f"{int(round(v)):,}"


def _epochs_text(v) -> str:
    return f"{v:g}"


def _cell(mode: str, name: str, col: dict, other: dict) -> str:
    v = col[name]
    if name in ("total_samples", "samples_analyzed", "per_device_train_batch_size", "effective_batch_size",
                "num_gpus", "gradient_accumulation_steps", "total_optimizer_steps", "total_samples_seen"):
        return _int(v)
    if name == "global_max_length":
        return f"{v:,} (dynamic)" if mode == "padding" else f"{v:,}"
    if name == "avg_sequence_length":
        return f"{v:,.0f}"
    if name in ("padding_overhead", "packing_efficiency"):
        return f"{v:.3%}" if 0 < v < 0.001 or 0.999 < v < 1 else f"{v:.2%}"  # 99.998% is not 100.00%
    if name == "num_train_epochs":
        return _epochs_text(v)
    if name == "steps_per_epoch":
        return _steps_text(v)
    if name == "samples_per_step":
        return _int(v) if mode == "padding" else f"{v:,.1f}"
    if name == "samples_per_pack":
        return "1" if mode == "padding" else f"{v:.2f}"
    if name == "data_loss":
        return f"{v:.2%}" if v == 0 or v >= 0.001 else f"{v:.3%}"
    if name == "relative_training_speed":
        return "1.0×" if mode == "padding" else f"{v:.2f}×"
    if name == "gpu_memory_usage":
        return "Baseline" if mode == "padding" else f"{v:.2f}× of the padding peak"
    raise AssertionError(name)


def render_config(report: Report, *, fmt_name: str = "yaml") -> str:
    """The recommended packing configuration as YAML (with comments) or JSON."""
    cfg = report.recommended_config
    if fmt_name == "json":
        return json.dumps(cfg, indent=2)
    if fmt_name != "yaml":
        raise PackerError(f"unknown config format {fmt_name!r}; choose yaml or json")
    lines = [f"# packer report: packing mode, {report.source.get('strategy')} strategy, "
             f"{report.packing['packs']:,} packs of {cfg['global_max_length']:,} tokens"]
    for key, value in cfg.items():
        if key in dict(report.setup.step_settings):
            old = dict(report.setup.step_settings)[key]
            lines.append(f"{key}: {value}  # padding run: {old:,} x {report.step_ratio:.4f}")
        else:
            lines.append(f"{key}: {value}")
    return "\n".join(lines)


def render_markdown(report: Report, *, config_format: str = "yaml") -> str:
    """The report as Markdown: the reference's sections and rows, both columns computed."""
    pad, pack, notes = report.padding, report.packing, report.notes
    src = report.source
    lines = ["# Padding vs Packing: Configuration Comparison", ""]
    where = src.get("path", "lengths")
    lines.append(
        f"Computed by `packer report` from {src['kind']} input `{where}`: {src['rows']:,} rows, "
        f"{src['tokens']:,} tokens; capacity {src['capacity']:,}, strategy `{src['strategy']}`, "
        f"overflow `{src['overflow']}`."
    )
    if not src.get("lengths_exact", True):
        lines.append(
            f"The lengths of the {pack['sequences_dropped'] + pack['sequences_truncated']:,} over-capacity rows "
            "are not in the packs; they are spread from the manifest's totals (the padding figures are close, "
            "not exact)."
        )
    lines += ["", "## Training Configuration Comparison", "",
              "| Parameter | Padding Mode | Packing Mode | Notes |",
              "|-----------|--------------|--------------|-------|"]
    for section, names in ROW_ORDER:
        lines.append(f"| **{section}** | | | |")
        for name in names:
            label = ROW_LABELS.get(name, name)
            lines.append(f"| {label} | {_cell('padding', name, pad, pack)} | {_cell('packing', name, pack, pad)} "
                         f"| {notes[name]} |")
    speed = pack["relative_training_speed"]
    steps_x = pad["total_optimizer_steps"] / pack["total_optimizer_steps"]
    lines += [
        "",
        "## Key Takeaways",
        "",
        f"1. **Efficiency**: packing cuts the padding from {pad['padding_overhead']:.1%} (measured, micro-batches "
        f"of {report.setup.padding_batch_size}) to {_cell('packing', 'padding_overhead', pack, pad)} of the "
        "processed tokens",
        f"2. **Speed**: {speed:.2f}× the padding run's throughput under the {report.cost_model['name']} cost model "
        f"({abs(speed - 1):.0%} {'faster' if speed >= 1 else 'slower'}); the whole run takes "
        f"{pack['relative_run_time']:.2f}× the padding run's time",
        f"3. **Dynamics**: a different notion of \"step\": packing processes {pack['samples_per_pack']:.1f}× more "
        f"samples per optimizer step ({pack['samples_per_step']:,.0f} vs {pad['samples_per_step']:,})",
        f"4. **Equivalence**: {pack['total_samples_seen']:,} vs {pad['total_samples_seen']:,} samples seen over "
        f"{_epochs_text(pad['num_train_epochs'])} epochs ({pack['data_loss']:.2%} of the rows lost to the "
        f"overflow policy), in {steps_x:.1f}× fewer optimizer steps "
        f"({pack['total_optimizer_steps']:,} vs {pad['total_optimizer_steps']:,})",
        f"5. **Memory**: a packing micro-batch holds {pack['peak_micro_batch_slots']:,} token slots every step; "
        f"padding micro-batches vary up to {pad['peak_micro_batch_slots']:,}",
        "",
        "## Cost Model",
        "",
        f"**{report.cost_model['name']}**: {report.cost_model['description']}",
    ]
    if "model" in report.cost_model:
        m = report.cost_model["model"]
        est = f" (estimated: {', '.join(m['estimated'])})" if m["estimated"] else ""
        lines.append(f"Model: {m['num_params']:,} parameters, {m['num_layers']} layers, hidden size "
                     f"{m['hidden_size']:,}{est}. Attention is {pad['attention_share']:.1%} of the padding run's "
                     f"cost and {pack['attention_share']:.1%} of the packing run's.")
    lines += [
        "",
        f"Per epoch: padding {pad['token_slots_per_epoch']:,.0f} token slots for {pad['tokens_per_epoch']:,} "
        f"tokens; packing {pack['token_slots_per_epoch']:,} slots for {pack['tokens_per_epoch']:,} tokens. "
        "Not modelled: waits for the slowest GPU at each optimizer step, kernel efficiency at different sequence "
        "lengths, data loading.",
        "",
        "## Recommendation",
        "",
        f"**{'Use packing mode' if speed >= 1 else 'Packing is not faster here; if you pack anyway, use'}** "
        f"with (optimizer steps {pack['total_optimizer_steps']:,} / "
        f"{pad['total_optimizer_steps']:,} = {report.step_ratio:.4f} of the padding run; "
        "step-based settings rescaled by that ratio):",
        "",
        f"```{config_format}",
        render_config(report, fmt_name=config_format),
        "```",
    ]
    if not report.setup.step_settings:
        lines += ["", f"Scale `eval_steps`, `save_steps`, `warmup_steps` and other step-based settings by "
                      f"{report.step_ratio:.4f} (or pass them with --eval-steps/--save-steps/--warmup-steps/"
                      "--step-setting NAME=STEPS and the report does it)."]
    return "\n".join(lines) + "\n"


def render_json(report: Report) -> str:
    """The report as JSON (:meth:`Report.to_dict`)."""
    return json.dumps(report.to_dict(), indent=2)
