"""Attention over packed sequences: masks from ``cu_seqlens`` for SDPA and flex attention, and a varlen reference.

A packed row must behave like its sequences run one by one: a token attends to earlier tokens of its own
sequence only. On GPUs ``flash_attn_varlen_func`` does this from ``cu_seqlens`` directly. Elsewhere:

* :func:`block_causal_mask`: a dense boolean mask for ``torch.nn.functional.scaled_dot_product_attention``
  (``True`` = may attend). Memory is quadratic in the row length (a 20,000-token row is 400 MB), so use it for
  short rows and tests.
* :func:`flex_block_mask`: a block-sparse ``BlockMask`` for ``torch.nn.attention.flex_attention``, which skips
  the blocks outside the diagonal sequences (compile ``flex_attention`` for speed).
* :func:`varlen_attention`: the varlen computation itself, one causal SDPA call per sequence, with the same
  (T, heads, dim) layout as ``flash_attn_varlen_func``; memory linear in T. The CPU example model uses it.

``cu_seqlens`` is the collated form: int32 (S + 1,) over the flattened batch, ``cu_seqlens[-1] == T``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from packer.errors import PackerError


def _check_cu(cu_seqlens: torch.Tensor, shape: tuple[int, int] | None) -> tuple[torch.Tensor, int]:
    cu = torch.as_tensor(cu_seqlens).to(torch.int64).flatten()
    if cu.numel() < 2 or int(cu[0]) != 0 or bool((cu[1:] <= cu[:-1]).any()):
        raise PackerError("cu_seqlens must start at 0 and increase strictly, e.g. [0, 5, 12]")
    total = int(cu[-1])
    if shape is not None:
        b, length = shape
        if b * length != total:
            raise PackerError(f"cu_seqlens ends at {total:,} tokens but shape {tuple(shape)} holds {b * length:,}")
        rows = torch.arange(b + 1, dtype=torch.int64) * length
        if not bool(torch.isin(rows, cu).all()):
            raise PackerError(f"a segment of cu_seqlens crosses a row boundary (a multiple of {length:,})")
    return cu, total


def segment_ids(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Sequence number of every token, int64 (T,): ``[0, 5, 7]`` gives ``[0, 0, 0, 0, 0, 1, 1]``."""
    cu, total = _check_cu(cu_seqlens, None)
    return torch.repeat_interleave(torch.arange(cu.numel() - 1), torch.diff(cu), output_size=total)


def block_causal_mask(
    cu_seqlens: torch.Tensor, *, shape: tuple[int, int] | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """The block-diagonal causal mask of ``cu_seqlens``, boolean, ``True`` where a query may attend a key.

    Args:
        cu_seqlens: int (S + 1,), from 0 to T.
        shape: ``(B, L)`` of a collated batch: return one mask per row, (B, 1, L, L), ready to broadcast over
            heads in ``scaled_dot_product_attention(q, k, v, attn_mask=mask)`` with q of shape (B, H, L, D).
            Default: one (T, T) mask over the flattened tokens.
        device: where to build it.

    Example:
        >>> block_causal_mask(torch.tensor([0, 2, 3])).int()
        tensor([[1, 0, 0],
                [1, 1, 0],
                [0, 0, 1]], dtype=torch.int32)
    """
    cu, total = _check_cu(cu_seqlens, shape)
    seg = segment_ids(cu).to(device)
    if shape is None:
        causal = torch.ones(total, total, dtype=torch.bool, device=device).tril_()
        return (seg[:, None] == seg[None, :]) & causal
    b, length = shape
    seg = seg.view(b, length)
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril_()
    return ((seg[:, :, None] == seg[:, None, :]) & causal).unsqueeze(1)


def flex_block_mask(
    cu_seqlens: torch.Tensor,
    *,
    shape: tuple[int, int] | None = None,
    device: torch.device | str = "cpu",
    block_size: int = 128,
):
    """A flex-attention ``BlockMask`` for ``cu_seqlens`` (same semantics as :func:`block_causal_mask`).

    Args:
        cu_seqlens: int (S + 1,), from 0 to T.
        shape: ``(B, L)`` for a collated batch (q of shape (B, H, L, D)); default one row of T tokens.
        device: where the mask lives (that of q).
        block_size: flex attention's sparsity block (128 on GPUs).

    Example:
        >>> from torch.nn.attention.flex_attention import flex_attention                # doctest: +SKIP
        >>> out = flex_attention(q, k, v, block_mask=flex_block_mask(cu, shape=(B, L)))  # doctest: +SKIP
    """
    from torch.nn.attention.flex_attention import create_block_mask

    cu, total = _check_cu(cu_seqlens, shape)
    b, length = shape if shape is not None else (1, total)
    seg = segment_ids(cu).to(device).view(b, length)

    def mask_mod(bi, h, q_idx, kv_idx):
        return (seg[bi, q_idx] == seg[bi, kv_idx]) & (q_idx >= kv_idx)

    return create_block_mask(
        mask_mod, B=b, H=None, Q_LEN=length, KV_LEN=length, device=device, BLOCK_SIZE=block_size
    )


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    *,
    softmax_scale: float | None = None,
    causal: bool = True,
) -> torch.Tensor:
    """Attention within each sequence of a packed, flattened batch, as ``flash_attn_varlen_func`` computes it.

    Args:
        q, k, v: (T, H, D) float, the batch's tokens flattened (``x.view(B * L, H, D)`` for a (B, L) batch).
        cu_seqlens: int (S + 1,), from 0 to T.
        softmax_scale: default ``1 / sqrt(D)``.
        causal: causal within each sequence.

    Returns:
        (T, H, D), like q. One ``scaled_dot_product_attention`` call per sequence: exact and memory-linear, but a
        Python loop; on a GPU call flash-attn instead.
    """
    if q.dim() != 3 or k.shape != q.shape or v.shape[:2] != q.shape[:2]:
        raise PackerError(f"q, k, v must be (T, heads, dim) with equal T and heads; got {tuple(q.shape)}, "
                          f"{tuple(k.shape)}, {tuple(v.shape)}")
    cu, total = _check_cu(cu_seqlens, None)
    if total != q.shape[0]:
        raise PackerError(f"cu_seqlens ends at {total:,} but q holds {q.shape[0]:,} tokens")
    bounds = cu.tolist()
    outs = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        # (n, H, D) -> (1, H, n, D)
        qs, ks, vs = (x[a:b].transpose(0, 1).unsqueeze(0) for x in (q, k, v))
        o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=causal, scale=softmax_scale)
        outs.append(o.squeeze(0).transpose(0, 1))
    return torch.cat(outs)
