"""The fine stage's energies and their minimisation (seed section 3.4), in torch, on one depth-map grid.

Images are (C, H, W) float tensors in 0-255, heights (H, W) in grid samples towards the viewer, normals
(H, W, 3) in the viewer frame (x right, y up, z to the viewer). ``solve`` runs steps 2-5 of
``facerecon.plugins.sfs`` (lighting, albedo, specular, two depth phases). Imported by the refiner when
it is built, so that ``facerecon`` starts without loading torch.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

# torch.optim imports torch._dynamo at its first step (~0.9 s): done here, when the refiner is built,
# rather than by the first face.
import torch._dynamo  # noqa: F401
from torch import Tensor

from facerecon.plugins.sfs import filters, fused
from facerecon.plugins.sfs.options import SfsOptions

MIN_MEASURED_SAMPLES = 256
"""Fewer unclipped face samples than this and there is no shading to refine from (``NoShading``)."""

MAX_FIT_SAMPLES = 10_000
"""Pixels used to fit the few lighting and highlight parameters (a regular subsample of the face)."""

# -- spherical harmonics ----------------------------------------------------------------------------

SH_CONSTANTS = (0.282095, 0.488603, 0.488603, 0.488603, 1.092548, 1.092548, 0.315392, 1.092548, 0.546274)


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


def normals_from_height(height):
    """Unit normals (H, W, 3) in the viewer frame of a height map h (H, W) towards the viewer, image rows
    going down: n ∝ (−∂h/∂x, ∂h/∂y, 1) with central differences (one-sided at the border)."""
    padded = torch.nn.functional.pad(height[None, None], (1, 1, 1, 1), mode="replicate")[0, 0]
    hx = (padded[1:-1, 2:] - padded[1:-1, :-2]) / 2
    hy = (padded[2:, 1:-1] - padded[:-2, 1:-1]) / 2
    n = torch.stack([-hx, hy, torch.ones_like(height)], dim=-1)
    return n / n.norm(dim=-1, keepdim=True)


def laplacian(image):
    """5-point Laplacian of (..., H, W) with replicated borders."""
    flat = image.reshape(-1, 1, *image.shape[-2:])
    padded = torch.nn.functional.pad(flat, (1, 1, 1, 1), mode="replicate")
    out = padded[..., :-2, 1:-1] + padded[..., 2:, 1:-1] + padded[..., 1:-1, :-2] + padded[..., 1:-1, 2:] - 4 * flat
    return out.reshape(image.shape)


def gaussian_kernel(sigma: float) -> list[float]:
    """Normalised 1-D Gaussian taps, radius 3σ."""
    return filters.gaussian_taps(sigma).tolist()


def _blur_axis(x: Tensor, taps: list[float], dim: int) -> Tensor:
    """Correlate x with symmetric ``taps`` along ``dim``, borders replicated (sum of shifted slices:
    on the CPU this is ~10x faster than a depthwise conv2d with a 1-D kernel, and its backward more)."""
    n, radius = x.shape[dim], len(taps) // 2
    edge = [x.narrow(dim, 0, 1), x.narrow(dim, n - 1, 1)]
    size = list(x.shape)
    size[dim] = radius
    padded = torch.cat([edge[0].expand(size), x, edge[1].expand(size)], dim)
    out = padded.narrow(dim, 0, n) * taps[0]
    for i in range(1, len(taps)):
        out.add_(padded.narrow(dim, i, n), alpha=taps[i])
    return out


def _blur_axis_adjoint(g: Tensor, taps: list[float], dim: int) -> Tensor:
    """The transpose of ``_blur_axis``: scatter each output back onto its taps, then fold what landed
    in the replicated border onto the edge samples."""
    n, radius = g.shape[dim], len(taps) // 2
    size = list(g.shape)
    size[dim] = n + 2 * radius
    padded = g.new_zeros(size)
    for i, tap in enumerate(taps):
        padded.narrow(dim, i, n).add_(g, alpha=tap)
    out = padded.narrow(dim, radius, n).clone()
    out.narrow(dim, 0, 1).add_(padded.narrow(dim, 0, radius).sum(dim, keepdim=True))
    out.narrow(dim, n - 1, 1).add_(padded.narrow(dim, n + radius, radius).sum(dim, keepdim=True))
    return out


def _blur_cv2(image: Tensor, taps: list[float]) -> Tensor:
    """``_blur_axis`` along both axes by ``filters.blur`` (OpenCV's separable filter, the same border rule)."""
    planes = image.detach().reshape(-1, *image.shape[-2:]).numpy()
    return torch.from_numpy(filters.blur(planes, np.asarray(taps))).reshape(image.shape)


def _blur_adjoint_cv2(grad: Tensor, taps: list[float]) -> Tensor:
    """``_blur_axis_adjoint`` along both axes by ``filters.blur_adjoint``."""
    planes = grad.detach().reshape(-1, *grad.shape[-2:]).numpy()
    return torch.from_numpy(filters.blur_adjoint(planes, np.asarray(taps))).reshape(grad.shape)


class _GaussianBlur(torch.autograd.Function):
    @staticmethod
    def forward(ctx, image: Tensor, taps: list[float]) -> Tensor:
        ctx.taps = taps
        if image.device.type == "cpu" and image.dtype in (torch.float32, torch.float64) and image.numel():
            return _blur_cv2(image, taps)
        return _blur_axis(_blur_axis(image, taps, -1), taps, -2)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        if grad.device.type == "cpu" and grad.dtype in (torch.float32, torch.float64) and grad.numel():
            return _blur_adjoint_cv2(grad, ctx.taps), None
        return _blur_axis_adjoint(_blur_axis_adjoint(grad, ctx.taps, -2), ctx.taps, -1), None


def gaussian_blur(image: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur (radius 3σ, borders replicated) of (..., H, W), differentiable."""
    return _GaussianBlur.apply(image, gaussian_kernel(sigma))


def masked_blur(image: Tensor, weight: Tensor, sigma: float) -> Tensor:
    """Normalised convolution: the ``weight``-ed Gaussian mean of (C, H, W) around every sample,
    weights (H, W) >= 0 (what lies outside the weighted region does not bleed in)."""
    total = gaussian_blur(weight[None], sigma).clamp(min=1e-6)
    return gaussian_blur(image * weight, sigma) / total


def low_pass(image: Tensor, sigma: float, factor: int) -> Tensor:
    """A Gaussian low-pass of (..., H, W) sampled at 1/``factor`` of the rate, (..., ⌈H/k⌉, ⌈W/k⌉):
    averaged over k x k blocks, then blurred by σ/k. Being smooth, it loses nothing at the reduced rate
    (its mean square is the full-rate one's to within the blocks' edge effects), at ~1/k² of the cost:
    the energies evaluate it at every step."""
    shape = image.shape
    flat = image.reshape(-1, 1, *shape[-2:])
    coarse = torch.nn.functional.avg_pool2d(flat, factor, ceil_mode=True)[:, 0] if factor > 1 else flat[:, 0]
    coarse = gaussian_blur(coarse, sigma / factor)
    return coarse.reshape(*shape[:-2], *coarse.shape[-2:])


def relative_total_variation(image: Tensor, sigma: float, eps: float = 1e-3, factor: int = 2) -> Tensor:
    """Per-pixel RTV_x + RTV_y of (C, H, W) (Xu, Yan, Xia, Jia 2012, eq. 3-4): G*|∂γ| / (|G*∂γ| + e),
    sampled at 1/``factor`` of the rate (the windowed sums are smooth; see ``low_pass``). Texture (many
    small gradients of mixed sign) scores high, structure (consistent edges) low."""
    dx = torch.nn.functional.pad(image[..., :, 1:] - image[..., :, :-1], (0, 1))
    dy = torch.nn.functional.pad(image[..., 1:, :] - image[..., :-1, :], (0, 0, 0, 1))
    # The four windowed sums in one call (fewer, larger operations).
    abs_dx, sum_dx, abs_dy, sum_dy = low_pass(torch.stack([dx.abs(), dx, dy.abs(), dy]), sigma, factor)
    return abs_dx / (sum_dx.abs() + eps) + abs_dy / (sum_dy.abs() + eps)


# -- the optimisation ---------------------------------------------------------------------------------


class NoShading(ValueError):
    """The face has (almost) no pixels that are neither clipped nor black: nothing to refine from."""


@dataclass
class Problem:
    """Everything on the depth-map grid (torch tensors): image (3, H, W) 0-255, mask (H, W) bool (refined
    region), lit (H, W) bool (where the lighting is fitted), height0 (H, W) medium height (towards the
    viewer, samples), albedo_avg (3, H, W) 0-255; lighting (9, 3) SH shading coefficients when the light
    is known (a calibrated capture, or a benchmark's oracle): step 2 is then skipped, no highlight lobe;
    linear: the image and albedo_avg are linear RGB decoded from sRGB (``srgb_to_linear``), so the clipping
    thresholds, given in sRGB grey levels, are decoded too."""

    image: Tensor
    mask: Tensor
    lit: Tensor
    height0: Tensor
    albedo_avg: Tensor
    lighting: Tensor | None = None
    linear: bool = False


@dataclass
class Solution:
    height: Tensor
    albedo: Tensor
    specular: Tensor
    sh: Tensor
    phase_heights: dict[str, Tensor]


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


def srgb_to_linear(image):
    """sRGB-encoded 0-255 -> linear 0-255 (IEC 61966-2-1), of a tensor, a numpy array or a number."""
    where = torch.where if isinstance(image, Tensor) else np.where
    x = image / 255.0
    return 255.0 * where(x <= 0.04045, x / 12.92, ((abs(x) + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(image):
    """Linear 0-255 -> sRGB-encoded 0-255, the inverse of ``srgb_to_linear`` (negative values clipped)."""
    where = torch.where if isinstance(image, Tensor) else np.where
    x = image.clip(0, None) / 255.0
    return 255.0 * where(x <= 0.0031308, x * 12.92, 1.055 * x ** (1 / 2.4) - 0.055)


LAMBERT_BANDS = (torch.pi, 2 * torch.pi / 3, torch.pi / 4)
"""The clamped cosine's SH transfer per band (Ramamoorthi & Hanrahan 2001): irradiance = A_l · radiance."""


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
    transfer = torch.tensor([LAMBERT_BANDS[0]] + [LAMBERT_BANDS[1]] * 3 + [LAMBERT_BANDS[2]] * 5, dtype=torch.float64)
    azimuth = torch.deg2rad(torch.linspace(-60, 60, 25, dtype=torch.float64))
    elevation = torch.deg2rad(torch.linspace(0, 60, 13, dtype=torch.float64))
    az, el = torch.meshgrid(azimuth, elevation, indexing="ij")
    key = torch.stack([az.sin() * el.cos(), el.sin(), az.cos() * el.cos()], -1).reshape(-1, 3)
    coefficients = (sh_basis(key) * transfer)[:, None, :].repeat(1, 5, 1)  # (directions, ambient levels, 9)
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
    grey levels: one prior standard deviation costs as much as that mean squared residual). Returns r
    and the albedo (3, H, W) it was fitted with."""
    diffuse = problem.image if specular is None else problem.image - specular
    albedo = problem.albedo_avg
    shading_basis = sh_basis(normals_from_height(problem.height0))
    sh = _least_squares_lighting(shading_basis, albedo, diffuse, problem.lit, trim, prior_weight)
    for _ in range(rounds):
        shade = (shading_basis @ sh).permute(2, 0, 1)
        albedo = masked_blur((diffuse / shade.clamp(min=0.05)).clamp(0, 255), problem.lit.float(), albedo_sigma)
        sh = _least_squares_lighting(shading_basis, albedo, diffuse, problem.lit, trim, prior_weight)
    return sh, albedo


def _least_squares_lighting(
    shading_basis: Tensor, albedo: Tensor, diffuse: Tensor, lit: Tensor, trim: float, prior_weight: float = 0.0
) -> Tensor:
    """r (9, 3) minimising the mean of (γ·(Y(n)·r) − I)² over (a regular subsample of) the lit pixels,
    plus ``prior_weight`` · ‖W (r_1..8 / r_0 − μ)‖² (``portrait_lighting_prior``; linearised with r_0 of
    the previous solve), then refitted without the ``trim`` fraction of worst-fitting pixels; basis
    (H, W, 9), albedo and diffuse (3, H, W)."""
    index = torch.nonzero(lit.flatten())[:, 0]
    index = index[:: max(1, len(index) // MAX_FIT_SAMPLES)]  # the subsample's flat indices
    basis = shading_basis.reshape(-1, 9)[index]  # (P, 9)
    albedo = albedo.reshape(3, -1)[:, index]  # (3, P)
    target = diffuse.reshape(3, -1)[:, index]
    keep = torch.ones(basis.shape[0], dtype=torch.bool, device=basis.device)
    prior_rows = None
    if prior_weight > 0:
        mean, whitening = (x.to(basis) for x in portrait_lighting_prior())
        # W (r_1..8 − μ r_0): rows that are linear in r (8, 9)
        prior_rows = prior_weight**0.5 * whitening @ torch.cat([-mean[:, None], torch.eye(8).to(basis)], 1)
    for _ in range(2):
        columns = []
        for c in range(3):
            design, observed = basis[keep] * albedo[c][keep][:, None], target[c][keep]
            solution = torch.linalg.lstsq(design, observed[:, None]).solution[:, 0]
            if prior_rows is not None:
                scale = design.shape[0] ** -0.5  # the data term as a mean
                for _ in range(2):
                    rows = torch.cat([design * scale, prior_rows / solution[0].clamp(min=1e-3)])
                    values = torch.cat([observed * scale, observed.new_zeros(8)])
                    solution = torch.linalg.lstsq(rows, values[:, None]).solution[:, 0]
            columns.append(solution)
        coefficients = torch.stack(columns, dim=1)
        residual = (albedo.T * (basis @ coefficients) - target.T).abs().sum(1)
        keep = residual <= torch.quantile(residual, 1 - trim)
    return coefficients


def fit_light_and_highlight(problem: Problem, options: SfsOptions) -> tuple[Tensor, SpecularLobe | None]:
    """Step 2 with the lobe model's highlight: SH coefficients (9, 3), and the lobe, or None when there is
    no highlight worth modelling. The highlight biases the lighting fit and a biased lighting biases the
    lobe: two rounds of lobe from the lighting's residual, then lighting without the lobe."""
    rounds, sigma, prior = options.lighting_rounds, options.lighting_albedo_sigma, options.lighting_prior_weight
    sh, albedo = fit_lighting(problem, None, 0.1, rounds, sigma, prior)
    without_lobe = sh
    if options.specular_model != "lobe" or options.specular_scale <= 0:
        return sh, None
    normals0 = normals_from_height(problem.height0)
    lobe = SpecularLobe(problem.image.device)
    for steps in (150, 50):  # the second round starts from the first's lobe
        diffuse = albedo * shading_of_normals(normals0, sh)
        lobe.fit(normals0, (problem.image - diffuse).mean(0) / options.specular_scale, problem.mask, steps)
        sh, albedo = fit_lighting(problem, options.specular_scale * lobe(normals0), 0.1, rounds, sigma, prior)
    if lobe.peak(normals0, problem.mask) < options.specular_min_peak:
        # No highlight worth modelling: a faint, sharp lobe would only add gradient noise.
        return without_lobe, None
    return sh, lobe


def solve(problem: Problem, options: SfsOptions, use_priors: bool = True) -> Solution:
    """Steps 2-5 of ``facerecon.plugins.sfs`` (lighting, albedo, specular, two depth phases) on one
    depth-map grid. ``use_priors=False`` drops the skin-colour and RTV terms (the seed's Fig. 8 ablation)."""
    scene = Scene.of(problem, options, use_priors)  # step 2 and what every later step weighs with
    surface = Reflectance(scene)  # steps 3-4
    depth = DepthEnergy(scene, surface)  # step 5
    phase_heights = {}
    for phase, (weights, lr, iterations) in enumerate(
        (
            (options.phase1_weights, options.phase1_lr, options.phase1_iterations),
            (options.phase2_weights, options.phase2_lr, options.phase2_iterations),
        ),
        start=1,
    ):
        depth.run_phase(weights, lr, iterations)
        phase_heights[f"phase{phase}"] = depth.height().clone()
    height = depth.height()
    with torch.no_grad():
        specular = scene.lobe(normals_from_height(height)) if scene.lobe is not None else surface.specular.detach()
    return Solution(height, surface.albedo.detach(), specular, scene.sh, phase_heights)


@dataclass
class Scene:
    """One solve's fixed quantities on the grid: the measured pixels, the lighting (step 2) and the
    highlight lobe, the medium surface's normals and shading, and the confidences every term weighs with."""

    options: SfsOptions
    image: Tensor  # (3, H, W) 0-255
    mask: Tensor  # (H, W) bool, the refined region
    m: Tensor  # mask as float
    count: Tensor  # its samples
    coarse_m: Tensor  # mask coverage at half rate, and its sum
    coarse_count: Tensor
    measured: Tensor  # (H, W) bool: neither clipped nor black
    stencil_measured: Tensor  # (H, W) float: ΔI's whole 5-point stencil measured
    sh: Tensor  # (9, 3)
    lobe: SpecularLobe | None
    height0: Tensor
    normals0: Tensor
    shade0: Tensor
    highlight0: Tensor  # (1, H, W) the lobe's highlight on the medium surface (0 without a lobe)
    skin: Tensor  # (H, W) skin-chromaticity confidence
    confidence: Tensor  # (H, W) the depth's data weight
    w_avg: float
    w_rtv: float

    @classmethod
    def of(cls, problem: Problem, options: SfsOptions, use_priors: bool) -> Scene:
        mask = problem.mask
        m = mask.float()
        image = problem.image
        # Clipped pixels (saturated, or black: under-exposed, or holes where a registered RGB-D frame has
        # no colour) carry no shading information at all; ΔI needs its whole 5-point stencil measured.
        brightest = image.max(0).values
        saturation, dark = options.saturation, options.dark
        if problem.linear:
            saturation, dark = float(srgb_to_linear(saturation)), float(srgb_to_linear(dark))
        measured = (brightest < saturation) & (brightest > dark)
        stencil_measured = -torch.nn.functional.max_pool2d(-measured[None].float(), 3, stride=1, padding=1)[0]
        problem = replace(problem, lit=problem.lit & measured)
        if int(problem.lit.sum()) < MIN_MEASURED_SAMPLES:
            raise NoShading(f"only {int(problem.lit.sum())} face samples are neither clipped nor black")
        if problem.lighting is None:
            sh, lobe = fit_light_and_highlight(problem, options)
        else:
            sh, lobe = problem.lighting.to(image), None
        height0 = problem.height0
        normals0 = normals_from_height(height0)
        shade0 = shading_of_normals(normals0, sh)
        # The albedo priors are weighed against the data term relative to the squared shading, so that a
        # brighter light does not silently weaken them (γ·S: the data term scales with S²).
        shading_scale = float((shade0[:, mask] ** 2).mean())
        coarse_m = torch.nn.functional.avg_pool2d(m[None], 2, ceil_mode=True)[0]
        # The chromaticity test sees the diffuse image: a white highlight over wrinkles must not make their
        # shading untrusted where the lobe explains it.
        with torch.no_grad():
            highlight = lobe(normals0) if lobe is not None else torch.zeros_like(height0)[None]
        diffuse_image = image - options.specular_scale * highlight
        # The skin's colour here: the face's colours around each sample (σ ``skin_colour_sigma``); a
        # region's single mean colour (γ_avg) would mistrust whole cheeks whose tone differs from the region's.
        local_skin = masked_blur(diffuse_image, (mask & measured).float(), options.skin_colour_sigma)
        skin = skin_confidence(diffuse_image, local_skin, measured, options)
        if not use_priors:
            skin = torch.ones_like(skin)
        # The depth's data weight: skin-coloured, measured, and weighed by foreshortening: towards the
        # silhouette a sample covers ever more surface seen at a grazing angle, where the depth map is poorly
        # sampled and the shading least reliable (weighed by cos = n_z, the rim no longer drifts).
        confidence = skin * measured.float() * normals0[..., 2].clamp(min=0)
        return cls(
            options=options,
            image=image,
            mask=mask,
            m=m,
            count=m.sum().clamp(min=1),
            coarse_m=coarse_m,
            coarse_count=coarse_m.sum().clamp(min=1),
            measured=measured,
            stencil_measured=stencil_measured,
            sh=sh,
            lobe=lobe,
            height0=height0,
            normals0=normals0,
            shade0=shade0,
            highlight0=highlight,
            skin=skin,
            confidence=confidence,
            w_avg=options.albedo_weight * shading_scale if use_priors else 0.0,
            w_rtv=options.albedo_rtv_weight * shading_scale if use_priors else 0.0,
        )

    def masked_mean(self, value: Tensor) -> Tensor:
        return (value * self.m).sum() / self.count

    def coarse_mean(self, value: Tensor) -> Tensor:
        """The masked mean of a half-rate map (``low_pass(..., factor=2)``)."""
        return (value * self.coarse_m).sum() / self.coarse_count

    def highlight(self, normals: Tensor, specular: Tensor) -> Tensor:
        """The specular term for these normals: the lobe's highlight follows them (instead of being carved
        into them); without a lobe, the per-pixel β."""
        return self.lobe(normals) if self.lobe is not None else specular.detach()


class Reflectance:
    """Steps 3-4: the albedo γ (with its skin-colour and RTV priors) and the per-pixel specular β, fitted
    once on the medium surface and then a few steps after each depth update."""

    def __init__(self, scene: Scene, fused_pass: bool = True) -> None:
        """``fused_pass``: evaluate the albedo energy by ``fused.albedo_terms`` where it runs (float32 on
        the CPU); False: by autograd (the reference form, ``albedo_loss``)."""
        self.scene = scene
        options, image, shade0 = scene.options, scene.image, scene.shade0
        # Step 3: albedo. Its prior γ_avg is the skin's own colour around each sample: the image over the
        # smooth shading, averaged (σ ``albedo_sigma``) over the skin-coloured samples. That mean cannot
        # hold detail finer than σ, and it follows the albedo's slow changes (a tan, a flush, make-up) that
        # a region's single colour would leave to the depth as false creases. Where the colour is not the
        # skin's (pigment, hair over the forehead), the albedo starts from the image over the smooth shading.
        with torch.no_grad():
            ratio = ((image - options.specular_scale * scene.highlight0) / shade0.clamp(min=0.05)).clamp(0, 255)
            self.skin_albedo = masked_blur(
                ratio, scene.skin * (scene.mask & scene.measured).float(), options.albedo_sigma
            )
            start = scene.skin * self.skin_albedo + (1 - scene.skin) * torch.where(
                scene.measured, ratio, self.skin_albedo
            )
        self.albedo = start.clone().requires_grad_(True)
        self.specular = scene.highlight0
        self.fused = self.fused_inputs() if fused_pass and fused.available(image) else None
        # Before any depth step the normals are the smooth medium surface's, so at full resolution the
        # albedo would take up every wrinkle's shading; it is fitted to the blurred residual here and
        # refined at full resolution while the depth phases explain the detail.
        optimiser = torch.optim.Adam([self.albedo], lr=options.albedo_lr)
        for _ in range(options.albedo_iterations):
            optimiser.zero_grad()
            self.albedo_loss(shade0, self.specular, options.albedo_blur).backward()
            optimiser.step()
        # Step 4: specular, from the residual.
        with torch.no_grad():
            # Highlights on skin are smooth at this scale: the initial specular is the blurred positive
            # residual (unblurred, it would swallow the bright side of every wrinkle). Highlights are
            # whitish, so they also leave the skin's chromaticity: only there may β0 be non-zero.
            residual = (image - self.albedo * shade0).mean(0, keepdim=True).clamp(min=0)
            self.beta0 = gaussian_blur(residual, options.specular_sigma)
            self.beta0 = self.beta0 * (1 - scene.skin) * (options.specular_model == "per-pixel")
        if options.specular_model == "per-pixel":
            self.specular = self.beta0.clone().requires_grad_(True)
            self.specular_optimiser = torch.optim.Adam([self.specular], lr=options.specular_lr)
        self.specular_steps(shade0, options.specular_iterations)
        self.depth_optimiser = torch.optim.Adam([self.albedo], lr=options.albedo_lr_depth)

    def fused_inputs(self) -> fused.AlbedoInputs:
        """What ``fused.albedo_terms`` reads of this scene and prior."""
        scene, options = self.scene, self.scene.options
        array = _float32_array
        return fused.AlbedoInputs(
            image=array(scene.image),
            measured=array(scene.measured.float()),
            mask=array(scene.m),
            coarse_mask=array(scene.coarse_m),
            skin_weight=array(1 + options.skin_prior_boost * scene.skin),
            skin_albedo=array(self.skin_albedo),
            count=float(scene.count),
            coarse_count=float(scene.coarse_count),
            w_avg=float(scene.w_avg),
            w_rtv=float(scene.w_rtv),
            rtv_sigma=float(options.rtv_sigma),
            specular_scale=float(options.specular_scale),
        )

    def albedo_loss(self, shade: Tensor, specular: Tensor, blur: float = 0.0) -> Tensor:
        """E(γ) of step 3 for the shading (3, H, W) and specular (1, H, W) given, with the residual's
        low-pass (σ ``blur``) instead of the residual when ``blur`` > 0."""
        if self.fused is not None:  # the same energy, its gradient written out (``fused``)
            return fused.albedo_terms(self.albedo, self.fused, shade, specular, blur)
        scene, options = self.scene, self.scene.options
        residual = (self.albedo * shade + options.specular_scale * specular - scene.image) * scene.measured
        if blur > 0:
            data = scene.coarse_mean((low_pass(residual * scene.m, blur, 2) ** 2).sum(0))
        else:
            data = scene.masked_mean((residual**2).sum(0))
        # Where the colour is the skin's, the albedo is the skin colour (shading explains the rest); where
        # it is not (pigment), the albedo is free to follow the image.
        weight = 1 + options.skin_prior_boost * scene.skin
        prior = scene.masked_mean(weight * ((self.albedo - self.skin_albedo) ** 2).sum(0))
        rtv: Tensor | float = 0.0
        if scene.w_rtv:
            rtv = scene.coarse_mean(relative_total_variation(self.albedo / 255.0, options.rtv_sigma) ** 2)
        return data + scene.w_avg * prior + scene.w_rtv * rtv

    def specular_steps(self, shade: Tensor, steps: int) -> None:
        scene, options = self.scene, self.scene.options
        if options.specular_model != "per-pixel":
            return  # the lobe model has no per-pixel specular
        for _ in range(steps):
            self.specular_optimiser.zero_grad()
            residual = (
                self.albedo.detach() * shade + options.specular_scale * self.specular - scene.image
            ) * scene.measured
            data = scene.masked_mean((1 - scene.skin) * (residual**2).sum(0))
            prior = scene.masked_mean(((self.specular - self.beta0) ** 2).sum(0))
            (data + options.specular_weight * prior).backward()
            self.specular_optimiser.step()
            with torch.no_grad():
                self.specular.clamp_(min=0)

    def follow(self, normals: Tensor) -> None:
        """A few albedo and specular steps for the current normals (the depth phases alternate with them)."""
        scene = self.scene
        shade = shading_of_normals(normals, scene.sh)
        highlight = scene.highlight(normals, self.specular)
        for _ in range(2):
            self.depth_optimiser.zero_grad()
            self.albedo_loss(shade, highlight).backward()
            self.depth_optimiser.step()
        self.specular_steps(shade, 2)


class DepthEnergy:
    """Step 5: the detail δ = d − d0 added to the medium height, and its energy
    E = data + base + λd1‖δ‖² + λd2‖∇²δ‖² + λd3‖ΔI − λd4∇²d‖² (seed eq. for the two depth phases)."""

    def __init__(self, scene: Scene, surface: Reflectance, fused_pass: bool = True) -> None:
        """``fused_pass``: evaluate the energy by ``fused.depth_terms`` where it runs (float32 on the CPU);
        False: by autograd (the reference form below)."""
        self.scene, self.surface = scene, surface
        options, mask, measured = scene.options, scene.mask, scene.measured
        self.delta = torch.zeros_like(scene.height0, requires_grad=True)
        # The depth energy measures intensities in units of ``depth_intensity_unit`` grey levels, or of
        # ``noise_weighting`` times the image's noise std where that is larger (a noisy image weighs its
        # data less against the priors, as a MAP estimate would): that sets the balance between its data
        # terms and the λd regularisers on depths in samples.
        luminance = scene.image.mean(0)
        noise = noise_level(luminance, mask & measured)
        self.unit = max(options.depth_intensity_unit, options.noise_weighting * noise) ** -2
        lap_image = laplacian(luminance) * self.unit**0.5
        if options.detail_noise_threshold > 0:
            # The phase-2 term copies ΔI into Δd, image noise included: ΔI is soft-thresholded at a
            # multiple of its noise level (5-point Laplacian of white noise: std √20·σ), so that only
            # contrast the noise cannot explain becomes detail. On a clean photo this removes almost nothing.
            tau = options.detail_noise_threshold * 20**0.5 * noise * self.unit**0.5
            lap_image = torch.sign(lap_image) * (lap_image.abs() - tau).clamp(min=0)
        self.lap_image = lap_image
        self.base_factor = max(1, int(options.base_sigma / 2))
        # the low-pass anchor's samples in the mask
        self.low_count = low_pass(scene.m, options.base_sigma, self.base_factor).gt(0.01).sum().clamp(min=1)
        self.lap_height0 = laplacian(scene.height0)  # ∇²d = ∇²d0 + ∇²(d − d0)
        self.lap_weight = scene.confidence * scene.stencil_measured
        self.bound = options.max_displacement * float(mask.any(0).sum())  # of the face's width
        self.fused = self._fused_constants() if fused_pass and fused.available(scene.image) else None

    def _fused_constants(self) -> fused.FusedInputs:
        """The fused pass's inputs that stay fixed through the phases (the albedo and specular are set per call)."""
        scene, options = self.scene, self.scene.options
        array = _float32_array
        lobe = np.zeros(6)
        if scene.lobe is not None:
            half, k, alpha = scene.lobe.shape(scene.lobe.params.double())
            lobe = np.array([1.0, *half.tolist(), float(k), float(alpha)])
        constants = torch.tensor(SH_CONSTANTS, dtype=torch.float64)[:, None]
        count = float(scene.count)
        return fused.FusedInputs(
            mask=array(scene.m),
            height0=array(scene.height0),
            albedo=array(self.surface.albedo),
            image=array(scene.image),
            confidence=array(scene.confidence),
            specular=array(self.surface.specular[0]),
            lap_image=array(self.lap_image),
            lap_height0=array(self.lap_height0),
            lap_weight=array(self.lap_weight),
            sh_scaled=np.ascontiguousarray((scene.sh.double().cpu() * constants).numpy()),
            lobe=lobe,
            specular_scale=float(options.specular_scale),
            threshold=float(options.robust_threshold),
            data_scale=self.unit / count,
            inv_count=1.0 / count,
        )

    def height(self) -> Tensor:
        return self.scene.height0 + self.delta.detach() * self.scene.m

    def loss(self, l1: float, l2: float, l3: float, l4: float) -> Tensor:
        scene, options = self.scene, self.scene.options
        if self.fused is not None:  # the same energy, its gradient written out (``fused``)
            terms = fused.depth_terms(self.delta, self._fused_inputs(), (l1, l2, l3, l4))
            return terms + self._base_term(self.delta * scene.m)
        detail = self.delta * scene.m
        normals = normals_from_height(scene.height0 + detail)
        highlight = scene.highlight(normals, self.surface.specular)
        rendered = self.surface.albedo.detach() * shading_of_normals(normals, scene.sh)
        rendered = rendered + options.specular_scale * highlight
        residual = _robust(rendered - scene.image, options.robust_threshold).sum(0)
        data = scene.masked_mean(scene.confidence * residual) * self.unit
        # Smoothness is asked of the detail added (d − d0), not of the whole surface: ||∇²d||² would also
        # flatten the medium surface's own curvature (nose, eye sockets), a mid-scale bend.
        lap_detail = laplacian(detail)
        transfer = self.lap_weight * (self.lap_image - l4 * (self.lap_height0 + lap_detail)) ** 2
        return (
            data
            + self._base_term(detail)
            + l1 * scene.masked_mean(self.delta**2)
            + l2 * scene.masked_mean(lap_detail**2)
            + l3 * scene.masked_mean(transfer)
        )

    def _base_term(self, detail: Tensor) -> Tensor:
        """The mean square of the detail's low-pass (``base_weight``, ``base_sigma``)."""
        options = self.scene.options
        low = low_pass(detail, options.base_sigma, self.base_factor)  # zero outside the mask: a plain mean
        return options.base_weight * (low**2).sum() / self.low_count

    def _fused_inputs(self) -> fused.FusedInputs:
        """``self.fused`` with the current albedo and specular (views, not copies)."""
        assert self.fused is not None
        return replace(
            self.fused,
            albedo=self.surface.albedo.detach().numpy(),
            specular=self.surface.specular.detach()[0].numpy(),
        )

    def run_phase(self, weights: tuple[float, float, float, float], lr: float, iterations: int) -> None:
        """One depth phase, alternating with the albedo and specular every ``alternate_every`` steps."""
        options = self.scene.options
        optimiser = self._optimiser(lr)

        def closure() -> Any:  # the loss tensor (torch's stubs say float)
            optimiser.zero_grad()
            loss = self.loss(*weights)
            loss.backward()
            return loss

        adam = options.depth_optimizer == "adam"
        steps = iterations if adam else -(-iterations // options.alternate_every)
        for step in range(steps):
            optimiser.step(closure)
            with torch.no_grad():
                self.delta.clamp_(-self.bound, self.bound)
            if not adam or (step + 1) % options.alternate_every == 0:
                self.surface.follow(normals_from_height(self.height()))

    def _optimiser(self, lr: float) -> torch.optim.Optimizer:
        options = self.scene.options
        if options.depth_optimizer == "adam":
            return torch.optim.Adam([self.delta], lr=lr)
        # Adam moves every pixel by about lr per step however weak its gradient, so over a hundred steps
        # pixels with no shading evidence random-walk (a crumpled surface); L-BFGS with a line search
        # follows the energy's actual curvature.
        return torch.optim.LBFGS(
            [self.delta],
            lr=1.0,
            max_iter=options.alternate_every,
            max_eval=options.alternate_every + 5,
            history_size=10,
            line_search_fn="strong_wolfe",
        )


def _float32_array(tensor: Tensor) -> np.ndarray:
    """A tensor as a C-ordered float32 numpy array (what the compiled passes read)."""
    return np.ascontiguousarray(tensor.detach().cpu().numpy(), dtype=np.float32)


def skin_confidence(diffuse: Tensor, albedo_avg: Tensor, measured: Tensor, options: SfsOptions) -> Tensor:
    """(H, W) in [0, 1]: how far a pixel's chromaticity stays the region's skin colour. Shading changes
    brightness, not chromaticity; pigment (freckles, hair) and highlights (white) move it away from the
    skin colour. Pixels that do are trusted less as shading evidence, so that their darkness or
    brightness stays in the albedo (and specular) instead of turning into geometry."""
    chroma = diffuse / diffuse.sum(0, keepdim=True).clamp(min=1e-3)
    skin_chroma = albedo_avg / albedo_avg.sum(0, keepdim=True).clamp(min=1e-3)
    # (Unmeasured pixels have no chromaticity: they are left out of the neighbourhood average.)
    weight = gaussian_blur(measured.float()[None], 1.0)[0].clamp(min=1e-3)
    deviation = (gaussian_blur(((chroma - skin_chroma) ** 2).sum(0, keepdim=True) * measured, 1.0)[0] / weight).sqrt()
    return torch.exp(-((deviation / options.chroma_tolerance) ** 2))


def noise_level(image: Tensor, mask: Tensor) -> float:
    """σ of additive white noise in (H, W) over ``mask``: Immerkær's estimator (1996),
    σ = √(π/2) · mean |I * N| / 6 with N = [[1,-2,1],[-2,4,-2],[1,-2,1]], which cancels smooth image
    content up to second order."""
    kernel = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]], device=image.device)
    response = torch.nn.functional.conv2d(image[None, None], kernel[None, None], padding=1)[0, 0]
    inner = -torch.nn.functional.max_pool2d(-mask[None].float(), 3, stride=1, padding=1)[0] > 0
    if int(inner.sum()) == 0:
        return 0.0
    return float((torch.pi / 2) ** 0.5 * response[inner].abs().mean() / 6)


