"""The sRGB transfer curve (IEC 61966-2-1) on 0-255 values: what a camera's 8-bit pixel means in light.

numpy by default; ``where`` lets another array library's elementwise select do the same (the sfs refiner
passes ``torch.where``). Values, arrays or tensors of any shape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def srgb_to_linear(image: Any, where: Callable[..., Any] = np.where) -> Any:
    """sRGB-encoded 0-255 -> linear 0-255."""
    x = image / 255.0
    return 255.0 * where(x <= 0.04045, x / 12.92, ((abs(x) + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(image: Any, where: Callable[..., Any] = np.where) -> Any:
    """Linear 0-255 -> sRGB-encoded 0-255, the inverse of ``srgb_to_linear`` (negative values clipped)."""
    x = image.clip(0, None) / 255.0
    return 255.0 * where(x <= 0.0031308, x * 12.92, 1.055 * x ** (1 / 2.4) - 0.055)
