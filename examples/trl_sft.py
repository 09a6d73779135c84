"""Fine-tune with TRL's ``SFTTrainer`` on a packed folder opened with ``datasets.load_from_disk``.

    python examples/trl_sft.py packed out

TRL's padding-free collator restarts ``position_ids`` at every sequence from the folder's ``seq_lengths`` column
and keeps the stored ``labels``; ``check_sft_config`` refuses the settings under which TRL would attend across the
packed sequences, cut the packs, or pack them again. The model and tokenizer here are tiny ones built from configs
so that the script runs on a CPU; use ``from_pretrained`` for real ones. tests/test_hf_trainers.py runs this file.
"""
from __future__ import annotations

import sys

import datasets
import torch
from trl import SFTConfig, SFTTrainer

from packer.torch.hf import check_sft_config


def build_trainer(packed: str, output_dir: str, model, tokenizer, **overrides) -> SFTTrainer:
    config = SFTConfig(
        output_dir=output_dir,
        padding_free=True,    # position_ids and cu_seq_lens from seq_lengths: every sequence attended alone
        max_length=None,      # the packs are cut to capacity already; TRL's default 1024 would cut them again
        packing=False,        # the rows are packs already
        per_device_train_batch_size=2,
        use_cpu=not torch.cuda.is_available(),
        report_to="none",
        save_strategy="no",
        **overrides,
    )
    dataset = datasets.load_from_disk(packed)
    check_sft_config(config, dataset)
    return SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)


def tiny_model_and_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, **{f"t{i}": i for i in range(1, vocab_size)}}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="<pad>")),
                                        pad_token="<pad>")
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa"), tokenizer


if __name__ == "__main__":
    model, tokenizer = tiny_model_and_tokenizer(512)
    build_trainer(sys.argv[1], sys.argv[2], model, tokenizer, max_steps=4).train()
