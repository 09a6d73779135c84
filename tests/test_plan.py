"""Plans: overflow policies, invariants, efficiency at the bound, validation."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from packer import PackerError
from packer.plan import OVERFLOW_POLICIES, STRATEGIES, make_segments, plan_packs
from data_samples.synthetic import reference_like_lengths
from tests import reference as ref


@pytest.mark.parametrize("overflow", list(OVERFLOW_POLICIES))
def test_segments_match_reference(lengths, overflow):
    s = make_segments(lengths, capacity=100, overflow=overflow)
    got = list(zip(s.row.tolist(), s.start.tolist(), s.length.tolist()))
    assert got == ref.segments(lengths, capacity=100, overflow=overflow)
    assert s.empty_rows == 1
    kept = s.tokens + s.dropped_tokens + s.truncated_tokens
    assert kept == s.tokens_in == int(lengths.sum())  # every token packed or counted


def test_segment_accounting_per_policy(lengths):
    drop = make_segments(lengths, capacity=100, overflow="drop")
    assert (drop.dropped_rows, drop.dropped_tokens) == (2, 250 + 101)
    trunc = make_segments(lengths, capacity=100, overflow="truncate")
    assert (trunc.truncated_rows, trunc.truncated_tokens) == (2, 150 + 1)
    split = make_segments(lengths, capacity=100, overflow="split")
    assert split.split_rows == 2 and split.tokens == split.tokens_in


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(1, 500), min_size=1, max_size=300),
    st.sampled_from(list(STRATEGIES)),
    st.integers(0, 1000),
)
def test_plan_invariants(lengths, strategy, seed):
    cap = 500
    plan = plan_packs(np.asarray(lengths), capacity=cap, strategy=strategy, seed=seed, filler=0.3)
    assert sorted(plan.members.tolist()) == list(range(len(lengths)))  # every sequence exactly once
    assert plan.pack_offsets[0] == 0 and plan.pack_offsets[-1] == len(lengths)
    assert (np.diff(plan.pack_offsets) > 0).all()  # no empty pack
    assert (plan.pack_tokens <= cap).all()
    assert plan.tokens == sum(lengths)
    assert plan.n_packs >= math.ceil(sum(lengths) / cap) == plan.lower_bound
    again = plan_packs(np.asarray(lengths), capacity=cap, strategy=strategy, seed=seed, filler=0.3)
    assert np.array_equal(plan.pack_ids, again.pack_ids)  # deterministic


@pytest.mark.parametrize("strategy,slack", [("bfd", 1), ("ffd", 1), ("mixed", 3), ("shuffle", 20)])
def test_efficiency_on_reference_like_lengths(strategy, slack):
    lengths = make_segments(reference_like_lengths(99_388, seed=0), capacity=20_000, overflow="drop").length
    plan = plan_packs(lengths, capacity=20_000, strategy=strategy)
    assert plan.n_packs <= plan.lower_bound + slack, (plan.n_packs, plan.lower_bound)


def test_mixed_strategies_mix_lengths():
    lengths = make_segments(reference_like_lengths(20_000, seed=1), capacity=20_000, overflow="drop").length
    median = np.median(lengths)

    def all_short_share(strategy):
        p = plan_packs(lengths, capacity=20_000, strategy=strategy)
        longs = np.add.reduceat((lengths >= median)[p.members].astype(int), p.pack_offsets[:-1])
        return np.mean(longs == 0)

    assert all_short_share("bfd") > 0.1
    assert all_short_share("mixed") < 0.05
    assert all_short_share("shuffle") < 0.05


def test_seed_changes_mixed_plans_only():
    lengths = reference_like_lengths(2_000, seed=2).clip(1, 20_000)
    for strategy in ("mixed", "shuffle"):
        a = plan_packs(lengths, strategy=strategy, seed=1).pack_ids
        b = plan_packs(lengths, strategy=strategy, seed=2).pack_ids
        assert not np.array_equal(a, b)
    assert np.array_equal(plan_packs(lengths, strategy="bfd", seed=1).pack_ids,
                          plan_packs(lengths, strategy="bfd", seed=2).pack_ids)


def test_empty_plan():
    plan = plan_packs(np.zeros(0, dtype=np.int64), capacity=10)
    assert plan.n_packs == 0 and plan.efficiency == 1.0 and plan.members.shape == (0,)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(lengths=[5, 11], capacity=10), "sequence 1 has 11 tokens, more than the capacity 10"),
        (dict(lengths=[5, 0], capacity=10), "sequence 1 has length 0"),
        (dict(lengths=[5], capacity=0), "capacity must be positive"),
        (dict(lengths=[5], capacity=-3), "capacity must be positive"),
        (dict(lengths=[5], capacity=2**31), "more than packer supports"),
        (dict(lengths=[5], capacity=2**24 + 1), "more than packer supports"),
        (dict(lengths=[5], capacity=10, strategy="best"), "unknown strategy 'best'"),
        (dict(lengths=[5], capacity=10, filler=1.0), "filler must be a fraction"),
        (dict(lengths=[5], capacity=10, filler=-0.1), "filler must be a fraction"),
        (dict(lengths=[[5]], capacity=10), "1-D integer array"),
        (dict(lengths=[5.0], capacity=10), "1-D integer array"),
    ],
)
def test_plan_rejects_bad_arguments(kwargs, match):
    lengths = np.asarray(kwargs.pop("lengths"))
    with pytest.raises(PackerError, match=match):
        plan_packs(lengths, **kwargs)


def test_segments_reject_bad_arguments():
    with pytest.raises(PackerError, match="unknown overflow policy 'clip'"):
        make_segments(np.array([1]), capacity=10, overflow="clip")
    with pytest.raises(PackerError, match="row 1 has a negative length"):
        make_segments(np.array([1, -1]), capacity=10)
