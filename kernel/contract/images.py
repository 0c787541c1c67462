"""The image check every stage runs on its input (numpy only: a plugin that validates its input does not
pull in an image library).

Images are ``uint8 (H, W, 3)`` RGB in the image frame (see :mod:`facerecon.kernel.contract.records`).
:data:`MAX_SIDE`: native image code such as OpenCV's ``remap`` aborts the process on a side of 32767 px or
more; the limit leaves room for padding.
"""

from __future__ import annotations

import numpy as np

from facerecon.kernel.contract.errors import InputError

__all__ = ["MAX_SIDE", "MIN_SIDE", "check_image", "check_sides"]

MIN_SIDE = 16
"""Images smaller than this on either side cannot hold a detectable face."""
MAX_SIDE = 16384
"""Images longer than this on either side are refused (see the module docstring)."""


def check_sides(width: int, height: int, name: str | None = None) -> None:
    """InputError unless both sides are in ``MIN_SIDE..MAX_SIDE``; ``name`` starts the message."""
    where = f"{name}: " if name else ""
    if width < MIN_SIDE or height < MIN_SIDE:
        raise InputError(f"{where}image is {width}x{height}, too small to contain a face")
    if width > MAX_SIDE or height > MAX_SIDE:
        raise InputError(
            f"{where}image is {width}x{height}; sides above {MAX_SIDE} px are not supported (downscale or crop it)"
        )


def check_image(image: np.ndarray) -> np.ndarray:
    """Validate an in-memory image for the pipeline; returns it C-contiguous."""
    if not isinstance(image, np.ndarray):
        raise InputError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise InputError(f"image must be uint8, got {image.dtype} (scale and convert it first)")
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"image must be (H, W, 3) RGB, got shape {image.shape}")
    check_sides(image.shape[1], image.shape[0])
    return np.ascontiguousarray(image)
