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
                                         0 .. capacity - n - 1 as a sequence of its own
``cu_seqlens``         int32 (k + 2,)    0, the sequence ends, n, and then capacity: the padding is its own
                                         final segment (no extra entry when n == capacity)
``max_seqlen``         int               the longest segment in ``cu_seqlens``, padding segment included
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

The padding segment: flash-attn and SDPA/flex masks treat it as one more sequence, so real tokens never attend to
padding, and its labels are ``-100``, so it adds nothing to the loss or the gradients. Position ids restarting at
0 on it keep Hugging Face's "a sequence starts where position_ids == 0" rule consistent with ``cu_seqlens``.
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
from packer.torch._transport import PackedBatch


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
        allow_unsealed: read a folder whose manifest has no checksum (an older packer's); refused by default.

    Raises:
        PackerError: not a packed folder, another format version, a manifest modified after packing (its checksum
            differs), a shard missing, truncated or (with ``verify``) damaged; the message names the file.

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
        allow_unsealed: bool = False,
    ):
        if isinstance(pad_id, bool) or not isinstance(pad_id, int) or pad_id < 0:
            raise PackerError(f"pad_id must be a non-negative token id, got {pad_id!r}")
        if dtype not in (torch.int64, torch.int32):
            raise PackerError(f"dtype must be torch.int64 or torch.int32, got {dtype!r}")
        self.dtype = dtype
        self._np_dtype = np.int64 if dtype == torch.int64 else np.int32
        self.reader = PackedReader(path, verify=verify, allow_unsealed=allow_unsealed)
        self.pad_id = pad_id
        self.pad = bool(pad)

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

    def __getitem__(self, index: int) -> PackedBatch:
        index = int(index)
        ids, labels, cu = self.reader.pack(index)
        rows = np.empty((3, self.capacity if self.pad else ids.shape[0]), dtype=self._np_dtype)
        r0, r1, r2 = rows
        # from_numpy per row: 1.6 us against 2.7 us for unpacking torch.from_numpy(rows)
        return self._fill(index, ids, labels, cu, (r0, r1, r2), (torch.from_numpy(r0), torch.from_numpy(r1),
                                                                   torch.from_numpy(r2)))

    def __getitems__(self, indices: list[int]) -> list[PackedBatch]:
        """Several packs at once; ``DataLoader`` calls this with each batch's indices.

        With ``pad=True`` the packs are written into one (3, B, capacity) buffer, laid out as
        :class:`PackedCollator` stacks a batch, and each item's tensors are views of it, so the collator recognises
        the layout and copies nothing: with 4 packs per batch, 34 us per pack fell to 25 us (bench_loader.py).
        """
        if not self.pad or len(indices) < 2:
            return [self[i] for i in indices]
        buf = torch.empty((3, len(indices), self.capacity), dtype=self.dtype)
        rows = buf.numpy()
        views = [row.unbind(0) for row in buf.unbind(0)]
        items = []
        for j, index in enumerate(indices):
            index = int(index)
            ids, labels, cu = self.reader.pack(index)
            items.append(self._fill(index, ids, labels, cu, tuple(rows[:, j]), tuple(v[j] for v in views)))
        return items

    def _fill(self, index: int, ids, labels, cu, rows: tuple, tensors: tuple) -> PackedBatch:
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
        cu_out = np.empty(cu.shape[0] + (length > n), dtype=np.int32)
        n_labels, max_seqlen, bad = kernels.fill_padded_pack(
            ids, labels, cu, rows[0], rows[1], rows[2], cu_out, self.pad_id, fmt.IGNORE_INDEX
        )
        if bad >= 0:
            s, row = self.reader.locate(index)
            raise PackerError(
                f"{self.reader.shard_paths[s]}: row {row}, sequence {bad} has a trained label at its first token; "
                "not packer output, re-run 'packer pack'"
            )
        return PackedBatch(
            input_ids=tensors[0],
            labels=tensors[1],
            position_ids=tensors[2],
            cu_seqlens=torch.from_numpy(cu_out),
            max_seqlen=int(max_seqlen),
            num_label_tokens=int(n_labels),
            num_tokens=n,
            index=index,
        )
