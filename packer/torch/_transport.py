"""How a DataLoader worker ships packer's items and batches to the main process: slots of shared memory.

torch pickles every tensor storage of a worker's batch into a shared-memory segment of its own and passes the
segment's file descriptor over a socket, with an authenticated handshake, per storage. Measured here with
20,000-token packs, that handshake alone held a worker to about 1,400 packs/s with items that cost nothing to
make, and to about 1,000 with real ones; the copy is not the cost.

Items of :class:`packer.torch.PackedDataset` and batches of :class:`packer.torch.PackedCollator` are
:class:`PackedBatch` dicts. Pickled inside a DataLoader worker, one copies its tensors into a free slot of a
shared-memory arena that the worker allocated once; the arena's descriptor crosses to the main process once, with
the first batch that uses it, and every message after that carries the arena's id, the slot and the tensors'
layout (a few hundred bytes). The main process rebuilds the tensors as views of the slot, and when the last of
them is freed it marks the slot free, so the worker writes the next batch there. A worker that finds no free slot
(the training loop holds on to many batches) makes another arena, up to ``ARENA_BUDGET`` bytes, and past that
sends the batch as one shared storage through torch's own mechanism: slower, never wrong.

Only the worker sets a slot busy, only the receiving process sets it free, and only after every tensor viewing
it is gone, so a slot is never written while a batch still reads it. Elsewhere (the main process, ``torch.save``,
``copy``) a :class:`PackedBatch` pickles as the plain dict it is.
"""
from __future__ import annotations

import copy
import itertools
import os
import weakref

import numpy as np
import torch
from torch.utils.data import get_worker_info

SLOTS = 16
"""Slots per arena: a worker has ``prefetch_factor`` batches in flight and the loop holds one or two more."""
ARENA_BUDGET = 1 << 30
"""Bytes of arenas one worker may allocate before it falls back to torch's per-storage transfer."""
_ALIGN = 64
_HEADER = 64  # one flag byte per slot: 0 free, 1 written by the worker and not yet released by the receiver
_SLOT_ROUND = 64 << 10

_NUMPY = {torch.int64: np.int64, torch.int32: np.int32, torch.int16: np.int16, torch.int8: np.int8,
          torch.uint8: np.uint8, torch.bool: np.bool_, torch.float64: np.float64, torch.float32: np.float32,
          torch.float16: np.float16}


class PackedBatch(dict):
    """A dict of a pack's or a batch's tensors and numbers that DataLoader workers ship through shared memory.

    It behaves as a ``dict`` everywhere; only its pickling inside a DataLoader worker differs (see the module
    docstring). ``copy.copy`` and ``copy.deepcopy`` give a :class:`PackedBatch` as ``dict`` semantics would.
    """

    __slots__ = ()

    def __reduce__(self):
        if get_worker_info() is not None:
            shipped = _ship(self)
            if shipped is not None:
                return shipped
        return (PackedBatch, (dict(self),))

    def __copy__(self):
        return PackedBatch(self)

    def __deepcopy__(self, memo):
        return PackedBatch({k: copy.deepcopy(v, memo) for k, v in self.items()})


class _Arena:
    """Worker side: one shared-memory storage of ``_HEADER`` flag bytes and ``SLOTS`` slots of ``slot_size``."""

    _serial = itertools.count()

    def __init__(self, slot_size: int):
        self.slot_size = slot_size
        self.nbytes = _HEADER + SLOTS * slot_size
        self.storage = torch.UntypedStorage._new_shared(self.nbytes)
        self.array = torch.empty(0, dtype=torch.uint8).set_(self.storage).numpy()
        self.flags = self.array[:SLOTS]
        self.flags[:] = 0
        self.key = f"{os.getpid()}-{next(self._serial)}-{os.urandom(6).hex()}"
        self.sent = False

    def take(self) -> int:
        slot = int(self.flags.argmin())
        if self.flags[slot]:
            return -1
        self.flags[slot] = 1
        return slot


_arenas: list[_Arena] = []  # the worker's, smallest slots first
_arenas_pid = 0


