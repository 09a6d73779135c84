"""``model(**batch)`` with a real Hugging Face transformers causal LM on packed batches (padding-free, CPU, fp32).

Data: ``data_samples/reference_like`` packed at capacity 2,048; the two packs holding the most sequences. The
reference is every segment of ``cu_seqlens`` (sequences and padding) run alone through the same weights with no
packing involved. Facts these tests pin (transformers 5.17):

* sdpa, eager, flex_attention: transformers detects the packing from ``position_ids`` (a new sequence wherever
  the position does not grow by 1), per row, so stacked (B, L) and flattened (1, T) batches are both exact, but
  only with ``use_cache=False`` and no ``attention_mask``: a cache or a mask turns the detection off and
  tokens silently attend across sequences. Every config says ``use_cache=True`` (so do these models), and the
  collated batches carry ``use_cache=False``, which is what makes ``model(**batch)`` right here.
* flash_attention_2 (its code path, with a CPU stand-in for the kernel): exact in both layouts when the batch
  carries ``cu_seq_lens_q/k`` and ``max_length_q/k`` (``keys="hf"`` or ``"all"``); with ``position_ids`` alone
  (``keys="flash_attn"``) transformers only unpacks batch size 1, so (B > 1, L) batches leak.
* the extra keys of ``keys="all"`` (``cu_seqlens``, ``max_seqlen``, ``num_label_tokens``, ``num_tokens``,
  ``index``) are accepted and ignored.
* ``num_items_in_batch=num_label_tokens`` makes the loss the token-weighted loss over the separate sequences, and
  over gradient-accumulation micro-batches the gradients equal those of the separate sequences.
"""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers", reason="the Hugging Face tests need the hf extra: pip install -e .[hf]")

from packer.convert import PackConfig, pack_dataset  # noqa: E402
from packer.input import Columns  # noqa: E402
from packer.torch import PackedCollator, PackedDataset  # noqa: E402
from tests._hf_helpers import (  # noqa: E402
    fake_flash_attn,
    separate_logits,
    separate_loss_sum,
    tiny_llama,
)
from tests._torch_helpers import IGNORE  # noqa: E402

CAPACITY = 2048
VOCAB = 1024  # a power of two: tokens are folded with a bit mask
ATOL = 2e-5  # fp32; measured differences are about 2e-7


