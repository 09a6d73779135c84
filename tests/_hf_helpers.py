"""Shared pieces of the Hugging Face transformers tests: a tiny causal LM, per-sequence references, a CPU
stand-in for the flash-attn varlen kernel.

transformers is an optional extra (``pip install packer-llm[hf]``); the test module skips without it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tests._torch_helpers import IGNORE


def tiny_llama(vocab_size: int, attn_implementation: str, *, seed: int = 0, use_cache: bool = True):
    """A 2-layer Llama (hidden 32, 4 query heads, 2 key/value heads: GQA on), float32, random weights.

    The same ``seed`` gives the same weights whatever the attention implementation, so models built with
    different implementations are the same function.
    """
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation, dtype=torch.float32)
    # config.use_cache is True in every config (the default here too); a cache turns off transformers'
    # packed-sequence detection, and PackedCollator's batches carry use_cache=False for that reason (docs/torch.md)
    model.config.use_cache = use_cache
    return model


def segments(cu_seqlens: torch.Tensor) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` of every segment of a collated ``cu_seqlens`` (the padding segments included)."""
    bounds = cu_seqlens.tolist()
    return list(zip(bounds[:-1], bounds[1:]))


@torch.no_grad()
def separate_logits(model, input_ids: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Logits (T, vocab) of every segment of the flattened ``input_ids`` run alone (no packing involved: one
    sequence, default positions, no cache)."""
    flat = input_ids.reshape(-1)
    return torch.cat(
        [model(input_ids=flat[a:b][None], use_cache=False).logits[0] for a, b in segments(cu_seqlens)]
    )


def separate_loss_sum(logits: torch.Tensor, labels: torch.Tensor, cu_seqlens: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed next-token cross entropy of every sequence on its own (logits ``t`` against labels ``t + 1`` within
    the sequence), and the number of scored tokens: the slow reference of the packed loss."""
    flat = labels.reshape(-1)
    total, count = logits.new_zeros(()), 0
    for a, b in segments(cu_seqlens):
        target = flat[a + 1 : b]
        total = total + F.cross_entropy(logits[a : b - 1], target, ignore_index=IGNORE, reduction="sum")
        count += int((target != IGNORE).sum())
    return total, count


def fake_flash_attn():
    """CPU stand-ins of ``flash_attn_func`` and ``flash_attn_varlen_func`` (same signatures and layouts), so that
    transformers' own ``flash_attention_2`` code path (which kwargs it reads, how it reshapes a (B, L) batch) runs
    here without a GPU. The varlen one is :func:`packer.torch.varlen_attention` (one causal SDPA per sequence)."""
    from packer.torch import varlen_attention

    def _expand(q, k, v):
        rep = q.shape[-2] // k.shape[-2]  # grouped-query attention: flash-attn shares each key/value head
        return k.repeat_interleave(rep, dim=-2), v.repeat_interleave(rep, dim=-2)

    def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False):
        k, v = _expand(q, k, v)  # (B, L, H, D): every row one causal sequence
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal, scale=softmax_scale
        )
        return out.transpose(1, 2)

    def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                               softmax_scale=None, causal=False):
        assert torch.equal(cu_seqlens_q, cu_seqlens_k)
        assert max_seqlen_q == int(torch.diff(cu_seqlens_q).max())
        k, v = _expand(q, k, v)
        return varlen_attention(q, k, v, cu_seqlens_q, softmax_scale=softmax_scale, causal=causal)

    return flash_attn_func, flash_attn_varlen_func
