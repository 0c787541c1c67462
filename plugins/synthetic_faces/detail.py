"""The known multi-scale detail and albedo texture of a synthetic face, as maps on a sample grid.

Everything is placed relative to the photo's 68 iBUG landmarks (0-based pixels) and sized by the outer
eye-corner distance ``e`` (about 90 mm on a face; synth-detail's faces have e ≈ 85 px, and the sizes
below are synth-detail's at that scale): wrinkles of the forehead, glabella, crow's feet and nasolabial
folds (grooves with a Gaussian cross-section, FWHM 4-10 px, 1-3 px deep at e = 85 px), pores (pits,
σ 0.6-1 px, 0.2-0.45 px deep, plus a fine roughness), and the albedo texture T (freckles, hair-like
strokes, blotches: a relative darkening that is NOT geometry, drawn from its own random stream).

Sample grids: ``yy``, ``xx`` float64 (h, w) image-pixel coordinates of the samples (a supersampled
grid has several samples per pixel); ``step`` the sample spacing in pixels; ``inside`` bool (h, w)
where the face is. Heights are pixels, > 0 deeper.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.spatial import cKDTree

REFERENCE_EYE_PX = 85.0
FWHM_TO_SIGMA = 1 / 2.3548


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def face_axes(landmarks: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """(e, across, up): the outer-eye-corner distance (px), the unit vector from the right eye's outer
    corner to the left's, and the unit vector up the face (perpendicular, towards the forehead)."""
    across = landmarks[45] - landmarks[36]
    e = float(np.linalg.norm(across))
    across = across / e
    up = np.array([across[1], -across[0]])  # image y points down: rotate "across" by -90 degrees
    if up @ (landmarks[27] - landmarks[8]) < 0:
        up = -up
    return e, across, up


def _curves(landmarks: np.ndarray, rng: np.random.Generator) -> list[dict[str, Any]]:
    """The wrinkles' centre lines: start, control and end points (quadratic Bézier), width and depth."""
    e, across, up = face_axes(landmarks)
    k = e / REFERENCE_EYE_PX
    curves: list[dict[str, Any]] = []

    def add(kind: str, start, end, bend: float, fwhm: tuple[float, float], depth: tuple[float, float]) -> None:
        start, end = np.asarray(start, float), np.asarray(end, float)
        normal = np.array([-(end - start)[1], (end - start)[0]])
        control = (start + end) / 2 + bend * normal
        curves.append(
            {
                "kind": kind,
                "points": (start, control, end),
                "fwhm_px": float(rng.uniform(*fwhm) * k),
                "depth_px": float(rng.uniform(*depth) * k),
            }
        )

    brows = (landmarks[19] + landmarks[24]) / 2
    if rng.random() < 0.9:
        for i in range(int(rng.integers(2, 5))):
            centre = brows + up * e * (0.22 + 0.13 * i + rng.uniform(-0.03, 0.03))
            half = across * e * rng.uniform(0.28, 0.45)
            add("forehead", centre - half, centre + half, rng.uniform(-0.08, 0.04), (5, 9), (1.0, 2.5))
    if rng.random() < 0.6:
        centre = (landmarks[21] + landmarks[22]) / 2 + up * e * 0.04
        for side in (-1, 1):
            foot = centre + side * across * e * rng.uniform(0.04, 0.07)
            add("glabella", foot, foot + up * e * rng.uniform(0.12, 0.2), rng.uniform(-0.1, 0.1), (4, 6), (0.8, 1.8))
    if rng.random() < 0.8:
        for corner, side in ((36, -1), (45, 1)):
            out = side * across
            for angle in np.radians(rng.uniform(-8, 8) + np.array([-30.0, 0.0, 30.0])):
                direction = np.cos(angle) * out + np.sin(angle) * up
                start = landmarks[corner] + direction * e * 0.07
                add("crow's feet", start, start + direction * e * rng.uniform(0.12, 0.2), 0.0, (4, 6), (0.6, 1.5))
    if rng.random() < 0.8:
        for wing, mouth, side in ((31, 48, -1), (35, 54, 1)):
            start = landmarks[wing] + side * across * e * 0.1 + up * e * 0.05
            end = landmarks[mouth] + side * across * e * 0.08 - up * e * 0.08
            add("nasolabial", start, end, -side * rng.uniform(0.05, 0.15), (7, 10), (1.5, 3.0))
    return curves


