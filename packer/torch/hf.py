"""Hugging Face glue: :class:`PackedTrainer` for ``transformers.Trainer`` and a settings check for TRL.

``import packer.torch.hf`` imports transformers (the ``hf`` extra: ``pip install packer-llm[hf]``, which brings
accelerate, which ``Trainer`` needs); ``import packer.torch`` does not.

How ``Trainer`` shards data (transformers 5.17, accelerate 1.15): ``Trainer._get_dataloader`` builds a
``DataLoader(dataset, batch_size, sampler=self._get_train_sampler())`` and passes it to ``accelerator.prepare``,
which replaces its batch sampler with accelerate's ``BatchSamplerShard``: the batches of the *whole* sampler are
dealt to the processes round-robin, batch ``i`` to process ``i % world``. A sampler that already yields one rank's
share (``PackSampler(layout="rank")``, ``DistributedSampler``) is so sharded twice, and every rank trains on
``1 / world`` of its share. :class:`PackedTrainer` gives ``Trainer`` a ``PackSampler(layout="global")``: it yields
every rank's micro-batches interleaved, rank 0's first, so that accelerate's dealing hands each rank exactly its
row of :meth:`PackSampler.plan`, balanced steps included. ``PackSampler`` checks who iterates it and raises on the
wrong combination (``layout="rank"`` under accelerate with several processes, ``layout="global"`` without).

TRL (1.16): ``SFTTrainer`` takes ``datasets.load_from_disk(packed_folder)``; with ``padding_free=True`` its
collator builds ``position_ids`` (restarting at every sequence) and ``cu_seq_lens`` from the per-row
``seq_lengths`` column that packer writes, keeps the stored ``labels`` (an already tokenized dataset with a
``labels`` column is used as is) and masks each sequence's first token (already ``-100``). Its other settings would
train silently wrong on packed rows; :func:`check_sft_config` names them.
"""
from __future__ import annotations

import logging

from transformers import Trainer

from packer import format as fmt
from packer.errors import PackerError
from packer.torch.collate import PackedCollator
from packer.torch.sampler import PackSampler

log = logging.getLogger(__name__)


class PackedTrainer(Trainer):
    """``transformers.Trainer`` that trains a :class:`packer.torch.PackedDataset` on one process or many.

    What it changes: the training sampler is a :class:`PackSampler` with ``layout="global"`` built from the
    arguments (``args.world_size`` ranks, this process's ``args.process_index``, ``per_device_train_batch_size``,
    ``gradient_accumulation_steps``, ``args.seed``), so every pack is trained exactly once per epoch across the
    ranks (less the fewer than ``world_size`` left out, as :class:`PackSampler` documents), each optimizer step's
    attention cost is balanced across ranks, and ``global_step`` after an epoch is
    :attr:`PackSampler.steps_per_epoch`; the default collator is ``PackedCollator(keys="hf")``; and the collator is
    not wrapped in ``Trainer``'s column remover, which would drop ``cu_seqlens`` (``remove_unused_columns`` has no
    effect on a ``PackedDataset``). Evaluation keeps ``Trainer``'s own sharding (see ``docs/huggingface.md``).

    ``per_device_train_batch_size`` must divide each rank's packs per epoch (use 1 with full-capacity packs);
    otherwise :class:`PackSampler` raises when the epoch starts.

    Example:
        >>> args = TrainingArguments("out", gradient_accumulation_steps=8)                          # doctest: +SKIP
        >>> PackedTrainer(model=model, args=args, train_dataset=PackedDataset("packed")).train()  # doctest: +SKIP
    """

    def __init__(self, model=None, args=None, data_collator=None, *rest, **kwargs):
        super().__init__(model, args, data_collator or PackedCollator(keys="hf"), *rest, **kwargs)
        if self.train_dataset is not None and not hasattr(self.train_dataset, "attention_costs"):
            raise PackerError(
                f"PackedTrainer trains a packer.torch.PackedDataset, got {type(self.train_dataset).__name__}; pass "
                "PackedDataset(folder) itself (a Subset or ConcatDataset of it loses the pack costs the sampler "
                "balances; pack the data you want into one folder instead)"
            )
        if self.train_dataset is not None and self.model is not None:
            warn_if_rope_depends_on_the_pack(self.model.config, self.train_dataset)

    def _get_train_sampler(self, train_dataset=None):
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if not hasattr(dataset, "attention_costs"):
            raise PackerError(
                f"PackedTrainer trains a packer.torch.PackedDataset, got {type(dataset).__name__}; for a "
                "datasets.Dataset of a packed folder use TRL's SFTTrainer (docs/huggingface.md)"
            )
        return PackSampler(
            dataset,
            num_replicas=max(1, self.args.world_size),
            rank=self.args.process_index,
            batch_size=self._train_batch_size,
            grad_accum=self.args.gradient_accumulation_steps,
            seed=self.args.seed,
            layout="global",
        )

    def _get_collator_with_removed_columns(self, data_collator, description=None):
        # PackedCollator emits the keys the model takes (keys="hf"); removing item keys first would break it
        return data_collator


