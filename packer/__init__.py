"""packer: offline sequence packing for LLM training.

Layers (lower never imports upper): :mod:`packer.kernels` (numba) < :mod:`packer.plan` < :mod:`packer.format`,
:mod:`packer.reader`, :mod:`packer.writer` (pyarrow I/O) < :mod:`packer.convert` < :mod:`packer.cli`.
The torch layer, :mod:`packer.torch`, is imported only on demand: ``import packer`` does not import torch.
"""
from packer.errors import PackerError
from packer.plan import PackPlan, make_segments, plan_packs

__version__ = "0.1.0"

__all__ = ["PackerError", "PackPlan", "make_segments", "plan_packs", "__version__"]
