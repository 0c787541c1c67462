"""Scores of one depth estimate against a synthetic scene's known surface (``facerecon eval synthetic``).

All maps are float (H, W) on the photo's pixel grid; ``mask`` bool (H, W) the pixels scored. The
estimate is first aligned to the truth (mm) by the RGB-D instrument's least-squares fit
a·z + c·u + d·v + b (``rgbd.aligned_depth``: scale, the two out-of-plane rotations, offset), then:

* ``rmse_mm``: RMSE of the aligned estimate against the true depth, millimetres.
* ``normal_deg``: mean angle between the aligned estimate's and the truth's normals (central differences
  on the pixel grid, depths back in pixels), degrees.
* detail, as ``../shared/tools/detail_eval.py`` defines it (its default high-pass: x minus its
  Gaussian-weighted local quadratic fit over the mask, σ 6 px; pixels with < 30 % of the kernel's weight
  inside are not scored):
  ``r_D`` / ``g_D`` the partial correlation / regression gain of HP(estimate) with the true detail HP(D),
  D = wrinkles + pores, given HP(smooth surface) (what the smooth face leaves in the high-pass); 1 is
  perfect, 0 no detail.
* ``leak_R``: texture turned into geometry: the multiple correlation of what is left of HP(estimate)
  after HP(wrinkles), HP(pores), HP(smooth) with HP(T) and its x / y derivatives (T the albedo texture:
  a dark spot turned into a pit, or into a slope, as shading-based methods do); 0 is best.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import correlate1d

from facerecon.evaluation.rgbd import aligned_depth
from facerecon.geometry.shading import viewer_normals

HIGHPASS_SIGMA_PX = 6.0
MIN_KERNEL_WEIGHT = 0.3
NOTHING_LEFT = 1e-3
"""A residual below this fraction of its signal is rounding (the high-pass's ridge leaves ~1e-5 of a
plane): no correlation is read from it."""


class LocalQuadratic:
    """The high-pass of detail_eval.py: x minus its Gaussian-weighted (σ ``sigma`` px) local quadratic
    fit over ``mask`` (normalised convolution), which, unlike a plain blur, leaves a smooth face's slope
    and curvature out of the high-pass. ``scored``: bool (H, W), the mask's pixels with at least 30 % of
    the kernel's weight inside it."""

    POWERS = ((0, 0), (1, 0), (0, 1), (2, 0), (1, 1), (0, 2))

    def __init__(self, mask: np.ndarray, sigma: float = HIGHPASS_SIGMA_PX) -> None:
        radius = int(np.ceil(3.5 * sigma))
        offsets = np.arange(-radius, radius + 1, dtype=np.float64)
        gauss = np.exp(-0.5 * (offsets / sigma) ** 2)
        self.kernels = [gauss / gauss.sum() * (offsets / sigma) ** p for p in range(5)]
        rows, cols = np.nonzero(mask)
        self.box = (
            slice(max(rows.min() - radius, 0), rows.max() + radius + 1),
            slice(max(cols.min() - radius, 0), cols.max() + radius + 1),
        )
        self.mask = mask
        inside = mask[self.box].astype(np.float64)
        moments = {
            (a1 + a2, b1 + b2): self._moment(inside, a1 + a2, b1 + b2)
            for a1, b1 in self.POWERS
            for a2, b2 in self.POWERS
        }
        normal = np.stack(
            [np.stack([moments[(a1 + a2, b1 + b2)] for a2, b2 in self.POWERS], -1) for a1, b1 in self.POWERS], -2
        )
        self.ok = mask[self.box] & (moments[(0, 0)] >= MIN_KERNEL_WEIGHT)
        self.scored = np.zeros(mask.shape, bool)
        self.scored[self.box] = self.ok
        ridge = np.diag([0.0] + [1e-4] * (len(self.POWERS) - 1))
        self.inverse = np.linalg.inv(normal[self.ok] + ridge)

    def _moment(self, image: np.ndarray, a: int, b: int) -> np.ndarray:
        """Σ_q image(q) ((q-p)_x/σ)^a ((q-p)_y/σ)^b g(q-p) at every p (x = columns, y = rows)."""
        across = correlate1d(image, self.kernels[a], axis=1, mode="constant")
        return correlate1d(across, self.kernels[b], axis=0, mode="constant")

    def highpass(self, values: np.ndarray) -> np.ndarray:
        """float64 (H, W): values minus the local quadratic fit; NaN off ``scored``."""
        inside = np.where(self.mask, values, 0.0)[self.box]
        moments = np.stack([self._moment(inside, a, b) for a, b in self.POWERS], -1)[self.ok]
        fitted = np.einsum("nj,nj->n", self.inverse[:, 0, :], moments)
        out = np.full(values.shape, np.nan)
        out[self.box][self.ok] = np.asarray(values, np.float64)[self.box][self.ok] - fitted
        return out