def _robust(residual, threshold: float):
    """Cauchy's loss c² log(1 + r²/c²), in squared grey levels: quadratic for small residuals, and
    redescending beyond ``threshold`` so that what no surface can shade (dark hairs, freckles, a
    highlight) is left to the albedo and specular maps instead of pulling the depth into spikes."""
    return threshold**2 * torch.log1p((residual / threshold) ** 2)


class SpecularLobe:
    """A white Blinn-Phong highlight k·max(n·h, 0)^α (h: a unit half-vector in the viewer frame), rendered
    from normals (..., 3) -> (1, ...). The depth phases render the highlight from their own normals
    instead of carving it into the surface (a per-pixel specular, the seed's step 4, cannot tell a
    highlight from detail); being smooth in the normals, it also keeps the energy differentiable."""

    def __init__(self, device: torch.device) -> None:
        self.params = torch.tensor([0.0, 0.0, 2.0, 3.0], device=device)  # hx, hy, log k, log α

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

    def fit(self, normals: Tensor, residual: Tensor, mask: Tensor, steps: int = 150) -> SpecularLobe:
        """Least-squares fit to ``residual`` (H, W), what the diffuse rendering leaves, over ``mask``,
        from the current parameters; four parameters: a regular subsample of the pixels determines them."""
        stride = max(1, int(mask.sum()) // MAX_FIT_SAMPLES)
        # A highlight only brightens: darker-than-modelled pixels (pigment: freckles, brows) are not
        # its business, and fitting their negative residual would narrow the lobe.
        normals, residual = normals[mask][::stride], residual[mask][::stride].clamp(min=0)
        params = self.params.clone().requires_grad_(True)
        optimiser = torch.optim.Adam([params], lr=0.05)
        for _ in range(steps):
            optimiser.zero_grad()
            ((self(normals, params)[0] - residual) ** 2).mean().backward()
            optimiser.step()
        if torch.isfinite(params).all():
            self.params = params.detach()
        else:  # a degenerate fit (nothing brighter than the model): a lobe too faint to be kept
            self.params = torch.tensor([0.0, 0.0, -10.0, 3.0], device=params.device)
        return self

    def peak(self, normals: Tensor, mask: Tensor) -> float:
        return float(self(normals)[0][mask].max())
