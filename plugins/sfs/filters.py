"""The fine stage's Gaussian blur on numpy planes (N, H, W) float32/64 and its exact adjoint (what a
hand-written gradient needs): separable, radius 3σ, borders replicated, by OpenCV's vectorised filter
plane by plane (several times faster than torch's on the CPU)."""

from __future__ import annotations

import cv2
import numpy as np

from facerecon.geometry.jit import map_in_parallel


def gaussian_taps(sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian taps, radius 3σ (at least 1), float64."""
    radius = max(1, int(3 * sigma))
    taps = np.exp(-(np.arange(-radius, radius + 1, dtype=np.float64) ** 2) / (2 * sigma**2))
    return taps / taps.sum()


def blur(planes: np.ndarray, taps: np.ndarray, threads: int = 1) -> np.ndarray:
    """Correlate every plane of (N, H, W) with ``taps`` along both axes, borders replicated (the planes
    shared out over ``threads`` threads)."""
    planes = np.ascontiguousarray(planes)
    kernel = np.asarray(taps, planes.dtype)
    out = np.empty_like(planes)

    def one(plane: np.ndarray, filtered: np.ndarray) -> None:  # plane by plane: no channel interleaving
        cv2.sepFilter2D(plane, -1, kernel, kernel, dst=filtered, borderType=cv2.BORDER_REPLICATE)

    map_in_parallel(one, list(zip(planes, out, strict=True)), threads)
    return out


def blur_adjoint(planes: np.ndarray, taps: np.ndarray, threads: int = 1) -> np.ndarray:
    """The transpose of ``blur``: the (symmetric) taps correlated over the zero-padded planes ("full"
    size), then what landed in each replicated border folded onto its edge sample."""
    rows, cols, radius = planes.shape[1], planes.shape[2], len(taps) // 2
    kernel = np.asarray(taps, planes.dtype)
    out = np.empty(planes.shape, planes.dtype)

    def one(plane: np.ndarray, result: np.ndarray) -> None:
        padded = cv2.copyMakeBorder(plane, radius, radius, radius, radius, cv2.BORDER_CONSTANT, value=0)
        full = cv2.sepFilter2D(padded, -1, kernel, kernel, borderType=cv2.BORDER_CONSTANT)
        full[radius] += full[:radius].sum(0)  # the border rows, then the columns (corners reach the corners)
        full[radius + rows - 1] += full[radius + rows :].sum(0)
        full[:, radius] += full[:, :radius].sum(1)
        full[:, radius + cols - 1] += full[:, radius + cols :].sum(1)
        result[...] = full[radius : radius + rows, radius : radius + cols]

    map_in_parallel(one, list(zip(planes, out, strict=True)), threads)
    return out
