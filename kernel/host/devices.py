"""Where models run: the one place the host asks whether a GPU is there (through PyTorch, when it is
installed; the host itself never needs torch)."""

from __future__ import annotations

import importlib.util

from facerecon.kernel.contract.errors import ConfigError


def resolve_device(device: str) -> str:
    """Resolve "auto": "cuda" when PyTorch is installed and sees a GPU, else "cpu". An explicit "cuda" is
    refused when PyTorch is installed and sees none (a clear error now, not a crash in a plugin later)."""
    if device == "cpu":
        return device
    if importlib.util.find_spec("torch") is None:
        return "cpu" if device == "auto" else device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if device == "cuda":
        raise ConfigError("device 'cuda' requested but PyTorch sees no CUDA GPU (use --device cpu or auto)")
    return "cpu"
