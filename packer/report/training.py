"""The training run the report compares on, and the model shape its FLOPs cost model needs.

:class:`TrainingSetup` (GPUs, batches, epochs, seeds, the step settings to rescale; defaults: the reference run),
:class:`ModelShape` and :func:`parse_count` (``7B`` -> 7000000000), the reference run's constants and the cost
models' definitions (:data:`COST_MODELS`). Plain validated data; nothing here computes a figure of the report.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from packer.errors import PackerError
from packer.stats import LOSS_WARNING

# The reference run's setup (the hand-written comparison docs/report.md starts from); the CLI's defaults.
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

_STEP_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_COUNT = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMbBtT]?)\s*$")
_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "t": 10**12}


def positive_int(value, what: str, fix: str) -> int:
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
        positive_int(self.num_gpus, "--num-gpus", "pass the number of data-parallel GPUs, e.g. --num-gpus 4")
        positive_int(self.effective_batch_size, "--effective-batch-size",
                      "pass the samples per optimizer step over all GPUs, e.g. --effective-batch-size 128")
        positive_int(self.padding_batch_size, "--padding-batch-size", "e.g. --padding-batch-size 2")
        positive_int(self.packing_batch_size, "--packing-batch-size", "e.g. --packing-batch-size 1")
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
            checked.append((name, positive_int(steps, name, f"pass a positive number of steps for {name}")))
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
                positive_int(value, flag, f"pass the model's {name.replace('_', ' ')}")
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
