"""Collation and attention: packed batches compute what the sequences compute one by one."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from packer.errors import PackerError
from packer.torch import (
    FLASH_ATTN_KEYS,
    HF_KEYS,
    PackedCollator,
    PackedDataset,
    block_causal_mask,
    collate_packed,
    flex_block_mask,
    segment_ids,
    varlen_attention,
)

from tests._torch_helpers import IGNORE, make_packed, random_lengths

CAP = 64


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    lengths = random_lengths(120, capacity=CAP, seed=11)
    return PackedDataset(make_packed(tmp_path_factory.mktemp("col"), lengths, capacity=CAP, shard_size=5))


def _segments(item):
    cu = item["cu_seqlens"].tolist()
    return list(zip(cu[:-1], cu[1:]))


def test_collate_stacked(ds):
    items = [ds[i] for i in (3, 0, 7)]
    batch = collate_packed(items)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["position_ids"].shape == (3, CAP)
    cu = batch["cu_seqlens"]
    assert cu.dtype == torch.int32 and batch["cu_seq_lens_q"] is cu and batch["cu_seq_lens_k"] is cu
    want = [0]
    for b, it in enumerate(items):
        for _, end in _segments(it):
            want.append(b * CAP + end)
        assert torch.equal(batch["input_ids"][b], it["input_ids"])
        assert torch.equal(batch["labels"][b], it["labels"])
        assert torch.equal(batch["position_ids"][b], it["position_ids"])
    assert cu.tolist() == want
    assert batch["max_seqlen"] == batch["max_length_q"] == batch["max_length_k"] == max(
        it["max_seqlen"] for it in items
    )
    assert batch["num_label_tokens"] == int((batch["labels"] != IGNORE).sum())
    assert batch["num_tokens"] == sum(it["num_tokens"] for it in items)
    assert batch["index"].tolist() == [3, 0, 7]
    # position ids restart exactly at the cu_seqlens boundaries (what HF derives boundaries from)
    flat = batch["position_ids"].flatten()
    assert torch.nonzero(flat == 0).flatten().tolist() == want[:-1]


def test_collate_key_sets(ds):
    items = [ds[1], ds[2]]
    assert tuple(PackedCollator(keys="hf")(items)) == HF_KEYS
    assert tuple(PackedCollator(keys="flash_attn")(items)) == FLASH_ATTN_KEYS
    one = collate_packed([ds[4]])
    assert one["input_ids"].shape == (1, CAP) and torch.equal(one["cu_seqlens"], ds[4]["cu_seqlens"])


def test_collate_flattened_unpadded(ds):
    bare = PackedDataset(ds.path, pad=False)
    tokens = bare.num_tokens()
    assert tokens.min() < tokens.max()
    items = [bare[i] for i in (int(tokens.argmax()), int(tokens.argmin()), 2)]
    with pytest.raises(PackerError, match="flatten=True"):
        collate_packed(items)
    batch = PackedCollator(flatten=True)(items)
    total = sum(it["num_tokens"] for it in items)
    assert batch["input_ids"].shape == (1, total) and int(batch["cu_seqlens"][-1]) == total
    assert torch.equal(batch["input_ids"][0], torch.cat([it["input_ids"] for it in items]))
    flat = batch["position_ids"][0]
    assert torch.nonzero(flat == 0).flatten().tolist() == batch["cu_seqlens"][:-1].tolist()


def test_block_causal_mask_small():
    mask = block_causal_mask(torch.tensor([0, 2, 5], dtype=torch.int32))
    want = torch.zeros(5, 5, dtype=torch.bool)
    for a, b in ((0, 2), (2, 5)):
        for i in range(a, b):
            want[i, a : i + 1] = True
    assert torch.equal(mask, want)
    assert segment_ids(torch.tensor([0, 2, 5])).tolist() == [0, 0, 1, 1, 1]
    batched = block_causal_mask(torch.tensor([0, 2, 3, 4, 6]), shape=(2, 3))
    assert batched.shape == (2, 1, 3, 3)
    with pytest.raises(PackerError, match="row boundary"):
        block_causal_mask(torch.tensor([0, 2, 4, 6]), shape=(2, 3))
    with pytest.raises(PackerError, match="start at 0"):
        block_causal_mask(torch.tensor([1, 3]))


def _alone(q, k, v):
    """q, k, v: (H, n, D) of one sequence; causal attention over it alone."""
    return F.scaled_dot_product_attention(q[None], k[None], v[None], is_causal=True)[0]


@pytest.mark.parametrize("method", ["sdpa_mask", "flex", "varlen"])
def test_packed_attention_equals_sequences_alone(ds, method):
    torch.manual_seed(0)
    items = [ds[i] for i in (0, 4, 9)]
    batch = collate_packed(items)
    b, length, heads, dim = 3, CAP, 2, 8
    q, k, v = (torch.randn(b, heads, length, dim) for _ in range(3))
    cu = batch["cu_seqlens"]
    if method == "sdpa_mask":
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=block_causal_mask(cu, shape=(b, length)))
    elif method == "flex":
        from torch.nn.attention.flex_attention import flex_attention

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # eager flex attention on CPU warns that it is unfused
            out = flex_attention(q, k, v, block_mask=flex_block_mask(cu, shape=(b, length), block_size=16))
    else:
        flat = [x.transpose(1, 2).reshape(b * length, heads, dim) for x in (q, k, v)]
        out = varlen_attention(*flat, cu).view(b, length, heads, dim).transpose(1, 2)
    checked = 0
    for row, it in enumerate(items):
        for a, e in _segments(it):  # every sequence, and the padding segment, alone
            want = _alone(q[row, :, a:e], k[row, :, a:e], v[row, :, a:e])
            torch.testing.assert_close(out[row, :, a:e], want, atol=2e-6, rtol=1e-5)
            checked += e - a
    assert checked == b * length


class _TinyLM(nn.Module):
    """Embeddings (positions from position_ids), one attention layer with a pluggable mask, a head."""

    def __init__(self, vocab=128, dim=16, heads=2, positions=CAP):
        super().__init__()
        self.heads = heads
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(positions, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, input_ids, position_ids, mask=None):
        b, length = input_ids.shape
        x = self.tok(input_ids) + self.pos(position_ids)
        q, k, v = self.qkv(x).view(b, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        if mask is None:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.head(x + a.transpose(1, 2).reshape(b, length, -1))


def _summed_loss(logits, labels):
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE,
                           reduction="sum")


def test_token_weighted_loss_equals_loss_over_separate_sequences(ds):
    torch.manual_seed(1)
    model = _TinyLM()
    shortest = int(ds.num_tokens().argmin())
    items = [ds[i] for i in (shortest, 2, 6, 1)]
    # packed: two uneven micro-batches of one optimizer step, each summed loss divided by the step's label tokens
    micro = [collate_packed(items[:1]), collate_packed(items[1:])]
    n_labels = sum(m["num_label_tokens"] for m in micro)
    packed_loss = 0.0
    for m in micro:
        b, length = m["input_ids"].shape
        logits = model(m["input_ids"], m["position_ids"], block_causal_mask(m["cu_seqlens"], shape=(b, length)))
        loss = _summed_loss(logits, m["labels"]) / n_labels
        loss.backward()
        packed_loss += loss.item()
    packed_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    # separate: every real sequence alone, its own positions, the original labels (first token never scored)
    total, count = 0.0, 0
    sums = []
    for it in items:
        n = it["num_tokens"]
        cu = it["cu_seqlens"].tolist()
        for a, e in zip(cu[:-1], cu[1:]):
            if a >= n:
                continue  # the padding segment
            ids = it["input_ids"][None, a:e]
            labels = it["labels"][None, a:e]
            logits = model(ids, torch.arange(e - a)[None])
            sums.append(_summed_loss(logits, labels))
            count += int((labels[0, 1:] != IGNORE).sum())
    assert count == n_labels
    total = torch.stack(sums).sum() / count
    total.backward()
    assert packed_loss == pytest.approx(total.item(), rel=1e-5)
    for got, p in zip(packed_grads, model.parameters()):
        torch.testing.assert_close(got, p.grad, atol=1e-6, rtol=1e-4)
    # the usual mistake, averaging per micro-batch, gives another loss here (the check above is not vacuous)
    per_micro = []
    with torch.no_grad():
        for m in micro:
            b, length = m["input_ids"].shape
            logits = model(m["input_ids"], m["position_ids"], block_causal_mask(m["cu_seqlens"], shape=(b, length)))
            per_micro.append(_summed_loss(logits, m["labels"]).item() / m["num_label_tokens"])
    assert np.mean(per_micro) != pytest.approx(total.item(), rel=1e-5)


def _assert_same_batch(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k, v in a.items():
        if isinstance(v, torch.Tensor):
            assert v.dtype == b[k].dtype and torch.equal(v, b[k]), k
        else:
            assert v == b[k], k


@pytest.mark.parametrize("flatten", [False, True])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
def test_getitems_batches_are_collated_in_place(ds, tmp_path, flatten, dtype):
    ds = PackedDataset(ds.path, dtype=dtype, pad_id=3)
    collate = PackedCollator(flatten=flatten)
    idx = [5, 1, 9, 2]
    fast = ds.__getitems__(idx)
    for item, i in zip(fast, idx):
        _assert_same_batch(item, ds[i])
    batch = collate(fast)
    _assert_same_batch(batch, collate([ds[i] for i in idx]))
    # nothing copied: the batch views the buffer the items were written into
    assert batch["input_ids"].data_ptr() == fast[0]["input_ids"].data_ptr()
    assert batch["position_ids"].data_ptr() == fast[0]["position_ids"].data_ptr()
    # the same items in another order (the first still first, so its storage spans them all) are copied
    order = [0, 2, 1, 3]
    shuffled = collate([fast[j] for j in order])
    _assert_same_batch(shuffled, collate([ds[idx[j]] for j in order]))
    assert shuffled["input_ids"].data_ptr() != fast[0]["input_ids"].data_ptr()


def test_adjacent_rows_of_separate_storages_are_copied(ds):
    # rows whose addresses follow the stacked layout but which are separate storages (torch.from_numpy of each
    # row of one numpy buffer): a strided view over the first storage would read past it, so they are copied
    items = [ds[i] for i in (0, 1, 2)]
    rows = np.stack([np.stack([it[k].numpy() for it in items]) for k in ("input_ids", "labels", "position_ids")])
    fake = [dict(it, input_ids=torch.from_numpy(rows[0, j]), labels=torch.from_numpy(rows[1, j]),
                 position_ids=torch.from_numpy(rows[2, j])) for j, it in enumerate(items)]
    batch = collate_packed(fake)
    _assert_same_batch(batch, collate_packed(items))
    assert batch["input_ids"].data_ptr() != rows.ctypes.data


def test_getitems_without_padding_matches_items(ds):
    bare = PackedDataset(ds.path, pad=False)
    idx = [4, 0, 6]
    for item, i in zip(bare.__getitems__(idx), idx):
        _assert_same_batch(item, bare[i])
    flat = PackedCollator(flatten=True)
    _assert_same_batch(flat(bare.__getitems__(idx)), flat([bare[i] for i in idx]))
