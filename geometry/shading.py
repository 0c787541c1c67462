"""Height-map normals and 2nd-order spherical-harmonics (SH) shading, for rendering test scenes with
known geometry (tests/synthetic_sfs.py, the ``synthetic-faces`` plugin of ``facerecon eval synthetic``).

Viewer frame: x right, y UP, z towards the viewer; a height map (H, W) is the surface's height towards
the viewer with rows going down the image. The SH basis order is the one of the ``sfs`` solver:
1, y, z, x, xy, yz, 3z²-1, xz, x²-y² (real SH, unnormalised irradiance coefficients, (9, 3) per colour).
"""

from __future__ import annotations

import numpy as np

SH_CONSTANTS = np.array([0.282095, 0.488603, 0.488603, 0.488603, 1.092548, 1.092548, 0.315392, 1.092548, 0.546274])
"""The real SH basis functions' constants, in the basis order above."""


def viewer_normals(height: np.ndarray, spacing: float = 1.0) -> np.ndarray:
    """(H, W, 3) unit normals of a height map (rows going down) in the viewer frame, central differences;
    ``spacing`` is the sample distance in the height's unit."""
    dy, dx = np.gradient(height, spacing)
    n = np.stack([-dx, dy, np.ones_like(height)], axis=-1)
    return n / np.linalg.norm(n, axis=-1, keepdims=True)


def sh_basis(normals: np.ndarray) -> np.ndarray:
    """(..., 9) SH basis values of unit normals (..., 3) in the viewer frame."""
    x, y, z = normals[..., 0], normals[..., 1], normals[..., 2]
    raw = np.stack([np.ones_like(x), y, z, x, x * y, y * z, 3 * z * z - 1, x * z, x * x - y * y], axis=-1)
    return raw * SH_CONSTANTS


def sh_shading(normals: np.ndarray, sh: np.ndarray) -> np.ndarray:
    """(3, H, W) shading of normals (H, W, 3) under SH lighting ``sh`` (9, 3)."""
    return (sh_basis(normals) @ sh).transpose(2, 0, 1)


def directional_sh(direction: np.ndarray) -> np.ndarray:
    """(..., 9) SH coefficients of the irradiance of a unit distant light from each ``direction`` (..., 3)
    (viewer frame): the clamped cosine max(0, n·l) projected on the basis (Ramamoorthi & Hanrahan 2001:
    bands scaled by π, 2π/3, π/4), so ``sh_basis(n) @ directional_sh(l)`` ≈ max(0, n·l)."""
    band = np.array([np.pi, *[2 * np.pi / 3] * 3, *[np.pi / 4] * 5])
    light = np.asarray(direction, np.float64)
    return band * sh_basis(light / np.linalg.norm(light, axis=-1, keepdims=True))


def blobs(yy: np.ndarray, xx: np.ndarray, centres: np.ndarray, sigma: float) -> np.ndarray:
    """The sum of unit Gaussian bumps at ``centres`` (row, column), evaluated at coordinates (yy, xx)."""
    out = np.zeros(yy.shape)
    for cy, cx in centres:
        out += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    return out


def pixel_mean(fine: np.ndarray, factor: int) -> np.ndarray:
    """(..., H*k, W*k) -> (..., H, W): the mean over each pixel's k x k sub-samples (k = ``factor``), as a
    camera integrates over a pixel."""
    k = factor
    return fine.reshape(*fine.shape[:-2], fine.shape[-2] // k, k, fine.shape[-1] // k, k).mean(axis=(-3, -1))