def wrinkles(
    yy: np.ndarray, xx: np.ndarray, inside: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The wrinkle band (h, w) and a JSON-ready list of its wrinkles. Each is a groove of Gaussian
    cross-section along its curve, tapered to 0 at both ends (sqrt(sin(π u)), u along the curve)."""
    out = np.zeros(yy.shape)
    listed = []
    t = np.linspace(0.0, 1.0, 400)[:, None]
    for curve in _curves(landmarks, rng):
        a, b, c = curve["points"]
        line = (1 - t) ** 2 * a + 2 * (1 - t) * t * b + t**2 * c  # (400, 2) x, y
        sigma = curve["fwhm_px"] * FWHM_TO_SIGMA
        reach = 4 * sigma
        rows = np.nonzero((yy[:, 0] >= line[:, 1].min() - reach) & (yy[:, 0] <= line[:, 1].max() + reach))[0]
        cols = np.nonzero((xx[0] >= line[:, 0].min() - reach) & (xx[0] <= line[:, 0].max() + reach))[0]
        if len(rows) == 0 or len(cols) == 0:
            continue
        window = np.ix_(rows, cols)
        distance, nearest = cKDTree(line).query(np.column_stack([xx[window].ravel(), yy[window].ravel()]))
        u = t[nearest, 0]
        groove = curve["depth_px"] * np.exp(-(distance**2) / (2 * sigma**2)) * np.sqrt(np.sin(np.pi * u))
        out[window] += groove.reshape(len(rows), len(cols))
        listed.append(
            {
                "kind": curve["kind"],
                "fwhm_px": round(curve["fwhm_px"], 3),
                "depth_px": round(curve["depth_px"], 3),
                "start_xy": [round(float(v), 2) for v in a],
                "end_xy": [round(float(v), 2) for v in c],
            }
        )
    return np.where(inside, out, 0.0), listed


def _splat(shape: tuple[int, int], rows: np.ndarray, cols: np.ndarray, peaks: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian bumps of std ``sigma`` (samples) and height ``peaks`` at sample (rows, cols)."""
    impulses = np.zeros(shape)
    np.add.at(impulses, (rows, cols), peaks * 2 * np.pi * sigma**2)
    return gaussian_filter(impulses, sigma, truncate=3.5)


def _random_samples(inside: np.ndarray, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.nonzero(inside)
    pick = rng.integers(0, len(rows), count)
    return rows[pick], cols[pick]


def pores(inside: np.ndarray, step: float, e: float, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """The pore band (h, w): pits in three width classes at about one per (0.08 e)² px², plus roughness
    (smoothed white noise, σ 0.7 px, std 0.04 px at e = 85 px); and the number of pits."""
    k = e / REFERENCE_EYE_PX
    area_px = inside.sum() * step**2
    count = int(area_px / (0.08 * e) ** 2)
    out = np.zeros(inside.shape)
    if count == 0:
        return out, 0
    classes = rng.integers(0, 3, count)
    rows, cols = _random_samples(inside, count, rng)
    depths = rng.uniform(0.2, 0.45, count) * k
    for cls, sigma_px in enumerate((0.6, 0.8, 1.0)):
        chosen = classes == cls
        out += _splat(inside.shape, rows[chosen], cols[chosen], depths[chosen], sigma_px * k / step)
    rough = gaussian_filter(rng.standard_normal(inside.shape), 0.7 * k / step)
    out += rough / max(rough.std(), 1e-12) * 0.04 * k
    return np.where(inside, out, 0.0), count


def texture(inside: np.ndarray, step: float, e: float, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, int]]:
    """T (h, w): the albedo's relative change, NOT geometry: freckles (dark spots, σ 0.8-2 px, 5-15 %
    darker; 20-60 per 20,000 px²), hair-like strokes (thin dark lines 4-10 px long, 5-15 per 20,000 px²)
    and blotches (σ 6 px, std 3 %); clipped to -0.5..0.5."""
    k = e / REFERENCE_EYE_PX
    area_px = inside.sum() * step**2
    freckles = int(rng.integers(20, 60) * area_px / 20_000)
    out = np.zeros(inside.shape)
    if freckles:
        rows, cols = _random_samples(inside, freckles, rng)
        sizes = rng.uniform(0.8, 2.0, freckles) * k / step
        amounts = -rng.uniform(0.05, 0.15, freckles)
        for lo, hi in ((0, 1.2), (1.2, 1.6), (1.6, np.inf)):
            chosen = (sizes * step / k >= lo) & (sizes * step / k < hi)
            if chosen.any():
                out += _splat(inside.shape, rows[chosen], cols[chosen], amounts[chosen], float(np.mean(sizes[chosen])))
    strokes = int(rng.integers(5, 15) * area_px / 20_000)
    if strokes:
        rows, cols = _random_samples(inside, strokes, rng)
        lines = np.zeros(inside.shape)
        for r, c in zip(rows, cols, strict=True):
            angle = rng.uniform(0, np.pi)
            length = rng.uniform(4, 10) * k / step
            s = np.linspace(-length / 2, length / 2, max(int(2 * length), 2))
            rr = np.clip(np.rint(r + s * np.sin(angle)).astype(int), 0, inside.shape[0] - 1)
            cc = np.clip(np.rint(c + s * np.cos(angle)).astype(int), 0, inside.shape[1] - 1)
            lines[rr, cc] = -rng.uniform(0.10, 0.15)
        out += gaussian_filter(lines, 0.5 / step) * 2.0
    blotch = gaussian_filter(rng.standard_normal(inside.shape), 6.0 * k / step)
    out += blotch / max(blotch.std(), 1e-12) * 0.03
    return np.where(inside, np.clip(out, -0.5, 0.5), 0.0), {"freckles": freckles, "strokes": strokes}
