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
A state saved on another number of ranks resumes *elastically* (as MosaicML streaming does): the packs the saved
ranks had not consumed in that epoch are dealt to the new ranks, none repeated; see :meth:`PackSampler.load_state_dict`.

Layouts. ``layout="rank"`` (default) yields this rank's packs: for a plain ``DataLoader`` on every rank.
``layout="global"`` yields the micro-batches of all ranks interleaved (step by step, micro-batch ``j`` of rank 0,
1, ..., W - 1, then ``j + 1``), for a loader that deals batch ``i`` to process ``i % W``: accelerate's
``BatchSamplerShard``, which ``accelerator.prepare`` and ``transformers.Trainer`` put around every DataLoader's
sampler. Each layout looks at who iterates it (accelerate's classes on the call stack, by name) and raises on the
wrong loader rather than training each rank on part of its share, or every rank on everything.

World size and rank come from the initialised ``torch.distributed`` process group when not given; with none but
``WORLD_SIZE`` > 1 in the environment (torchrun, before ``init_process_group``) the sampler raises, as
``DistributedSampler`` does, rather than act as rank 0 of 1.

:class:`EvalSampler` gives every pack to exactly one rank, once, for evaluation.
"""
from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Iterator, Sized
from dataclasses import dataclass

import numpy as np
from torch.utils.data import Sampler

from packer.errors import PackerError
from packer.schedule import EpochSchedule, epoch_schedule, kept_samples

log = logging.getLogger(__name__)

STATE_VERSION = 1
LAYOUTS = ("rank", "global")


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
    """World size and rank: the arguments, else the initialised ``torch.distributed`` process group.

    Raises:
        PackerError: neither is given and no process group exists, but the launcher's environment
            (``WORLD_SIZE``, set by torchrun and accelerate) says the world is larger than one: every rank would
            otherwise act as rank 0 of 1 and train on the whole epoch. ``torch.utils.data.DistributedSampler``
            raises in the same situation.
    """
    if num_replicas is not None and rank is not None:
        return num_replicas, rank
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if num_replicas is None:
            num_replicas = dist.get_world_size()
        if rank is None:
            rank = dist.get_rank()
        return num_replicas, rank
    env_world = os.environ.get("WORLD_SIZE", "")
    if env_world.strip().isdigit() and int(env_world) > 1:
        raise PackerError(
            f"WORLD_SIZE={env_world} says this is one of several processes, but torch.distributed has no process "
            "group yet, so PackSampler cannot tell this process's rank; create the sampler after "
            "torch.distributed.init_process_group() (Trainer and accelerate create it for you) or pass "
            "num_replicas= and rank="
        )
    return (1 if num_replicas is None else num_replicas), (0 if rank is None else rank)


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
        num_replicas: ranks; default the ``torch.distributed`` world size (1 without a process group, unless
            ``WORLD_SIZE`` says otherwise: then it raises).
        rank: this rank; default the ``torch.distributed`` rank (0 without a process group).
        batch_size: packs per micro-batch (the DataLoader's ``batch_size``).
        grad_accum: micro-batches per optimizer step.
        shuffle: shuffle per epoch; with False the packs keep the folder's order before balancing.
        seed: with the epoch, seeds the shuffle; must be the same on every rank.
        balance: balance attention cost per step (False: ``order[rank::num_replicas]``, like DistributedSampler).
        window_steps: optimizer steps per balancing window: larger balances better and mixes packs of similar
            cost into the same steps more often.
        layout: ``"rank"``: yield this rank's packs (a plain DataLoader per rank); ``"global"``: yield every rank's
            micro-batches interleaved, for accelerate's batch sharding (``Trainer``, ``accelerator.prepare``; see
            the module docstring). ``"global"`` needs ``batch_size`` to divide each rank's packs of the epoch.

    Raises:
        PackerError: bad arguments; fewer packs than ranks; no process group while ``WORLD_SIZE`` > 1 (when
            ``num_replicas``/``rank`` are not given); and when iterated by the wrong loader for its ``layout``.

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
        layout: str = "rank",
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
        if layout not in LAYOUTS:
            raise PackerError(f"layout must be one of {', '.join(map(repr, LAYOUTS))}, got {layout!r}")
        self.layout = layout
        self.epoch = 0
        self._history: list[tuple[int, int, int]] = []  # (epoch, world, consumed) of runs saved at another world
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

    # ---------------------------------------------------------------- plans
    def plain_plan(self, epoch: int) -> np.ndarray:
        """Every rank's packs without balancing, int64 (num_replicas, packs_per_rank): ``order[rank::W]``."""
        order = self._order_for(epoch, self.num_replicas)
        return np.ascontiguousarray(order.reshape(-1, self.num_replicas).T)

    def plan(self, epoch: int) -> np.ndarray:
        """Every rank's packs for ``epoch`` in yield order, int64 (num_replicas, packs_per_rank).

        Row ``r`` is what rank ``r`` yields; its packs ``k * packs_per_step:(k + 1) * packs_per_step`` make up
        optimizer step ``k``. The same on every rank (a pure function of the arguments and the costs). After an
        elastic resume (:meth:`load_state_dict` of a state saved with another number of ranks) the resumed epoch's
        plan holds only the packs the saved run had not consumed: (num_replicas, remaining // num_replicas).
        """
        if self._history and self._history[0][0] == epoch:
            return self._elastic_plan(epoch)
        if not self.balance:
            return self.plain_plan(epoch)
        return self._plan_of(self._order_for(epoch, self.num_replicas), epoch, self.num_replicas)

    def _plan_of(self, order: np.ndarray, epoch: int, world: int, salt: int = 0) -> np.ndarray:
        """``order`` (a multiple of ``world`` packs) dealt to ``world`` ranks, (world, len(order) // world)."""
        if not self.balance:
            return np.ascontiguousarray(order.reshape(-1, world).T)
        m = self.packs_per_step
        rng = np.random.default_rng([self.seed, epoch, 1 + salt])
        window = self.window_steps * world * m
        out = np.empty((world, order.shape[0] // world), dtype=np.int64)
        col = 0
        for w0 in range(0, order.shape[0], window):
            chunk = order[w0 : w0 + window]
            steps = self._balance_window(chunk, rng, world)
            for step in steps:  # step: (world, packs in the step per rank)
                out[:, col : col + step.shape[1]] = step
                col += step.shape[1]
        assert col == out.shape[1]
        return out

    def _elastic_plan(self, epoch: int, history: list | None = None, world: int | None = None) -> np.ndarray:
        """The rest of ``epoch`` for ``world`` ranks (default this sampler's) after the runs in ``history``
        (default the loaded one; ``(epoch, world, consumed)`` each, oldest first): the packs each earlier world had
        not consumed, dealt to the next world, down to a multiple of its ranks."""
        history = self._history if history is None else history
        world = self.num_replicas if world is None else world
        _, w, consumed = history[0]
        plan = self._plan_of(self._order_for(epoch, w), epoch, w)
        for k, (_, next_world, next_consumed) in enumerate([*history[1:], (epoch, world, 0)]):
            # what the earlier world had not consumed, step-interleaved so heavy and light packs stay mixed
            rest = plan[:, consumed:].T.ravel()
            plan = self._plan_of(rest[: rest.shape[0] // next_world * next_world], epoch, next_world, salt=k + 1)
            consumed = next_consumed
        return plan

    def _order_for(self, epoch: int, world: int) -> np.ndarray:
        # the epoch's kept packs in order: the one definition the report predicts from (packer.schedule)
        return kept_samples(self.n, world=world, seed=self.seed, epoch=epoch, shuffle=self.shuffle)

    def _balance_window(self, chunk: np.ndarray, rng: np.random.Generator, world: int) -> list[np.ndarray]:
        m = self.packs_per_step
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
        a = summary(self._plan_of(self._order_for(epoch, self.num_replicas), epoch, self.num_replicas))
        return Imbalance(self.steps_per_epoch, *b, *a)

    # ---------------------------------------------------------------- iteration and state
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's shuffle. A mid-epoch position loaded by :meth:`load_state_dict` is kept when
        ``epoch`` is the loaded epoch and dropped otherwise."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise PackerError(f"epoch must be a non-negative integer, got {epoch!r}")
        if int(epoch) != self.epoch:
            self._start = 0
            self._history = []
        self.epoch = int(epoch)

    def _mine(self) -> np.ndarray:
        """This rank's packs of the current epoch, in yield order (all of them, the resume offset not applied)."""
        return self.plan(self.epoch)[self.rank]

    def __len__(self) -> int:
        """Indices still to yield in the current epoch: this rank's packs (``layout="rank"``), or every rank's
        (``layout="global"``); all of them unless resumed mid-epoch."""
        if self._history and self._history[0][0] == self.epoch:
            mine = self._elastic_plan(self.epoch).shape[1]
        else:
            mine = self.packs_per_rank
        left = mine - self._start
        return left * self.num_replicas if self.layout == "global" else left

    def __iter__(self) -> Iterator[int]:
        self._check_loader(_batch_sharder())
        epoch, start = self.epoch, self._start
        if self.rank == 0 and self._logged_epoch != epoch:
            self._logged_epoch = epoch
            if self.dropped_per_epoch:
                log.info("epoch %d leaves out %d of %d packs so that %d ranks get %d each",
                         epoch, self.dropped_per_epoch, self.n, self.num_replicas, self.packs_per_rank)
            if self.balance and self.num_replicas > 1:
                log.info("epoch %d: %s", epoch, self.imbalance(epoch))
        plan = self.plan(epoch)
        # the offset is used once: the next pass over this epoch (or the next epoch) starts from its beginning
        self._start = 0
        self._yielded = start
        if self.layout == "global" and self.num_replicas > 1:
            if plan.shape[1] % self.batch_size:
                raise PackerError(self._global_batch_message(plan.shape[1]))
            if start % self.batch_size:
                raise PackerError(f"layout='global' resumes at a micro-batch boundary; consumed={start} is not a "
                                  f"multiple of batch_size={self.batch_size}")
            # micro-batch j of every rank, rank 0 first: a loader that deals batch i to rank i % W (accelerate's
            # BatchSamplerShard) hands each rank exactly its row of the plan
            world, b = plan.shape[0], self.batch_size
            order = plan.reshape(world, -1, b).transpose(1, 0, 2).reshape(-1)[start * world :]
            return self._count(order.tolist(), per=world)
        return self._count(plan[self.rank, start:].tolist(), per=1)

    def _count(self, indices: list[int], per: int) -> Iterator[int]:
        for k, index in enumerate(indices, 1):
            if k % per == 0:
                self._yielded += 1
            yield index

    def _global_batch_message(self, packs: int) -> str:
        return (
            f"layout='global' needs every rank's packs of the epoch ({packs}) to fill whole micro-batches of "
            f"batch_size={self.batch_size}, else the batches would mix two ranks' packs; use a batch_size that "
            f"divides {packs} (or batch_size=1)"
        )

    def _check_loader(self, sharder) -> None:
        """Right or loud under accelerate, which deals a DataLoader's batches to its processes round-robin."""
        if sharder is None:
            if self.layout == "global" and self.num_replicas > 1:
                raise PackerError(
                    f"PackSampler(layout='global') yields the packs of all {self.num_replicas} ranks, for a loader "
                    "that deals batch i to rank i % world (Trainer, accelerator.prepare); this loader does not, so "
                    "every rank would train on every pack. Use layout='rank' with a plain DataLoader"
                )
            return
        if type(sharder).__name__ == "DataLoaderDispatcher":
            if self.num_replicas > 1:
                raise PackerError(
                    "accelerate's dispatch_batches=True reads every batch on process 0 and splits it; PackSampler "
                    "plans each rank's packs itself: leave dispatch_batches off (its default for map-style datasets)"
                )
            return
        procs, index = int(getattr(sharder, "num_processes", 1)), int(getattr(sharder, "process_index", 0))
        if procs <= 1:
            return
        if self.layout == "rank":
            raise PackerError(
                f"PackSampler(layout='rank') yields only rank {self.rank}'s packs, and accelerate shards them a "
                f"second time over {procs} processes (Trainer or accelerator.prepare wrap the DataLoader's sampler): "
                "each rank would train on a fraction of its share. Pass layout='global' (what "
                "packer.torch.hf.PackedTrainer does), so that accelerate's sharding hands each rank its packs"
            )
        if getattr(sharder, "split_batches", False):
            raise PackerError("PackSampler(layout='global') does not work with accelerate's split_batches=True; "
                              "leave split_batches off")
        if (procs, index) != (self.num_replicas, self.rank) or getattr(sharder, "batch_size", None) != self.batch_size:
            raise PackerError(
                f"PackSampler(layout='global') was built for rank {self.rank} of {self.num_replicas} with "
                f"batch_size={self.batch_size}, but accelerate runs it as process {index} of {procs} with batch size "
                f"{getattr(sharder, 'batch_size', None)}; build it with num_replicas, rank and batch_size from the "
                "Trainer's args (args.world_size, args.process_index, args.per_device_train_batch_size)"
            )

    def state_dict(self, *, consumed: int | None = None) -> dict:
        """Where this rank is in the epoch, to resume with :meth:`load_state_dict`.

        Args:
            consumed: packs of the current epoch this rank has trained on. Pass it whenever the DataLoader has
                worker processes: they prefetch, so the sampler has handed out more packs than the loop used.
                Default: the packs this sampler has yielded in the current pass (with ``layout="global"``: the
                micro-batch slots of all ranks yielded, times ``batch_size``).
        """
        consumed = self._yielded if consumed is None else consumed
        mine = self._mine().shape[0]
        if isinstance(consumed, bool) or not isinstance(consumed, (int, np.integer)) or not 0 <= consumed <= mine:
            raise PackerError(f"consumed must be in [0, {mine}], got {consumed!r}")
        history = [list(h) for h in self._history if h[0] == self.epoch]
        return {
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "consumed": int(consumed),
            "history": history,
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

        With the same number of ranks the rest of the epoch is exactly what an uninterrupted run would yield.
        With another number (an *elastic* resume, as in MosaicML streaming): ``consumed`` is taken as what every
        saved rank had trained on (data-parallel ranks run in lockstep), the packs the saved world had not
        consumed are dealt to the new ranks (balanced again), and none is repeated. When they do not divide evenly,
        the fewer than ``num_replicas`` left over sit out the rest of this epoch (logged), as the ``n %
        num_replicas`` packs of every epoch do. The next epoch is planned for the new world from scratch.

        Raises:
            PackerError: the state was saved with another number of packs, batch size, gradient accumulation, seed
                or balancing; the order would differ, so resuming cannot be exact.
        """
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise PackerError(f"not a PackSampler state (version {STATE_VERSION}): {state!r:.200}")
        for key in ("n", "batch_size", "grad_accum", "seed", "shuffle", "balance", "window_steps"):
            if state.get(key) != getattr(self, key):
                raise PackerError(
                    f"sampler state has {key}={state.get(key)!r} but this sampler has {getattr(self, key)!r}; "
                    "resume with the same data and settings"
                )
        epoch, consumed, world = int(state["epoch"]), state["consumed"], state["num_replicas"]
        history = [tuple(h) for h in state.get("history", [])]
        saved_mine = self._elastic_plan(epoch, history, world).shape[1] if history else self.n // world
        if isinstance(consumed, bool) or not isinstance(consumed, (int, np.integer)) or not (
            0 <= consumed <= saved_mine
        ):
            raise PackerError(f"sampler state consumed={consumed!r} is outside [0, {saved_mine}]")
        if world != self.num_replicas:
            history = [*history, (epoch, world, consumed)]
            consumed = 0
        self.epoch, self._history = epoch, history
        self._start = int(consumed)
        self._yielded = int(consumed)
        if history and self.rank == 0:
            saved = self._elastic_plan(epoch, history[:-1], world) if len(history) > 1 else None
            rest = (saved.size if saved is not None else self.n // world * world) - world * history[-1][2]
            mine = self._elastic_plan(epoch).shape[1]
            log.info("epoch %d resumed on %d ranks (saved on %d): %d packs left, %d each; %d sit out the rest of the "
                     "epoch", epoch, self.num_replicas, world, rest, mine, rest - mine * self.num_replicas)


_ACCELERATE_LOADERS = ("BatchSamplerShard", "DataLoaderDispatcher")


def _batch_sharder():
    """The accelerate ``BatchSamplerShard`` (or ``DataLoaderDispatcher``) iterating the caller, found on the call
    stack, or None.

    accelerate (and so ``Trainer``) replaces a DataLoader's batch sampler with a ``BatchSamplerShard`` that deals
    the batches to the processes round-robin; a sampler cannot see that from its arguments. Looked up by class
    name and module, so nothing here imports accelerate.
    """
    frame = sys._getframe(2)
    for _ in range(16):  # a handful of frames between them (more with DataLoader workers); once per epoch
        if frame is None:
            return None
        obj = frame.f_locals.get("self")
        cls = type(obj)
        if cls.__name__ in _ACCELERATE_LOADERS and cls.__module__.startswith("accelerate"):
            return obj
        frame = frame.f_back
    return None


class EvalSampler(Sampler[int]):
    """Every pack to exactly one rank, exactly once: for evaluation, where nothing may be left out or repeated.

    Rank ``r`` yields packs ``r, r + W, r + 2W, ...`` in folder order, so the ranks get ``ceil(n / W)`` or one
    fewer (a rank may get none when ``n < W``): the counts are uneven, and a loop that all-reduces per batch must
    allow for that (sum the losses and token counts on each rank, then all-reduce once at the end).

    Do not hand it to ``transformers.Trainer`` or ``accelerator.prepare``: they shard evaluation themselves (their
    default sequential sampler, dealt round-robin, the ranks evened out by repeating packs whose values
    ``accelerator.gather_for_metrics`` drops; docs/huggingface.md says what ``eval_loss`` is then), and an already
    sharded sampler would be sharded twice; it raises there.

    Args:
        data: a :class:`packer.torch.PackedDataset` or any sized collection (one entry per pack).
        num_replicas, rank: as for :class:`PackSampler` (default from the process group).
    """

    def __init__(self, data, *, num_replicas: int | None = None, rank: int | None = None):
        if not isinstance(data, Sized):
            raise PackerError(f"EvalSampler needs a PackedDataset or another sized collection, got {type(data)}")
        self.n = len(data)
        num_replicas, rank = _dist_default(num_replicas, rank)
        self.num_replicas = _positive_int("num_replicas", num_replicas)
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 0 <= rank < self.num_replicas:
            raise PackerError(f"rank must be in [0, {self.num_replicas}), got {rank!r}")
        self.rank = int(rank)

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.num_replicas))

    def __iter__(self) -> Iterator[int]:
        sharder = _batch_sharder()
        if sharder is not None and int(getattr(sharder, "num_processes", 1)) > 1:
            raise PackerError(
                "EvalSampler already gives this rank its packs, and accelerate (Trainer, accelerator.prepare) "
                "shards them a second time; under Trainer leave the eval sampler at its default"
            )
        return iter(range(self.rank, self.n, self.num_replicas))
