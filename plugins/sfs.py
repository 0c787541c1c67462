"""Refiner ``sfs`` (stage "fine", seed section 3.4 with the hyper-parameters of section 4.1): multi-scale
details carved into the medium mesh by shape-from-shading, with the albedo kept free of detail.

On a depth map of the face region (the medium mesh rendered by the shared rasteriser, one sample per
image pixel up to ``max_side``), in torch:

1. Lighting: Lambertian with 2nd-order spherical harmonics, I = γ·S(n) + ε·β, S(n) = Σ_k r_k Y_k(n);
   with the mean albedo γ_avg (the segmenter's per-region skin colours, else the face's median colour)
   and the normals of d0 (ε = 0), r is one linear least-squares solve per colour channel.
2. Albedo: min E(γ) = ||I − I'||² + λγ1 ||γ − γ_avg||² + λγ2 ||RTV(γ)||², RTV of Xu et al. 2012
   (windowed total variation over windowed inherent variation: G * |∂γ| / (|G * ∂γ| + e), per axis),
   Adam (lr 1.5).
3. Specular: β0 = I − I', min E(β) = ||I' − I||² + λβ ||β − β0||², ε = 1, Adam (lr 0.25).
4. Depth, alternating with albedo (lr 0.05) and specular: E(d) = ||I' − I||² + λd1 ||d − d0||² +
   λd2 ||∇²d||² + λd3 ||ΔI − λd4 Δd||², I' rendered from the normals of d. Phase 1 (wrinkles):
   λd = (0.001, 0.05, 0.001, 0.001), lr 0.015; phase 2 (pores): λd = (0.001, 0.03, 0.025, 2.5), lr 0.05.

Intensities are in 0-255 and depths in pixels (the seed's learning rates assume that scale); the
optimised depth is the height towards the camera (h = −z), so that a dark crease (ΔI > 0) asks for a
dip (Δh > 0). The fine mesh is the depth map as a pixel grid over everything the medium mesh covers in
the region (detail inside the face mask, the medium surface outside it: one welded surface), with the
medium mesh's UVs and landmark maps carried over; maps and per-phase meshes come back in a Refinement.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from facerecon.geometry.raster import interpolate, rasterize
from facerecon.kernel import Face, ImageMaps, LandmarkMap, Mesh, Refinement, Segmentation, StageRegistrar, hookimpl
from facerecon.kernel.errors import PluginError
from facerecon.kernel.imageio import check_image

if TYPE_CHECKING:  # torch is imported lazily: `facerecon` starts without loading it
    from torch import Tensor

SKIN_LABELS = ("skin", "nose")
"""Regions whose colour is skin: the lighting is fitted there, and the albedo prior is trusted there."""
EXCLUDED_LABELS = ("l_eye", "r_eye", "eye_g", "mouth", "hair", "hat", "l_brow", "r_brow")
"""Regions left out of the depth refinement's mask (not skin-like; they would fake geometry)."""