def _take_slot(nbytes: int) -> tuple[_Arena, int] | None:
    global _arenas, _arenas_pid
    if _arenas_pid != os.getpid():  # a forked child must not write into its parent's arenas
        _arenas, _arenas_pid = [], os.getpid()
    for arena in _arenas:
        if arena.slot_size >= nbytes:
            slot = arena.take()
            if slot >= 0:
                return arena, slot
    slot_size = -(-nbytes // _SLOT_ROUND) * _SLOT_ROUND
    if sum(a.nbytes for a in _arenas) + _HEADER + SLOTS * slot_size > ARENA_BUDGET:
        return None
    arena = _Arena(slot_size)
    _arenas.append(arena)
    _arenas.sort(key=lambda a: a.slot_size)
    return arena, arena.take()


def _ship(batch: PackedBatch):
    """The reduce tuple that sends ``batch`` through an arena slot, or one shared storage; None to pickle plainly."""
    layout, placed, total = [], {}, 0
    for key, value in batch.items():
        if not isinstance(value, torch.Tensor):
            layout.append((key, None, value))
            continue
        if value.device.type != "cpu" or value.requires_grad or value.is_sparse:
            return None
        spec = placed.get(id(value))
        if spec is None:
            spec = placed[id(value)] = (total, value.dtype, tuple(value.shape))
            total += -(-value.numel() * value.element_size() // _ALIGN) * _ALIGN
        layout.append((key, spec, value))
    taken = _take_slot(total)
    if taken is None:
        storage = torch.UntypedStorage._new_shared(max(total, _ALIGN))
        region, arena = torch.empty(0, dtype=torch.uint8).set_(storage).numpy(), None
    else:
        arena, slot = taken
        start = _HEADER + slot * arena.slot_size
        region = arena.array[start : start + arena.slot_size]
    copied = set()
    for _key, spec, value in layout:
        if spec is None or id(value) in copied:
            continue
        copied.add(id(value))
        offset, dtype, shape = spec
        nbytes = value.numel() * value.element_size()
        np_dtype = _NUMPY.get(dtype)
        if np_dtype is not None:
            np.copyto(region[offset : offset + nbytes].view(np_dtype).reshape(shape), value.numpy())
        else:  # bfloat16 and friends: numpy has no such dtype
            torch.from_numpy(region[offset : offset + nbytes]).view(dtype).view(shape).copy_(value)
    layout = [(key, spec, None if spec is not None else value) for key, spec, value in layout]
    if arena is None:
        return (_rebuild_storage, (storage, layout))
    first = None if arena.sent else arena.storage
    arena.sent = True
    return (_rebuild_slot, (arena.key, os.getpid(), first, slot, arena.slot_size, layout))


# receiving side: arena key -> (worker pid, uint8 array over the arena)
_attached: dict[str, tuple[int, np.ndarray]] = {}


def _attach(key: str, pid: int, storage) -> np.ndarray:
    for old in [k for k, (p, _) in _attached.items() if p != pid and not _alive(p)]:
        del _attached[old]  # a finished worker's arena; batches still held keep their slots mapped
    array = torch.empty(0, dtype=torch.uint8).set_(storage).numpy()
    _attached[key] = (pid, array)
    return array


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _release(flags: np.ndarray, slot: int) -> None:
    flags[slot] = 0


def _views(region: np.ndarray, layout) -> PackedBatch:
    # every tensor views one torch storage over ``region`` (numpy views would not: their base is the arena, so the
    # slot would be released while they live); as_strided on one typed view per dtype: 9 us per batch, against
    # 25 us for slicing and viewing the uint8 tensor per key
    base = torch.from_numpy(region)
    out, made, typed = PackedBatch(), {}, {}
    for key, spec, value in layout:
        if spec is None:
            out[key] = value
            continue
        tensor = made.get(spec)
        if tensor is None:
            offset, dtype, shape = spec
            whole = typed.get(dtype)
            if whole is None:
                whole = typed[dtype] = base.view(dtype)
            strides, step = [], 1
            for d in reversed(shape):
                strides.append(step)
                step *= d
            tensor = made[spec] = whole.as_strided(shape, strides[::-1], offset // dtype.itemsize)
        out[key] = tensor
    return out


def _rebuild_slot(key: str, pid: int, storage, slot: int, slot_size: int, layout) -> PackedBatch:
    entry = _attached.get(key)
    if entry is None:
        if storage is None:
            raise RuntimeError(
                f"packer: a DataLoader batch refers to shared-memory arena {key} of worker {pid}, which this "
                "process never received; pickle PackedBatch only through the DataLoader's own queue"
            )
        array = _attach(key, pid, storage)
    else:
        array = entry[1]
    start = _HEADER + slot * slot_size
    region = array[start : start + slot_size]  # a view of its own, which only this batch's tensors hold
    weakref.finalize(region, _release, array[:SLOTS], slot).atexit = False
    return _views(region, layout)


def _rebuild_storage(storage, layout) -> PackedBatch:
    return _views(torch.empty(0, dtype=torch.uint8).set_(storage).numpy(), layout)
