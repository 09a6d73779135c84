"""How a DataLoader worker ships packer's items and batches to the main process: slots of shared memory.

torch pickles every tensor storage of a worker's batch into a shared-memory segment of its own and passes the
segment's file descriptor over a socket, with an authenticated handshake, per storage. Measured here with
20,000-token packs, that handshake alone held a worker to about 1,400 packs/s with items that cost nothing to
make, and to about 1,000 with real ones; the copy is not the cost.

Items of :class:`packer.torch.PackedDataset` and batches of :class:`packer.torch.PackedCollator` are
:class:`PackedBatch` dicts. When a DataLoader worker puts one on its result queue (multiprocessing's
``ForkingPickler``, for which this module registers a reducer), its tensors are copied into a free slot of a
shared-memory arena that the worker allocated once; the arena's descriptor goes with every message until the
receiving process has attached it (it says so in the arena's header), and after that a message carries the
arena's id, the slot and the tensors' layout (a few hundred bytes). The main process rebuilds the tensors as
views of the slot, and when the last of them is freed it marks the slot free, so the worker writes a later batch
there. A worker that finds no free slot (the training loop holds on to many batches) makes another arena, up to
``ARENA_BUDGET`` bytes, and past that, or for tensors this path does not handle (sparse, subclasses), the batch
goes through torch's own mechanism.

Only the worker marks a slot busy, and only the process that rebuilt the batch (not a child it forks later)
marks it free, after every tensor viewing it is gone. One thing to know: the received tensors are views of the
slot, not shared storages, so ``tensor.share_memory_()`` or putting the batch on a ``torch.multiprocessing``
queue copies them to shared memory first, which releases the slot; a numpy view of the tensor taken before that
still points into the slot, which the worker then reuses. Take such views after sharing, or of a clone.
Everywhere else (``pickle``, ``torch.save``, ``copy``, the main process's own queues) a :class:`PackedBatch`
pickles as the plain dict it is.
"""
from __future__ import annotations

import itertools
import os
import weakref
from multiprocessing.reduction import ForkingPickler

import numpy as np
import torch
from torch.utils.data import get_worker_info

SLOTS = 16
"""Slots per arena: a worker has ``prefetch_factor`` batches in flight and the loop holds one or two more."""
ARENA_BUDGET = 1 << 30
"""Bytes of arenas one worker may allocate before it falls back to torch's per-storage transfer."""
_ALIGN = 64
_HEADER = 64  # one flag byte per slot (0 free, 1 written and not yet released), then the attached byte
_ATTACHED = _HEADER - 1  # set by the receiving process once it has mapped the arena
_MIN_SLOT = 64 << 10

_NUMPY = {torch.int64: np.int64, torch.int32: np.int32, torch.int16: np.int16, torch.int8: np.int8,
          torch.uint8: np.uint8, torch.bool: np.bool_, torch.float64: np.float64, torch.float32: np.float32,
          torch.float16: np.float16}


class PackedBatch(dict):
    """A dict of a pack's or a batch's tensors and numbers that DataLoader workers ship through shared memory.

    It behaves as a ``dict`` everywhere; only the result queue of a DataLoader worker sends it differently (see
    the module docstring). ``dict(batch)`` or ``{**batch}`` make plain dicts, which torch's slower transport
    sends.
    """

    __slots__ = ()

    def __reduce__(self):
        return (PackedBatch, (dict(self),))


def _reduce_for_queue(batch: PackedBatch):
    """multiprocessing's reducer: through an arena slot inside a DataLoader worker, else as a plain dict."""
    if get_worker_info() is not None:
        shipped = _ship(batch)
        if shipped is not None:
            return shipped
    return (PackedBatch, (dict(batch),))


ForkingPickler.register(PackedBatch, _reduce_for_queue)


def _byte_array(storage) -> np.ndarray:
    """A uint8 numpy array over a torch storage's bytes (no copy)."""
    return torch.empty(0, dtype=torch.uint8).set_(storage).numpy()


