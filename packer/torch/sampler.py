"""``PackSampler``: a distributed sampler that balances every optimizer step's attention cost across ranks.

Every pack is padded to the same capacity, so the work linear in tokens (projections, MLP) is the same for all
packs; attention is not: it grows with the sum of the squared sequence lengths, and one 19,000-token sequence costs
about 14 times as much as fifteen of 1,300. With data-parallel training each optimizer step waits for its slowest
rank, so the sampler gives the ranks packs of equal total cost *within each step*.

What one epoch does (``W`` ranks, ``m = batch_size * grad_accum`` packs per rank per optimizer step):

1. Shuffle all packs with a generator seeded by ``(seed, epoch)``: the same order on every rank.
2. Keep the first ``W * (n // W)`` packs: every rank gets ``n // W`` packs and no pack goes to two ranks; the
   ``n % W`` left over (fewer than ``W``) change with every epoch's shuffle, and are logged.
3. Take the order in windows of ``window_steps`` steps (``window_steps * W * m`` packs). In a window, sort the
   packs by cost and cut them into *tiers* of ``W`` consecutive packs (nearly equal costs). Deal the tiers to
   the window's steps round-robin (so every step gets heavy and light tiers), and inside a step hand each tier's
   packs, heaviest first, to the ranks with the least cost so far (every rank gets one pack of every tier, so
   ``m`` packs). Then shuffle the order of the window's steps (a partial last step stays last).
4. Each rank yields its packs step by step, heaviest micro-batch first, so the ranks' micro-batches line up too.

The imbalance of a step is ``max / mean`` of the ranks' costs in it (1.0 = perfect). :meth:`PackSampler.imbalance`
reports it for the plain assignment (step 1-2 then ``order[rank::W]``, what ``DistributedSampler`` does) and for
the balanced one, and rank 0 logs both when an epoch starts.

Mid-epoch resume: ``state_dict(consumed=packs_this_rank_has_trained_on)`` and, in the new process,
``load_state_dict(state)``: the next iteration continues with exactly the packs an uninterrupted run would yield.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sized
from dataclasses import dataclass

import numpy as np
from torch.utils.data import Sampler

from packer.errors import PackerError
from packer.schedule import EpochSchedule, epoch_schedule

log = logging.getLogger(__name__)

STATE_VERSION = 1


@dataclass(frozen=True)
class Imbalance:
    """Attention-cost imbalance of one epoch's optimizer steps across ranks, before and after balancing.

    Attributes:
        steps: optimizer steps in the epoch.
        before_mean, after_mean: mean over steps of ``max(rank cost) / mean(rank cost)``.
        before_worst, after_worst: the worst step's ratio.
        before_time, after_time: ``sum over steps of max(rank cost) / sum of mean(rank cost)``: the epoch's
            attention time relative to perfectly balanced ranks (each step waits for its slowest rank).
    """

    steps: int
    before_mean: float
    before_worst: float
    before_time: float
    after_mean: float
    after_worst: float
    after_time: float

    def __str__(self) -> str:
        return (
            f"attention-cost imbalance (max/mean over ranks per optimizer step, {self.steps} steps): "
            f"before {self.before_mean:.3f} mean, {self.before_worst:.3f} worst, {self.before_time:.3f} time; "
            f"after {self.after_mean:.3f} mean, {self.after_worst:.3f} worst, {self.after_time:.3f} time"
        )


def _dist_default(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    if num_replicas is None or rank is None:
        import torch.distributed as dist

        ready = dist.is_available() and dist.is_initialized()
        if num_replicas is None:
            num_replicas = dist.get_world_size() if ready else 1
        if rank is None:
            rank = dist.get_rank() if ready else 0
    return num_replicas, rank


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise PackerError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class PackSampler(Sampler[int]):
    """Deterministic, duplicate-free, attention-balanced pack order for one rank (see the module docstring).

    Use it as a ``DataLoader`` sampler with the same ``batch_size``; call :meth:`set_epoch` before every epoch.

    Args:
        data: a :class:`packer.torch.PackedDataset` (its :meth:`attention_costs` are balanced), or a 1-D array of
            per-pack costs (any non-negative numbers, e.g. measured step times).
        num_replicas: ranks; default the ``torch.distributed`` world size (1 without a process group).
        rank: this rank; default the ``torch.distributed`` rank (0 without a process group).
        batch_size: packs per micro-batch (the DataLoader's ``batch_size``).
        grad_accum: micro-batches per optimizer step.
        shuffle: shuffle per epoch; with False the packs keep the folder's order before balancing.
        seed: with the epoch, seeds the shuffle; must be the same on every rank.
        balance: balance attention cost per step (False: ``order[rank::num_replicas]``, like DistributedSampler).
        window_steps: optimizer steps per balancing window: larger balances better and mixes packs of similar
            cost into the same steps more often.

    Example:
        >>> ds = PackedDataset("packed")                                                     # doctest: +SKIP
        >>> sampler = PackSampler(ds, batch_size=1, grad_accum=32)                           # doctest: +SKIP
        >>> loader = DataLoader(ds, batch_size=1, sampler=sampler, collate_fn=PackedCollator())  # doctest: +SKIP
        >>> for epoch in range(4):                                                           # doctest: +SKIP
        ...     sampler.set_epoch(epoch)
        ...     for batch in loader: ...
    """

    def __init__(
        self,
        data,
        *,
        num_replicas: int | None = None,
        rank: int | None = None,
        batch_size: int = 1,
        grad_accum: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        balance: bool = True,
        window_steps: int = 8,
    ):
        if hasattr(data, "attention_costs"):
            costs = np.asarray(data.attention_costs())
        elif isinstance(data, Sized) and not isinstance(data, (str, bytes)):
            costs = np.asarray(data)
        else:
            raise PackerError(f"PackSampler needs a PackedDataset or an array of per-pack costs, got {type(data)}")
        if costs.ndim != 1 or not np.issubdtype(costs.dtype, np.number) or (costs.size and costs.min() < 0):
            raise PackerError("pack costs must be a 1-D array of non-negative numbers, one per pack")
        num_replicas, rank = _dist_default(num_replicas, rank)
        self.num_replicas = _positive_int("num_replicas", num_replicas)
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 0 <= rank < self.num_replicas:
            raise PackerError(f"rank must be in [0, {self.num_replicas}), got {rank!r}")
        self.rank = int(rank)
        self.batch_size = _positive_int("batch_size", batch_size)
        self.grad_accum = _positive_int("grad_accum", grad_accum)
        self.window_steps = _positive_int("window_steps", window_steps)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise PackerError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.balance = bool(balance)
        self.costs = costs.astype(np.float64)
        self.n = int(costs.shape[0])
        if self.n < self.num_replicas:
            raise PackerError(
                f"{self.n} packs cannot give each of {self.num_replicas} ranks one; pack more data or use fewer ranks"
            )
        self.epoch = 0
        self._start = 0  # packs of this epoch to skip (set by load_state_dict)
        self._yielded = 0
        self._logged_epoch: int | None = None

    # ---------------------------------------------------------------- sizes
    @property
    def packs_per_step(self) -> int:
        """Packs per optimizer step on each rank (``batch_size * grad_accum``)."""
        return self.batch_size * self.grad_accum

    @property
    def _schedule(self) -> EpochSchedule:
        # packer.schedule is the one source of truth for the sizes (packer report predicts from it too)
        return epoch_schedule(self.n, world=self.num_replicas, batch_size=self.batch_size, grad_accum=self.grad_accum)

    @property
    def packs_per_rank(self) -> int:
        """Packs each rank gets per epoch: ``n // num_replicas``."""
        return self._schedule.per_rank

    @property
    def dropped_per_epoch(self) -> int:
        """Packs left out of each epoch so every rank gets as many (``n % num_replicas``; they change per epoch)."""
        return self._schedule.left_out

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch (the last may hold fewer than ``grad_accum`` micro-batches)."""
        return self._schedule.steps_per_epoch

    def __len__(self) -> int:
        """Packs this rank still yields in the current epoch (all of them unless resumed mid-epoch)."""
        return self.packs_per_rank - self._start

    # ---------------------------------------------------------------- plans
    def _order(self, epoch: int) -> np.ndarray:
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        else:
            order = np.arange(self.n, dtype=np.int64)
        return order[: self.packs_per_rank * self.num_replicas]

    def plain_plan(self, epoch: int) -> np.ndarray:
        """Every rank's packs without balancing, int64 (num_replicas, packs_per_rank): ``order[rank::W]``."""
        order = self._order(epoch)
        return np.ascontiguousarray(order.reshape(-1, self.num_replicas).T)

    def plan(self, epoch: int) -> np.ndarray:
        """Every rank's packs for ``epoch`` in yield order, int64 (num_replicas, packs_per_rank).

        Row ``r`` is what rank ``r`` yields; its packs ``k * packs_per_step:(k + 1) * packs_per_step`` make up
        optimizer step ``k``. The same on every rank (a pure function of the arguments and the costs).
        """
        if not self.balance:
            return self.plain_plan(epoch)
        world, m = self.num_replicas, self.packs_per_step
        order = self._order(epoch)
        rng = np.random.default_rng([self.seed, epoch, 1])
        window = self.window_steps * world * m
        out = np.empty((world, order.shape[0] // world), dtype=np.int64)
        col = 0
        for w0 in range(0, order.shape[0], window):
            chunk = order[w0 : w0 + window]
            steps = self._balance_window(chunk, rng)
            for step in steps:  # step: (world, packs in the step per rank)
                out[:, col : col + step.shape[1]] = step
                col += step.shape[1]
        assert col == out.shape[1]
        return out

    def _balance_window(self, chunk: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        world, m = self.num_replicas, self.packs_per_step
        cost = self.costs[chunk]
        # heaviest first; ties keep the shuffled order, so the result is deterministic
        tiers = chunk[np.argsort(-cost, kind="stable")].reshape(-1, world)
        n_tiers = tiers.shape[0]
        sizes = [m] * (n_tiers // m) + ([n_tiers % m] if n_tiers % m else [])
        members: list[list[int]] = [[] for _ in sizes]
        s = 0
        for t in range(n_tiers):  # deal tiers round-robin over the steps that still have room
            while len(members[s]) == sizes[s]:
                s = (s + 1) % len(sizes)
            members[s].append(t)
            s = (s + 1) % len(sizes)
        steps = []
        for tier_ids in members:
            load = np.zeros(world)
            step = np.empty((world, len(tier_ids)), dtype=np.int64)
            for j, t in enumerate(tier_ids):
                # the tier's heaviest pack to the least-loaded rank, and so on (ties: lower rank first)
                ranks = np.argsort(load, kind="stable")
                step[ranks, j] = tiers[t]
                load[ranks] += self.costs[tiers[t]]
            steps.append(step)
        if self.shuffle:
            full = len(sizes) - (1 if sizes[-1] < m else 0)
            perm = rng.permutation(full)
            steps = [steps[i] for i in perm] + steps[full:]
        return steps

    def _step_ratios(self, plan: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        m = self.packs_per_step
        cost = self.costs[plan]  # (world, packs)
        n_steps = math.ceil(plan.shape[1] / m)
        pad = n_steps * m - plan.shape[1]
        per_step = np.pad(cost, ((0, 0), (0, pad))).reshape(plan.shape[0], n_steps, m).sum(axis=2)
        return per_step.max(axis=0), per_step.mean(axis=0)

    def imbalance(self, epoch: int | None = None) -> Imbalance:
        """The attention-cost imbalance of ``epoch`` (default the current one) before and after balancing."""
        epoch = self.epoch if epoch is None else epoch

        def summary(plan):
            mx, mean = self._step_ratios(plan)
            ratio = np.where(mean > 0, mx / np.where(mean > 0, mean, 1), 1.0)
            total = float(mx.sum() / mean.sum()) if mean.sum() > 0 else 1.0
            return float(ratio.mean()), float(ratio.max()), total

        b = summary(self.plain_plan(epoch))
        a = summary(self.plan(epoch))
        return Imbalance(self.steps_per_epoch, *b, *a)

    # ---------------------------------------------------------------- iteration and state
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's shuffle. A mid-epoch position loaded by :meth:`load_state_dict` is kept when
        ``epoch`` is the loaded epoch and dropped otherwise."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise PackerError(f"epoch must be a non-negative integer, got {epoch!r}")
        if int(epoch) != self.epoch:
            self._start = 0
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        epoch, start = self.epoch, self._start
        if self.rank == 0 and self._logged_epoch != epoch:
            self._logged_epoch = epoch
            if self.dropped_per_epoch:
                log.info("epoch %d leaves out %d of %d packs so that %d ranks get %d each",
                         epoch, self.dropped_per_epoch, self.n, self.num_replicas, self.packs_per_rank)
            if self.balance and self.num_replicas > 1:
                log.info("epoch %d: %s", epoch, self.imbalance(epoch))
        mine = self.plan(epoch)[self.rank]
        # the offset is used once: the next pass over this epoch (or the next epoch) starts from its beginning
        self._start = 0
        self._yielded = start
        for index in mine[start:].tolist():
            self._yielded += 1
            yield index

    def state_dict(self, *, consumed: int | None = None) -> dict:
        """Where this rank is in the epoch, to resume with :meth:`load_state_dict`.

        Args:
            consumed: packs of the current epoch this rank has trained on. Pass it whenever the DataLoader has
                worker processes: they prefetch, so the sampler has handed out more packs than the loop used.
                Default: the packs this sampler has yielded in the current pass.
        """
        consumed = self._yielded if consumed is None else consumed
        if isinstance(consumed, bool) or not isinstance(consumed, (int, np.integer)) or not (
            0 <= consumed <= self.packs_per_rank
        ):
            raise PackerError(f"consumed must be in [0, {self.packs_per_rank}], got {consumed!r}")
        return {
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "consumed": int(consumed),
            "n": self.n,
            "num_replicas": self.num_replicas,
            "rank": self.rank,
            "batch_size": self.batch_size,
            "grad_accum": self.grad_accum,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "balance": self.balance,
            "window_steps": self.window_steps,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict`'s position: the next iteration yields the remaining packs.

        Raises:
            PackerError: the state was saved with another number of packs, ranks, batch size, gradient
                accumulation, seed or balancing; the order would differ, so resuming cannot be exact.
        """
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise PackerError(f"not a PackSampler state (version {STATE_VERSION}): {state!r:.200}")
        for key in ("n", "num_replicas", "batch_size", "grad_accum", "seed", "shuffle", "balance", "window_steps"):
            if state.get(key) != getattr(self, key):
                raise PackerError(
                    f"sampler state has {key}={state.get(key)!r} but this sampler has {getattr(self, key)!r}; "
                    "resume with the same data and settings"
                )
        consumed = state["consumed"]
        if not 0 <= consumed <= self.packs_per_rank:
            raise PackerError(f"sampler state consumed={consumed} is outside [0, {self.packs_per_rank}]")
        self.epoch = int(state["epoch"])
        self._start = int(consumed)
        self._yielded = int(consumed)
