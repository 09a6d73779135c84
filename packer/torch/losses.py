"""Per-example losses from packed batches: a token's loss, then every input row's, through ``seq_index``.

Evaluation metrics are usually wanted per original example (its mean token loss, its perplexity), but a packed
batch mixes many examples, and ``--overflow split`` cuts a long one into chunks that may land in different packs.
:func:`token_losses` gives the loss of every token of a batch in place; :func:`row_losses` sums them over every
segment of ``cu_seqlens`` and then over the segments of the same input row (``seq_index``, from
``PackedDataset(sequence_ids=True)``), so the chunks of a split row are summed back into their row. Summing over
batches and ranks (``torch.distributed.all_reduce`` of a dense per-row tensor, or a dict on each rank) and
dividing by the token counts gives each row's mean loss, exactly as if it had been run alone.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from packer.errors import PackerError
from packer.format import IGNORE_INDEX


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The cross entropy of every token, aligned with ``labels``: float32 (B, L).

    Entry ``t`` is the loss of predicting ``labels[..., t]`` from the logits at ``t - 1`` (the Hugging Face
    shift), ``0`` at ``t = 0`` and wherever ``labels`` is ``-100``. Every sequence of a packed batch starts with
    ``-100``, so no token is scored against another sequence's.

    Args:
        logits: float (B, L, vocab).
        labels: int (B, L), the batch's ``labels``.
    """
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise PackerError(f"logits must be (B, L, vocab) and labels (B, L); got {tuple(logits.shape)}, "
                          f"{tuple(labels.shape)}")
    out = logits.new_zeros(labels.shape, dtype=torch.float32)
    target = labels[:, 1:].long()
    loss = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), target, ignore_index=IGNORE_INDEX,
                           reduction="none")
    out[:, 1:] = loss
    return out


def row_losses(token_loss: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sum per-token losses of a packed batch back to the input rows they came from.

    Args:
        token_loss: float (B, L) or (T,), aligned with the batch's ``labels`` as :func:`token_losses` returns it
            (0 where a token is not scored).
        batch: a :class:`packer.torch.PackedCollator` batch of ``PackedDataset(sequence_ids=True)`` items: its
            ``labels``, ``cu_seqlens`` and ``seq_index``.

    Returns:
        ``rows`` int64 (R,): the input rows (``seq_index``) in the batch, sorted, padding excluded; ``loss``
        float (R,): each row's summed token loss (the chunks of a split row added up); ``tokens`` int64 (R,): each
        row's scored tokens. ``loss / tokens`` is a row's mean token loss when all its chunks are in the batch;
        across batches, add ``loss`` and ``tokens`` per row first.

    Raises:
        PackerError: the batch has no ``seq_index`` (open the dataset with ``sequence_ids=True``) or its sizes
            disagree.
    """
    if "seq_index" not in batch or "cu_seqlens" not in batch:
        raise PackerError("the batch has no seq_index/cu_seqlens: open the folder with "
                          "PackedDataset(..., sequence_ids=True) and collate with PackedCollator(keys='all')")
    flat = token_loss.reshape(-1)
    scored = (batch["labels"].reshape(-1) != IGNORE_INDEX).to(torch.int64)
    cu = batch["cu_seqlens"].to(torch.int64)
    seq_index = batch["seq_index"].to(torch.int64)
    if flat.shape[0] != int(cu[-1]) or seq_index.shape[0] != cu.shape[0] - 1:
        raise PackerError(f"token_loss has {flat.shape[0]:,} tokens and seq_index {seq_index.shape[0]} segments, "
                          f"but cu_seqlens covers {int(cu[-1]):,} tokens in {cu.shape[0] - 1} segments")
    segment = torch.repeat_interleave(torch.arange(cu.shape[0] - 1), torch.diff(cu))
    seg_loss = torch.zeros(cu.shape[0] - 1, dtype=flat.dtype).index_add_(0, segment, flat)
    seg_tokens = torch.zeros(cu.shape[0] - 1, dtype=torch.int64).index_add_(0, segment, scored)
    real = seq_index >= 0
    rows, inverse = torch.unique(seq_index[real], return_inverse=True)
    loss = torch.zeros(rows.shape[0], dtype=flat.dtype).index_add_(0, inverse, seg_loss[real])
    tokens = torch.zeros(rows.shape[0], dtype=torch.int64).index_add_(0, inverse, seg_tokens[real])
    return rows, loss, tokens
