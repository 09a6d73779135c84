"""The DataLoader transport: batches shipped through shared-memory slots arrive intact and are never overwritten
while the training loop still holds them; slots are reused; the fallbacks (no slot, odd tensors) stay correct."""
from __future__ import annotations

import copy
import io
import multiprocessing
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from packer.torch import PackedCollator, PackedDataset
from packer.torch import _transport
from packer.torch._transport import PackedBatch

from tests._torch_helpers import make_packed, random_lengths

CAP = 96


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    return make_packed(tmp_path_factory.mktemp("tr"), random_lengths(200, capacity=CAP, seed=5), capacity=CAP,
                       shard_size=9)


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k, v in a.items():
        if isinstance(v, torch.Tensor):
            assert v.dtype == b[k].dtype and v.shape == b[k].shape and torch.equal(v, b[k]), k
        else:
            assert v == b[k], k


def _loader(ds, **kw):
    kw.setdefault("num_workers", 2)
    return DataLoader(ds, batch_size=kw.pop("batch_size", 2), collate_fn=PackedCollator(), shuffle=False,
                      multiprocessing_context="fork", **kw)


def _expected(ds, batch_size):
    c = PackedCollator()
    return [c([ds[j] for j in range(i, min(i + batch_size, len(ds)))]) for i in range(0, len(ds), batch_size)]


def test_batches_held_by_the_loop_are_never_overwritten(packed, monkeypatch):
    # the loop keeps every batch of the epoch: far more than one arena's slots, so workers must make more arenas
    # and must not write into a slot whose batch is still alive
    monkeypatch.setattr(_transport, "SLOTS", 4)  # forked workers inherit it
    ds = PackedDataset(packed)
    want = _expected(ds, 2)
    assert len(want) > 2 * _transport.SLOTS
    got = list(_loader(ds, prefetch_factor=4))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert type(g) is PackedBatch
        _same(g, w)
    # one tensor shared by the three cu keys arrives as one tensor
    assert got[0]["cu_seqlens"] is got[0]["cu_seq_lens_q"] is got[0]["cu_seq_lens_k"]


def test_slots_are_reused_when_batches_are_dropped(packed, monkeypatch):
    monkeypatch.setattr(_transport, "SLOTS", 4)
    ds = PackedDataset(packed)
    want = _expected(ds, 1)
    _transport._attached.clear()
    n = 0
    for epoch in range(3):  # persistent workers: the same arenas serve every epoch
        for b, w in zip(_loader(ds, batch_size=1, persistent_workers=True, prefetch_factor=2), want):
            _same(b, w)
            n += 1
            del b
    assert n == 3 * len(want) > 10 * _transport.SLOTS
    # one arena per worker, attached once: every slot was freed and used again
    assert len(_transport._attached) == 2


def test_new_workers_replace_finished_workers_arenas(packed):
    ds = PackedDataset(packed)
    _transport._attached.clear()
    for _epoch in range(3):
        for _b in _loader(ds, num_workers=1):
            pass
    # the arenas of the first two epochs' workers (dead now) were dropped when a new one arrived
    assert len(_transport._attached) == 1


def test_no_slot_left_falls_back_to_torchs_transport(packed, monkeypatch):
    monkeypatch.setattr(_transport, "ARENA_BUDGET", 0)  # forked workers inherit it: no arena at all
    ds = PackedDataset(packed)
    _transport._attached.clear()
    got = list(_loader(ds, batch_size=3))
    for g, w in zip(got, _expected(ds, 3), strict=True):
        _same(g, w)
    assert not _transport._attached


def _pickling_collate(items):
    # a collate_fn that pickles its batch inside the worker (to log its size, to cache it): that must neither take
    # a slot nor confuse the transport of the batches that follow
    batch = PackedCollator()(items)
    saved = io.BytesIO()
    torch.save(batch, saved)
    batch["saved"] = saved.getvalue()
    batch["pickled"] = pickle.dumps(batch)
    return batch


def test_pickling_inside_a_worker_is_plain(packed):
    ds = PackedDataset(packed)
    loader = DataLoader(ds, batch_size=2, collate_fn=_pickling_collate, num_workers=1, multiprocessing_context="fork")
    got = list(loader)
    for g, w in zip(got, _expected(ds, 2), strict=True):
        saved, pickled = g.pop("saved"), g.pop("pickled")
        _same(g, w)
        _same(torch.load(io.BytesIO(saved), weights_only=False), w)
        _same({k: v for k, v in pickle.loads(pickled).items() if k != "saved"}, w)


