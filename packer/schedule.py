"""The training schedule of a data-parallel epoch loop: one source of truth for ``PackSampler`` and ``packer report``.

Pure numpy, no torch: :class:`packer.torch.PackSampler` takes its sizes from :func:`epoch_schedule`, and
:mod:`packer.report` predicts the run from the same function, so the two cannot drift apart.

What one epoch of ``n`` samples (packs, or rows) on ``world`` ranks does, with ``batch_size`` samples per
micro-batch and ``grad_accum`` micro-batches per optimizer step:

* ``remainder="leave_out"`` (``PackSampler``): every rank gets ``n // world`` samples; the ``n % world`` left over
  are not trained in that epoch. Which ones changes with every epoch's seeded shuffle
  (``numpy.random.default_rng([seed, epoch]).permutation(n)``, truncated; see :func:`kept_samples`).
* ``remainder="repeat"`` (``torch.utils.data.DistributedSampler(drop_last=False)``): every rank gets
  ``ceil(n / world)`` samples; the ``-n % world`` missing ones are repeated from the start of the order.
* No batch runs across an epoch boundary: a rank's epoch is ``ceil(per_rank / batch_size)`` micro-batches
  (the DataLoader keeps a short last one), and ``ceil(micro_batches / grad_accum)`` optimizer steps (the last
  may accumulate fewer micro-batches). This is Hugging Face ``Trainer``'s ``num_update_steps_per_epoch``.
* Over ``epochs`` (may be fractional) the run makes ``ceil(epochs x steps_per_epoch)`` optimizer steps
  (``Trainer``'s ``max_steps``); epochs are exact decimals (0.1 is 1/10, not the nearest float).

Example:
    >>> s = epoch_schedule(33, world=4, batch_size=1, grad_accum=32)
    >>> s.per_rank, s.left_out, s.steps_per_epoch, s.samples_per_epoch
    (8, 1, 1, 32)
    >>> total_steps(s.steps_per_epoch, 4)
    4
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from packer.errors import PackerError

REMAINDERS = ("leave_out", "repeat")


def _positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise PackerError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class EpochSchedule:
    """One epoch of a data-parallel loop (see the module docstring for the rules).

    Attributes:
        samples: items in the dataset (packs in packing mode, rows in padding mode).
        world: data-parallel ranks.
        batch_size: samples per micro-batch on one rank.
        grad_accum: micro-batches per optimizer step.
        per_rank: samples each rank trains on per epoch.
        left_out: samples not trained in an epoch (``leave_out``), else 0.
        repeated: samples trained twice in an epoch (``repeat``), else 0.
        micro_batches: micro-batches per rank per epoch (the last may be short).
        steps_per_epoch: optimizer steps per epoch (the last may be partial).
        last_step_micro_batches: micro-batches accumulated in an epoch's last step (``grad_accum`` if full).
    """

    samples: int
    world: int
    batch_size: int
    grad_accum: int
    per_rank: int
    left_out: int
    repeated: int
    micro_batches: int
    steps_per_epoch: int
    last_step_micro_batches: int

    @property
    def samples_per_step(self) -> int:
        """Samples in a full optimizer step over all ranks (the effective batch)."""
        return self.world * self.batch_size * self.grad_accum

    @property
    def samples_per_epoch(self) -> int:
        """Samples trained per epoch over all ranks (``per_rank * world``; repeats counted twice)."""
        return self.per_rank * self.world

    @property
    def full_steps_per_epoch(self) -> bool:
        """Whether every step of an epoch, its last included, holds the full effective batch."""
        return self.per_rank % (self.batch_size * self.grad_accum) == 0


def epoch_schedule(
    samples: int, *, world: int, batch_size: int = 1, grad_accum: int = 1, remainder: str = "leave_out"
) -> EpochSchedule:
    """The schedule of one epoch of ``samples`` items (module docstring: the rules).

    Args:
        samples: items in the dataset, >= ``world`` for ``leave_out`` (every rank needs one).
        world: data-parallel ranks.
        batch_size: samples per micro-batch on one rank.
        grad_accum: micro-batches per optimizer step.
        remainder: ``"leave_out"`` (``PackSampler``) or ``"repeat"`` (``DistributedSampler``).

    Raises:
        PackerError: a non-positive count, an unknown remainder, or fewer samples than ranks with ``leave_out``.
    """
    world = _positive("world", world)
    batch_size = _positive("batch_size", batch_size)
    grad_accum = _positive("grad_accum", grad_accum)
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 0:
        raise PackerError(f"samples must be a non-negative integer, got {samples!r}")
    samples = int(samples)
    if remainder == "leave_out":
        if samples < world:
            raise PackerError(f"{samples} samples cannot give each of {world} ranks one; pack more data or use "
                             "fewer ranks")
        per_rank, left_out, repeated = samples // world, samples % world, 0
    elif remainder == "repeat":
        per_rank, left_out, repeated = -(-samples // world), 0, -samples % world
    else:
        raise PackerError(f"remainder must be one of {REMAINDERS}, got {remainder!r}")
    micro = -(-per_rank // batch_size)
    steps = -(-micro // grad_accum)
    last = micro - (steps - 1) * grad_accum if steps else 0
    return EpochSchedule(samples, world, batch_size, grad_accum, per_rank, left_out, repeated, micro, steps, last)


def exact_epochs(epochs) -> Fraction:
    """``epochs`` as an exact fraction of its decimal form (0.1 -> 1/10), > 0.

    Raises:
        PackerError: not a positive finite number.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, (int, float, np.integer, np.floating)) \
            or not math.isfinite(epochs) or epochs <= 0:
        raise PackerError(f"epochs must be a positive number, got {epochs!r}")
    return Fraction(int(epochs)) if float(epochs).is_integer() else Fraction(str(float(epochs)))