def folded_samples(path, vocab: int):
    """``data_samples/reference_like`` with its token ids (and labels) taken modulo ``vocab``, as an Arrow stream:
    the same lengths and label masks, and logits small enough for a fast CPU test (32,000-word logits of 4,096
    tokens made the file take 50 s)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from tests.conftest import SAMPLES

    with pa.memory_map(str(SAMPLES / "data-00000-of-00001.arrow")) as source:
        table = pa.ipc.open_stream(source).read_all()
    cols = {}
    for name in ("input_ids", "labels"):
        col = table.column(name).combine_chunks()
        values = col.values
        folded = pc.if_else(pc.equal(values, IGNORE), values, pc.bit_wise_and(values, vocab - 1))
        cols[name] = pa.ListArray.from_arrays(col.offsets, folded)
    folded_table = pa.table(cols)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, folded_table.schema) as w:
        w.write_table(folded_table)
    return path


@pytest.fixture(scope="module")
def hf_data(tmp_path_factory):
    """The two packs with the most sequences, the vocabulary size and the reference logits (one SDPA call per
    segment of the stacked batch, which has the same segments as the flattened one)."""
    tmp = tmp_path_factory.mktemp("hf")
    src = folded_samples(tmp / "folded.arrow", VOCAB)
    out = tmp / "packed"
    pack_dataset(src, out, config=PackConfig(capacity=CAPACITY, columns=Columns(labels="labels")), progress=False)
    ds = PackedDataset(out)
    packs = [ds.reader.pack(i) for i in range(len(ds))]  # (input_ids, labels, cu_seqlens) numpy views
    chosen = sorted(range(len(ds)), key=lambda i: -packs[i][2].shape[0])[:2]
    items = [ds[i] for i in chosen]
    assert all(it["num_tokens"] < CAPACITY for it in items), "want a padding segment in every pack"
    vocab = 1 + max(int(ids.max()) for ids, _, _ in packs)
    assert vocab == VOCAB
    batch = PackedCollator()(items)
    ref_model = tiny_llama(vocab, "sdpa")
    ref_logits = separate_logits(ref_model, batch["input_ids"], batch["cu_seqlens"])
    ref_sum, ref_count = separate_loss_sum(ref_logits, batch["labels"], batch["cu_seqlens"])
    assert ref_count == batch["num_label_tokens"]
    return {"items": items, "vocab": vocab, "logits": ref_logits, "loss_sum": ref_sum, "label_tokens": ref_count}


def _check_packed_forward(model, batch, hf_data):
    cu = batch["cu_seqlens"] if "cu_seqlens" in batch else batch["cu_seq_lens_q"]
    assert int(cu.numel()) - 1 >= 8, "the packs should hold several sequences each"
    with torch.no_grad():
        out = model(**batch, num_items_in_batch=hf_data["label_tokens"])
    logits = out.logits.reshape(-1, out.logits.shape[-1])
    torch.testing.assert_close(logits, hf_data["logits"], rtol=0, atol=ATOL)
    torch.testing.assert_close(out.loss, hf_data["loss_sum"] / hf_data["label_tokens"], rtol=1e-5, atol=0)


@pytest.mark.parametrize(
    "impl,flatten,keys",
    [
        ("sdpa", False, "all"),
        ("sdpa", True, "hf"),
        ("eager", False, "hf"),  # eager builds the same mask as sdpa (masking_utils); one layout keeps this fast
        # flex on CPU: forward only (no CPU backward in torch), about 6 s of torch.compile per shape: one layout
        ("flex_attention", False, "all"),
    ],
)
def test_packed_batch_equals_separate_sequences(hf_data, impl, flatten, keys):
    model = tiny_llama(hf_data["vocab"], impl).eval()
    batch = PackedCollator(keys=keys, flatten=flatten)(hf_data["items"])
    assert batch["input_ids"].shape == ((1, 2 * CAPACITY) if flatten else (2, CAPACITY))
    _check_packed_forward(model, batch, hf_data)


def test_a_cache_or_an_attention_mask_turns_off_packing_detection(hf_data):
    """Documents the pitfall docs/torch.md warns about: with the config's default ``use_cache=True`` (in eval and
    in train mode alike), or with an all-ones ``attention_mask``, sdpa attends across the packed sequences."""
    batch = PackedCollator(keys="hf")(hf_data["items"][:1])  # one pack, (1, L)
    assert batch.pop("use_cache") is False  # what the collator adds against exactly this
    expected = hf_data["logits"][:CAPACITY]
    first_end = int(batch["cu_seq_lens_q"][1])
    for use_cache, extra in ((True, {}), (False, {"attention_mask": torch.ones_like(batch["input_ids"])})):
        model = tiny_llama(hf_data["vocab"], "sdpa", use_cache=use_cache).train()
        with torch.no_grad():
            logits = model(**batch, **extra).logits[0]
        # the first sequence has nothing before it to attend to, so it is right either way; the later ones are not
        torch.testing.assert_close(logits[:first_end], expected[:first_end], rtol=0, atol=ATOL)
        assert (logits[first_end:] - expected[first_end:]).abs().max() > 1e-2, (use_cache, list(extra))


def test_gradient_accumulation_matches_separate_sequences(hf_data):
    """Two micro-batches (one pack each) normalised by the step's label tokens: the summed loss and the gradients
    equal those of the separate sequences; Trainer's own count (``labels[..., 1:] != -100``) is
    ``num_label_tokens``; normalising each micro-batch by its own count gives other gradients."""
    collate = PackedCollator(flatten=True)
    micro = [collate([it]) for it in hf_data["items"]]
    for mb in micro:
        assert int((mb["labels"][..., 1:] != IGNORE).sum()) == mb["num_label_tokens"]
    n_step = sum(mb["num_label_tokens"] for mb in micro)
    assert n_step == hf_data["label_tokens"]

    model = tiny_llama(hf_data["vocab"], "sdpa").train()
    total = 0.0
    for mb in micro:
        loss = model(**mb, num_items_in_batch=n_step).loss
        loss.backward()
        total += float(loss.detach())
    packed_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    # reference: every sequence alone, token-weighted over the whole step
    loss_sum = 0.0
    for mb in micro:
        flat_ids = mb["input_ids"].reshape(-1)
        flat_labels = mb["labels"].reshape(-1)
        for a, b in zip(mb["cu_seqlens"][:-1].tolist(), mb["cu_seqlens"][1:].tolist()):
            if not bool((flat_labels[a + 1 : b] != IGNORE).any()):
                continue  # the padding segment, or a sequence without trained labels: no loss, no gradient
            out = model(input_ids=flat_ids[a:b][None], labels=flat_labels[a:b][None], use_cache=False,
                        num_items_in_batch=n_step)
            out.loss.backward()
            loss_sum += float(out.loss.detach())
    assert total == pytest.approx(loss_sum, rel=1e-5)
    assert total == pytest.approx(float(hf_data["loss_sum"]) / n_step, rel=1e-5)
    for p, g in zip(model.parameters(), packed_grads):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-7)

    # the per-micro-batch mean (what a loop without num_items_in_batch computes) weighs the packs differently
    model.zero_grad()
    for mb in micro:
        (model(**mb).loss / len(micro)).backward()
    assert max(float((g - p.grad).abs().max()) for p, g in zip(model.parameters(), packed_grads)) > 1e-6


@pytest.mark.parametrize(
    "keys,flatten,exact",
    [
        ("hf", False, True),          # cu_seq_lens given: transformers flattens (B, L) and uses them
        ("all", True, True),
        ("flash_attn", True, True),    # position_ids only, batch size 1: transformers derives cu_seqlens itself
        ("flash_attn", False, False),  # position_ids only, batch size 2: no varlen, each row one causal sequence
    ],
)
def test_flash_attention_2_code_path(hf_data, monkeypatch, keys, flatten, exact):
    """transformers' ``flash_attention_2`` path with a CPU stand-in for the flash-attn kernels (same signatures):
    which batch keys make it call the varlen kernel with our boundaries."""
    import transformers.modeling_flash_attention_utils as fa_utils

    flash_fn, varlen_fn = fake_flash_attn()
    process = fa_utils._lazy_define_process_function(varlen_fn)
    monkeypatch.setattr(fa_utils, "lazy_import_flash_attention",
                        lambda *a, **k: ((flash_fn, varlen_fn, None, None, None), process))
    model = tiny_llama(hf_data["vocab"], "sdpa").eval()
    model.config._attn_implementation = "flash_attention_2"  # skips the availability check: no flash-attn here
    batch = PackedCollator(keys=keys, flatten=flatten)(hf_data["items"])
    if exact:
        _check_packed_forward(model, batch, hf_data)
    else:
        with torch.no_grad():
            logits = model(**batch).logits.reshape(-1, hf_data["logits"].shape[-1])
        assert (logits - hf_data["logits"]).abs().max() > 1e-2