def _drop_and_collect(held):
    import gc

    held.clear()
    gc.collect()


def test_a_forked_child_does_not_release_the_parents_slots(packed, monkeypatch):
    # a child forked while the loop holds batches (an async checkpoint, an eval process) inherits copies of them
    # and their finalizers; when its copies die, the parent's slots must stay busy
    monkeypatch.setattr(_transport, "SLOTS", 4)
    ds = PackedDataset(packed)
    want = _expected(ds, 1)
    it = iter(_loader(ds, batch_size=1, num_workers=1, prefetch_factor=2))
    held = [next(it) for _ in range(4)]
    child = multiprocessing.get_context("fork").Process(target=_drop_and_collect, args=(held,))
    child.start()
    child.join()
    assert child.exitcode == 0
    for _ in range(12):
        next(it)  # dropped at once: the worker cycles through the free slots
    for b, w in zip(held, want):
        _same(b, w)


def test_early_break_with_persistent_workers_then_a_full_epoch(packed):
    ds = PackedDataset(packed)
    want = _expected(ds, 2)
    loader = _loader(ds, persistent_workers=True, prefetch_factor=4)
    for i, b in enumerate(loader):
        if i == 3:
            break
    got = list(loader)
    for g, w in zip(got, want, strict=True):
        _same(g, w)


class _Odd(torch.utils.data.Dataset):
    """Items with tensors of every kind: bfloat16 (no numpy dtype), non-contiguous, lazily negated and conjugated
    views, sparse, a Parameter, empty, 0-d; and values that are no tensors."""

    def __len__(self):
        return 12

    def __getitem__(self, i):
        base = torch.arange(i, i + 24, dtype=torch.float32).view(4, 6)
        z = torch.tensor([1 + 2j, i - 1j])
        extra = {0: {"csr": torch.eye(3).to_sparse_csr()}, 1: {"coo": torch.eye(3).to_sparse()},
                 2: {"param": torch.nn.Parameter(torch.ones(2), requires_grad=False)}}.get(i % 4, {})
        if not extra:  # sparse tensors and subclasses go through torch's transport, which drops these two bits
            extra = {"conj": z.conj(), "neg": z.conj().imag}
        return PackedBatch(h=base.to(torch.bfloat16), t=base.t(), flag=torch.tensor(i % 2 == 0), name=f"x{i}",
                           empty=torch.empty(0, dtype=torch.int64), zero_d=torch.tensor(i), n=i, **extra)


def _same_any(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k, v in a.items():
        if isinstance(v, torch.Tensor):
            assert type(v) is type(b[k]) and v.dtype == b[k].dtype and v.shape == b[k].shape, k
            dense = v.to_dense() if v.layout != torch.strided else v
            other = b[k].to_dense() if b[k].layout != torch.strided else b[k]
            assert torch.equal(dense.resolve_conj().resolve_neg(), other.resolve_conj().resolve_neg()), k
        else:
            assert v == b[k], k


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_any_cpu_tensors_survive_the_transport():
    ds = _Odd()
    got = list(DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="fork", timeout=60))
    for i, g in enumerate(got):
        _same_any(g, ds[i])
        assert g["t"].shape == (6, 4)


def test_outside_workers_a_packed_batch_is_a_plain_dict(packed):
    item = PackedDataset(packed)[3]
    for clone in (copy.copy(item), copy.deepcopy(item), pickle.loads(pickle.dumps(item))):
        assert type(clone) is PackedBatch
        _same(clone, item)
    assert copy.deepcopy(item)["input_ids"].data_ptr() != item["input_ids"].data_ptr()
    saved = torch.load(_roundtrip(item), weights_only=False)
    _same(saved, item)


def _roundtrip(obj):
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


def test_slot_flags_follow_the_received_tensors():
    # the receiving side alone: a slot is busy while any tensor of its batch lives, free after
    storage = torch.UntypedStorage(_transport._HEADER + _transport.SLOTS * 4096)
    array = _transport._byte_array(storage)
    array[:] = 0
    array[3] = 1
    layout = [("a", (0, torch.int64, (4,)), None), ("b", (64, torch.int32, (2, 2)), None), ("c", None, 7)]
    batch = _transport._rebuild_slot("test-arena", 0, storage, 3, 4096, layout)
    try:
        a = batch["a"]
        del batch
        assert array[3] == 1  # "a" still views the slot
        a[:] = 5
        assert (array[_transport._HEADER + 3 * 4096 :][:32].view(np.int64) == 5).all()
        del a
        assert array[3] == 0
    finally:
        _transport._attached.pop("test-arena", None)
