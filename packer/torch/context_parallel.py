"""Aligned packs and context parallelism: the layout Megatron's ``PackedSeqParams`` and TransformerEngine's THD
attention take, and each context-parallel (CP) rank's load-balanced slice of it.

A folder packed with ``packer pack --pad-to-multiple-of N`` stores, next to the real boundaries ``cu_seqlens``, the
boundaries of every sequence's *padded span* (``cu_seqlens_padded``: its length rounded up to a multiple of N; see
:mod:`packer.format`). :class:`packer.torch.PackedDataset` then lays a pack out in those spans (:func:`aligned_item`):
each sequence's tokens, then its alignment padding (``pad_id``, label ``-100``, position ids continuing the
sequence's own), and with ``pad=True`` the padding up to the capacity, in segments of the longest span (multiples
of N, positions restarting at 0 in each); no padding position exceeds the longest real sequence's last one. In
that layout:

=========================  ===============================  =====================================================
packer key                 Megatron / TransformerEngine     meaning
=========================  ===============================  =====================================================
``cu_seqlens_padded``      ``cu_seqlens_q_padded``,         offsets of the padded spans in the tokens: int32
                           ``cu_seqlens_kv_padded``         (S + 1,), from 0 to the row's length
``cu_seqlens_unpadded``    ``cu_seqlens_q``,                running sum of the *real* lengths (NeMo's name;
                           ``cu_seqlens_kv``                the final padding segments count whole): int32 (S + 1,)
``cu_seqlens``             (flash-attn ``cu_seqlens``)      the segments of the tokens, the same values as
                                                            ``cu_seqlens_padded``: flash-attn, SDPA and Hugging
                                                            Face keys stay right, since alignment padding comes
                                                            after its sequence's real tokens (causal)
``max_seqlen``             ``max_seqlen_q``, ``_kv``        the longest padded span
``seq_idx``                (Mamba ``seq_idx``)              int32 per token: its sequence's number in the row
=========================  ===============================  =====================================================

:class:`ContextParallelCollator` (``cp_size``, ``cp_rank``) turns such items into rank ``cp_rank``'s share of a
flattened (1, T) batch: every padded span is cut into ``2 * cp_size`` equal chunks and the rank keeps chunks
``cp_rank`` and ``2 * cp_size - 1 - cp_rank``, in that order, span after span (the load-balanced "zigzag" split of
Megatron-LM's ``get_batch_on_this_cp_rank`` and TransformerEngine's ``thd_get_partitioned_indices``; with causal
attention, every rank then does the same work). The boundaries it returns are those of the *whole* batch, which is
what TransformerEngine's CP attention takes: it divides them by ``cp_size`` itself. See ``docs/context_parallel.md``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from packer import format as fmt
from packer import kernels
from packer.errors import PackerError

PACKED_SEQ_PARAMS_KEYS = ("cu_seqlens_q", "cu_seqlens_kv", "cu_seqlens_q_padded", "cu_seqlens_kv_padded",
                          "max_seqlen_q", "max_seqlen_kv")
"""The keys of a :class:`ContextParallelCollator` batch named as the fields of Megatron-LM's
``megatron.core.packed_seq_params.PackedSeqParams`` (pass them with ``qkv_format="thd"``)."""


def aligned_item(reader, index: int, *, length: int | None, pad_id: int, dtype: np.dtype) -> dict:
    """Pack ``index`` of an aligned folder laid out in its padded spans (the item of
    :class:`packer.torch.PackedDataset` for folders packed with ``--pad-to-multiple-of``).

    Args:
        reader: a :class:`packer.packed_reader.PackedReader` of an aligned folder.
        index: the pack.
        length: the item's length (the capacity, with ``PackedDataset(pad=True)``); None: the padded spans only.
        pad_id: token id of the padding.
        dtype: numpy dtype of the three token rows (int64 or int32).

    Returns:
        ``input_ids``, ``labels``, ``position_ids`` ((length,)), ``cu_seqlens``, ``cu_seqlens_padded`` (the same
        tensor), ``cu_seqlens_unpadded`` (int32, (k + 1 + p,), with ``p`` final padding segments of at most the
        longest span each),
        ``max_seqlen``, ``num_label_tokens``, ``num_tokens`` (real tokens), ``index``; see the module docstring.

    Raises:
        PackerError: a damaged pack (see :meth:`PackedReader.cu_seqlens_padded`), or a trained label at a
            sequence's first token.
    """
    ids, labels, cu = reader.pack(index)
    cu_pad = reader.cu_seqlens_padded(index)  # checked against cu and the capacity: safe for the kernel
    n, total = ids.shape[0], int(cu_pad[-1])
    length = total if length is None else length
    rows = np.empty((3, length), dtype=dtype)
    ids_row, labels_row, pos_row = rows
    # alignment padding continues its sequence's positions (it belongs to the span); the final padding is cut into
    # segments of the longest span, each restarting at 0 (a multiple of N each, so CP chunks stay whole); every
    # padding position is capped at the longest real sequence's last one, so no padding position exceeds a real
    # one (rope scaling, learned position tables: see PackedDataset). A kernel: items took 260 us with numpy
    # scatters, 80 us so (bench_align.py)
    period = max(int(np.diff(cu_pad).max()), 1)
    max_position = int(np.diff(cu).max()) - 1  # cu is checked: at least one sequence of at least one token
    n_labels, bad = kernels.fill_aligned_pack(ids, labels, cu, cu_pad, ids_row, labels_row, pos_row, pad_id,
                                              fmt.IGNORE_INDEX, period, max_position)
    if bad >= 0:
        s, row = reader.locate(index if index >= 0 else index + len(reader))
        raise PackerError(f"{reader.shard_paths[s]}: row {row}, sequence {int(bad)} has a trained label at its "
                          "first token; not packer output, re-run 'packer pack'")
    if length > total:
        tail = np.arange(period, length - total, period, dtype=np.int64)
        tail = np.append(tail, length - total)  # the padding segments' ends, from the end of the last span
        cu_out = np.concatenate([cu_pad, total + tail]).astype(np.int32)
        cu_real = np.concatenate([cu, n + tail]).astype(np.int32)  # padding segments count whole in both
    else:
        cu_out, cu_real = np.array(cu_pad, dtype=np.int32), np.array(cu, dtype=np.int32)
    cu_t = torch.from_numpy(cu_out)
    return dict(
        input_ids=torch.from_numpy(ids_row),
        labels=torch.from_numpy(labels_row),
        position_ids=torch.from_numpy(pos_row),
        cu_seqlens=cu_t,
        cu_seqlens_padded=cu_t,
        cu_seqlens_unpadded=torch.from_numpy(cu_real),
        max_seqlen=int(np.diff(cu_out).max()),
        num_label_tokens=int(n_labels),
        num_tokens=n,
        index=int(index),
    )


def seq_idx_from_cu(cu_seqlens: torch.Tensor | np.ndarray) -> torch.Tensor:
    """The sequence number of every token, int32 (T,): ``[0, 3, 5]`` gives ``[0, 0, 0, 1, 1]``.

    Mamba-style layers (``mamba_ssm``'s ``seq_idx``) and linear attention use it to reset their state at every
    sequence of a packed row.
    """
    cu = np.asarray(cu_seqlens, dtype=np.int64)
    return torch.from_numpy(np.repeat(np.arange(cu.shape[0] - 1, dtype=np.int32), np.diff(cu)))


def add_alignment_keys(batch: dict, items: list[dict], *, flatten: bool, seq_idx: bool,
                       boundaries: bool = True) -> dict:
    """Add ``cu_seqlens_padded``, ``cu_seqlens_unpadded`` (items of an aligned folder) and ``seq_idx`` (on request)
    to a :class:`packer.torch.PackedCollator` batch of ``items``; the boundaries are shifted over the flattened
    batch like ``cu_seqlens``. ``seq_idx`` has the tokens' shape: (B, L) numbered per row, or (1, T)."""
    if boundaries and "cu_seqlens_padded" in items[0]:
        if any("cu_seqlens_padded" not in it for it in items):
            raise PackerError("cannot collate packs of an aligned folder (--pad-to-multiple-of) with packs of "
                              "another folder")
        padded = _shifted(items, "cu_seqlens_padded").astype(np.int32)
        cu = batch.get("cu_seqlens")
        batch["cu_seqlens_padded"] = cu if cu is not None and np.array_equal(cu.numpy(), padded) else \
            torch.from_numpy(padded)  # the same values: one tensor, shipped once
        batch["cu_seqlens_unpadded"] = torch.from_numpy(_shifted(items, "cu_seqlens_unpadded").astype(np.int32))
    if seq_idx:
        if flatten:
            batch["seq_idx"] = seq_idx_from_cu(_shifted(items, "cu_seqlens"))[None]
        else:
            batch["seq_idx"] = torch.stack([seq_idx_from_cu(it["cu_seqlens"]) for it in items])
    return batch


def cp_partition_indices(cu_seqlens_padded, cp_size: int, cp_rank: int) -> np.ndarray:
    """The token indices rank ``cp_rank`` of ``cp_size`` holds: int64 (T / cp_size,).

    Every span ``[cu[i], cu[i + 1])`` is cut into ``2 * cp_size`` equal chunks; the rank takes chunk ``cp_rank``
    and then chunk ``2 * cp_size - 1 - cp_rank`` of each span, span after span (the order of TransformerEngine's
    ``thd_get_partitioned_indices``). With ``cp_size == 1``: every token, in order.

    Example:
        >>> cp_partition_indices([0, 8, 12], 2, 0).tolist()
        [0, 1, 6, 7, 8, 11]

    Raises:
        PackerError: ``cu_seqlens_padded`` does not start at 0 or decreases, or (``cp_size > 1``) a span is not a
            multiple of ``2 * cp_size`` tokens.
    """
    _check_cp(cp_size, cp_rank)
    cu = np.asarray(cu_seqlens_padded, dtype=np.int64).ravel()
    if cu.shape[0] < 1 or cu[0] != 0 or np.any(np.diff(cu) < 0):
        raise PackerError("cu_seqlens_padded must start at 0 and not decrease, e.g. [0, 8, 16]")
    if cp_size == 1:
        return np.arange(int(cu[-1]), dtype=np.int64)
    spans = np.diff(cu)
    parts = 2 * cp_size
    bad = np.flatnonzero(spans % parts)
    if bad.shape[0]:
        k = int(bad[0])
        raise PackerError(
            f"segment {k} spans {int(spans[k]):,} tokens, not a multiple of 2 x cp_size = {parts}; pack with "
            f"'packer pack --pad-to-multiple-of N' where N is a multiple of {parts} (and --max-length a multiple of N)"
        )
    chunk = spans // parts
    first = cu[:-1] + cp_rank * chunk
    second = cu[:-1] + (parts - 1 - cp_rank) * chunk
    starts = np.stack([first, second], axis=1).ravel()
    lens = np.repeat(chunk, 2)
    excl = np.cumsum(lens) - lens
    return np.arange(int(lens.sum()), dtype=np.int64) + np.repeat(starts - excl, lens)


def _check_cp(cp_size, cp_rank) -> None:
    if isinstance(cp_size, bool) or not isinstance(cp_size, int) or cp_size < 1:
        raise PackerError(f"cp_size must be a positive integer, got {cp_size!r}")
    if isinstance(cp_rank, bool) or not isinstance(cp_rank, int) or not 0 <= cp_rank < cp_size:
        raise PackerError(f"cp_rank must be an integer in [0, cp_size = {cp_size}), got {cp_rank!r}")


def check_cp_alignment(pad_to_multiple_of: int | None, cp_size: int) -> None:
    """Raise unless packs aligned to ``pad_to_multiple_of`` can be split over ``cp_size`` ranks.

    Raises:
        PackerError: the folder is not aligned, or (``cp_size > 1``) N is not a multiple of ``2 * cp_size``.
    """
    if pad_to_multiple_of is None:
        raise PackerError(f"the folder was packed without --pad-to-multiple-of; context parallelism needs every "
                          f"sequence padded to a multiple of 2 x cp_size = {2 * cp_size}: re-pack with "
                          f"'packer pack --pad-to-multiple-of {2 * cp_size}' (or a multiple of it, e.g. 16)")
    if cp_size > 1 and pad_to_multiple_of % (2 * cp_size):
        raise PackerError(f"--pad-to-multiple-of {pad_to_multiple_of} is not a multiple of 2 x cp_size = "
                          f"{2 * cp_size}; re-pack with --pad-to-multiple-of a multiple of {2 * cp_size}")


@dataclass(frozen=True)
class ContextParallelCollator:
    """Collate items of an aligned folder into context-parallel rank ``cp_rank``'s share of a flattened batch.

    Args:
        cp_size: ranks in the context-parallel group.
        cp_rank: this rank's index in it (``torch.distributed.get_rank(cp_group)``).
        pad_to_multiple_of: the folder's N (``dataset.reader.pad_to_multiple_of``); checked against ``cp_size``
            here when given (:meth:`for_dataset` passes it). Every batch is checked in any case.

    A batch of ``B`` items (``T`` tokens together, ``S`` segments; ``T_r = T / cp_size``):

    ============================  ===============  ============================================================
    key                           type             meaning
    ============================  ===============  ============================================================
    ``input_ids``                 (1, T_r)         the rank's tokens: per segment, chunks ``cp_rank`` and
                                                   ``2 * cp_size - 1 - cp_rank``
    ``labels``                    (1, T_r)         the labels at those tokens (aligned with ``input_ids``)
    ``shift_labels``              (1, T_r)         the next-token targets at those tokens (``labels`` shifted
                                                   within each sequence *before* slicing; ``-100`` at each
                                                   segment's last token): compute the loss against these, since
                                                   shifting ``labels`` on the rank would pair tokens across
                                                   chunks. Megatron's ``labels``; transformers' ``shift_labels``
    ``position_ids``              (1, T_r)         each token's position in its own sequence
    ``seq_idx``                   int32 (1, T_r)   each token's segment number in the flattened batch
    ``cu_seqlens_q``, ``_kv``     int32 (S + 1,)   real boundaries of the whole batch
    ``cu_seqlens_q_padded``, ...  int32 (S + 1,)   padded span offsets of the whole batch
    ``max_seqlen_q``, ``_kv``     int              the longest padded span
    ``num_label_tokens``          int              trained targets in the *whole* batch (all ranks)
    ``num_tokens``                int              real tokens in the whole batch
    ``index``                     int64 (B,)       the packs' indices
    ============================  ===============  ============================================================

    Example:
        >>> ds = PackedDataset("packed")  # packed with --pad-to-multiple-of 16          # doctest: +SKIP
        >>> collate = ContextParallelCollator.for_dataset(ds, cp_size=4, cp_rank=rank)  # doctest: +SKIP
        >>> batch = collate([ds[0]])                                                    # doctest: +SKIP
        >>> kw = {k: batch[k] for k in PACKED_SEQ_PARAMS_KEYS}                           # doctest: +SKIP
        >>> params = PackedSeqParams(qkv_format="thd", **kw)  # megatron.core           # doctest: +SKIP
    """

    cp_size: int = 1
    cp_rank: int = 0
    pad_to_multiple_of: int | None = None

    def __post_init__(self):
        _check_cp(self.cp_size, self.cp_rank)
        if self.pad_to_multiple_of is not None:
            check_cp_alignment(self.pad_to_multiple_of, self.cp_size)

    @classmethod
    def for_dataset(cls, dataset, *, cp_size: int, cp_rank: int) -> "ContextParallelCollator":
        """A collator for ``dataset`` (a :class:`packer.torch.PackedDataset`), after checking its folder's N.

        Raises:
            PackerError: the folder is not aligned, or its N is not a multiple of ``2 * cp_size``.
        """
        _check_cp(cp_size, cp_rank)
        multiple = dataset.reader.pad_to_multiple_of
        check_cp_alignment(multiple, cp_size)
        return cls(cp_size=cp_size, cp_rank=cp_rank, pad_to_multiple_of=multiple)

    def __call__(self, items: list[dict]) -> dict:
        if not items:
            raise PackerError("cannot collate an empty batch")
        if any("cu_seqlens_padded" not in it for it in items):
            raise PackerError("ContextParallelCollator needs items of a folder packed with --pad-to-multiple-of N "
                              f"(N a multiple of 2 x cp_size = {2 * self.cp_size}); re-pack with "
                              f"'packer pack --pad-to-multiple-of {max(2 * self.cp_size, 8)}'")
        tokens = {k: torch.cat([it[k] for it in items]) for k in ("input_ids", "labels", "position_ids")}
        cu_pad = _shifted(items, "cu_seqlens_padded")
        cu_real = _shifted(items, "cu_seqlens_unpadded")
        if int(cu_pad[-1]) != tokens["input_ids"].shape[0]:
            raise PackerError(f"the items' cu_seqlens_padded end at {int(cu_pad[-1]):,} but they hold "
                              f"{tokens['input_ids'].shape[0]:,} tokens; collate PackedDataset items as they come")
        try:
            idx = torch.from_numpy(cp_partition_indices(cu_pad, self.cp_size, self.cp_rank))
        except PackerError as e:
            packs = [int(it["index"]) for it in items]
            raise PackerError(f"packs {packs}: {e}") from None
        labels = tokens["labels"]
        shift = torch.full_like(labels, fmt.IGNORE_INDEX)
        shift[:-1] = labels[1:]
        shift[torch.from_numpy(cu_pad[1:] - 1)] = fmt.IGNORE_INDEX  # no target across a segment's end
        seq_idx = seq_idx_from_cu(cu_pad)
        batch = dict(
            input_ids=tokens["input_ids"][idx][None],
            labels=labels[idx][None],
            shift_labels=shift[idx][None],
            position_ids=tokens["position_ids"][idx][None],
            seq_idx=seq_idx[idx][None],
        )
        cu_real_t = torch.from_numpy(cu_real.astype(np.int32))
        cu_pad_t = torch.from_numpy(cu_pad.astype(np.int32))
        max_seqlen = int(np.diff(cu_pad).max())
        batch.update(cu_seqlens_q=cu_real_t, cu_seqlens_kv=cu_real_t, cu_seqlens_q_padded=cu_pad_t,
                     cu_seqlens_kv_padded=cu_pad_t, max_seqlen_q=max_seqlen, max_seqlen_kv=max_seqlen)
        batch["num_label_tokens"] = int((shift != fmt.IGNORE_INDEX).sum())
        batch["num_tokens"] = sum(int(it["num_tokens"]) for it in items)
        batch["index"] = torch.tensor([int(it["index"]) for it in items], dtype=torch.int64)
        return batch


def _shifted(items: list[dict], key: str) -> np.ndarray:
    """The items' ``key`` boundaries over the flattened batch: int64 (S + 1,)."""
    parts, offset = [np.zeros(1, dtype=np.int64)], 0
    for it in items:
        c = np.asarray(it[key], dtype=np.int64)
        parts.append(c[1:] + offset)
        offset += int(c[-1])
    return np.concatenate(parts)
