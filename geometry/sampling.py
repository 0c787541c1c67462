"""Sampling at scattered points: bilinear samples of an image, and per-vertex values at barycentric
positions in triangles. Plain loops compiled by numba (the texture bake samples a few hundred thousand
texels per photo: ~10x faster than numpy's gathers and temporaries); the same arithmetic in numpy where
numba is missing (tests/test_geometry.py checks they agree).

Images are (H, W, C) of any numeric dtype, pixel centres at integer positions (x right, y down).
"""

from __future__ import annotations

import numpy as np

from facerecon.geometry.jit import compiled


def bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """float64 (K, C): bilinear samples of ``image`` (H, W, C) at pixel positions x, y (K,), clamped to
    [0, W − 1.001] x [0, H − 1.001] (the edge pixels' values extend outwards)."""
    image = np.ascontiguousarray(image)
    x = np.ascontiguousarray(x, np.float64)
    y = np.ascontiguousarray(y, np.float64)
    loop = compiled(_bilinear_loop)
    if loop is None:
        return _bilinear_numpy(image, x, y)
    out = np.empty((len(x), image.shape[2]))
    loop(image, x, y, out)
    return out


def barycentric(corners: np.ndarray, weights: np.ndarray, values: np.ndarray) -> np.ndarray:
    """float64 (K, C): per-vertex ``values`` (V, C) at barycentric ``weights`` (K, 3) of the triangles whose
    vertex ids are ``corners`` (K, 3): Σ_i w_i · values[corner_i], summed in that order."""
    # int32 corners and float32 weights (a UV layout's) are read as they are: converting ~0.5 M texels per
    # call cost more than the sums; float32 weights promote to float64 in the products either way.
    corners = np.ascontiguousarray(corners, corners.dtype if corners.dtype in (np.int32, np.int64) else np.int64)
    weights = np.ascontiguousarray(weights, weights.dtype if weights.dtype == np.float32 else np.float64)
    values = np.ascontiguousarray(values, np.float64)
    loop = compiled(_barycentric_loop)
    if loop is None:
        total = weights[:, 0:1] * values[corners[:, 0]]
        total += weights[:, 1:2] * values[corners[:, 1]]
        total += weights[:, 2:3] * values[corners[:, 2]]
        return total
    out = np.empty((len(corners), values.shape[1]))
    loop(corners, weights, values, out)
    return out


def warm_up() -> None:
    """Load the compiled loops now (numba's disk cache: ~0.1 s in a fresh process) for the common dtypes."""
    for dtype in (np.uint8, np.float32):
        bilinear(np.zeros((2, 2, 3), dtype), np.zeros(1), np.zeros(1))
    for index, weight in ((np.int64, np.float64), (np.int32, np.float32)):
        barycentric(np.zeros((1, 3), index), np.zeros((1, 3), weight), np.zeros((1, 3)))


def _bilinear_loop(image, x, y, out):
    height, width, channels = image.shape
    for k in range(x.shape[0]):
        xk = min(max(x[k], 0.0), width - 1.001)
        yk = min(max(y[k], 0.0), height - 1.001)
        x0, y0 = int(np.floor(xk)), int(np.floor(yk))
        fx, fy = xk - x0, yk - y0
        for c in range(channels):
            top = float(image[y0, x0, c]) * (1 - fx) + float(image[y0, x0 + 1, c]) * fx
            bottom = float(image[y0 + 1, x0, c]) * (1 - fx) + float(image[y0 + 1, x0 + 1, c]) * fx
            out[k, c] = top * (1 - fy) + bottom * fy


def _barycentric_loop(corners, weights, values, out):
    for k in range(corners.shape[0]):
        a, b, c = corners[k, 0], corners[k, 1], corners[k, 2]
        for j in range(values.shape[1]):
            out[k, j] = weights[k, 0] * values[a, j] + weights[k, 1] * values[b, j] + weights[k, 2] * values[c, j]


def _bilinear_numpy(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    x = np.clip(x, 0, w - 1.001)
    y = np.clip(y, 0, h - 1.001)
    x0, y0 = np.floor(x).astype(np.intp), np.floor(y).astype(np.intp)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    flat = image.reshape(h * w, -1)
    index = y0 * w + x0  # the top-left neighbour; the others are +1, +w, +w+1 (x0 < w - 1, y0 < h - 1)

    def at(offset: int) -> np.ndarray:
        return flat[index + offset].astype(np.float64)

    top = at(0) * (1 - fx) + at(1) * fx
    bottom = at(w) * (1 - fx) + at(w + 1) * fx
    return top * (1 - fy) + bottom * fy