class _Arena:
    """Worker side: one shared-memory storage of ``_HEADER`` flag bytes and ``SLOTS`` slots of ``slot_size``."""

    _serial = itertools.count()

    def __init__(self, slot_size: int):
        self.slot_size = slot_size
        self.nbytes = _HEADER + SLOTS * slot_size
        self.storage = torch.UntypedStorage._new_shared(self.nbytes)
        self.array = _byte_array(self.storage)
        self.array[:_HEADER] = 0
        self.flags = self.array[:SLOTS]
        self.key = f"{os.getpid()}-{next(self._serial)}-{os.urandom(6).hex()}"

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
    # powers of two: batches of growing sizes make a few arenas, not one per size
    slot_size = max(_MIN_SLOT, 1 << max(0, nbytes - 1).bit_length())
    if sum(a.nbytes for a in _arenas) + _HEADER + SLOTS * slot_size > ARENA_BUDGET:
        return None
    arena = _Arena(slot_size)
    _arenas.append(arena)
    _arenas.sort(key=lambda a: a.slot_size)
    return arena, arena.take()


def _ship(batch: PackedBatch):
    """The reduce tuple that sends ``batch`` through an arena slot; None to leave it to torch's transport."""
    layout, placed, unique, total = [], {}, [], 0  # unique: (spec, tensor) once per tensor object
    for key, value in batch.items():
        if not isinstance(value, torch.Tensor):
            layout.append((key, None, value))
            continue
        if (
            type(value) is not torch.Tensor  # a subclass (Parameter, ...) must arrive as itself
            or value.layout != torch.strided
            or value.device.type != "cpu"
            or value.requires_grad
        ):
            return None
        spec = placed.get(id(value))
        if spec is None:
            spec = placed[id(value)] = (total, value.dtype, tuple(value.shape))
            unique.append((spec, value))
            total += -(-value.numel() * value.element_size() // _ALIGN) * _ALIGN
        layout.append((key, spec, None))
    taken = _take_slot(total)
    if taken is None:
        return None
    arena, slot = taken
    start = _HEADER + slot * arena.slot_size
    region = arena.array[start : start + arena.slot_size]
    try:
        for (offset, dtype, shape), value in unique:
            nbytes = value.numel() * value.element_size()
            np_dtype = _NUMPY.get(dtype)
            if np_dtype is not None and not value.is_neg() and not value.is_conj():
                np.copyto(region[offset : offset + nbytes].view(np_dtype).reshape(shape), value.numpy())
            else:  # bfloat16, complex, lazily negated or conjugated views: numpy cannot take these
                torch.from_numpy(region[offset : offset + nbytes]).view(dtype).view(shape).copy_(value)
    except Exception:
        arena.flags[slot] = 0
        return None
    # the arena's descriptor goes along until the receiver says it has mapped it
    first = None if arena.array[_ATTACHED] else arena.storage
    return (_rebuild_slot, (arena.key, os.getpid(), first, slot, arena.slot_size, layout))


# receiving side: arena key -> (worker pid, uint8 array over the arena)
_attached: dict[str, tuple[int, np.ndarray]] = {}


def _attach(key: str, pid: int, storage) -> np.ndarray:
    for old, (p, _) in list(_attached.items()):  # a copy: pin-memory threads of two loaders may attach at once
        if p != pid and not _alive(p):
            _attached.pop(old, None)  # a finished worker's arena; batches still held keep their slots mapped
    array = _byte_array(storage)
    _attached[key] = (pid, array)
    array[_ATTACHED] = 1
    return array


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _release(flags: np.ndarray, slot: int, owner: int) -> None:
    # a child forked later inherits this finalizer and copies of the batches; only the receiving process, whose
    # tensors are the ones that matter, gives the slot back
    if os.getpid() == owner:
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
                f"packer: a DataLoader batch refers to shared-memory arena {key} of worker {pid}, which another "
                "process attached; batches pickled inside a worker with multiprocessing's ForkingPickler must go "
                "to the DataLoader's main process"
            )
        array = _attach(key, pid, storage)
    else:
        array = entry[1]
    start = _HEADER + slot * slot_size
    region = array[start : start + slot_size]  # a view of its own, which only this batch's tensors hold
    weakref.finalize(region, _release, array[:SLOTS], slot, os.getpid()).atexit = False
    return _views(region, layout)