def total_steps(steps_per_epoch: int, epochs) -> int:
    """Optimizer steps of the whole run: ``ceil(epochs x steps_per_epoch)`` (``Trainer``'s ``max_steps``)."""
    return math.ceil(exact_epochs(epochs) * steps_per_epoch)


def kept_samples(n: int, *, world: int, seed: int = 0, epoch: int = 0, shuffle: bool = True) -> np.ndarray:
    """The samples trained in ``epoch`` with ``remainder="leave_out"``: int64 (``world * (n // world)``,).

    The order is ``PackSampler``'s: ``numpy.random.default_rng([seed, epoch]).permutation(n)`` (``arange(n)``
    without shuffling), truncated to a multiple of ``world``. The set does not depend on balancing: balancing
    only reorders the kept samples.
    """
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n, dtype=np.int64)
    return order[: (n // world) * world]


@dataclass(frozen=True)
class RunCounts:
    """What a whole ``leave_out`` run trains on.

    Attributes:
        steps: optimizer steps.
        samples: samples (packs) trained, repeats over epochs counted.
        sequences: sequences trained (each pack counts its sequences).
        exact: False when a fractional last epoch makes ``samples``/``sequences`` an estimate: the packs of its
            first steps depend on the balancing, which needs the packs' costs; the estimate counts that epoch's
            kept packs at their mean number of sequences.
    """

    steps: int
    samples: int
    sequences: int
    exact: bool


def run_counts(
    pack_sequences: np.ndarray,
    *,
    world: int,
    batch_size: int = 1,
    grad_accum: int = 1,
    epochs=1,
    seed: int = 0,
    shuffle: bool = True,
) -> RunCounts:
    """Steps, packs and sequences of a ``PackSampler`` run over ``epochs`` (exact for whole epochs).

    Args:
        pack_sequences: int (packs,), sequences in each pack.
        world, batch_size, grad_accum: as :func:`epoch_schedule`.
        epochs: positive, may be fractional: the last epoch then runs only the steps left of
            :func:`total_steps`.
        seed, shuffle: ``PackSampler``'s (they choose the packs each epoch leaves out).

    Example:
        >>> run_counts(np.array([1, 2, 3, 4, 5]), world=2, epochs=2)   # each epoch leaves one pack out
        RunCounts(steps=4, samples=8, sequences=25, exact=True)
    """
    seqs = np.asarray(pack_sequences, dtype=np.int64)
    s = epoch_schedule(int(seqs.shape[0]), world=world, batch_size=batch_size, grad_accum=grad_accum)
    steps = total_steps(s.steps_per_epoch, epochs)
    full_epochs, rest = divmod(steps, s.steps_per_epoch)
    samples = sequences = 0
    for epoch in range(full_epochs):
        kept = kept_samples(s.samples, world=s.world, seed=seed, epoch=epoch, shuffle=shuffle)
        samples += kept.shape[0]
        sequences += int(seqs[kept].sum())
    if not rest:
        return RunCounts(steps, samples, sequences, True)
    kept = kept_samples(s.samples, world=s.world, seed=seed, epoch=full_epochs, shuffle=shuffle)
    part = min(rest * s.batch_size * s.grad_accum, s.per_rank) * s.world
    samples += part
    sequences += round(Fraction(int(seqs[kept].sum()) * part, kept.shape[0]))
    return RunCounts(steps, samples, sequences, part == kept.shape[0])
