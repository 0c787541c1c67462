"""The fine stage's energies and their minimisation (seed section 3.4), in torch, on one depth-map grid.

Images are (C, H, W) float tensors in 0-255, heights (H, W) in grid samples towards the viewer, normals
(H, W, 3) in the viewer frame (x right, y up, z to the viewer). ``solve`` runs steps 2-5 of
``facerecon.plugins.sfs`` (lighting, albedo, specular, two depth phases). Imported by the refiner when
it is built, so that ``facerecon`` starts without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

# torch.optim imports torch._dynamo at its first step (~0.9 s): done here, when the refiner is built,
# rather than by the first face.
import torch._dynamo  # noqa: F401
from torch import Tensor

from facerecon.plugins.sfs import fused
from facerecon.plugins.sfs.lighting import (
    SH_CONSTANTS,
    SpecularLobe,
    fit_light_and_highlight,
    shading_of_normals,
)
from facerecon.plugins.sfs.operators import (
    laplacian,
    linear_to_srgb,
    low_pass,
    noise_level,
    normals_from_height,
    srgb_to_linear,
)
from facerecon.plugins.sfs.optimisers import adam, float32_array, lbfgs
from facerecon.plugins.sfs.options import SfsOptions
from facerecon.plugins.sfs.reflectance import Reflectance
from facerecon.plugins.sfs.skin import skin_colour, skin_confidence

MIN_MEASURED_SAMPLES = 256
"""Fewer unclipped face samples than this and there is no shading to refine from (``NoShading``)."""


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
    robust_threshold: float  # the Cauchy threshold in the image's units (``robust_threshold`` is in sRGB levels)
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
        robust_threshold = options.robust_threshold
        if problem.linear:
            # The chromaticity tolerance and the robust threshold are stated for the photo's sRGB values:
            # chromaticity is compared there (in linear light the same pigment moves it about twice as far),
            # and one sRGB level at the face's median brightness is ``step`` linear levels (~1.4 on skin).
            diffuse_image = linear_to_srgb(diffuse_image)
            level = float(linear_to_srgb(image.mean(0)[problem.lit].median()))
            step = float(srgb_to_linear(torch.tensor(level + 0.5)) - srgb_to_linear(torch.tensor(level - 0.5)))
            robust_threshold *= step
        # The skin's colour here: the face's skin-like colours around each sample (σ ``skin_colour_sigma``,
        # ``skin_colour``); a region's single mean colour (γ_avg) would mistrust whole cheeks whose tone
        # differs from the region's.
        local_skin = skin_colour(diffuse_image, mask & measured, options)
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
            robust_threshold=robust_threshold,
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
        array = float32_array
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
            threshold=float(scene.robust_threshold),
            data_scale=self.unit / count,
            inv_count=1.0 / count,
            base_weight=float(options.base_weight),
            base_sigma=float(options.base_sigma),
            base_factor=self.base_factor,
            low_count=float(self.low_count),
            threads=options.pass_threads(),
        )

    def height(self) -> Tensor:
        return self.scene.height0 + self.delta.detach() * self.scene.m

    def loss(self, l1: float, l2: float, l3: float, l4: float) -> Tensor:
        scene, options = self.scene, self.scene.options
        if self.fused is not None:  # the same energy, its gradient written out (``fused``)
            return fused.depth_terms(self.delta, self._fused_inputs(), (l1, l2, l3, l4))
        detail = self.delta * scene.m
        normals = normals_from_height(scene.height0 + detail)
        highlight = scene.highlight(normals, self.surface.specular)
        rendered = self.surface.albedo.detach() * shading_of_normals(normals, scene.sh)
        rendered = rendered + options.specular_scale * highlight
        residual = _robust(rendered - scene.image, scene.robust_threshold).sum(0)
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
            if self.fused is not None:  # value and gradient straight from the compiled pass, no autograd
                energy, grad = fused.depth_energy(self.delta.detach().numpy(), self._fused_inputs(), weights)
                self.delta.grad = torch.from_numpy(grad)
                return torch.tensor(energy)
            optimiser.zero_grad()
            loss = self.loss(*weights)
            loss.backward()
            return loss

        uses_adam = options.depth_optimizer == "adam"
        steps = iterations if uses_adam else -(-iterations // options.alternate_every)
        for step in range(steps):
            optimiser.step(closure)
            with torch.no_grad():
                self.delta.clamp_(-self.bound, self.bound)
            if not uses_adam or (step + 1) % options.alternate_every == 0:
                self.surface.follow(normals_from_height(self.height()))

    def _optimiser(self, lr: float) -> torch.optim.Optimizer:
        options = self.scene.options
        if options.depth_optimizer == "adam":
            return adam(self.delta, lr)
        # Adam moves every pixel by about lr per step however weak its gradient, so over a hundred steps
        # pixels with no shading evidence random-walk (a crumpled surface); L-BFGS with a line search
        # follows the energy's actual curvature.
        return lbfgs(self.delta, options.alternate_every, options.alternate_every + 5)


def _robust(residual, threshold: float):
    """Cauchy's loss c² log(1 + r²/c²), in squared grey levels: quadratic for small residuals, and
    redescending beyond ``threshold`` so that what no surface can shade (dark hairs, freckles, a
    highlight) is left to the albedo and specular maps instead of pulling the depth into spikes."""
    return threshold**2 * torch.log1p((residual / threshold) ** 2)
