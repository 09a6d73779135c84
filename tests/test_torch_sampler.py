"""PackSampler: exactly once per epoch across simulated ranks and workers, balanced steps, exact resume."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from torch.utils.data import DataLoader

from packer.errors import PackerError
from packer.torch import EvalSampler, PackedCollator, PackedDataset, PackSampler

from tests._torch_helpers import make_packed, random_lengths


def _costs(n, seed=0):
    """Attention costs shaped like reference packs: a few packs hold one very long sequence."""
    rng = np.random.default_rng(seed)
    lengths = np.minimum(rng.lognormal(np.log(1334) - 0.5, 1.0, (n, 15)), 20_000)
    costs = (lengths**2).sum(axis=1)
    heavy = rng.random(n) < 0.1
    costs[heavy] += rng.uniform(1e8, 4e8, heavy.sum())
    return costs


def _all_ranks(costs, world, **kw):
    return [list(PackSampler(costs, num_replicas=world, rank=r, **kw)) for r in range(world)]


@pytest.mark.parametrize(
    "n,world,batch_size,grad_accum,window",
    [(50, 1, 1, 1, 8), (50, 2, 1, 1, 8), (97, 4, 2, 3, 2), (33, 3, 1, 32, 8), (200, 8, 1, 4, 1), (7, 7, 2, 2, 4)],
)
def test_every_pack_once_equal_counts(n, world, batch_size, grad_accum, window):
    costs = _costs(n)
    kw = dict(batch_size=batch_size, grad_accum=grad_accum, seed=5, window_steps=window)
    ranks = _all_ranks(costs, world, **kw)
    per_rank = n // world
    assert [len(r) for r in ranks] == [per_rank] * world
    flat = list(itertools.chain.from_iterable(ranks))
    assert len(set(flat)) == len(flat) == per_rank * world
    assert set(flat) <= set(range(n))
    # deterministic: a second construction yields the same, and plan() is what the ranks yield
    assert _all_ranks(costs, world, **kw) == ranks
    assert PackSampler(costs, num_replicas=world, rank=0, **kw).plan(0).tolist() == ranks
    # another epoch: another order (when the epoch spans several balancing windows: within one window the
    # steps are made of cost tiers, whatever the shuffle)
    s = PackSampler(costs, num_replicas=world, rank=0, **kw)
    s.set_epoch(1)
    if s.steps_per_epoch > window:
        assert s.plan(1).tolist() != ranks
    assert len(s) == per_rank


def test_left_out_packs_rotate_over_epochs():
    costs = _costs(10)
    s = PackSampler(costs, num_replicas=4, rank=0, seed=1)
    assert s.dropped_per_epoch == 2
    left_out = set()
    for epoch in range(30):
        left_out |= set(range(10)) - set(s.plan(epoch).flatten().tolist())
    assert left_out == set(range(10))


def _step_costs(plan, costs, m):
    steps = math.ceil(plan.shape[1] / m)
    return [[costs[plan[r, k * m : (k + 1) * m]].sum() for r in range(plan.shape[0])] for k in range(steps)]


def test_balance_improves_and_imbalance_is_reported():
    costs = _costs(400, seed=2)
    for world, m in ((4, 32), (4, 1), (8, 4)):
        s = PackSampler(costs, num_replicas=world, rank=0, grad_accum=m, seed=3)
        imb = s.imbalance(0)
        # recompute the figures slowly from the plans
        for plan, mean_r, worst, time_r in (
            (s.plain_plan(0), imb.before_mean, imb.before_worst, imb.before_time),
            (s.plan(0), imb.after_mean, imb.after_worst, imb.after_time),
        ):
            per = _step_costs(plan, costs, m)
            ratios = [max(p) / np.mean(p) for p in per]
            assert len(per) == imb.steps == s.steps_per_epoch
            assert mean_r == pytest.approx(np.mean(ratios)) and worst == pytest.approx(max(ratios))
            assert time_r == pytest.approx(sum(max(p) for p in per) / sum(np.mean(p) for p in per))
        assert imb.after_time < imb.before_time and imb.after_mean < imb.before_mean
        assert imb.after_worst <= imb.before_worst
        assert "before" in str(imb) and "after" in str(imb)
    # many packs per rank and step: near perfect
    s = PackSampler(costs, num_replicas=4, rank=0, grad_accum=32, seed=3)
    assert s.imbalance(0).after_mean < 1.05


def test_steps_are_whole_and_heaviest_micro_batch_first():
    costs = _costs(90, seed=4)
    world, bs, gas = 3, 2, 3
    s = PackSampler(costs, num_replicas=world, rank=0, batch_size=bs, grad_accum=gas, seed=0, window_steps=2)
    plan = s.plan(0)
    m = bs * gas
    for k in range(math.ceil(plan.shape[1] / m)):
        step = plan[:, k * m : (k + 1) * m]
        # each rank's packs in a step, heaviest first; micro-batches line up across ranks
        for r in range(world):
            c = costs[step[r]]
            assert (np.diff(c) <= 0).all()


def test_unbalanced_is_distributed_sampler_order():
    costs = _costs(23)
    s = PackSampler(costs, num_replicas=2, rank=1, balance=False, seed=9)
    order = np.random.default_rng([9, 0]).permutation(23)[:22]
    assert list(s) == order[1::2].tolist()
    s = PackSampler(costs, num_replicas=2, rank=0, balance=False, shuffle=False)
    assert list(s) == list(range(0, 22, 2))


@pytest.mark.parametrize("k", [0, 1, 5, 12, 24])
def test_resume_yields_the_remaining_stream(k):
    costs = _costs(75, seed=6)
    kw = dict(num_replicas=3, rank=2, batch_size=2, grad_accum=2, seed=4, window_steps=2)
    full = PackSampler(costs, **kw)
    full.set_epoch(3)
    want = list(full)
    first = PackSampler(costs, **kw)
    first.set_epoch(3)
    it = iter(first)
    got = [next(it) for _ in range(k)]
    state = first.state_dict()
    assert state["consumed"] == k and state["epoch"] == 3
    second = PackSampler(costs, **kw)
    second.load_state_dict(state)
    second.set_epoch(3)  # the usual loop calls set_epoch again: the position is kept
    assert len(second) == len(want) - k
    assert got + list(second) == want
    # the following epoch starts from its beginning
    second.set_epoch(4)
    full.set_epoch(4)
    assert list(second) == list(full)


def test_resume_with_prefetching_workers(tmp_path):
    ds = PackedDataset(make_packed(tmp_path, random_lengths(150, capacity=48, seed=8), capacity=48))
    kw = dict(num_replicas=2, rank=0, batch_size=2, grad_accum=1, seed=2)
    whole = [b["index"].tolist() for b in DataLoader(ds, batch_size=2, sampler=PackSampler(ds, **kw),
                                                     collate_fn=PackedCollator())]
    sampler = PackSampler(ds, **kw)
    loader = DataLoader(ds, batch_size=2, sampler=sampler, num_workers=2, prefetch_factor=2,
                        collate_fn=PackedCollator())
    seen, consumed = [], 0
    for step, batch in enumerate(loader):
        seen.append(batch["index"].tolist())
        consumed += len(batch["index"])
        if step == 2:
            break
    assert sampler._yielded > consumed  # the workers prefetched: the loop must say what it consumed
    state = sampler.state_dict(consumed=consumed)
    del loader
    resumed = PackSampler(ds, **kw)
    resumed.load_state_dict(state)
    seen += [b["index"].tolist() for b in DataLoader(ds, batch_size=2, sampler=resumed, num_workers=2,
                                                     collate_fn=PackedCollator())]
    assert seen == whole


def test_simulated_ranks_and_workers_see_every_pack_once(tmp_path):
    ds = PackedDataset(make_packed(tmp_path, random_lengths(200, capacity=40, seed=9), capacity=40, shard_size=6))
    world = 3
    got = []
    for rank in range(world):
        sampler = PackSampler(ds, num_replicas=world, rank=rank, batch_size=2, grad_accum=2, seed=1)
        sampler.set_epoch(2)
        for batch in DataLoader(ds, batch_size=2, sampler=sampler, num_workers=2, collate_fn=PackedCollator()):
            got += batch["index"].tolist()
    assert len(got) == len(set(got)) == len(ds) - len(ds) % world


def test_bad_arguments_and_mismatched_state():
    costs = _costs(20)
    with pytest.raises(PackerError, match="rank"):
        PackSampler(costs, num_replicas=2, rank=2)
    with pytest.raises(PackerError, match="grad_accum"):
        PackSampler(costs, num_replicas=2, rank=0, grad_accum=0)
    with pytest.raises(PackerError, match="ranks"):
        PackSampler(costs[:3], num_replicas=4, rank=0)
    with pytest.raises(PackerError, match="non-negative"):
        PackSampler(-costs, num_replicas=1, rank=0)
    state = PackSampler(costs, num_replicas=2, rank=0, grad_accum=2).state_dict()
    with pytest.raises(PackerError, match="grad_accum"):
        PackSampler(costs, num_replicas=2, rank=0, grad_accum=4).load_state_dict(state)
    with pytest.raises(PackerError, match="consumed"):
        PackSampler(costs, num_replicas=2, rank=0).state_dict(consumed=11)
    with pytest.raises(PackerError, match="layout"):
        PackSampler(costs, num_replicas=2, rank=0, layout="ranks")


def _sharded(sampler, world, rank, batch_size):
    """What accelerate (and so Trainer) hands process ``rank``: its ``BatchSamplerShard`` over the loader's
    batches of ``sampler``."""
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler

    return list(BatchSamplerShard(BatchSampler(sampler, batch_size, False), num_processes=world, process_index=rank))


@pytest.mark.parametrize("n,world,batch_size,grad_accum", [(33, 2, 1, 2), (97, 4, 2, 3), (50, 3, 4, 1)])
def test_global_layout_under_accelerate_gives_each_rank_its_plan(n, world, batch_size, grad_accum):
    pytest.importorskip("accelerate")
    costs = _costs(n)
    kw = dict(num_replicas=world, batch_size=batch_size, grad_accum=grad_accum, seed=3)
    per_rank = n // world
    if per_rank % batch_size:
        with pytest.raises(PackerError, match="batch_size"):
            _sharded(PackSampler(costs, rank=0, layout="global", **kw), world, 0, batch_size)
        return
    for rank in range(world):
        plan = PackSampler(costs, rank=rank, **kw).plan(0)[rank].tolist()
        batches = _sharded(PackSampler(costs, rank=rank, layout="global", **kw), world, rank, batch_size)
        assert [i for b in batches for i in b] == plan
        assert all(len(b) == batch_size for b in batches)
        # the per-rank layout under the same sharding is refused: it would be sharded twice
        with pytest.raises(PackerError, match="second time"):
            _sharded(PackSampler(costs, rank=rank, **kw), world, rank, batch_size)
        # and the global layout with another process index or world
        with pytest.raises(PackerError, match="process"):
            _sharded(PackSampler(costs, rank=rank, layout="global", **kw), world, (rank + 1) % world, batch_size)
    with pytest.raises(PackerError, match="layout='rank'"):
        list(PackSampler(costs, rank=0, layout="global", **kw))  # a plain loader: every rank would get everything


@pytest.mark.parametrize("old,new", [(4, 3), (4, 6), (2, 1), (3, 5)])
def test_elastic_resume_repeats_and_skips_nothing(old, new):
    n, kw = 103, dict(batch_size=2, grad_accum=2, seed=7, window_steps=2)
    costs = _costs(n)
    saved = [PackSampler(costs, num_replicas=old, rank=r, **kw) for r in range(old)]
    consumed = 2 * saved[0].packs_per_step  # two optimizer steps, in lockstep on every rank
    trained = []
    for s in saved:
        s.set_epoch(5)
        it = iter(s)
        trained += [next(it) for _ in range(consumed)]
    states = [s.state_dict() for s in saved]
    epoch_packs = set(saved[0].plan(5).ravel().tolist())
    resumed = [PackSampler(costs, num_replicas=new, rank=r, **kw) for r in range(new)]
    rest = []
    for r, s in enumerate(resumed):
        s.load_state_dict(states[0])  # rank 0's checkpoint, as Trainer-style checkpoints keep one
        s.set_epoch(5)
        mine = list(s)
        assert len(mine) == len(s) == (len(epoch_packs) - len(trained)) // new
        rest += mine
    # nothing repeated; only the fewer than `new` that do not divide evenly sit out the rest of the epoch
    assert len(set(trained + rest)) == len(trained) + len(rest)
    assert set(trained + rest) <= epoch_packs
    assert len(epoch_packs) - len(trained) - len(rest) < new
    # a second elastic resume in the same epoch, back to the old world, still repeats nothing
    again = resumed[0].state_dict(consumed=resumed[0].packs_per_step)
    back = [PackSampler(costs, num_replicas=old, rank=r, **kw) for r in range(old)]
    done = [i for s in resumed for i in s.plan(5)[resumed.index(s)][: resumed[0].packs_per_step].tolist()]
    tail = []
    for s in back:
        s.load_state_dict(again)
        tail += list(s)
    everything = trained + done + tail
    assert len(everything) == len(set(everything)) and set(everything) <= epoch_packs
    assert len(epoch_packs) - len(everything) < new + old
    # the next epoch is planned for the new world from scratch
    resumed[0].set_epoch(6)
    assert list(resumed[0]) == PackSampler(costs, num_replicas=new, rank=0, **kw).plan(6)[0].tolist()


@pytest.mark.parametrize("n,world", [(5, 4), (3, 4), (16, 4), (1, 1)])
def test_eval_sampler_gives_every_pack_to_one_rank_once(n, world):
    ranks = [list(EvalSampler(range(n), num_replicas=world, rank=r)) for r in range(world)]
    assert sorted(i for r in ranks for i in r) == list(range(n))
    assert [len(EvalSampler(range(n), num_replicas=world, rank=r)) for r in range(world)] == [len(r) for r in ranks]
    assert max(map(len, ranks)) - min(map(len, ranks)) <= 1


def test_eval_sampler_refuses_a_second_sharding():
    pytest.importorskip("accelerate")
    with pytest.raises(PackerError, match="second time"):
        _sharded(EvalSampler(range(10), num_replicas=2, rank=0), 2, 0, 1)


@pytest.mark.parametrize("layout", ["rank", "global"])
def test_accelerate_dispatch_batches_is_refused(layout):
    """``dispatch_batches=True``: process 0 reads every batch and splits it; a per-rank plan cannot be dispatched."""
    accelerate_data_loader = pytest.importorskip("accelerate.data_loader")
    sampler = PackSampler(_costs(10), num_replicas=2, rank=0, layout=layout)
    loader = accelerate_data_loader.DataLoaderDispatcher(list(range(10)), sampler=sampler, batch_size=1)
    with pytest.raises(PackerError, match="dispatch_batches"):
        list(loader)
