"""The numba kernels against their pure-Python references (tests/reference.py), on random inputs.

`make test` also runs this file with NUMBA_DISABLE_JIT=1, so the kernels stay debuggable and coverable.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from packer import kernels
from packer.plan import STRATEGIES, plan_packs
from tests import reference as ref

lengths_and_capacity = st.integers(1, 64).flatmap(
    lambda cap: st.tuples(st.lists(st.integers(1, cap), min_size=0, max_size=120), st.just(cap))
)


@settings(max_examples=150, deadline=None)
@given(lengths_and_capacity)
def test_sort_desc_matches_reference(case):
    lengths, cap = case
    got = kernels.sort_desc(np.asarray(lengths, dtype=np.int32), cap)
    assert got.tolist() == ref.sort_desc(lengths)


@settings(max_examples=150, deadline=None)
@given(lengths_and_capacity)
def test_best_fit_matches_reference(case):
    lengths, cap = case
    slot_pack, n = kernels.best_fit(np.asarray(lengths, dtype=np.int32), cap)
    want, want_n = ref.best_fit(lengths, cap)
    assert slot_pack.tolist() == want and n == want_n


@settings(max_examples=150, deadline=None)
@given(lengths_and_capacity)
def test_first_fit_matches_reference(case):
    lengths, cap = case
    slot_pack, n = kernels.first_fit(np.asarray(lengths, dtype=np.int32), cap)
    want, want_n = ref.first_fit(lengths, cap)
    assert slot_pack.tolist() == want and n == want_n


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_plan_matches_reference_on_random_lengths(strategy, seed):
    rng = np.random.default_rng(seed)
    cap = int(rng.integers(50, 400))
    lengths = rng.integers(1, cap + 1, size=int(rng.integers(1, 400)))
    filler = float(rng.random())
    plan = plan_packs(lengths, capacity=cap, strategy=strategy, seed=seed, filler=filler)
    assert plan.pack_ids.tolist() == ref.plan(lengths, capacity=cap, strategy=strategy, seed=seed, filler=filler)


@pytest.mark.parametrize("cap", [1, 2, 63, 64, 65, 4095, 4097, 20_000])
def test_best_fit_at_tree_boundaries(cap):
    # capacities around powers of two exercise the presence tree's edges
    rng = np.random.default_rng(cap)
    lengths = rng.integers(1, cap + 1, size=300).astype(np.int32)
    order = kernels.sort_desc(lengths, cap)
    slot_pack, n = kernels.best_fit(lengths[order], cap)
    want, want_n = ref.best_fit(lengths[order].tolist(), cap)
    assert slot_pack.tolist() == want and n == want_n


@settings(max_examples=100, deadline=None)
@given(lengths_and_capacity, st.integers(0, 2**32 - 1))
def test_group_by_pack_matches_reference_and_is_a_csr_of_the_pack_ids(case, seed):
    lengths, cap = case
    lengths = np.asarray(lengths, dtype=np.int32)
    order = np.random.default_rng(seed).permutation(lengths.shape[0]).astype(np.int64)
    slot_pack, n = kernels.best_fit(lengths[order], cap)
    pack_ids, members, offsets, tokens = kernels.group_by_pack(slot_pack, order, lengths[order], n)
    want = ref.group_by_pack(slot_pack.tolist(), order.tolist(), lengths[order].tolist(), n)
    assert [a.tolist() for a in (pack_ids, members, offsets, tokens)] == list(want)
    assert sorted(members.tolist()) == list(range(lengths.shape[0]))
    for p in range(n):
        inside = members[offsets[p] : offsets[p + 1]]
        assert (pack_ids[inside] == p).all()
        assert tokens[p] == lengths[inside].sum() <= cap
        # placement order is kept within a pack
        pos = np.argsort(order)[inside]
        assert (np.diff(pos) > 0).all()


def test_gather_copies_and_reports_range():
    values = np.arange(100, dtype=np.int64) - 5
    out = np.zeros(10, dtype=np.int32)
    lo, hi = kernels.gather(values, np.array([0, 50], dtype=np.int64), np.array([3, 7], dtype=np.int64),
                            np.array([7, 0], dtype=np.int64), out)
    assert out.tolist() == [45, 46, 47, 48, 49, 50, 51, -5, -4, -3]
    assert (lo, hi) == (-5, 51)
    empty = np.zeros(0, dtype=np.int64)
    assert kernels.gather(values, empty, empty, empty, out) == (0, 0)


@settings(max_examples=100, deadline=None)
@given(lengths_and_capacity)
def test_sorted_desc_lengths_matches_reference(case):
    lengths, cap = case
    got = kernels.sorted_desc_lengths(np.asarray(lengths, dtype=np.int32), cap)
    assert got.tolist() == [lengths[i] for i in ref.sort_desc(lengths)]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 10)), max_size=8), st.integers(0, 2**32 - 1))
def test_gather_matches_reference(spans, seed):
    """Random source spans (possibly empty, overlapping) copied to disjoint, shuffled destinations."""
    values = np.random.default_rng(seed).integers(-2**40, 2**40, 60)
    src = np.array([s for s, _ in spans], dtype=np.int64)
    lengths = np.array([n for _, n in spans], dtype=np.int64)
    perm = np.random.default_rng(seed + 1).permutation(len(spans))
    dst = np.zeros(len(spans), dtype=np.int64)
    np.cumsum(lengths[perm][:-1], out=dst[perm[1:]]) if len(spans) > 1 else None
    out = np.zeros(int(lengths.sum()), dtype=np.int64)
    lo, hi = kernels.gather(values, src, lengths, dst, out)
    want_out, want_lo, want_hi = ref.gather(values.tolist(), src.tolist(), lengths.tolist(), dst.tolist(), len(out))
    assert out.tolist() == want_out and (lo, hi) == (want_lo, want_hi)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(-102, 5), max_size=30))
def test_first_not_label_matches_reference(labels):
    arr = np.asarray(labels, dtype=np.int32)
    assert kernels.first_not_label(arr, -100) == ref.first_not_label(labels, -100)


def test_gather_range_keeps_the_values_dtype():
    """A uint64 id of 2**63 or more is reported as itself, not wrapped to a negative int64 (which a range check
    of lo < 0 or hi > INT32_MAX would then miss when a smaller id comes first)."""
    values = np.array([5, 2**64 - 3], dtype=np.uint64)
    out = np.zeros(2, dtype=np.int32)
    lo, hi = kernels.gather(values, np.array([0], dtype=np.int64), np.array([2], dtype=np.int64),
                            np.array([0], dtype=np.int64), out)
    assert (int(lo), int(hi)) == (5, 2**64 - 3)
