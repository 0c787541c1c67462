"""Where models run: the one place the host asks whether a GPU is there (through PyTorch, when it is
installed; the host itself never needs torch)."""

from __future__ import annotations

import importlib.util
import os
import sys

from facerecon.kernel.contract.errors import ConfigError


def resolve_device(device: str) -> str:
    """Resolve "auto": "cuda" when PyTorch is installed and sees a GPU, else "cpu". An explicit "cuda" is
    refused when PyTorch is installed and sees none (a clear error now, not a crash in a plugin later)."""
    if device == "cpu":
        return device
    if importlib.util.find_spec("torch") is None:
        return "cpu" if device == "auto" else device
    if device == "auto" and "torch" not in sys.modules and not _gpu_device_nodes():
        return "cpu"  # no GPU driver: torch would say so too, after ~1.5 s of importing it
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if device == "cuda":
        raise ConfigError("device 'cuda' requested but PyTorch sees no CUDA GPU (use --device cpu or auto)")
    return "cpu"


GPU_DEVICE_NODES = ("/dev/nvidia0", "/dev/nvidiactl", "/dev/kfd", "/dev/dxg")
"""What a GPU driver that PyTorch can use creates: NVIDIA (CUDA), AMD (ROCm), WSL2's GPU paravirtualisation."""


def _gpu_device_nodes() -> bool:
    return any(os.path.exists(node) for node in GPU_DEVICE_NODES)


def cuda_peak_memory_mb(device: str) -> float | None:
    """The most CUDA memory PyTorch has held allocated at once in this process, MB, when ``device`` is
    "cuda" and a plugin has loaded torch; None otherwise (on the CPU, see the process's peak RSS)."""
    if device != "cuda" or "torch" not in sys.modules:
        return None
    import torch

    return float(torch.cuda.max_memory_allocated()) / 2**20