@dataclass(frozen=True)
class SfsOptions:
    """Options of the ``sfs`` refiner (``[options.refiner.sfs]``); defaults are the seed's section 4.1.

    max_side: the depth map's longer side in samples (the face box at native resolution up to this).
    margin: extra border around the face box, as a fraction of its size.
    albedo_weight, albedo_rtv_weight, albedo_lr, albedo_iterations: λγ1, λγ2, Adam lr, steps (step 2).
    specular_weight, specular_lr, specular_iterations, specular_scale: λβ, lr, steps, ε (step 3).
    phase1_weights / phase2_weights: λd1..λd4 of each depth phase; phase*_lr, phase*_iterations.
    alternate_every: depth steps between albedo (lr albedo_lr_depth) and specular updates.
    rtv_sigma: the RTV window's Gaussian sigma in samples; specular_sigma: blur of the initial specular β0;
    albedo_blur: blur of the residual the initial albedo is fitted to (see solve()).
    depth_optimizer: "lbfgs" (default; phase*_lr unused) or "adam" (the seed's, with phase*_lr).
    base_weight, base_sigma: keep the medium mesh's shape: a penalty on the low-pass (Gaussian sigma
        base_sigma samples) of the depth change, so shading the lighting model cannot explain is not
        answered by bending the whole face (not in the seed, whose λd1 is too weak to stop that drift).
    max_displacement: safety bound on |d − d0| as a fraction of the face width (no spikes).
    """

    max_side: int = 512
    margin: float = 0.05
    albedo_weight: float = 0.3
    albedo_rtv_weight: float = 2.5
    albedo_lr: float = 1.5
    albedo_iterations: int = 20
    albedo_lr_depth: float = 0.05
    specular_weight: float = 0.5
    specular_lr: float = 0.25
    specular_iterations: int = 10
    specular_scale: float = 1.0
    phase1_weights: tuple[float, ...] = (0.001, 0.05, 0.001, 0.001)
    phase1_lr: float = 0.015
    phase1_iterations: int = 30
    phase2_weights: tuple[float, ...] = (0.001, 0.03, 0.025, 2.5)
    phase2_lr: float = 0.05
    phase2_iterations: int = 30
    alternate_every: int = 10
    intensity_range: float = 1.0
    robust_threshold: float = 10.0
    chroma_tolerance: float = 0.02
    skin_prior_boost: float = 100.0
    saturation: float = 250.0
    specular_model: str = "lobe"
    depth_optimizer: str = "lbfgs"
    base_weight: float = 10.0
    base_sigma: float = 6.0
    rtv_sigma: float = 2.0
    specular_sigma: float = 3.0
    albedo_blur: float = 3.0
    max_displacement: float = 0.05

    def __post_init__(self) -> None:
        for name in ("phase1_weights", "phase2_weights"):
            if len(getattr(self, name)) != 4:
                raise ValueError(f"{name} needs 4 values (λd1..λd4)")
        if self.specular_model not in ("lobe", "per-pixel"):
            raise ValueError(f"specular_model must be 'lobe' or 'per-pixel', got {self.specular_model!r}")
        if self.depth_optimizer not in ("lbfgs", "adam"):
            raise ValueError(f"depth_optimizer must be 'lbfgs' or 'adam', got {self.depth_optimizer!r}")
        if self.max_side < 16 or self.alternate_every < 1 or self.margin < 0:
            raise ValueError("max_side must be >= 16, alternate_every >= 1, margin >= 0")


# -- spherical harmonics ----------------------------------------------------------------------------

SH_CONSTANTS = (0.282095, 0.488603, 0.488603, 0.488603, 1.092548, 1.092548, 0.315392, 1.092548, 0.546274)


def sh_basis(normals):
    """The 9 real SH basis functions of unit normals (..., 3) in the viewer frame (x right, y up, z to
    the viewer): Y00, Y1-1 (y), Y10 (z), Y11 (x), Y2-2 (xy), Y2-1 (yz), Y20 (3z²-1), Y21 (xz), Y22 (x²-y²)."""
    import torch

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
    import torch

    padded = torch.nn.functional.pad(height[None, None], (1, 1, 1, 1), mode="replicate")[0, 0]
    hx = (padded[1:-1, 2:] - padded[1:-1, :-2]) / 2
    hy = (padded[2:, 1:-1] - padded[:-2, 1:-1]) / 2
    n = torch.stack([-hx, hy, torch.ones_like(height)], dim=-1)
    return n / n.norm(dim=-1, keepdim=True)


def laplacian(image):
    """5-point Laplacian of (..., H, W) with replicated borders."""
    import torch

    flat = image.reshape(-1, 1, *image.shape[-2:])
    padded = torch.nn.functional.pad(flat, (1, 1, 1, 1), mode="replicate")
    out = padded[..., :-2, 1:-1] + padded[..., 2:, 1:-1] + padded[..., 1:-1, :-2] + padded[..., 1:-1, 2:] - 4 * flat
    return out.reshape(image.shape)