def _residual(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """What is left of y (n,) after least squares on the columns of x (n, k) and a constant."""
    a = np.column_stack([x, np.ones(len(y))])
    return y - a @ np.linalg.lstsq(a, y, rcond=None)[0]


def partial_correlation(x: np.ndarray, y: np.ndarray, given: np.ndarray) -> float:
    """Pearson correlation of x and y (n,) once both are regressed on ``given`` (n, k); 0 when x has
    nothing left (the estimate is the given term itself)."""
    rx, ry = _residual(x, given), _residual(y, given)
    if np.sqrt(np.mean(rx**2)) < NOTHING_LEFT * max(float(np.std(x)), 1e-300):
        return 0.0
    denominator = np.sqrt((rx @ rx) * (ry @ ry))
    return float(rx @ ry / denominator) if denominator > 0 else 0.0


def _angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.degrees(np.arccos(np.clip((a * b).sum(-1), -1.0, 1.0)))


class DepthScorer:
    """Scores depth estimates against one scene's known surface (high-passes of the truth computed once).

    truth: float (H, W) the true depth = smooth + wrinkles + pores, pixels; smooth, wrinkles, pores the
    parts; texture the albedo's own relative change; mask bool (H, W) the pixels scored; mm_per_px the
    camera's scale."""

    def __init__(
        self,
        truth: np.ndarray,
        smooth: np.ndarray,
        wrinkles: np.ndarray,
        pores: np.ndarray,
        texture: np.ndarray,
        mask: np.ndarray,
        mm_per_px: float,
    ) -> None:
        self.truth, self.mask, self.mm_per_px = truth, mask, mm_per_px
        self.normals = viewer_normals(-np.where(mask, truth, np.nan))
        self.local = LocalQuadratic(mask)
        self.scored = self.local.scored
        hp_w, hp_p, hp_s, hp_t = (self.local.highpass(x) for x in (wrinkles, pores, smooth, texture))
        ty, tx = np.gradient(hp_t)  # NaN next to unscored pixels: those are left out of leak_R
        e = self.scored
        self.detail, self.shape = hp_w[e] + hp_p[e], hp_s[e][:, None]
        self.bands = np.column_stack([hp_w[e], hp_p[e], hp_s[e]])
        self.inner = np.isfinite(tx[e]) & np.isfinite(ty[e])
        self.texture = np.column_stack([hp_t[e], tx[e], ty[e]])[self.inner]

    def score(self, estimate: np.ndarray) -> dict[str, float]:
        """The scores of the module's docstring for ``estimate`` (H, W) (any unit, scale and offset)."""
        mask, measured = self.mask, self.truth * self.mm_per_px
        aligned_mm = aligned_depth(estimate, measured, mask)
        scores = {"rmse_mm": float(np.sqrt(np.mean((aligned_mm[mask] - measured[mask]) ** 2)))}
        aligned_px = np.where(mask, aligned_mm / self.mm_per_px, np.nan)
        normals = viewer_normals(-aligned_px)
        ok = mask & np.isfinite(normals).all(-1) & np.isfinite(self.normals).all(-1)
        scores["normal_deg"] = float(np.mean(_angle_deg(normals[ok], self.normals[ok]))) if ok.any() else math.nan
        z = self.local.highpass(aligned_px)[self.scored]
        scores["r_D"] = partial_correlation(z, self.detail, self.shape)
        design = np.column_stack([self.detail, self.shape, np.ones(len(z))])
        scores["g_D"] = float(np.linalg.lstsq(design, z, rcond=None)[0][0])
        left = _residual(z[self.inner], self.bands[self.inner])
        explained = left - _residual(left, self.texture)
        total = float(left @ left)
        small = np.sqrt(total / max(len(left), 1)) < NOTHING_LEFT * max(float(np.std(z)), 1e-300)
        scores["leak_R"] = 0.0 if small else float(np.sqrt(max(0.0, explained @ explained / total)))
        return scores
