"""Train a Hugging Face causal LM on a packed folder with ``transformers.Trainer``, on one process or several.

    python examples/hf_trainer.py packed out                                    # one process
    torchrun --nproc_per_node 2 examples/hf_trainer.py packed out              # two (gloo on CPU, NCCL on GPUs)
    accelerate launch --num_processes 2 examples/hf_trainer.py packed out     # the same through accelerate

``PackedTrainer`` is ``Trainer`` with packer's sampler laid out for accelerate's batch sharding (every pack once
per epoch across the ranks, balanced steps) and ``PackedCollator(keys="hf")``. The model here is a tiny Llama
built from a config, so the script runs on a CPU in seconds; load a real one with ``from_pretrained`` and
``attn_implementation="flash_attention_2"`` on GPUs. tests/test_hf_trainers.py runs this file.
"""
from __future__ import annotations

import sys

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, TrainingArguments

from packer.torch import PackedDataset
from packer.torch.hf import PackedTrainer


def build_trainer(packed: str, output_dir: str, *, batch_size: int = 1, grad_accum: int = 2, epochs: int = 1,
                  vocab_size: int = 512) -> PackedTrainer:
    dataset = PackedDataset(packed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=dataset.capacity)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    args = TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size,
        gradient_accumulation_steps=grad_accum,
        num_train_epochs=epochs,
        learning_rate=1e-3,
        use_cpu=not torch.cuda.is_available(),
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        seed=0,
    )
    return PackedTrainer(model=model, args=args, train_dataset=dataset)


if __name__ == "__main__":
    build_trainer(sys.argv[1], sys.argv[2]).train()
