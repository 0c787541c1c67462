"""Scores of one depth estimate against a synthetic scene's known surface (``facerecon eval synthetic``).

All maps are float (H, W) on the photo's pixel grid; ``mask`` bool (H, W) the pixels scored. The
estimate is first aligned to the truth (mm) by the RGB-D instrument's least-squares fit
a·z + c·u + d·v + b (``rgbd.aligned_depth``: scale, the two out-of-plane rotations, offset), then:

* ``rmse_mm``: RMSE of the aligned estimate against the true depth, millimetres.
* ``normal_deg``: mean angle between the aligned estimate's and the truth's normals (central differences
  on the pixel grid, depths back in pixels), degrees.
* detail, as ``../shared/tools/detail_eval.py`` defines it, with a plain masked Gaussian high-pass
  HP(x) = x - G*(x·m)/G*(m) (σ 6 px; pixels with < 30 % of the kernel's weight inside are not scored):
  ``r_D`` / ``g_D`` the partial correlation / regression gain of HP(estimate) with the true detail HP(D),
  D = wrinkles + pores, given HP(smooth surface) (what the smooth face leaves in the high-pass); 1 is
  perfect, 0 no detail.
* ``leak_R``: texture turned into geometry: the multiple correlation of what is left of HP(estimate)
  after HP(wrinkles), HP(pores), HP(smooth) with HP(T) and its x / y derivatives (T the albedo texture:
  a dark spot turned into a pit, or into a slope, as shading-based methods do); 0 is best.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from facerecon.evaluation.rgbd import aligned_depth
from facerecon.geometry.shading import viewer_normals

HIGHPASS_SIGMA_PX = 6.0
MIN_KERNEL_WEIGHT = 0.3


def highpass(values: np.ndarray, mask: np.ndarray, sigma: float = HIGHPASS_SIGMA_PX) -> tuple[np.ndarray, np.ndarray]:
    """HP(values) (H, W) and the bool (H, W) pixels it is defined on (mask, enough kernel weight inside)."""
    m = mask.astype(np.float64)
    weight = gaussian_filter(m, sigma)
    low = gaussian_filter(np.where(mask, values, 0.0), sigma) / np.maximum(weight, 1e-12)
    return values - low, mask & (weight >= MIN_KERNEL_WEIGHT)


def _residual(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """What is left of y (n,) after least squares on the columns of x (n, k) and a constant."""
    a = np.column_stack([x, np.ones(len(y))])
    return y - a @ np.linalg.lstsq(a, y, rcond=None)[0]


def partial_correlation(x: np.ndarray, y: np.ndarray, given: np.ndarray) -> float:
    """Pearson correlation of x and y (n,) once both are regressed on ``given`` (n, k); 0 when x has
    nothing left (the estimate is the given term itself)."""
    rx, ry = _residual(x, given), _residual(y, given)
    if np.sqrt(np.mean(rx**2)) < 1e-6 * max(float(np.std(x)), 1e-300):
        return 0.0
    denominator = np.sqrt((rx @ rx) * (ry @ ry))
    return float(rx @ ry / denominator) if denominator > 0 else 0.0


def _angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.degrees(np.arccos(np.clip((a * b).sum(-1), -1.0, 1.0)))


def score_depth(
    estimate: np.ndarray,
    truth: np.ndarray,
    smooth: np.ndarray,
    wrinkles: np.ndarray,
    pores: np.ndarray,
    texture: np.ndarray,
    mask: np.ndarray,
    mm_per_px: float,
) -> dict[str, float]:
    """The scores of the module's docstring for ``estimate`` (any unit, any scale and offset) against the
    scene's ``truth`` = smooth + wrinkles + pores (pixels) on ``mask``."""
    measured = truth * mm_per_px
    aligned_mm = aligned_depth(estimate, measured, mask)
    scores = {"rmse_mm": float(np.sqrt(np.mean((aligned_mm[mask] - measured[mask]) ** 2)))}
    aligned_px = np.where(mask, aligned_mm / mm_per_px, np.nan)
    n_est, n_true = viewer_normals(-aligned_px), viewer_normals(-np.where(mask, truth, np.nan))
    ok = mask & np.isfinite(n_est).all(-1) & np.isfinite(n_true).all(-1)
    scores["normal_deg"] = float(np.mean(_angle_deg(n_est[ok], n_true[ok]))) if ok.any() else float("nan")
    hp_z, scored = highpass(aligned_px, mask)
    hp_w, hp_p, hp_s = (highpass(x, mask)[0] for x in (wrinkles, pores, smooth))
    hp_t = highpass(texture, mask)[0]
    ty, tx = np.gradient(np.where(mask, hp_t, 0.0))
    z, w, p, s = hp_z[scored], hp_w[scored], hp_p[scored], hp_s[scored]
    scores["r_D"] = partial_correlation(z, w + p, s[:, None])
    a = np.column_stack([w + p, s, np.ones(len(z))])
    scores["g_D"] = float(np.linalg.lstsq(a, z, rcond=None)[0][0])
    left = _residual(z, np.column_stack([w, p, s]))
    explained = left - _residual(left, np.column_stack([hp_t[scored], tx[scored], ty[scored]]))
    total = float(left @ left)
    small = np.sqrt(total / len(left)) < 1e-6 * max(float(np.std(z)), 1e-300)
    scores["leak_R"] = 0.0 if small else float(np.sqrt(max(0.0, explained @ explained / total)))
    scores["pixels_detail"] = int(scored.sum())
    return scores
