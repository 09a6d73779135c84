"""Packing plans: validate lengths, apply the overflow policy, run a kernel, return flat arrays.

This is the public face of :mod:`packer.kernels`; it checks its input and raises :class:`packer.errors.PackerError`
with a message that says what to change. Nothing here reads or writes files.

Example:
    >>> import numpy as np
    >>> from packer.plan import plan_packs
    >>> plan = plan_packs(np.array([7, 3, 5, 5], dtype=np.int32), capacity=10)
    >>> plan.n_packs, plan.pack_offsets.tolist(), plan.members.tolist()
    (2, [0, 2, 4], [0, 1, 2, 3])
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from packer import kernels
from packer.errors import PackerError

STRATEGIES = {
    "bfd": "best-fit decreasing (default): longest first, each into the fullest pack it fits. At the bound "
    "(packs <= ceil(tokens / capacity) + 1 on reference-like data), but packs are sorted by length: about 15% of "
    "packs hold only below-median sequences.",
    "ffd": "first-fit decreasing: longest first, each into the first pack it fits. Same efficiency and the same "
    "length-sorted packs as bfd; kept for comparison with other packers.",
    "mixed": "best fit in a seeded random order, with the shortest --filler share of sequences held back and "
    "placed last, longest first, to fill the gaps. Within a few packs of the bound (+2 on 99,388 reference-like "
    "sequences) while only about 3% of packs hold only below-median sequences.",
    "shuffle": "best fit in a seeded random order: the most mixed packs (none holds only below-median "
    "sequences) at a small efficiency cost (about 0.1 point on reference-like data).",
}
DEFAULT_STRATEGY = "bfd"
DEFAULT_FILLER = 0.2
OVERFLOW_POLICIES = {
    "drop": "sequences longer than the capacity are left out (counted and reported)",
    "truncate": "sequences longer than the capacity keep their first `capacity` tokens (the rest is counted)",
    "split": "sequences longer than the capacity are cut into capacity-sized chunks, each packed as a sequence",
}
DEFAULT_OVERFLOW = "drop"
MAX_CAPACITY = 2**24
"""The kernels keep O(capacity) tables (best fit: 9 bytes per token of capacity): 16,777,216 tokens needs about
300 MB; a capacity near 2**31 would ask for 20 GB and crash instead of erroring."""


@dataclass(frozen=True)
class Segments:
    """The units a plan places: whole input rows, or capacity-sized pieces of long ones.

    Attributes:
        row: int64 (m,), the input row each segment comes from (ascending).
        start: int64 (m,), offset of the segment's first token in that row.
        length: int32 (m,), tokens in the segment, ``1 <= length <= capacity``.
        n_rows: rows in the input.
        tokens_in: tokens in the input.
        empty_rows: rows with no tokens (skipped).
        dropped_rows, dropped_tokens: rows longer than the capacity left out whole (``drop``).
        truncated_rows, truncated_tokens: rows cut to the capacity, and the tokens cut off (``truncate``).
        split_rows: rows cut into several segments (``split``; no token is lost).
    """

    row: np.ndarray
    start: np.ndarray
    length: np.ndarray
    n_rows: int
    tokens_in: int
    empty_rows: int
    dropped_rows: int
    dropped_tokens: int
    truncated_rows: int
    truncated_tokens: int
    split_rows: int

    @property
    def tokens(self) -> int:
        return int(self.length.sum(dtype=np.int64))


def _check_capacity(capacity) -> int:
    if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)):
        raise PackerError(f"capacity must be an integer, got {capacity!r}")
    if capacity <= 0:
        raise PackerError(f"capacity must be positive, got {capacity}; pass 20000 (--max-length 20000) or another size")
    if capacity > MAX_CAPACITY:
        raise PackerError(f"capacity {capacity:,} is more than packer supports ({MAX_CAPACITY:,} tokens, bounded by "
                          "the memory of the packing kernels); pass a smaller capacity (--max-length)")
    return int(capacity)


def make_segments(lengths: np.ndarray, *, capacity: int, overflow: str = DEFAULT_OVERFLOW) -> Segments:
    """Apply the overflow policy to per-row ``lengths`` (int, (n,)) and return what the kernel will place.

    Example:
        >>> s = make_segments(np.array([3, 0, 25], dtype=np.int64), capacity=10, overflow="split")
        >>> s.row.tolist(), s.start.tolist(), s.length.tolist(), s.empty_rows
        ([0, 2, 2, 2], [0, 0, 10, 20], [3, 10, 10, 5], 1)
    """
    capacity = _check_capacity(capacity)
    if overflow not in OVERFLOW_POLICIES:
        raise PackerError(f"unknown overflow policy {overflow!r}; choose one of {', '.join(OVERFLOW_POLICIES)}")
    lengths = np.asarray(lengths)
    if lengths.ndim != 1 or not np.issubdtype(lengths.dtype, np.integer):
        raise PackerError(f"lengths must be a 1-D integer array, got {lengths.dtype} with shape {lengths.shape}")
    if lengths.size and lengths.min() < 0:
        bad = int(np.argmax(lengths < 0))
        raise PackerError(f"row {bad} has a negative length {int(lengths[bad])}")
    lengths = lengths.astype(np.int64, copy=False)
    n = lengths.shape[0]
    tokens_in = int(lengths.sum())
    nonempty = lengths > 0
    long = lengths > capacity
    counts = dict(
        n_rows=n,
        tokens_in=tokens_in,
        empty_rows=int(n - np.count_nonzero(nonempty)),
        dropped_rows=0,
        dropped_tokens=0,
        truncated_rows=0,
        truncated_tokens=0,
        split_rows=0,
    )
    if overflow == "split":
        chunks = np.where(nonempty, -(-lengths // capacity), 0)
        row = np.repeat(np.arange(n, dtype=np.int64), chunks)
        first = np.cumsum(chunks) - chunks  # first segment of each row
        piece = np.arange(row.shape[0], dtype=np.int64) - np.repeat(first, chunks)
        start = piece * capacity
        length = np.minimum(lengths[row] - start, capacity)
        counts["split_rows"] = int(np.count_nonzero(long))
    else:
        keep = nonempty & ~long if overflow == "drop" else nonempty
        row = np.flatnonzero(keep).astype(np.int64)
        start = np.zeros(row.shape[0], dtype=np.int64)
        length = np.minimum(lengths[row], capacity)
        if overflow == "drop":
            counts["dropped_rows"] = int(np.count_nonzero(long))
            counts["dropped_tokens"] = int(lengths[long].sum())
        else:
            counts["truncated_rows"] = int(np.count_nonzero(long))
            counts["truncated_tokens"] = int((lengths[long] - capacity).sum())
    return Segments(row=row, start=start, length=length.astype(np.int32), **counts)


@dataclass(frozen=True)
class PackPlan:
    """Where every sequence goes, as flat arrays (CSR layout).

    Attributes:
        pack_ids: int32 (n,), the pack of sequence ``i``.
        members: int64 (n,), sequence indices grouped by pack, in placement order within a pack.
        pack_offsets: int64 (n_packs + 1,), pack ``p`` holds ``members[pack_offsets[p]:pack_offsets[p + 1]]``.
        pack_tokens: int64 (n_packs,), tokens in each pack.
        capacity, strategy, seed, filler: how the plan was made.
        pack_tokens_padded: int64 (n_packs,), tokens per pack with every sequence counted at its padded length
            (plans made with ``pad_to_multiple_of``; None otherwise). ``pack_tokens`` always counts real tokens.
    """

    pack_ids: np.ndarray
    members: np.ndarray
    pack_offsets: np.ndarray
    pack_tokens: np.ndarray
    capacity: int
    strategy: str
    seed: int
    filler: float
    pack_tokens_padded: np.ndarray | None = None

    @property
    def n_packs(self) -> int:
        return int(self.pack_tokens.shape[0])

    @property
    def tokens(self) -> int:
        return int(self.pack_tokens.sum())

    @property
    def lower_bound(self) -> int:
        """``ceil(tokens / capacity)``: no plan can use fewer packs."""
        return math.ceil(self.tokens / self.capacity)

    @property
    def efficiency(self) -> float:
        """``tokens / (packs * capacity)``; 1.0 for an empty plan."""
        return self.tokens / (self.n_packs * self.capacity) if self.n_packs else 1.0


PAD_NOT_POSITIVE = "not a positive integer"
PAD_NOT_DIVISOR = "does not divide the capacity"


def pad_to_multiple_of_fault(multiple, capacity: int) -> str | None:
    """The one rule for ``pad_to_multiple_of`` (N): a positive integer that divides the capacity.

    The capacity must be a multiple of N, so that a sequence that fits a pack still fits once padded and the
    padding at a pack's end is a whole number of aligned blocks too (context parallelism cuts every span of the
    row into ``2 * cp_size`` equal chunks). Used by :func:`check_pad_to_multiple_of`, ``PackConfig`` and the
    manifest's schema (:func:`packer.format.manifest_problems`), which each word the message for their caller.

    Args:
        multiple: N as given (None: no alignment, always fine); ints and numpy integers count, bools do not.
        capacity: tokens per pack, a positive integer.

    Returns:
        None when N is fine, else :data:`PAD_NOT_POSITIVE` or :data:`PAD_NOT_DIVISOR` (what is wrong).
    """
    if multiple is None:
        return None
    if isinstance(multiple, bool) or not isinstance(multiple, (int, np.integer)) or multiple < 1:
        return PAD_NOT_POSITIVE
    return PAD_NOT_DIVISOR if capacity % multiple else None


def check_pad_to_multiple_of(multiple, capacity: int) -> int | None:
    """Validate ``pad_to_multiple_of`` (``--pad-to-multiple-of``) against the capacity
    (:func:`pad_to_multiple_of_fault`); returns it as an int.

    Raises:
        PackerError: not a positive integer, or the capacity is not a multiple of it.
    """
    fault = pad_to_multiple_of_fault(multiple, capacity)
    if multiple is None:
        return None
    if fault == PAD_NOT_POSITIVE:
        raise PackerError(f"pad_to_multiple_of (--pad-to-multiple-of) must be a positive integer, got {multiple!r}")
    if fault == PAD_NOT_DIVISOR:
        lower = capacity // multiple * multiple
        raise PackerError(
            f"capacity (--max-length) {capacity:,} is not a multiple of pad_to_multiple_of (--pad-to-multiple-of) "
            f"{int(multiple)}; pass --max-length {lower:,} or {lower + int(multiple):,}, or another multiple"
        )
    return int(multiple)


def padded_lengths(lengths: np.ndarray, multiple: int) -> np.ndarray:
    """Each length rounded up to a multiple of ``multiple``: ``ceil(n / multiple) * multiple`` (same dtype).

    Example:
        >>> padded_lengths(np.array([1, 8, 9, 16], dtype=np.int32), 8).tolist()
        [8, 8, 16, 16]
    """
    m = lengths.dtype.type(multiple)
    return (lengths + (m - 1)) // m * m


def placement_order(lengths: np.ndarray, *, capacity: int, strategy: str, seed: int, filler: float) -> np.ndarray:
    """The order a strategy places sequences in: int64 (n,) permutation of ``range(n)``."""
    if strategy in ("bfd", "ffd"):
        return kernels.sort_desc(lengths, capacity)
    rng = np.random.default_rng(seed)
    if strategy == "shuffle":
        return rng.permutation(lengths.shape[0]).astype(np.int64, copy=False)
    by_length = kernels.sort_desc(lengths, capacity)
    n_fill = int(filler * lengths.shape[0])
    body = by_length[: lengths.shape[0] - n_fill]
    return np.concatenate([body[rng.permutation(body.shape[0])], by_length[lengths.shape[0] - n_fill :]])


def plan_packs(
    lengths: np.ndarray,
    *,
    capacity: int = 20_000,
    strategy: str = DEFAULT_STRATEGY,
    seed: int = 0,
    filler: float = DEFAULT_FILLER,
    pad_to_multiple_of: int | None = None,
) -> PackPlan:
    """Pack sequences of the given lengths into packs of ``capacity`` tokens.

    Args:
        lengths: integer array (n,), every value in ``[1, capacity]`` (apply :func:`make_segments` first to
            handle empty and over-long rows).
        capacity: tokens per pack.
        strategy: one of :data:`STRATEGIES`.
        seed: seeds the shuffle of ``mixed`` and ``shuffle`` (ignored by ``bfd``/``ffd``).
        filler: for ``mixed``, the share of sequences (the shortest) held back to fill gaps, in ``[0, 1)``.
        pad_to_multiple_of: plan every sequence at its length rounded up to a multiple of this (see
            :func:`check_pad_to_multiple_of`), so that the packs still fit with that padding; the plan's
            ``pack_tokens`` count real tokens and ``pack_tokens_padded`` the padded ones. Default: no padding.

    Returns:
        A :class:`PackPlan`; the same input and arguments always give the same plan.
    """
    capacity = _check_capacity(capacity)
    multiple = check_pad_to_multiple_of(pad_to_multiple_of, capacity)
    if strategy not in STRATEGIES:
        raise PackerError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if isinstance(filler, bool) or not isinstance(filler, (int, float, np.floating)) or not 0 <= filler < 1:
        raise PackerError(f"filler must be a fraction in [0, 1), got {filler!r}")
    lengths = np.asarray(lengths)
    if lengths.ndim != 1 or not np.issubdtype(lengths.dtype, np.integer):
        raise PackerError(f"lengths must be a 1-D integer array, got {lengths.dtype} with shape {lengths.shape}")
    if lengths.size:
        if lengths.min() < 1:
            bad = int(np.argmax(lengths < 1))
            raise PackerError(f"sequence {bad} has length {int(lengths[bad])}; every sequence needs >= 1 token")
        if lengths.max() > capacity:
            bad = int(np.argmax(lengths > capacity))
            raise PackerError(
                f"sequence {bad} has {int(lengths[bad]):,} tokens, more than the capacity {capacity:,}; "
                "apply an overflow policy first (--overflow drop, truncate or split)"
            )
    lengths = lengths.astype(np.int32, copy=False)
    if multiple is not None:
        return _plan_padded(lengths, multiple, capacity=capacity, strategy=strategy, seed=seed, filler=filler)
    order = placement_order(lengths, capacity=capacity, strategy=strategy, seed=seed, filler=float(filler))
    kernel = kernels.first_fit if strategy == "ffd" else kernels.best_fit
    if strategy in ("bfd", "ffd"):
        slot_lengths = kernels.sorted_desc_lengths(lengths, capacity)
    else:
        slot_lengths = lengths[order]
    slot_pack, n_packs = kernel(slot_lengths, capacity)
    pack_ids, members, pack_offsets, pack_tokens = kernels.group_by_pack(slot_pack, order, slot_lengths, n_packs)
    del slot_pack, slot_lengths, order  # at 100M sequences these temporaries are 1.6 GB; free them before returning
    return PackPlan(
        pack_ids=pack_ids,
        members=members,
        pack_offsets=pack_offsets,
        pack_tokens=pack_tokens,
        capacity=capacity,
        strategy=strategy,
        seed=int(seed),
        filler=float(filler),
    )


def _plan_padded(lengths: np.ndarray, multiple: int, **kw) -> PackPlan:
    """The plan of the padded lengths, with ``pack_tokens`` recounted from the real ones (a separate step, so
    the kernels and the unpadded path are untouched)."""
    plan = plan_packs(padded_lengths(lengths, multiple), **kw)
    real = np.zeros(plan.n_packs, dtype=np.int64)
    if plan.members.size:
        real = np.add.reduceat(lengths[plan.members].astype(np.int64), plan.pack_offsets[:-1])
    return dataclasses.replace(plan, pack_tokens=real, pack_tokens_padded=plan.pack_tokens)