def gaussian_blur(image, sigma: float):
    """Separable Gaussian blur of (C, H, W)."""
    import torch

    radius = max(1, int(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=image.dtype, device=image.device)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    c = image.shape[0]
    x = torch.nn.functional.pad(image[None], (radius, radius, 0, 0), mode="replicate")
    x = torch.nn.functional.conv2d(x, kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    x = torch.nn.functional.pad(x, (0, 0, radius, radius), mode="replicate")
    x = torch.nn.functional.conv2d(x, kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    return x[0]


def relative_total_variation(image, sigma: float, eps: float = 1e-3):
    """Per-pixel RTV_x + RTV_y of (C, H, W) (Xu, Yan, Xia, Jia 2012, eq. 3-4): G*|∂γ| / (|G*∂γ| + e).
    Texture (many small gradients of mixed sign) scores high, structure (consistent edges) low."""
    import torch

    dx = torch.nn.functional.pad(image[..., :, 1:] - image[..., :, :-1], (0, 1))
    dy = torch.nn.functional.pad(image[..., 1:, :] - image[..., :-1, :], (0, 0, 0, 1))
    rtv_x = gaussian_blur(dx.abs(), sigma) / (gaussian_blur(dx, sigma).abs() + eps)
    rtv_y = gaussian_blur(dy.abs(), sigma) / (gaussian_blur(dy, sigma).abs() + eps)
    return rtv_x + rtv_y


# -- the optimisation ---------------------------------------------------------------------------------


@dataclass
class Problem:
    """Everything on the depth-map grid (torch tensors): image (3, H, W) 0-255, mask (H, W) bool (refined
    region), lit (H, W) bool (where the lighting is fitted), height0 (H, W) medium height (towards the
    viewer, samples), albedo_avg (3, H, W) 0-255."""

    image: Tensor
    mask: Tensor
    lit: Tensor
    height0: Tensor
    albedo_avg: Tensor


@dataclass
class Solution:
    height: Tensor
    albedo: Tensor
    specular: Tensor
    sh: Tensor
    phase_heights: dict[str, Tensor]


def shading(height, sh):
    """S(n) (3, H, W) for SH coefficients sh (9, 3)."""
    basis = sh_basis(normals_from_height(height))  # (H, W, 9)
    return (basis @ sh).permute(2, 0, 1)


def fit_lighting(problem: Problem, trim: float = 0.1):
    """Step 2: r (9, 3) by least squares with γ = γ_avg, ε = 0, on the lit pixels; refitted once without
    the ``trim`` fraction of worst-fitting pixels (specular highlights, freckles, shadows cast by hair)."""
    import torch

    basis = sh_basis(normals_from_height(problem.height0))[problem.lit]  # (P, 9)
    albedo = problem.albedo_avg[:, problem.lit]  # (3, P)
    target = problem.image[:, problem.lit]
    keep = torch.ones(basis.shape[0], dtype=torch.bool, device=basis.device)
    for _ in range(2):
        coefficients = torch.stack(
            [
                torch.linalg.lstsq(basis[keep] * albedo[c][keep][:, None], target[c][keep][:, None]).solution[:, 0]
                for c in range(3)
            ],
            dim=1,
        )
        residual = (albedo.T * (basis @ coefficients) - target.T).abs().sum(1)
        keep = residual <= torch.quantile(residual, 1 - trim)
    return coefficients


def solve(problem: Problem, options: SfsOptions, use_priors: bool = True) -> Solution:
    """Steps 2-4 (see the module docstring). ``use_priors=False`` drops the skin-colour and RTV terms
    (the seed's Fig. 8 ablation)."""
    import torch

    unit = (1.0 / options.intensity_range) ** 2
    mask = problem.mask
    m = mask.float()
    count = m.sum().clamp(min=1)
    image = problem.image
    sh = fit_lighting(problem)
    # The albedo priors are weighed against the data term relative to the squared shading, so that a
    # brighter light does not silently weaken them (γ·S: the data term scales with S²).
    shading_scale = float((shading(problem.height0, sh)[:, mask] ** 2).mean())
    w_avg = options.albedo_weight * shading_scale if use_priors else 0.0
    w_rtv = options.albedo_rtv_weight * shading_scale if use_priors else 0.0

    # Skin-colour confidence: shading changes brightness, not chromaticity; pigment (freckles, hair) and
    # highlights (white) change the chromaticity away from the region's skin colour. Pixels that do are
    # trusted less as shading evidence, so their darkness or brightness stays in the albedo/specular.
    chroma = image / image.sum(0, keepdim=True).clamp(min=1e-3)
    skin_chroma = problem.albedo_avg / problem.albedo_avg.sum(0, keepdim=True).clamp(min=1e-3)
    deviation = gaussian_blur(((chroma - skin_chroma) ** 2).sum(0, keepdim=True), 1.0)[0].sqrt()
    confidence = torch.exp(-((deviation / options.chroma_tolerance) ** 2)) if use_priors else torch.ones_like(deviation)
    # Clipped pixels carry no shading information at all.
    confidence = confidence * (image.max(0).values < options.saturation).float()

    def masked_mean(value):
        return (value * m).sum() / count

    def render(height, albedo, specular):
        return albedo * shading(height, sh) + options.specular_scale * specular

    # Step 3: albedo, from the mean albedo.
    height0 = problem.height0
    albedo = problem.albedo_avg.clone().requires_grad_(True)
    specular = torch.zeros_like(height0)[None]
    shade0 = shading(height0, sh).detach()

    def albedo_loss(albedo, shade, specular, blur: float = 0.0):
        residual = albedo * shade + options.specular_scale * specular - image
        if blur > 0:
            residual = gaussian_blur(residual * m, blur)
        data = masked_mean((residual**2).sum(0)) * unit
        # Where the colour is the skin's, the albedo is the skin colour (shading explains the rest); where
        # it is not (pigment), the albedo is free to follow the image.
        prior = (
            masked_mean((1 + options.skin_prior_boost * confidence) * ((albedo - problem.albedo_avg) ** 2).sum(0))
            * unit
        )
        rtv = masked_mean(relative_total_variation(albedo / 255.0, options.rtv_sigma) ** 2) if w_rtv else 0.0
        return data + w_avg * prior + w_rtv * rtv

    # Before any depth step the normals are the smooth medium surface's, so at full resolution the albedo
    # would take up every wrinkle's shading; it is fitted to the blurred residual here and refined at full
    # resolution while the depth phases explain the detail.
    optimiser = torch.optim.Adam([albedo], lr=options.albedo_lr)
    for _ in range(options.albedo_iterations):
        optimiser.zero_grad()
        albedo_loss(albedo, shade0, specular, options.albedo_blur).backward()
        optimiser.step()

    # Step 4: specular, from the residual.
    with torch.no_grad():
        # Highlights on skin are smooth at this scale: the initial specular is the blurred positive residual
        # (unblurred, it would swallow the bright side of every wrinkle).
        # Highlights are whitish, so they also leave the skin's chromaticity: only there may β0 be non-zero.
        beta0 = gaussian_blur((image - albedo * shade0).mean(0, keepdim=True).clamp(min=0), options.specular_sigma)
        beta0 = beta0 * (1 - confidence) * (options.specular_model == "per-pixel")
    specular = beta0.clone().requires_grad_(True)
    spec_optimiser = torch.optim.Adam([specular], lr=options.specular_lr)

    def specular_steps(shade, steps: int) -> None:
        if options.specular_model != "per-pixel":
            return  # the lobe model has no per-pixel specular
        for _ in range(steps):
            spec_optimiser.zero_grad()
            residual = albedo.detach() * shade + options.specular_scale * specular - image
            data = masked_mean((1 - confidence) * (residual**2).sum(0))
            (unit * (data + options.specular_weight * masked_mean(((specular - beta0) ** 2).sum(0)))).backward()
            spec_optimiser.step()
            with torch.no_grad():
                specular.clamp_(min=0)

    specular_steps(shade0, options.specular_iterations)
    lobe = fit_specular_lobe(problem, albedo.detach() * shade0) if options.specular_model == "lobe" else None

    # Step 5: depth in two phases, alternating with albedo and specular.
    delta = torch.zeros_like(height0, requires_grad=True)
    luminance = image.mean(0)
    lap_image = laplacian(luminance) * unit**0.5

    albedo_optimiser = torch.optim.Adam([albedo], lr=options.albedo_lr_depth)
    phase_heights = {}
    face_width = float(mask.any(0).sum())
    bound = options.max_displacement * face_width
    for phase, (weights, lr, iterations) in enumerate(
        (
            (options.phase1_weights, options.phase1_lr, options.phase1_iterations),
            (options.phase2_weights, options.phase2_lr, options.phase2_iterations),
        ),
        start=1,
    ):
        l1, l2, l3, l4 = weights

        def depth_loss(l1: float = l1, l2: float = l2, l3: float = l3, l4: float = l4):
            height = height0 + delta * m
            rendered = render(height, albedo.detach(), specular.detach())
            if lobe is not None:  # the highlight follows the current normals instead of being carved
                rendered = rendered + lobe(normals_from_height(height))
            data = masked_mean(confidence * _robust(rendered - image, options.robust_threshold).sum(0)) * unit
            lap_height = laplacian(height)
            low = gaussian_blur((delta * m)[None], options.base_sigma)[0]
            return (
                data
                + options.base_weight * masked_mean(low**2)
                + l1 * masked_mean(delta**2)
                + l2 * masked_mean(lap_height**2)
                + l3 * masked_mean(confidence * (lap_image - l4 * lap_height) ** 2)
            )

        if options.depth_optimizer == "adam":
            depth_optimiser: torch.optim.Optimizer = torch.optim.Adam([delta], lr=lr)
        else:
            # Adam moves every pixel by about lr per step however weak its gradient, so over a hundred
            # steps pixels with no shading evidence random-walk (a crumpled surface); L-BFGS with a line
            # search follows the energy's actual curvature.
            depth_optimiser = torch.optim.LBFGS(
                [delta],
                lr=1.0,
                max_iter=options.alternate_every,
                max_eval=options.alternate_every + 5,
                history_size=10,
                line_search_fn="strong_wolfe",
            )

        def closure(depth_optimiser: torch.optim.Optimizer = depth_optimiser):
            depth_optimiser.zero_grad()
            loss = depth_loss()
            loss.backward()
            return loss

        steps = iterations if options.depth_optimizer == "adam" else -(-iterations // options.alternate_every)
        for step in range(steps):
            depth_optimiser.step(closure)
            with torch.no_grad():
                delta.clamp_(-bound, bound)
            if options.depth_optimizer != "adam" or (step + 1) % options.alternate_every == 0:
                shade = shading(height0 + delta.detach() * m, sh).detach()
                for _ in range(2):
                    albedo_optimiser.zero_grad()
                    albedo_loss(albedo, shade, specular.detach()).backward()
                    albedo_optimiser.step()
                specular_steps(shade, 2)
        phase_heights[f"phase{phase}"] = (height0 + delta.detach() * m).clone()
    return Solution(height0 + delta.detach() * m, albedo.detach(), specular.detach(), sh, phase_heights)


def _robust(residual, threshold: float):
    """Cauchy's loss c² log(1 + r²/c²), in squared grey levels: quadratic for small residuals, and
    redescending beyond ``threshold`` so that what no surface can shade (dark hairs, freckles, a
    highlight) is left to the albedo and specular maps instead of pulling the depth into spikes."""
    import torch

    return threshold**2 * torch.log1p((residual / threshold) ** 2)


def fit_specular_lobe(problem: Problem, diffuse: Tensor) -> Callable[[Tensor], Tensor]:
    """A white Blinn-Phong lobe k·max(n·h, 0)^α fitted to the residual of the smooth surface's diffuse
    rendering (h: a unit half-vector, viewer frame). Returned as a function of normals (H, W, 3) ->
    (1, H, W), so that the depth phases render the highlight from their own normals instead of carving
    it into the surface (a per-pixel specular, the seed's step 4, cannot tell a highlight from detail)."""
    import torch

    normals0 = normals_from_height(problem.height0)
    target = (problem.image - diffuse).mean(0)[problem.mask]
    params = torch.tensor([0.0, 0.0, 2.0, 3.0], device=problem.image.device, requires_grad=True)  # hx, hy, log k, log α

    def lobe(normals):
        h = torch.stack([params[0], params[1], torch.ones_like(params[0])])
        h = h / h.norm()
        cosine = (normals @ h).clamp(min=0)
        return (params[2].exp() * cosine ** params[3].exp())[None]

    optimiser = torch.optim.Adam([params], lr=0.05)
    for _ in range(150):
        optimiser.zero_grad()
        ((lobe(normals0)[0][problem.mask] - target) ** 2).mean().backward()
        optimiser.step()
    params.requires_grad_(False)
    return lobe


# -- the stage ----------------------------------------------------------------------------------------


class SfsRefiner:
    stage = "fine"

    def __init__(self, options: SfsOptions, device: str = "cpu") -> None:
        try:
            import torch
        except ImportError:
            raise PluginError("the sfs refiner needs PyTorch: pip install 'facerecon[fine]'") from None

        self.options = options
        self.device = torch.device(device)

    def refine(self, image: np.ndarray, face: Face, mesh: Mesh, segmentation: Segmentation | None) -> Refinement:
        import torch

        image = check_image(image)
        grid = Grid.around(face, mesh, image.shape[:2], self.options)
        raster = grid.render(mesh)
        covered = raster.mask
        if covered.sum() < 64:
            return Refinement(mesh)  # the face is too small or off the image: nothing to refine
        depth0 = grid.depth_in_samples(mesh, raster)  # z away from the camera, in samples
        crop = grid.sample_image(image)  # (h, w, 3) 0-255
        labels = grid.sample_labels(segmentation)
        mask, lit, albedo_avg = _regions(crop, covered, labels, segmentation)
        t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32, device=self.device)  # noqa: E731
        problem = Problem(
            image=t(crop.transpose(2, 0, 1)),
            mask=torch.as_tensor(mask, device=self.device),
            lit=torch.as_tensor(lit, device=self.device),
            height0=t(np.where(covered, -depth0, 0.0)),
            albedo_avg=t(albedo_avg.transpose(2, 0, 1)),
        )
        solution = solve(problem, self.options)
        height = solution.height.cpu().numpy().astype(np.float64)
        fine = grid.mesh(mesh, raster, -height, covered, "fine")
        phases = {
            name: grid.mesh(mesh, raster, -h.cpu().numpy().astype(np.float64), covered, name)
            for name, h in solution.phase_heights.items()
        }
        maps = self._maps(grid, problem, solution, depth0, height, covered, mask)
        return Refinement(fine, maps, phases)

    def _maps(self, grid, problem, solution, depth0, height, covered, mask) -> ImageMaps:
        import torch

        with torch.no_grad():
            shade = shading(solution.height, solution.sh)
            rendered = solution.albedo * shade + self.options.specular_scale * solution.specular
            normals = normals_from_height(solution.height).cpu().numpy()
        to_image = lambda x: np.clip(x.cpu().numpy().transpose(1, 2, 0) / 255.0, 0, 1)  # noqa: E731
        nan = np.where(covered, 1.0, np.nan)
        depth = -height * grid.step  # mesh-frame z in image pixels
        return ImageMaps(
            origin=(int(round(grid.x0)), int(round(grid.y0))),
            maps={
                "depth": depth * nan,
                "displacement": (depth - depth0 * grid.step) * nan,
                "normal": normals * np.array([1.0, -1.0, -1.0]) * nan[..., None],  # viewer -> mesh frame
                "albedo": to_image(solution.albedo),
                "shading": np.clip(shade.cpu().numpy().transpose(1, 2, 0) / 255.0, 0, 1),
                "specular": to_image(solution.specular.expand(3, -1, -1)),
                "rendering": to_image(rendered),
                "input": to_image(problem.image),
                "mask": mask.astype(np.float32),
            },
        )


def _regions(crop, covered, labels, segmentation):
    """The refined mask, the pixels the lighting is fitted on, and γ_avg (h, w, 3) in 0-255."""
    mask = covered.copy()
    lit = covered.copy()
    albedo = np.empty(crop.shape, np.float64)
    median = np.median(crop[covered], axis=0) if covered.any() else np.full(3, 128.0)
    albedo[:] = median
    if segmentation is not None and labels is not None:
        names = dict(segmentation.label_names)
        for label, name in names.items():
            region = labels == label
            if name in EXCLUDED_LABELS:
                mask &= ~region
            colour = segmentation.region_colors.get(name)
            if colour is not None:
                albedo[region] = np.asarray(colour, np.float64) * 255.0
        skin = np.isin(labels, [k for k, v in names.items() if v in SKIN_LABELS])
        if (skin & covered).sum() > 100:
            lit = skin & covered
    return mask, lit, albedo


@dataclass
class Grid:
    """The depth-map sampling grid: sample (i, j) sits at image pixel (x0 + j·step, y0 + i·step)."""

    x0: float
    y0: float
    step: float
    height: int
    width: int

    @classmethod
    def around(cls, face: Face, mesh: Mesh, image_shape, options: SfsOptions) -> Grid:
        xy = mesh.project(np.asarray(mesh.vertices, np.float64))
        lo = np.maximum(np.minimum(xy.min(0), face.box[:2]), 0)
        hi = np.minimum(np.maximum(xy.max(0), face.box[2:]), [image_shape[1] - 1, image_shape[0] - 1])
        size = hi - lo
        lo = np.maximum(lo - options.margin * size, 0)
        hi = np.minimum(hi + options.margin * size, [image_shape[1] - 1, image_shape[0] - 1])
        step = max(1.0, float((hi - lo).max()) / options.max_side)
        width = int(np.floor((hi[0] - lo[0]) / step)) + 1
        height = int(np.floor((hi[1] - lo[1]) / step)) + 1
        return cls(float(np.ceil(lo[0])), float(np.ceil(lo[1])), step, height, width)

    def to_grid(self, xy: np.ndarray) -> np.ndarray:
        return (xy - [self.x0, self.y0]) / self.step

    def render(self, mesh: Mesh):
        vertices = np.asarray(mesh.vertices, np.float64)
        screen = np.column_stack([self.to_grid(mesh.project(vertices)), vertices[:, 2]])
        return rasterize(screen, mesh.triangles, self.height, self.width)

    def depth_in_samples(self, mesh: Mesh, raster) -> np.ndarray:
        """Camera depth per sample in grid units (pixels / step; millimetre meshes scaled to pixels at
        their mean depth, a local orthographic approximation)."""
        depth = np.where(raster.mask, raster.depth, 0.0).astype(np.float64)
        if mesh.camera_matrix is not None:
            focal = float(mesh.camera_matrix[0, 0])
            mean_z = float(np.mean(depth[raster.mask])) if raster.mask.any() else 1.0
            depth = depth * focal / mean_z
        return depth / self.step

    def sample_image(self, image: np.ndarray) -> np.ndarray:
        import cv2

        if self.step == 1.0:
            y, x = int(self.y0), int(self.x0)
            return image[y : y + self.height, x : x + self.width].astype(np.float64)
        jj, ii = np.meshgrid(np.arange(self.width), np.arange(self.height))
        map_x = (self.x0 + jj * self.step).astype(np.float32)
        map_y = (self.y0 + ii * self.step).astype(np.float32)
        blurred = cv2.GaussianBlur(image, (0, 0), sigmaX=0.5 * self.step)  # anti-alias before sampling
        return cv2.remap(blurred, map_x, map_y, cv2.INTER_LINEAR).astype(np.float64)

    def sample_labels(self, segmentation: Segmentation | None) -> np.ndarray | None:
        if segmentation is None:
            return None
        jj, ii = np.meshgrid(np.arange(self.width), np.arange(self.height))
        x = np.clip(np.rint(self.x0 + jj * self.step).astype(int), 0, segmentation.labels.shape[1] - 1)
        y = np.clip(np.rint(self.y0 + ii * self.step).astype(int), 0, segmentation.labels.shape[0] - 1)
        return segmentation.labels[y, x]

    def mesh(self, medium: Mesh, raster, z_samples: np.ndarray, covered: np.ndarray, name: str) -> Mesh:
        """A pixel-grid mesh of the covered samples, z from ``z_samples`` (grid units, away from the camera),
        UVs and landmark maps carried over from the medium mesh."""
        h, w = covered.shape
        index = np.full((h, w), -1, np.int64)
        index[covered] = np.arange(int(covered.sum()))
        ii, jj = np.nonzero(covered)
        x = self.x0 + jj * self.step
        y = self.y0 + ii * self.step
        z = z_samples[covered] * self.step
        if medium.camera_matrix is not None:
            depth_mm = np.where(raster.mask, raster.depth, np.nan)[covered]
            mean_z = float(np.nanmean(depth_mm))
            k = np.asarray(medium.camera_matrix, np.float64)
            z_mm = z * mean_z / k[0, 0]
            vertices = np.column_stack([(x - k[0, 2]) * z_mm / k[0, 0], (y - k[1, 2]) * z_mm / k[1, 1], z_mm])
        else:
            vertices = np.column_stack([x, y, z])
        a, b, c, d = index[:-1, :-1], index[:-1, 1:], index[1:, :-1], index[1:, 1:]
        full = (a >= 0) & (b >= 0) & (c >= 0) & (d >= 0)
        # (a, c, b) and (b, c, d): normals towards the camera (-z) for a surface facing it.
        triangles = np.concatenate([np.stack([a[full], c[full], b[full]], 1), np.stack([b[full], c[full], d[full]], 1)])
        uvs = None
        if medium.uvs is not None:
            uvs = interpolate(raster, medium.triangles, np.asarray(medium.uvs))[covered]
        maps = {scheme: self._carry_map(medium, lmap, index) for scheme, lmap in medium.landmark_maps.items()}
        return Mesh(
            vertices=vertices,
            triangles=triangles,
            topology=f"sfs-grid-{self.width}x{self.height}",
            uvs=uvs,
            landmark_maps=maps,
            units=medium.units,
            camera_matrix=medium.camera_matrix,
        )

    def _carry_map(self, medium: Mesh, lmap: LandmarkMap, index: np.ndarray) -> LandmarkMap:
        """The landmarks' image positions on the medium mesh, located in the grid's triangles."""
        points = lmap.locate(np.asarray(medium.vertices, np.float64))
        ids = np.zeros((len(points), 3), np.int64)
        weights = np.zeros((len(points), 3))
        h, w = index.shape
        for k in np.flatnonzero(lmap.valid):
            gx, gy = self.to_grid(medium.project(points[k : k + 1]))[0]
            j, i = int(np.floor(gx)), int(np.floor(gy))
            if not (0 <= i < h - 1 and 0 <= j < w - 1):
                continue
            fx, fy = gx - j, gy - i
            a, b, c, d = index[i, j], index[i, j + 1], index[i + 1, j], index[i + 1, j + 1]
            if fx + fy <= 1:
                corner, bary = (a, c, b), (1 - fx - fy, fy, fx)
            else:
                corner, bary = (d, c, b), (fx + fy - 1, 1 - fx, 1 - fy)
            if min(corner) >= 0:
                ids[k], weights[k] = corner, bary
        return LandmarkMap(lmap.scheme, ids, weights)


@hookimpl
def facerecon_register_stages(registry: StageRegistrar) -> None:
    registry.register(
        "refiner",
        "sfs",
        SfsRefiner,
        options=SfsOptions,
        summary="fine stage: shape-from-shading details (SH lighting, RTV-regularised albedo, specular, 2 phases)",
    )