_BATCH_DEPENDENT_ROPE = ("dynamic", "longrope")


def warn_if_rope_depends_on_the_pack(config, dataset) -> bool:
    """Log a warning when a model's rotary scaling depends on the longest sequence of the batch and the packs hold
    sequences past the model's original context; return whether it did.

    ``rope_type`` ``"dynamic"`` (Llama's dynamic NTK) and ``"longrope"`` (Phi-3) pick their scaling from the largest
    position id of the *batch* (transformers 5.17). Packing keeps padding below every real position, so a pack's
    sequences see exactly what they would alone while the pack's longest sequence is within
    ``original_max_position_embeddings``; past it, every sequence of that pack (and of its batch) is scaled for the
    longest one, as in a padded batch. Training is then not the same as on each sequence alone.
    """
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if not isinstance(params, dict) or params.get("rope_type", params.get("type")) not in _BATCH_DEPENDENT_ROPE:
        return False
    original = params.get("original_max_position_embeddings") or getattr(config, "original_max_position_embeddings",
                                                                          None) or config.max_position_embeddings
    longest = int(dataset.reader.longest_sequences().max()) if len(dataset) else 0
    if longest <= original:
        return False
    log.warning("the model's rope_type %r scales positions by the longest sequence of each batch, and the packs "
                "hold sequences of up to %d tokens, past its original %d: a shorter sequence packed with a longer one "
                "is trained with the longer one's scaling (as in a padded batch), not as it would be alone. Pack with "
                "--max-length %d (with --overflow split to keep the longer rows, as pieces) or use a model without "
                "batch-dependent rope scaling", params.get("rope_type", params.get("type")), longest, original,
                original)
    return True


def check_sft_config(config, dataset=None) -> None:
    """Raise unless a TRL ``SFTConfig`` trains a packed folder (``datasets.load_from_disk``) correctly.

    Required (TRL 1.16, tests/test_hf_trainers.py): ``padding_free=True`` (else TRL pads rows with an all-ones
    ``attention_mask`` and every pack is attended as one sequence), ``packing=False`` (TRL would pack the packs
    again, as single sequences), ``max_length=None`` (TRL's default 1024 would cut every pack; with
    ``padding_free`` TRL itself refuses a ``max_length`` without packing).

    Args:
        config: the ``SFTConfig``.
        dataset: the ``datasets.Dataset`` of the packed folder, checked too: without its
            :data:`packer.format.SEQ_LENGTHS` column (folders packed before it existed) TRL numbers the positions
            over the whole pack and attends across its sequences.

    Raises:
        PackerError: naming each setting to change.
    """
    if dataset is not None and fmt.SEQ_LENGTHS not in (getattr(dataset, "column_names", None) or ()):
        raise PackerError(
            f"the dataset has no {fmt.SEQ_LENGTHS!r} column (columns: {getattr(dataset, 'column_names', None)}), "
            "which TRL's padding-free collator needs to restart the positions at every packed sequence; without it "
            "every pack is attended as one sequence. Re-run 'packer pack' (folders packed before the column "
            "existed lack it)"
        )
    wrong = []
    if not getattr(config, "padding_free", False):
        wrong.append("padding_free=True (else every pack is attended as one sequence)")
    if getattr(config, "packing", False):
        wrong.append("packing=False (the rows are packs already; TRL would pack them again as single sequences)")
    if getattr(config, "max_length", None) is not None:
        wrong.append("max_length=None (else TRL cuts every pack to max_length tokens)")
    if wrong:
        raise PackerError("to train a packed folder with TRL's SFTTrainer, set " + "; ".join(wrong))
