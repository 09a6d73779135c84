"""The torch layer: packed folders into any torch training loop, on one GPU or many.

``import packer`` does not import this package (nor torch); ``import packer.torch`` does. Inside it, ``torch``
is the real torch.

* :class:`PackedDataset` (``dataset.py``): a map-style Dataset, one padded pack per item.
* :class:`PackedCollator` (``collate.py``): batches with flash-attn varlen and Hugging Face padding-free keys.
* :class:`PackSampler` (``sampler.py``): per-epoch deterministic, duplicate-free, attention-balanced and resumable
  (also elastically) distributed sampling; :class:`EvalSampler`: every pack to exactly one rank, for evaluation.
* :func:`token_losses`, :func:`row_losses` (``losses.py``): per-token losses summed back to input rows.
* ``packer.torch.hf`` (imports transformers; not imported here): :class:`~packer.torch.hf.PackedTrainer` and
  :func:`~packer.torch.hf.check_sft_config` for TRL.
* :class:`PackedBatch` (``_transport.py``): the dict type of items and batches; DataLoader workers ship it through
  reusable shared-memory slots.
* :func:`block_causal_mask`, :func:`flex_block_mask`, :func:`varlen_attention` (``attention.py``).
"""
from packer.torch.attention import block_causal_mask, flex_block_mask, segment_ids, varlen_attention
from packer.torch.collate import FLASH_ATTN_KEYS, HF_KEYS, PackedCollator, collate_packed
from packer.torch.dataset import PackedDataset
from packer.torch.losses import row_losses, token_losses
from packer.torch.sampler import EvalSampler, Imbalance, PackSampler
from packer.torch._transport import PackedBatch

__all__ = [
    "EvalSampler",
    "FLASH_ATTN_KEYS",
    "HF_KEYS",
    "Imbalance",
    "PackSampler",
    "PackedBatch",
    "PackedCollator",
    "PackedDataset",
    "block_causal_mask",
    "collate_packed",
    "flex_block_mask",
    "row_losses",
    "segment_ids",
    "token_losses",
    "varlen_attention",
]
