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
* :class:`ContextParallelCollator` (``context_parallel.py``): folders packed with ``--pad-to-multiple-of``: each
  context-parallel rank's load-balanced slice with the boundaries of Megatron's ``PackedSeqParams``.
* :func:`block_causal_mask`, :func:`flex_block_mask`, :func:`varlen_attention` (``attention.py``).
"""
try:
    import torch as _torch  # noqa: F401
except ImportError as e:  # raised here, with the fix, rather than from deep inside a submodule
    raise ImportError(
        "packer.torch needs PyTorch, which the command line and packer's Python API do not: install it with "
        "pip install 'packer-llm[torch]' (or pip install torch)"
    ) from e

from packer.torch.attention import block_causal_mask, flex_block_mask, segment_ids, varlen_attention
from packer.torch.collate import FLASH_ATTN_KEYS, HF_KEYS, PackedCollator, collate_packed
from packer.torch.context_parallel import (
    PACKED_SEQ_PARAMS_KEYS,
    ContextParallelCollator,
    cp_partition_indices,
    seq_idx_from_cu,
)
from packer.torch.dataset import PackedDataset
from packer.torch.losses import row_losses, token_losses
from packer.torch.sampler import EvalSampler, Imbalance, PackSampler

__all__ = [
    "ContextParallelCollator",
    "EvalSampler",
    "FLASH_ATTN_KEYS",
    "HF_KEYS",
    "Imbalance",
    "PACKED_SEQ_PARAMS_KEYS",
    "PackSampler",
    "PackedCollator",
    "PackedDataset",
    "block_causal_mask",
    "cp_partition_indices",
    "collate_packed",
    "flex_block_mask",
    "row_losses",
    "segment_ids",
    "seq_idx_from_cu",
    "token_losses",
    "varlen_attention",
]
