"""packer: offline sequence packing for LLM training.

Layers (lower never imports upper): :mod:`packer.kernels` (numba) < :mod:`packer.plan` < :mod:`packer.format`,
:mod:`packer.input`, :mod:`packer.writer` (pyarrow I/O) < :mod:`packer.convert` < :mod:`packer.cli`.
The torch layer, :mod:`packer.torch`, is imported only on demand: ``import packer`` does not import torch.

The public API is importable from here (``from packer import pack_dataset, PackConfig``). Names from the I/O
layers are loaded on first use (PEP 562 module ``__getattr__``), so ``import packer`` stays light: it imports the
planning layer only.
"""
from __future__ import annotations

import importlib

from packer.errors import PackerError
from packer.plan import PackPlan, make_segments, plan_packs

__version__ = "0.1.0"

_LAZY = {
    "Columns": "packer.input",
    "PackConfig": "packer.convert",
    "pack_dataset": "packer.convert",
    "verify_packed": "packer.verify",
    "read_manifest": "packer.format",
    "PackedReader": "packer.packed_reader",
}

__all__ = ["PackerError", "PackPlan", "make_segments", "plan_packs", "__version__", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'packer' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
