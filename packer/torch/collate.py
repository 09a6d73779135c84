"""Collating packs into a batch for flash-attn varlen kernels and Hugging Face padding-free models.

A batch of ``B`` items from :class:`packer.torch.PackedDataset` becomes (``L`` = the items' length, the capacity
when padded; ``T = B * L`` tokens in all):

========================  ==============  ======================================================================
key                       type            meaning
========================  ==============  ======================================================================
``input_ids``             int64 (B, L)    tokens; with ``flatten=True`` (1, T), the packs back to back
``labels``                int64 (B, L)    aligned with ``input_ids`` (the model shifts them), ``-100`` = no loss
``position_ids``          int64 (B, L)    restart at 0 at every sequence (and at the padding segment)
``cu_seqlens``            int32 (S + 1,)  flash-attn varlen boundaries over the *flattened* batch: pack ``b``'s
                                          segments shifted by ``b * L``; ``cu_seqlens[-1] == T``
``max_seqlen``            int             the longest segment (flash-attn ``max_seqlen``)
``cu_seq_lens_q``/``_k``  int32 (S + 1,)  the same tensor as ``cu_seqlens`` (Hugging Face flash-attention keys)
``max_length_q``/``_k``   int             the same as ``max_seqlen``
``use_cache``             bool            ``False``: see below
``num_label_tokens``      int             ``(labels != -100).sum()``: tokens the shifted loss is computed on
``num_tokens``            int             real (unpadded) tokens in the batch
``index``                 int64 (B,)      the packs' indices in the folder
``seq_index``/``_offset``  int64/int32 (S,) per segment of ``cu_seqlens``: input row and offset in it (``-1``
                                          for padding); only from ``PackedDataset(sequence_ids=True)`` items
========================  ==============  ======================================================================

``PackedCollator(keys="hf")`` keeps only ``input_ids``, ``labels``, ``position_ids``, ``cu_seq_lens_q``,
``cu_seq_lens_k``, ``max_length_q``, ``max_length_k``, ``use_cache``: what a transformers causal LM takes for
padding-free training, so ``model(**batch)`` is right with ``attn_implementation`` ``"flash_attention_2"`` (which
uses the given ``cu_seq_lens``), ``"sdpa"``, ``"eager"`` and ``"flex_attention"`` (which find the sequences where
``position_ids`` restart, row by row), for stacked (B, L) and flattened (1, T) batches alike (tests/test_torch_hf.py,
transformers 5.17). ``use_cache=False`` is in the batch because every transformers config says ``use_cache=True``,
and a cache turns the ``position_ids`` detection off: the model would then attend across the packed sequences with
no error. Never add an ``attention_mask`` to these batches, for the same reason. The loss shifts ``labels`` within
each row, and every row starts with ``-100``. ``keys="flash_attn"`` keeps ``input_ids``, ``labels``,
``position_ids``, ``cu_seqlens``, ``max_seqlen`` for a model that calls ``flash_attn_varlen_func`` itself (a
transformers model given only these unpacks batches of one row only: use ``keys="hf"`` with it). ``keys="all"``
(the default) keeps everything above.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from packer.errors import PackerError
from packer.torch.context_parallel import add_alignment_keys

HF_KEYS = ("input_ids", "labels", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k",
           "use_cache")
"""The Hugging Face padding-free inputs: the flash-attention ``FlashAttentionKwargs`` and ``use_cache=False``."""

FLASH_ATTN_KEYS = ("input_ids", "labels", "position_ids", "cu_seqlens", "max_seqlen")
"""The inputs of a model that calls ``flash_attn.flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens,
max_seqlen, max_seqlen, causal=True)`` on its flattened (T, heads, dim) activations."""

KEY_SETS = ("all", "hf", "flash_attn")
_TOKEN_KEYS = ("input_ids", "labels", "position_ids")


@dataclass(frozen=True)
class PackedCollator:
    """Collate function for :class:`packer.torch.PackedDataset` items (see the module docstring for the keys).

    Args:
        keys: which keys to emit: ``"all"``, ``"hf"`` (Hugging Face padding-free flash-attention keys only) or
            ``"flash_attn"`` (flash-attn varlen keys only).
        flatten: lay the packs back to back as one row, (1, T), as Hugging Face's ``DataCollatorWithFlattening``
            does; needed for items of different lengths (``PackedDataset(pad=False)``). Default: stack to (B, L).
        seq_idx: add ``seq_idx``, int32 with the tokens' shape: each token's sequence number in its row (for
            Mamba-style and linear-attention layers). Items of a folder packed with ``--pad-to-multiple-of`` also
            give ``cu_seqlens_padded`` and ``cu_seqlens_unpadded`` with ``keys="all"``; see
            :mod:`packer.torch.context_parallel`.

    Example:
        >>> loader = DataLoader(PackedDataset("packed"), batch_size=2, collate_fn=PackedCollator())  # doctest: +SKIP
        >>> batch = next(iter(loader)); batch["cu_seqlens"][-1].item()                           # doctest: +SKIP
        40000
    """

    keys: str = "all"
    flatten: bool = False
    seq_idx: bool = False

    def __post_init__(self):
        if self.keys not in KEY_SETS:
            raise PackerError(f"keys must be one of {', '.join(KEY_SETS)}; got {self.keys!r}")

    def __call__(self, items: list[dict]) -> dict:
        if not items:
            raise PackerError("cannot collate an empty batch")
        missing = [k for k in ("input_ids", "labels", "position_ids", "cu_seqlens", "max_seqlen") if k not in items[0]]
        if missing:
            raise PackerError(
                f"the items lack {', '.join(missing)}: PackedCollator takes PackedDataset items whole, and "
                "transformers.Trainer drops the item keys the model's forward does not name. Use "
                "packer.torch.hf.PackedTrainer (it also gives every rank its balanced share of the packs); "
                "TrainingArguments(remove_unused_columns=False) keeps the keys but leaves Trainer's own sampler "
                "(on several GPUs: no balancing, and packs repeated to even the ranks)"
            )
        if len(items) == 1:
            # views of the item's own tensors, nothing copied: 2.6 us against 6.5 us for the general path
            item = items[0]
            batch = dict(input_ids=item["input_ids"][None], labels=item["labels"][None],
                                position_ids=item["position_ids"][None])
            self._add_boundaries(batch, item["cu_seqlens"], int(item["max_seqlen"]))
            if self.keys == "all":
                batch["num_label_tokens"] = int(item["num_label_tokens"])
                batch["num_tokens"] = int(item["num_tokens"])
                # from_numpy: 0.8 us against 2.1 us for torch.tensor
                batch["index"] = torch.from_numpy(np.array([int(item["index"])], dtype=np.int64))
                _add_sequence_ids(batch, items)
            return self._extra(batch, items)
        lengths = [int(it["input_ids"].shape[0]) for it in items]
        if not self.flatten and min(lengths) != max(lengths):
            raise PackerError(
                f"packs of different lengths ({min(lengths):,} and {max(lengths):,} tokens) cannot be stacked; pad "
                "them (PackedDataset(pad=True)) or collate with PackedCollator(flatten=True)"
            )
        shape = (3, 1, sum(lengths)) if self.flatten else (3, len(items), lengths[0])
        buf = _stacked_rows(items)  # PackedDataset.__getitems__ wrote them in place: nothing to copy
        if buf is not None:
            buf = buf.view(shape)
        else:
            buf = torch.empty(shape, dtype=items[0]["input_ids"].dtype)
            for r, k in enumerate(_TOKEN_KEYS):
                if self.flatten:
                    torch.cat([it[k] for it in items], out=buf[r, 0])
                else:
                    torch.stack([it[k] for it in items], out=buf[r])
        batch = dict(zip(_TOKEN_KEYS, buf.unbind(0)))
        # the packs' boundaries shifted by the tokens before them, over the flattened batch
        parts, offset = [np.zeros(1, dtype=np.int32)], 0
        for it, n in zip(items, lengths):
            parts.append(it["cu_seqlens"].numpy()[1:] + np.int32(offset))
            offset += n
        cu = torch.from_numpy(np.concatenate(parts))
        self._add_boundaries(batch, cu, max(int(it["max_seqlen"]) for it in items))
        if self.keys == "all":
            batch["num_label_tokens"] = sum(int(it["num_label_tokens"]) for it in items)
            batch["num_tokens"] = sum(int(it["num_tokens"]) for it in items)
            batch["index"] = torch.from_numpy(np.array([int(it["index"]) for it in items], dtype=np.int64))
            _add_sequence_ids(batch, items)
        return self._extra(batch, items)

    def _extra(self, batch: dict, items: list[dict]) -> dict:
        if self.seq_idx or (self.keys == "all" and "cu_seqlens_padded" in items[0]):
            return add_alignment_keys(batch, items, flatten=self.flatten, seq_idx=self.seq_idx,
                                      boundaries=self.keys == "all")
        return batch

    def _add_boundaries(self, batch: dict, cu: torch.Tensor, max_seqlen: int) -> None:
        if self.keys in ("all", "flash_attn"):
            batch["cu_seqlens"] = cu
            batch["max_seqlen"] = max_seqlen
        if self.keys in ("all", "hf"):
            batch["cu_seq_lens_q"] = cu
            batch["cu_seq_lens_k"] = cu
            batch["max_length_q"] = max_seqlen
            batch["max_length_k"] = max_seqlen
            batch["use_cache"] = False


def _add_sequence_ids(batch: dict, items: list[dict]) -> None:
    """``seq_index``/``seq_offset`` of every segment of the batch's ``cu_seqlens``, when the items carry them
    (``PackedDataset(sequence_ids=True)``)."""
    if "seq_index" in items[0]:
        batch["seq_index"] = torch.cat([it["seq_index"] for it in items])
        batch["seq_offset"] = torch.cat([it["seq_offset"] for it in items])


def _stacked_rows(items: list[dict]) -> torch.Tensor | None:
    """The (3, B, L) tensor whose rows the items' token tensors already are, in stacking order, or None.

    :meth:`PackedDataset.__getitems__` fills a batch's packs into one such buffer; any other items (or these in
    another order) fail a check below and are copied as usual. The check compares addresses, then makes sure the
    first tensor's storage spans them all, so the strided view reads exactly the bytes the items hold.
    """
    first = items[0]["input_ids"]
    if first.dim() != 1 or first.stride() != (1,):
        return None
    b, length, size = len(items), first.shape[0], first.element_size()
    base, dtype = first.data_ptr(), first.dtype
    for r, key in enumerate(_TOKEN_KEYS):
        for j, it in enumerate(items):
            t = it[key]
            if (
                t.data_ptr() != base + (r * b + j) * length * size
                or t.dtype != dtype
                or t.shape != first.shape
                or t.stride() != (1,)
            ):
                return None
    origin = first.storage_offset()
    if first.untyped_storage().nbytes() < (origin + 3 * b * length) * size:
        return None
    return first.as_strided((3, b, length), (b * length, length, 1), origin)


collate_packed = PackedCollator()
"""The default collator: every key, packs stacked to (B, L)."""
