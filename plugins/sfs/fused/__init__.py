"""The fine stage's two iterated energies with their gradients written out, in compiled passes (CPU): the
depth energy of step 5 (``depth``) and the albedo energy of step 3 (``albedo``).

The same numbers as autograd to float rounding, several times faster per evaluation (README, "Speed"). The
solver keeps the autograd forms as the reference (and for CUDA); tests/test_sfs_fused.py compares the two.
"""

from __future__ import annotations

import torch
from torch import Tensor

from facerecon.plugins.sfs.fused.albedo import AlbedoInputs, albedo_terms
from facerecon.plugins.sfs.fused.depth import FusedInputs, depth_energy, depth_terms

__all__ = ["AlbedoInputs", "FusedInputs", "albedo_terms", "available", "depth_energy", "depth_terms"]


def available(like: Tensor) -> bool:
    """Whether the pass runs for tensors like ``like``: float32 on the CPU, with numba installed."""
    if like.device.type != "cpu" or like.dtype != torch.float32:
        return False
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True
