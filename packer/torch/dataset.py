"""``PackedDataset``: a map-style torch Dataset over a packed folder, one padded pack per item.

Conventions of an item (``capacity`` = the manifest's ``config.capacity``, 20,000 by default; ``n`` = the pack's
real tokens; with ``pad=False`` the item has length ``n`` and no padding segment; the three token rows are int32
with ``dtype=torch.int32``):

=====================  ================  ===================================================================
key                    type              meaning
=====================  ================  ===================================================================
``input_ids``          int64 (capacity,) the pack's tokens, then ``pad_id``
``labels``             int64 (capacity,) stored labels (``-100`` at every sequence's first token), then ``-100``
``position_ids``       int64 (capacity,) 0, 1, ... restarting at every sequence; the padding is numbered
                                         0, 1, ..., longest - 1, 0, 1, ... in segments of at most the pack's
                                         longest sequence (``longest``)
``cu_seqlens``         int32 (k + 1 + p,) 0, the sequence ends, n, and then the ends of the ``p`` padding
                                         segments, the last one ``capacity`` (``p = 0`` when n == capacity)
``max_seqlen``         int               the longest segment in ``cu_seqlens``: the longest sequence
``num_label_tokens``   int               ``(labels != -100).sum()``: the tokens the loss is computed on
``num_tokens``         int               ``n``, the real tokens
``index``              int               the pack's index in the folder
=====================  ================  ===================================================================

``num_label_tokens`` and the label shift: ``labels`` are aligned with ``input_ids`` (Hugging Face convention: the
model shifts them, so the logits at position ``t`` are scored against ``labels[t + 1]``). Packing stores ``-100``
at the first token of every sequence, so after the shift the last token of a sequence is never trained to predict
the next sequence's first token, and the number of scored positions is exactly ``(labels != -100).sum()``: the
positions ``t + 1`` that are not a sequence start and not masked. Divide the *summed* token loss by the total
``num_label_tokens`` of all micro-batches of an optimizer step (and of all ranks) to get the same loss as
training on the sequences one by one; see ``docs/torch.md``.

The padding segments: flash-attn and SDPA/flex masks treat each as one more sequence, so real tokens never attend
to padding, and their labels are ``-100``, so they add nothing to the loss or the gradients. Their position ids
restart at 0 at every padding segment, which keeps Hugging Face's "a sequence starts where position_ids == 0" rule
consistent with ``cu_seqlens``, and no padding position id is larger than the largest one of a real sequence in
the pack: a model whose rotary embedding depends on the largest position in the batch (Llama's ``dynamic`` rope
scaling, Phi-3's ``longrope``) or that looks positions up in a learned table (GPT-2) computes every real token
exactly as without padding (tests/test_torch_hf.py). One padding segment numbered ``0 .. capacity - n - 1`` would
not: 1,000 tokens of padding would switch a model with an original length of 512 to its scaled rotary embedding.

``seq_index`` and ``seq_offset`` (only with ``sequence_ids=True``): int64 (k + p,) and int32 (k + p,), one per
segment of ``cu_seqlens``: the input row the sequence came from and its first token's offset in that row (non-zero
for the later chunks of a row split with ``--overflow split``); ``-1`` and ``0`` for the padding segments.
:func:`packer.torch.row_losses` sums a batch's per-token losses back to input rows with them.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import Dataset

from packer import format as fmt
from packer import kernels
from packer.errors import PackerError
from packer.packed_reader import PackedReader
from packer.torch.context_parallel import aligned_item


class PackedDataset(Dataset):
    """Packs of a packed folder as fixed-shape tensors (see the module docstring for the keys).

    The shards are memory-mapped: opening a 3.16 GB folder took 6 ms and under 1 MiB, and reading items keeps the
    process's own memory under 20 MiB (``benchmarks/bench_open.py``); pages are read as items are. Pickling
    (``DataLoader`` workers under spawn/forkserver) carries no memory map: each worker maps the shards again on
    first use.

    Args:
        path: a packed folder (``packer pack`` output).
        pad_id: token id written into the padding (any id works: padding is masked out of attention and loss).
        pad: pad every item to the capacity (fixed shapes); with False an item has only its real tokens.
        dtype: of ``input_ids``, ``labels`` and ``position_ids``. ``torch.int64`` (default) is what losses and
            Hugging Face models take as is; ``torch.int32`` halves the bytes built and sent to the GPU (item and
            collate measured 7% faster on CPU, where reading the pack and fixed per-item overhead dominate), but
            convert ``labels.long()`` on the device before ``cross_entropy``, which rejects int32 targets.
        verify: check every shard's checksum against the manifest on open (reads the whole folder once); the only
            check that sees a changed token or label value (see :mod:`packer.packed_reader` for what is checked).
        sequence_ids: add ``seq_index`` and ``seq_offset`` to every item (see the module docstring), for per-example
            evaluation with :func:`packer.torch.row_losses`.
        allow_unsealed: read a folder whose manifest has no checksum (an older packer's); refused by default.

    Raises:
        PackerError: a file instead of a folder (the message names the folder to pass), not a packed folder, another
            format version, a manifest modified after packing (its checksum differs) or without one, a shard missing,
            truncated or (with ``verify``) damaged; the message names the file.

    Example:
        >>> ds = PackedDataset("packed")                                   # doctest: +SKIP
        >>> item = ds[0]; item["input_ids"].shape                          # doctest: +SKIP
        torch.Size([20000])
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        pad_id: int = 0,
        pad: bool = True,
        dtype: torch.dtype = torch.int64,
        verify: bool = False,
        sequence_ids: bool = False,
        allow_unsealed: bool = False,
    ):
        if isinstance(pad_id, bool) or not isinstance(pad_id, int) or pad_id < 0:
            raise PackerError(f"pad_id must be a non-negative token id, got {pad_id!r}")
        if dtype not in (torch.int64, torch.int32):
            raise PackerError(f"dtype must be torch.int64 or torch.int32, got {dtype!r}")
        self.dtype = dtype
        self._np_dtype = np.int64 if dtype == torch.int64 else np.int32
        if os.path.isfile(path):
            folder = os.path.dirname(os.path.abspath(path))
            raise PackerError(
                f"{path} is a file; PackedDataset takes the packed folder that holds {fmt.MANIFEST_FILE} and the "
                f"shards, e.g. PackedDataset({folder!r})"
            )
        self.reader = PackedReader(path, verify=verify, allow_unsealed=allow_unsealed)
        self.pad_id = pad_id
        self.pad = bool(pad)
        # packed with --pad-to-multiple-of: items in the padded spans (packer.torch.context_parallel.aligned_item)
        self._aligned = self.reader.pad_to_multiple_of is not None
        self.sequence_ids = bool(sequence_ids)
        self._longest: np.ndarray | None = None

    def __getstate__(self) -> dict:
        # DataLoader workers recompute the per-pack lengths (milliseconds) rather than receive them pickled
        return {**self.__dict__, "_longest": None}

    def __repr__(self) -> str:
        return (
            f"PackedDataset({str(self.path)!r}, packs={len(self):,}, capacity={self.capacity:,}, pad={self.pad}, "
            f"pad_id={self.pad_id}, dtype={self.dtype}{', sequence_ids=True' if self.sequence_ids else ''})"
        )

    def _index(self, index) -> int:
        n = len(self)
        i = int(index)
        if not -n <= i < n:
            raise IndexError(f"pack index {i} out of range for {n:,} packs (valid: {-n} .. {n - 1})")
        return i % n

    @property
    def path(self):
        return self.reader.path

    @property
    def capacity(self) -> int:
        """Tokens per pack (the manifest's ``config.capacity``): the length of every padded item."""
        return self.reader.capacity

    @property
    def manifest(self) -> dict:
        return self.reader.manifest

    def __len__(self) -> int:
        return len(self.reader)

    def attention_costs(self) -> np.ndarray:
        """Sum of squared sequence lengths per pack, int64 (len(self),); what :class:`PackSampler` balances."""
        return self.reader.attention_costs()

    def num_tokens(self) -> np.ndarray:
        """Real tokens per pack, int64 (len(self),)."""
        return self.reader.num_tokens()

    def __getitem__(self, index: int) -> dict:
        index = self._index(index)
        if self._aligned:
            item = aligned_item(self.reader, index, length=self.capacity if self.pad else None, pad_id=self.pad_id,
                                dtype=self._np_dtype)
            return self._add_sequence_ids(item, index, item["cu_seqlens_unpadded"].shape[0] - 1)
        ids, labels, cu = self.reader.pack(index)
        rows = np.empty((3, self.capacity if self.pad else ids.shape[0]), dtype=self._np_dtype)
        r0, r1, r2 = rows
        # from_numpy per row: 1.6 us against 2.7 us for unpacking torch.from_numpy(rows)
        return self._fill(index, ids, labels, cu, (r0, r1, r2), (torch.from_numpy(r0), torch.from_numpy(r1),
                                                                   torch.from_numpy(r2)))

    def __getitems__(self, indices: list[int]) -> list[dict]:
        """Several packs at once; ``DataLoader`` calls this with each batch's indices.

        With ``pad=True`` the packs are written into one (3, B, capacity) buffer, laid out as
        :class:`PackedCollator` stacks a batch, and each item's tensors are views of it, so the collator recognises
        the layout and copies nothing: with 4 packs per batch, 34 us per pack fell to 25 us (bench_loader.py).
        """
        if not self.pad or len(indices) < 2 or self._aligned:
            return [self[i] for i in indices]
        buf = torch.empty((3, len(indices), self.capacity), dtype=self.dtype)
        rows = buf.numpy()
        views = [row.unbind(0) for row in buf.unbind(0)]
        items = []
        for j, index in enumerate(indices):
            index = self._index(index)
            ids, labels, cu = self.reader.pack(index)
            items.append(self._fill(index, ids, labels, cu, tuple(rows[:, j]), tuple(v[j] for v in views)))
        return items

    def _fill(self, index: int, ids, labels, cu, rows: tuple, tensors: tuple) -> dict:
        """The item of pack ``index``: its stored lists written into ``rows`` (three (length,) arrays), which
        ``tensors`` view."""
        n = ids.shape[0]
        length = rows[0].shape[0]
        if n > length:
            s, row = self.reader.locate(index)
            raise PackerError(
                f"{self.reader.shard_paths[s]}: row {row} holds {n:,} tokens, more than the capacity {length:,} in "
                f"{fmt.MANIFEST_FILE}; the folder is damaged, re-run 'packer pack'"
            )
        pad = length - n
        if self._longest is None:
            # every pack's longest sequence, once per process (4 bytes a pack): a lookup per item instead of 3 us
            # of numpy on its cu_seqlens
            self._longest = self.reader.longest_sequences().astype(np.int32)
        # the padding's segments: at most as long as the pack's longest sequence (see fill_padded_pack)
        chunks = -(-pad // max(int(self._longest[index]), 1)) if pad else 0
        cu_out = np.empty(cu.shape[0] + chunks, dtype=np.int32)
        n_labels, max_seqlen, bad = kernels.fill_padded_pack(
            ids, labels, cu, rows[0], rows[1], rows[2], cu_out, self.pad_id, fmt.IGNORE_INDEX
        )
        if bad >= 0:
            s, row = self.reader.locate(index)
            raise PackerError(
                f"{self.reader.shard_paths[s]}: row {row}, sequence {bad} has a trained label at its first token; "
                "not packer output, re-run 'packer pack'"
            )
        item = dict(
            input_ids=tensors[0],
            labels=tensors[1],
            position_ids=tensors[2],
            cu_seqlens=torch.from_numpy(cu_out),
            max_seqlen=int(max_seqlen),
            num_label_tokens=int(n_labels),
            num_tokens=n,
            index=index,
        )
        return self._add_sequence_ids(item, index, cu_out.shape[0] - 1)

    def _add_sequence_ids(self, item: dict, index: int, segments: int) -> dict:
        """With ``sequence_ids``: the pack's ``seq_index`` and ``seq_offset``, then ``-1`` and ``0`` for each of the
        item's padding segments (``segments`` in all)."""
        if self.sequence_ids:
            seq_index, seq_offset = self.reader.pack_sequences(index)
            pad_segments = segments - seq_index.shape[0]
            item["seq_index"] = torch.from_numpy(np.concatenate([seq_index, np.full(pad_segments, -1, np.int64)]))
            item["seq_offset"] = torch.from_numpy(np.concatenate([seq_offset, np.zeros(pad_segments, np.int32)]))
        return item
