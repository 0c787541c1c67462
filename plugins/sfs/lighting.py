"""The fine stage's lighting (seed step 2), fitted to the medium surface: a white portrait key light whose
azimuth is fitted (the default model) or nine free spherical-harmonics coefficients per channel by least
squares (with an optional portrait-lighting prior), and a white Blinn-Phong highlight lobe.

Normals are (..., 3) unit vectors in the viewer frame (x right, y up, z to the viewer); images (3, H, W)
0-255; SH coefficients (9, 3), one column per channel.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from facerecon.geometry import shading as shading_basis
from facerecon.geometry.jit import compiled
from facerecon.plugins.sfs.operators import masked_blur, normals_from_height
from facerecon.plugins.sfs.options import SfsOptions

if TYPE_CHECKING:
    from facerecon.plugins.sfs.solver import Problem

MAX_FIT_SAMPLES = 5_000
"""Pixels used to fit the few lighting and highlight parameters (a regular subsample of the face; 10 000
before 0.10.0, with the same known-detail and RGB-D scores)."""

# -- spherical harmonics ----------------------------------------------------------------------------

SH_CONSTANTS = tuple(float(c) for c in shading_basis.SH_CONSTANTS)


def sh_basis(normals):
    """The 9 real SH basis functions of unit normals (..., 3) in the viewer frame (x right, y up, z to
    the viewer): Y00, Y1-1 (y), Y10 (z), Y11 (x), Y2-2 (xy), Y2-1 (yz), Y20 (3z²-1), Y21 (xz), Y22 (x²-y²)."""
    x, y, z = normals[..., 0], normals[..., 1], normals[..., 2]
    c = SH_CONSTANTS
    return torch.stack(
        [
            torch.full_like(x, c[0]),
            c[1] * y,
            c[2] * z,
            c[3] * x,
            c[4] * x * y,
            c[5] * y * z,
            c[6] * (3 * z * z - 1),
            c[7] * x * z,
            c[8] * (x * x - y * y),
        ],
        dim=-1,
    )


def shading(height: Tensor, sh: Tensor) -> Tensor:
    """S(n) (3, H, W) of a height map for SH coefficients sh (9, 3)."""
    return shading_of_normals(normals_from_height(height), sh)


def shading_of_normals(normals: Tensor, sh: Tensor) -> Tensor:
    """S(n) (3, H, W) of unit normals (H, W, 3) for SH coefficients sh (9, 3)."""
    # sh_basis's terms as 8 planes (8, H·W) and the constant Y00 folded into an offset: one contiguous
    # (3, H·W) product instead of an interleaved (H, W, 9) basis and a strided permute (~2x faster).
    x, y, z = normals[..., 0], normals[..., 1], normals[..., 2]
    c = SH_CONSTANTS
    planes = torch.stack([y, z, x, x * y, y * z, 3 * z * z - 1, x * z, x * x - y * y]).reshape(8, -1)
    scaled = sh[1:] * torch.tensor(c[1:], dtype=sh.dtype, device=sh.device)[:, None]  # (8, 3)
    out = torch.addmm((c[0] * sh[0])[:, None], scaled.T, planes)
    return out.reshape(3, *normals.shape[:-1])


@functools.cache
def portrait_lighting_prior() -> tuple[Tensor, Tensor]:
    """A Gaussian prior on the shading coefficients r_1..r_8 normalised by r_0 (colour-independent):
    its mean (8,) and whitening matrix W (8, 8) (W^T W = Σ^-1), float64.

    The source is a lighting model, not data: one directional key light plus ambient, whose moments are
    integrated here over a grid. The key's azimuth is uniform within ±60° of the camera axis, the classic
    portrait positions from butterfly to Rembrandt lighting; its elevation is uniform from 0 to 60° above
    the axis, the light-from-above of natural and indoor illumination. The ambient irradiance is uniform
    from 0 to the key's peak. A directional light l adds A_l·Y_lm(l) to the coefficients and an
    irradiance k adds k/Y00 to r_0.

    Why a prior is needed: on a face the normals stay near the view axis, so the constant, z and 3z²−1
    terms are nearly collinear. Their balance, and the light's tilt off the axis, are then fixed by slow
    shading that an albedo with its own slow changes explains just as well."""
    azimuth = torch.deg2rad(torch.linspace(-60, 60, 25, dtype=torch.float64))
    elevation = torch.deg2rad(torch.linspace(0, 60, 13, dtype=torch.float64))
    az, el = torch.meshgrid(azimuth, elevation, indexing="ij")
    key = torch.stack([az.sin() * el.cos(), el.sin(), az.cos() * el.cos()], -1).reshape(-1, 3)
    coefficients = torch.from_numpy(shading_basis.directional_sh(key.numpy()))[:, None, :].repeat(1, 5, 1)
    # (directions, ambient levels, 9)
    coefficients[..., 0] += torch.linspace(0, 1, 5, dtype=torch.float64) / SH_CONSTANTS[0]
    normalised = (coefficients[..., 1:] / coefficients[..., :1]).reshape(-1, 8)
    mean = normalised.mean(0)
    covariance = torch.cov(normalised.T)
    whitening = torch.linalg.cholesky(torch.linalg.inv(covariance)).T
    return mean, whitening


def fit_lighting(
    problem: Problem,
    specular: Tensor | None = None,
    trim: float = 0.1,
    rounds: int = 0,
    albedo_sigma: float = 12.0,
    prior_weight: float = 0.0,
    key_lights: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Step 2: r (9, 3) by least squares with γ = γ_avg on the lit pixels, the image less ``specular``
    (1, H, W) if given (else ε = 0); each fit refitted once without the ``trim`` fraction of worst-fitting
    pixels (specular highlights, freckles, shadows cast by hair). Nine coefficients per channel: a regular
    subsample of at most ``MAX_FIT_SAMPLES`` lit pixels determines them.

    A region's single colour γ_avg is not the skin's: a tan, a flush or make-up change it slowly across
    the face, and the least squares then bend the light to explain them. ``rounds`` times, γ is replaced
    by the image over the current shading, averaged (σ ``albedo_sigma``) over the lit pixels, and r is
    refitted: the albedo takes the slow colour changes, the light what the normals explain. With
    ``prior_weight`` > 0 each fit is a MAP estimate under ``portrait_lighting_prior`` (the weight in squared
    grey levels: one prior standard deviation costs as much as that mean squared residual). With
    ``key_lights`` (K, 9) (``key_light_candidates``) the light is instead the best of those candidates,
    with a gain per channel (``_best_key_light``). Returns r and the albedo (3, H, W) it was fitted with."""
    diffuse = problem.image if specular is None else problem.image - specular
    normals = normals_from_height(problem.height0)
    index = torch.nonzero(problem.lit.flatten())[:, 0]
    index = index[:: max(1, len(index) // MAX_FIT_SAMPLES)]  # the subsample's flat indices
    basis = sh_basis(normals.reshape(-1, 3)[index])  # (P, 9)
    target = diffuse.reshape(3, -1)[:, index]  # (3, P)

    def fitted(albedo: Tensor) -> Tensor:
        sampled = albedo.reshape(3, -1)[:, index]
        if key_lights is not None:
            return _best_key_light(basis, sampled, target, trim, key_lights)
        return _least_squares_lighting(basis, sampled, target, trim, prior_weight)

    albedo = problem.albedo_avg
    sh = fitted(albedo)
    for _ in range(rounds):
        ratio = (diffuse / shading_of_normals(normals, sh).clamp(min=0.05)).clamp(0, 255)
        # (σ of a dozen samples: its blurs at a third of the rate)
        albedo = masked_blur(ratio, problem.lit.float(), albedo_sigma, max(1, int(albedo_sigma // 4)))
        sh = fitted(albedo)
    return sh, albedo


def _least_squares_lighting(
    basis: Tensor, albedo: Tensor, target: Tensor, trim: float, prior_weight: float = 0.0
) -> Tensor:
    """r (9, 3) minimising the mean of (γ·(Y(n)·r) − I)² over the samples, plus ``prior_weight`` ·
    ‖W (r_1..8 / r_0 − μ)‖² (``portrait_lighting_prior``; linearised with r_0 of the previous solve), then
    refitted without the ``trim`` fraction of worst-fitting samples; basis Y(n) (P, 9), albedo γ and
    target I (3, P)."""
    # The normal equations of the three channels at once, in float64 (their matrices are 9 x 9).
    basis, albedo, target = basis.double(), albedo.double(), target.double()
    keep = torch.ones(basis.shape[0], dtype=basis.dtype, device=basis.device)
    prior = None
    if prior_weight > 0:
        mean, whitening = (x.to(basis) for x in portrait_lighting_prior())
        # W (r_1..8 − μ r_0): rows that are linear in r (8, 9)
        rows = prior_weight**0.5 * whitening @ torch.cat([-mean[:, None], torch.eye(8).to(basis)], 1)
        prior = rows.T @ rows
    for _ in range(2):
        weighted = basis.T[None] * (keep * albedo)[:, None, :]  # (3, 9, P): the designs' rows, kept ones
        normal = weighted @ (basis[None] * albedo[:, :, None])  # (3, 9, 9)
        rhs = (weighted @ target[:, :, None])[..., 0]  # (3, 9)
        coefficients = torch.linalg.solve(normal, rhs)
        if prior is not None:
            count = float(keep.sum())  # the data term as a mean; the prior linearised with r_0
            for _ in range(2):
                scale = (1 / coefficients[:, 0].clamp(min=1e-3) ** 2)[:, None, None]
                coefficients = torch.linalg.solve(normal / count + scale * prior, rhs / count)
        coefficients = coefficients.T.float()  # (9, 3)
        residual = (albedo.T * (basis @ coefficients.double()) - target.T).abs().sum(1)
        # within the (1 − trim) quantile: at most the order statistic it interpolates from (a selection,
        # ~10x faster than torch.quantile's sort)
        order = int((residual.numel() - 1) * (1 - trim)) + 1
        keep = (residual <= torch.kthvalue(residual, order).values).double()
    return coefficients


KEY_AZIMUTH_STEP = 5.0
"""Degrees between the azimuths ``key_light_candidates`` tries (−90 to 90)."""


def key_light_candidates(elevation: float, ambient: float) -> Tensor:
    """SH shading coefficients (K, 9), float64, of a white directional key light ``elevation`` degrees
    above the camera axis at each azimuth from 90° left to 90° right of it (``KEY_AZIMUTH_STEP`` apart),
    plus a uniform ambient irradiance ``ambient`` (a fraction of the key's on a surface facing it).

    The portrait light model (``SfsOptions.lighting_model = "key"``). A face's slow shading cannot be told
    from slow changes of its albedo (a tan, a flush, a photo's own shading blurred into a texture), and on
    a face's near-frontal normals the constant, z and 3z²−1 terms of free SH coefficients are nearly
    collinear: their balance, i.e. how much the light leans off the camera axis, is then fitted to albedo
    rather than to shape, and that balance is what makes detail visible. The key's elevation and the
    ambient share are therefore fixed (a key 30° above the lens and a 2:1 lighting ratio are the studio
    portrait's standards), and only what the face's left-right shading shows is fitted: the azimuth."""
    azimuth = torch.deg2rad(torch.arange(-90.0, 90.0 + KEY_AZIMUTH_STEP / 2, KEY_AZIMUTH_STEP, dtype=torch.float64))
    up = torch.deg2rad(torch.tensor(elevation, dtype=torch.float64))
    directions = torch.stack([azimuth.sin() * up.cos(), up.sin().expand_as(azimuth), azimuth.cos() * up.cos()], -1)
    candidates = torch.from_numpy(shading_basis.directional_sh(directions.numpy()))  # A_l · Y_lm(l)
    candidates[:, 0] += ambient / SH_CONSTANTS[0]  # a uniform irradiance k: k / Y00 on r_0
    return candidates


def _best_key_light(basis: Tensor, albedo: Tensor, target: Tensor, trim: float, candidates: Tensor) -> Tensor:
    """r (9, 3): the candidate light (K, 9) times a gain per channel (closed form) whose shading best
    explains the samples (the sum of (γ·g·(Y(n)·c) − I)²), chosen again without the ``trim`` fraction of
    worst-fitting samples of the first choice; basis Y(n) (P, 9), albedo γ and target I (3, P)."""
    basis, albedo, target = basis.double(), albedo.double(), target.double()
    shading = basis @ candidates.to(basis).T  # (P, K) S at unit gain
    keep = torch.ones(basis.shape[0], dtype=basis.dtype, device=basis.device)
    for _ in range(2):
        # Per channel and candidate, with the best gain g = Σ γSI / Σ γ²S²: the cost Σ I² − (Σ γSI)² / Σ γ²S²
        # (two products with the (P, K) shading instead of a (3, P, K) rendering).
        crossed = (keep * albedo * target) @ shading  # (3, K)
        squared = ((keep * albedo**2) @ shading**2).clamp(min=1e-12)
        best = int((-(crossed**2) / squared).sum(0).argmin())
        gain = crossed[:, best] / squared[:, best]  # (3,)
        residual = (gain[:, None] * albedo * shading[:, best] - target).abs().sum(0)
        order = int((residual.numel() - 1) * (1 - trim)) + 1
        keep = (residual <= torch.kthvalue(residual, order).values).double()
    return (candidates[best].to(basis)[:, None] * gain[None, :]).float()


def fit_light_and_highlight(problem: Problem, options: SfsOptions) -> tuple[Tensor, SpecularLobe | None]:
    """Step 2 with the lobe model's highlight: SH coefficients (9, 3), and the lobe, or None when there is
    no highlight worth modelling. The highlight biases the lighting fit and a biased lighting biases the
    lobe: two rounds of lobe from the lighting's residual, then lighting without the lobe.

    On a grid of 128 samples or more across, the fit runs at half the rate (``half_rate``): its 13
    parameters come from a subsample of ``MAX_FIT_SAMPLES`` anyway, and the slow albedo and the smooth
    medium surface they are fitted with lose nothing there (~4x less work)."""
    rounds, sigma, prior = options.lighting_rounds, options.lighting_albedo_sigma, options.lighting_prior_weight
    if min(problem.height0.shape) >= 128:
        problem, sigma = half_rate(problem), sigma / 2
    keys = None
    if options.lighting_model == "key":
        keys = key_light_candidates(options.key_elevation, options.key_ambient)
    sh, albedo = fit_lighting(problem, None, 0.1, rounds, sigma, prior, keys)
    without_lobe = sh
    if options.specular_model != "lobe" or options.specular_scale <= 0:
        return sh, None
    normals0 = normals_from_height(problem.height0)
    # The key model knows where its light is: the highlight is the key's, at the half-vector between it
    # and the viewer; only its strength and sharpness are fitted.
    half = None if keys is None else _half_vector(sh)
    lobe = SpecularLobe(problem.image.device, half)
    for steps in (150, 50):  # the second round starts from the first's lobe
        diffuse = albedo * shading_of_normals(normals0, sh)
        highlight = white_part(problem.image - diffuse, albedo)
        lobe.fit(normals0, highlight / options.specular_scale, problem.mask, steps)
        sh, albedo = fit_lighting(problem, options.specular_scale * lobe(normals0), 0.1, rounds, sigma, prior, keys)
    if lobe.peak(normals0, problem.mask) < options.specular_min_peak:
        # No highlight worth modelling: a faint, sharp lobe would only add gradient noise.
        return without_lobe, None
    return sh, lobe


def white_part(residual: Tensor, albedo: Tensor) -> Tensor:
    """The white component (H, W), grey levels per channel, of a residual (3, H, W) that is white plus the
    albedo's colour (3, H, W): a least-squares split per sample (Shafer's dichromatic reflection).

    What the diffuse rendering leaves is a highlight, the light's colour (white here), plus errors of
    the diffuse model, which have the skin's colour (a slow albedo or light error scales γ·S). Fitting
    the lobe to the mean residual let it take those errors too: a broad lobe that acts as a second light
    and bends the light's balance. Where the skin's colour is nearly white, the split is left to the
    mean residual (its 2 x 2 system is singular for grey: a greyscale photo is split nowhere)."""
    white = torch.full((3, 1, 1), 3**-0.5, dtype=residual.dtype, device=residual.device)
    colour = albedo / albedo.norm(dim=0, keepdim=True).clamp(min=1e-6)
    cosine = (colour * white).sum(0)
    along_white, along_colour = (residual * white).sum(0), (residual * colour).sum(0)
    # residual ≈ s·w + d·c with unit w, c: the normal equations [[1, cos], [cos, 1]] (s, d) = (r·w, r·c)
    determinant = 1 - cosine**2
    separable = determinant > MIN_COLOUR_SEPARATION
    strength = (along_white - cosine * along_colour) / torch.where(separable, determinant, 1.0)
    return torch.where(separable, strength * 3**-0.5, residual.mean(0))


MIN_COLOUR_SEPARATION = 0.005
"""1 − cos² of the angle between the albedo's colour and white below which ``white_part`` does not split
(about 4°; typical skin is 10-15° from grey, so that its split amplifies noise ~20-40x, which the lobe's
least-squares fit over thousands of samples averages out)."""


def _half_vector(sh: Tensor) -> Tensor:
    """The unit half-vector (3,) between the viewer (0, 0, 1) and a key light's direction, read from its
    shading coefficients (9, 3): a directional light l has first-order terms ∝ (l_y, l_z, l_x) and the
    ambient adds to r_0 only."""
    first_order = sh.double().mean(1)[1:4]
    direction = torch.stack([first_order[2], first_order[0], first_order[1]])
    viewer = torch.tensor([0.0, 0.0, 1.0], dtype=direction.dtype, device=direction.device)
    half = direction / direction.norm().clamp(min=1e-12) + viewer
    return (half / half.norm().clamp(min=1e-12)).float()


def half_rate(problem: Problem) -> Problem:
    """``problem`` on a grid at half the rate: 2 x 2 block means of the image, albedo and height (in the
    coarser samples, so the slopes and normals are the same), a block in the masks when all of it is."""

    def pooled(planes: Tensor) -> Tensor:
        return torch.nn.functional.avg_pool2d(planes[None], 2, ceil_mode=True)[0]

    def whole(mask: Tensor) -> Tensor:
        return pooled(mask[None].float())[0] > 1 - 1e-6

    return replace(
        problem,
        image=pooled(problem.image),
        albedo_avg=pooled(problem.albedo_avg),
        height0=pooled(problem.height0[None])[0] / 2,
        mask=whole(problem.mask),
        lit=whole(problem.lit),
    )


class SpecularLobe:
    """A white Blinn-Phong highlight k·max(n·h, 0)^α (h: a unit half-vector in the viewer frame), rendered
    from normals (..., 3) -> (1, ...). The depth phases render the highlight from their own normals
    instead of carving it into the surface (a per-pixel specular, the seed's step 4, cannot tell a
    highlight from detail); being smooth in the normals, it also keeps the energy differentiable. ``half``:
    a known unit half-vector (3,) that the fit holds (the key light model's), else it is fitted too."""

    def __init__(self, device: torch.device, half: Tensor | None = None) -> None:
        self.params = torch.tensor([0.0, 0.0, 2.0, 3.0], device=device)  # hx, hy, log k, log α
        self.half_fixed = half is not None
        if half is not None:  # a known highlight direction: only k and α are fitted
            self.params[:2] = half[:2].to(self.params) / half[2].clamp(min=1e-3)

    def __call__(self, normals: Tensor, params: Tensor | None = None) -> Tensor:
        half, k, alpha = self.shape(params)
        cosine = (normals @ half).clamp(min=1e-6)
        return (k * cosine**alpha)[None]

    def shape(self, params: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """The unit half-vector h (3,), k and α of ``params`` (default: the fitted ones). The clamps, with
        cos ≥ 1e-6 where it is used, keep cos^α and its derivatives finite (1 ≤ α ≤ 1100)."""
        p = self.params if params is None else params
        h = torch.stack([p[0], p[1], torch.ones_like(p[0])])
        return h / h.norm(), p[2].exp(), p[3].clamp(0.0, 7.0).exp()

    def fit(
        self, normals: Tensor, residual: Tensor, mask: Tensor, steps: int = 150, fused_pass: bool = True
    ) -> SpecularLobe:
        """Least-squares fit to ``residual`` (H, W), what the diffuse rendering leaves, over ``mask``,
        from the current parameters; four parameters: a regular subsample of the pixels determines them.
        ``fused_pass``: Adam's steps in one compiled loop (``_lobe_adam``) on the CPU; False: by autograd."""
        stride = max(1, int(mask.sum()) // MAX_FIT_SAMPLES)
        # A highlight only brightens: darker-than-modelled pixels (pigment: freckles, brows) are not
        # its business, and fitting their negative residual would narrow the lobe.
        normals, residual = normals[mask][::stride], residual[mask][::stride].clamp(min=0)
        adam = compiled(_lobe_adam, fastmath=True) if fused_pass and normals.device.type == "cpu" else None
        if adam is not None:  # the same steps, the gradient written out (~10x faster than autograd's)
            fitted = self.params.double().numpy().copy()
            adam(normals.double().numpy(), residual.double().numpy(), fitted, steps, LOBE_LR, 2 * self.half_fixed)
            params = torch.from_numpy(fitted).to(self.params.dtype)
        else:
            params = self.params.clone().requires_grad_(True)
            optimiser = torch.optim.Adam([params], lr=LOBE_LR)
            for _ in range(steps):
                optimiser.zero_grad()
                ((self(normals, params)[0] - residual) ** 2).mean().backward()
                if self.half_fixed and params.grad is not None:
                    params.grad[:2] = 0  # (Adam leaves a parameter whose gradients are all 0 where it is)
                optimiser.step()
        if torch.isfinite(params).all():
            self.params = params.detach()
        else:  # a degenerate fit (nothing brighter than the model): a lobe too faint to be kept
            self.params = torch.tensor([0.0, 0.0, -10.0, 3.0], device=params.device)
        return self

    def peak(self, normals: Tensor, mask: Tensor) -> float:
        return float(self(normals)[0][mask].max())


LOBE_LR = 0.05
"""Adam's step size for the lobe's four parameters."""


def _lobe_adam(normals, residual, params, steps, lr, first):
    """``steps`` of Adam (torch's update: β = 0.9, 0.999, ε = 1e-8) on the mean of (k·max(n·h, 1e-6)^α − r)²
    over the samples (normals (P, 3), residual (P,)), updating ``params`` (hx, hy, log k, log α) from index
    ``first`` on in place (2: the half-vector is held; numba compiles it). The gradient follows
    ``SpecularLobe.shape``: h = v/|v| with v = (hx, hy, 1), α = exp(log α clamped to [0, 7]); no gradient
    through a clamp that holds."""
    moment = np.zeros(4)
    second = np.zeros(4)
    count = residual.shape[0]
    for step in range(1, steps + 1):
        length = np.sqrt(params[0] ** 2 + params[1] ** 2 + 1.0)
        hx, hy, hz = params[0] / length, params[1] / length, 1.0 / length
        k = np.exp(params[2])
        log_alpha = min(max(params[3], 0.0), 7.0)
        alpha = np.exp(log_alpha)
        g_half = np.zeros(3)
        g_k = 0.0
        g_alpha = 0.0
        for i in range(count):
            cosine = normals[i, 0] * hx + normals[i, 1] * hy + normals[i, 2] * hz
            clamped = cosine <= 1e-6
            cosine = max(cosine, 1e-6)
            value = k * cosine**alpha
            g = 2.0 * (value - residual[i]) / count  # ∂L/∂value
            g_k += g * value / k
            g_alpha += g * value * np.log(cosine)
            if not clamped:
                g_cos = g * alpha * value / cosine
                g_half[0] += g_cos * normals[i, 0]
                g_half[1] += g_cos * normals[i, 1]
                g_half[2] += g_cos * normals[i, 2]
        along = g_half[0] * hx + g_half[1] * hy + g_half[2] * hz  # through h = v/|v|
        grad = np.empty(4)
        grad[0] = (g_half[0] - along * hx) / length
        grad[1] = (g_half[1] - along * hy) / length
        grad[2] = g_k * k
        grad[3] = g_alpha * alpha if 0.0 <= params[3] <= 7.0 else 0.0
        for j in range(first, 4):
            moment[j] = 0.9 * moment[j] + 0.1 * grad[j]
            second[j] = 0.999 * second[j] + 0.001 * grad[j] * grad[j]
            denominator = np.sqrt(second[j]) / np.sqrt(1.0 - 0.999**step) + 1e-8
            params[j] -= lr / (1.0 - 0.9**step) * moment[j] / denominator
