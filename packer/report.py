"""The padding-vs-packing report: the user's configuration comparison, computed from the data and the plan.

The user's reference (``shared/seed/padding_vs_packing.md``) compares a padded and a packed training run by hand,
with estimates (``~40-50%`` padding, ``~1.3-1.5x`` faster). This module computes every row of that table from the
sequence lengths and the actual packing plan, for the run the user will get:

* **Same data on both sides.** The padding run trains the same sequences as the packs hold: the same max length
  and overflow policy (``drop`` leaves the long rows out of both, ``truncate`` cuts them in both, ``split`` turns
  them into the same pieces). ``TrainingSetup(padding_full_rows=True)`` pads every row whole instead, as the
  reference's padding run did (its figures are reproduced that way), and the report warns that the columns then
  compare different data.
* **Padding mode** is simulated: the rows are shuffled (seeded) and cut into micro-batches of the per-device batch
  size, each padded to its longest sequence (dynamic padding, as ``DataCollatorWithPadding`` does). One shuffle per
  epoch (``ceil(epochs)`` of them); the figures are per-epoch means.
* **Packing mode** comes from the plan (packs of ``capacity`` tokens, each padded to the capacity when the torch
  layer reads it), trained as ``PackSampler`` trains it. Its schedule comes from :mod:`packer.schedule`, the
  function ``PackSampler`` itself uses: every GPU gets ``packs // num_gpus`` packs per epoch (the ``packs %
  num_gpus`` others are left out, different ones each epoch), no batch runs across an epoch boundary, an epoch is
  ``ceil(packs_per_gpu / (per_device_batch x accumulation))`` optimizer steps, the run ``ceil(epochs x that)``
  (``Trainer``'s ``max_steps``). The sequences seen are counted from the packs each epoch keeps under the
  sampler's seeded shuffle (exact for whole epochs).
* **Padding steps** keep the reference's count, ``rows / effective_batch`` per epoch (776.5 for the reference run)
  and ``ceil(rows x epochs / effective_batch)`` in all (3,106); ``loop_steps_per_epoch`` and
  ``loop_total_optimizer_steps`` give what an epoch loop makes of it (``DistributedSampler`` + ``Trainer``: 777
  and 3,108). The step ratio that rescales step settings compares the two loops.
* **Warnings** (:class:`ReportWarning`) name what makes the comparison or the advice doubtful: less than one
  optimizer step per epoch, fewer than :data:`MIN_STEPS_PER_EPOCH` steps per epoch, rows, tokens or packs lost
  above ``loss_warning``, different data in the two columns, step settings floored to 1. The report recommends
  packing (``use_packing``) only when it is faster and nothing is doubtful.
* **Relative training speed** follows a stated cost model (:data:`COST_MODELS`): tokens processed, padding
  included; or, given the model's shape, training FLOPs with the attention term (``sum(L**2)`` over the segments of
  a pack with varlen attention; ``batch * longest**2`` for a padded micro-batch).

Everything returned is plain data: :class:`Report` (a frozen dataclass) and its :meth:`Report.to_dict`;
:mod:`packer.report_render` turns it into Markdown, JSON and the configuration blocks.

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
    >>> [w.code for w in r.warnings]
    ['under_one_step_per_epoch', 'few_steps_per_epoch']
"""
from __future__ import annotations

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
from packer.schedule import epoch_schedule, exact_epochs, run_counts, total_steps
from packer.stats import LOSS_WARNING, compute_stats, loss_shares

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

DATA_LOSS_WARNING = LOSS_WARNING
"""Share of the rows, tokens or packs lost above which the report warns (and does not recommend packing): the same
threshold as ``packer pack``'s warning."""
MIN_STEPS_PER_EPOCH = 10
"""Fewer optimizer steps per epoch than this is too few for a learning-rate schedule (warmup, decay)."""
TRAINING_ARGUMENTS_STEP_FIELDS = ("eval_steps", "save_steps", "logging_steps", "warmup_steps", "max_steps")
"""Step settings that are Hugging Face ``TrainingArguments`` fields; other names go in a block of their own."""
WARNING_CODES = ("under_one_step_per_epoch", "few_steps_per_epoch", "data_loss", "packs_left_out", "different_data",
                 "step_setting_floored")
OPTIONAL_STATS = (("sequences_untrainable", "left with no trained token"),)
"""Statistics a manifest may hold (newer packers); shown in the notes when present."""

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
        sampler_seed: ``PackSampler``'s seed in the packing run (``--sampler-seed``): it chooses the packs each
            epoch leaves out, so the sequences seen are exact for it.
        padding_full_rows: pad every row whole in the padding column, as the reference's padding run did
            (``--padding-full-rows``). Default False: the padding run trains the same sequences as the packs hold
            (same max length and overflow policy), so the two columns compare the same data.
        loss_warning: share of rows, tokens or packs lost above which the report warns (``--loss-warning``).

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
    sampler_seed: int = 0
    padding_full_rows: bool = False
    loss_warning: float = DATA_LOSS_WARNING

    def __post_init__(self):
        _positive_int(self.num_gpus, "--num-gpus", "pass the number of data-parallel GPUs, e.g. --num-gpus 4")
        _positive_int(self.effective_batch_size, "--effective-batch-size",
                      "pass the samples per optimizer step over all GPUs, e.g. --effective-batch-size 128")
        _positive_int(self.padding_batch_size, "--padding-batch-size", "e.g. --padding-batch-size 2")
        _positive_int(self.packing_batch_size, "--packing-batch-size", "e.g. --packing-batch-size 1")
        for name in ("padding_seed", "sampler_seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise PackerError(f"--{name.replace('_', '-')} must be a non-negative integer, got {value!r}")
        if not isinstance(self.padding_full_rows, bool):
            raise PackerError(f"padding_full_rows must be True or False, got {self.padding_full_rows!r}")
        loss = self.loss_warning
        if isinstance(loss, bool) or not isinstance(loss, (int, float, np.integer, np.floating)) \
                or not 0 <= loss < 1:
            raise PackerError(f"--loss-warning must be a fraction in [0, 1), got {loss!r}; e.g. --loss-warning 0.01")
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


def _build(
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
        trained=segments.length.astype(np.int64),
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
    # the sequences in input order (row, then piece): the order make_segments gives them, so a packed folder and
    # its tokenized input simulate the same padding-mode shuffles
    trained = seg[np.lexsort((-seg, index))]
    return _build(lengths=lengths, trained=trained, stats=stats, seg_lengths=seg, pack_offsets=offsets,
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
    from packer.input import Columns, scan_inputs

    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    inp = scan_inputs(list(inputs), columns=columns or Columns())
    source = {"kind": "tokenized", "path": ", ".join(str(p) for p in inputs), "files": len(inp.files)}
    return report_from_lengths(inp.lengths, capacity=capacity, strategy=strategy, overflow=overflow, seed=seed,
                               filler=filler, setup=setup, model=model, source=source)
