"""Padding mode, simulated: seeded shuffles cut into micro-batches, each padded to its longest sequence."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from packer.report.training import positive_int


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
    batch_size = positive_int(batch_size, "batch_size", "pass the per-device batch")
    shuffles = positive_int(shuffles, "shuffles", "simulate at least one epoch")
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
