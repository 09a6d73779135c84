"""Padding never changes a real token: models whose positions matter beyond attention masks, on padded packs.

Two packs of sequences of at most 30 tokens at capacity 128, each with more padding than the models' original
length of 32. Three tiny models built from configs, where a padding position larger than any real one would
change real tokens' logits (issue 10, finding 4):

* Llama with ``dynamic`` rope scaling (original length 32): the rotary frequencies depend on the largest position
  id in the batch;
* Phi-3 with ``longrope`` (original length 32): short or long factors depending on the largest position id;
* GPT-2 with a learned table of 64 positions: a position id of 64 or more is an IndexError.

Reference: every sequence run alone through the same weights. ``PackedDataset`` numbers the padding in segments no
longer than the pack's longest sequence, so the largest position id of a batch is that of a real sequence.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("transformers", reason="the Hugging Face tests need the hf extra: pip install -e .[hf]")

from packer.torch import PackedCollator, PackedDataset  # noqa: E402
from tests._hf_helpers import separate_logits, segments  # noqa: E402

CAPACITY = 128
VOCAB = 64


def _pack(folder, lengths, seed):
    """Pack sequences of varied random tokens (a sequence of one repeated token attends to identical keys and
    values, so its logits would not depend on positions at all)."""
    import pyarrow as pa

    from packer.convert import PackConfig, pack_dataset
    from packer.input import Columns

    rng = np.random.default_rng(seed)
    rows = [rng.integers(1, VOCAB, n).tolist() for n in lengths]
    folder.mkdir(parents=True)
    column = pa.array(rows, pa.list_(pa.int32()))
    table = pa.table({"input_ids": column, "labels": column})
    with pa.OSFile(str(folder / "in.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    config = PackConfig(capacity=CAPACITY, columns=Columns(labels="labels"))
    pack_dataset(folder / "in.arrow", folder / "packed", config=config, progress=False)
    return PackedDataset(folder / "packed")[0]


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """Two packs (packed separately so that each keeps long padding), collated to (2, 128)."""
    tmp = tmp_path_factory.mktemp("pos")
    items = [_pack(tmp / "a", [30, 20, 25, 12], 0), _pack(tmp / "b", [28, 9, 3, 17], 1)]
    assert all(CAPACITY - it["num_tokens"] > 32 for it in items), "want padding longer than the original length"
    return items, PackedCollator(keys="hf")(items)


def _model(kind: str):
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, Phi3Config

    vocab = VOCAB
    if kind == "llama-dynamic":
        config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                             initializer_range=0.5,
                             rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0})
    elif kind == "phi3-longrope":
        half = 32 // 4 // 2  # head_dim / 2 factors
        config = Phi3Config(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                            original_max_position_embeddings=32, pad_token_id=0, initializer_range=0.5,
                            rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                                             "short_factor": [1.0] * half, "long_factor": [4.0] * half})
    else:
        config = GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=64, initializer_range=0.5)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32).eval()
    model.config.use_cache = False
    return model


@pytest.mark.parametrize("kind", ["llama-dynamic", "phi3-longrope", "gpt2-table"])
@torch.no_grad()
def test_padding_leaves_real_tokens_as_alone(batch, kind):
    items, b = batch
    model = _model(kind)
    pos = b["position_ids"]
    longest = max(b - a for it in items for a, b in segments(it["cu_seqlens"][: _real_segments(it) + 1]))
    assert int(pos.max()) == longest - 1  # the padding reaches no further than the longest sequence
    logits = model(**b).logits.reshape(-1, model.config.vocab_size)
    alone = separate_logits(model, b["input_ids"], b["cu_seq_lens_q"])
    real = torch.zeros(pos.numel(), dtype=torch.bool)
    for row, it in enumerate(items):
        real[row * CAPACITY : row * CAPACITY + it["num_tokens"]] = True
    # fp32 with large weights (initializer_range 0.5, logits up to ~30): measured 3e-5 at most; the old padding
    # numbering (0 .. capacity - n - 1) measured 9.2 (llama-dynamic), 16.5 (phi3-longrope), IndexError (gpt2)
    assert (logits[real] - alone[real]).abs().max() < 1e-4


def _real_segments(item) -> int:
    return int(torch.searchsorted(item["cu_seqlens"], torch.tensor(item["num_tokens"], dtype=torch.int32)))


@pytest.mark.parametrize("kind,warned", [("llama-dynamic", True), ("phi3-longrope", True), ("gpt2-table", False)])
def test_rope_scaled_by_the_batch_warns_when_packs_pass_the_original_length(tmp_path, kind, warned, caplog):
    """Past the original length, dynamic and longrope scaling follow the pack's longest sequence: the sequences
    packed with it are not trained as alone (inherent to batching them; a padded batch does the same), so the
    trainer says so, with the fix. Within it (the packs above), nothing to say."""
    from transformers import TrainingArguments

    from packer.torch.hf import PackedTrainer

    _pack(tmp_path / "long", [40, 20, 25], 2)  # 40 tokens: past the original 32
    _pack(tmp_path / "short", [30, 20, 25], 3)
    args = TrainingArguments(str(tmp_path / "out"), report_to="none", use_cpu=True)
    model = _model(kind)
    def said():  # this module's warnings only (packing logs too, at a level other tests may have changed)
        return [r.getMessage() for r in caplog.records if r.name == "packer.torch.hf" and r.levelname == "WARNING"]

    with caplog.at_level("WARNING", logger="packer.torch.hf"):
        PackedTrainer(model=model, args=args, train_dataset=PackedDataset(tmp_path / "short" / "packed"))
        assert not said()
        PackedTrainer(model=model, args=args, train_dataset=PackedDataset(tmp_path / "long" / "packed"))
    assert bool(said()) == warned
    if warned:
        assert "sequences of up to 40 tokens, past its original 32" in said()[0] and "--max-length 32" in said()[0]
