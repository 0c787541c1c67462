"""Refiner ``sfs`` (stage "fine", seed section 3.4; hyper-parameters section 4.1's where they hold): multi-scale
details carved into the medium mesh by shape-from-shading, with the albedo kept free of detail.

In torch, numbered as the issue numbers them:

1. Depth map d0: the medium mesh rendered by the shared rasteriser over the face region, one sample per
   image pixel up to ``max_side`` (``Grid``), smoothed by a local quadric fit (``smooth_within``: the
   mesh's mid-scale bumps are not shading to explain; a quadric keeps the face's curvature).
2. Lighting: Lambertian with 2nd-order spherical harmonics, I = γ·S(n) + ε·β, S(n) = Σ_k r_k Y_k(n), on
   the sRGB-decoded (linear) photo (``linear_shading``); with the mean albedo γ_avg (the segmenter's
   per-region skin colours, else the face's median colour) and the normals of d0 (ε = 0), r is the SH
   of a white portrait key light (``key_elevation`` above the camera axis, ``key_ambient``) at the
   azimuth and with the per-channel gains that fit best (``lighting_model = "key"``, the default: a
   face's slow shading cannot fix the light's balance, README "The fine stage"), or, with "sh", the seed's
   free r by one linear least-squares solve per colour channel; refitted ``lighting_rounds`` times with
   the albedo the current light implies (``lighting.fit_lighting``).
3. Albedo: min E(γ) = ||I − I'||² + λγ1 ||γ − γ_avg||² + λγ2 ||RTV(γ)||², γ_avg here the skin's local
   colour (image over shading, masked Gaussian σ ``albedo_sigma``), RTV of Xu et al. 2012
   (windowed total variation over windowed inherent variation: G * |∂γ| / (|G * ∂γ| + e), per axis),
   Adam (lr 1.5).
4. Specular: β0 = I − I', min E(β) = ||I' − I||² + λβ ||β − β0||², ε = 1, Adam (lr 0.25).
5. Depth, alternating with albedo (lr 0.05) and specular: E(d) = ||I' − I||² + λd1 ||d − d0||² +
   λd2 ||∇²d||² + λd3 ||ΔI − λd4 Δd||², I' rendered from the normals of d. Phase 1 (wrinkles):
   λd = (0.001, 1000, 0, 0); phase 2 (pores): λd = (0.001, 100, 0, 2.5). (The seed's: (0.001, 0.05,
   0.001, 0.001) and (0.001, 0.03, 0.025, 2.5) with Adam, lr 0.015 / 0.05, for its intensity units;
   measured on the known-detail renders, the ΔI term copied texture and noise into the depth, and the
   data term needs weighing in noise units — README, "The fine stage".)
6. Output: the fine mesh and the maps (``SfsRefiner._maps``).

Intensities are in 0-255 and depths in samples; the depth energy measures intensity in units of
``depth_intensity_unit`` grey levels (or of ``noise_weighting`` noise std), which sets the balance of its
λd weights, and its smoothness λd2 acts on the detail added, ∇²(d − d0) (on d it would also flatten the
medium face). The solver (``solver``, imported when the refiner is built) documents the other
deviations: L-BFGS, a skin-chromaticity confidence, a Blinn-Phong highlight lobe, unmeasured pixels.
The optimised depth is the height towards the camera (h = −z), so that a dark crease (ΔI > 0) asks for
a dip (Δh > 0). The fine mesh is the depth map as a pixel grid over everything the medium mesh covers in
the region (detail inside the face mask, the medium surface outside it: one welded surface), with the
medium mesh's UVs and landmark maps carried over; maps and per-phase meshes come back in a Refinement.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from facerecon.kernel.contract import Face, ImageMaps, Mesh, Refinement, Registrar, Segmentation, hookimpl
from facerecon.kernel.contract.errors import PluginError
from facerecon.kernel.contract.images import check_image
from facerecon.plugins.sfs.grid import HALF_RATE_SIGMA, Grid, regions, smooth_within
from facerecon.plugins.sfs.options import SfsOptions

__all__ = ["Grid", "Prepared", "SfsOptions", "SfsRefiner", "ShadingWarning", "smooth_within"]


class ShadingWarning(UserWarning):
    """The photo has no usable shading in the face (clipped to black or white): nothing was refined."""


@dataclass
class Prepared:
    """Step 1's output: the ``grid`` and the medium mesh's ``raster`` on it, the samples it ``covered``
    (h, w) bool, its depth ``medium_depth``, that depth smoothed, ``depth0``, and the ``base`` surface the
    detail is solved on (``depth0``, the medium depth in the eyes and the mouth; all (h, w) float64 in
    samples away from the camera), the refined ``mask`` (h, w) bool, and the solver's ``problem``
    (``solver.Problem``)."""

    grid: Grid
    raster: Any
    covered: np.ndarray
    medium_depth: np.ndarray
    depth0: np.ndarray
    base: np.ndarray
    mask: np.ndarray
    problem: Any


# -- the stage ----------------------------------------------------------------------------------------


class SfsRefiner:
    stage = "fine"

    def __init__(self, options: SfsOptions, device: str = "cpu") -> None:
        try:
            import torch

            from facerecon.plugins.sfs import lighting, operators, solver
        except ImportError:
            raise PluginError("the sfs refiner needs PyTorch: pip install 'facerecon[fine]'") from None

        self.options = options
        self.device = torch.device(device)
        self.solver, self.lighting, self.operators = solver, lighting, operators

    def warm_up(self) -> None:
        """Solve a small lit sphere once, and smooth its depth: loads the compiled passes (``fused``,
        ``grid``, ``lighting``; ~0.3 s from numba's disk cache) and torch's kernels here rather than on the
        first face."""
        import torch

        size = 48
        yy, xx = np.mgrid[:size, :size] / (size - 1) * 2 - 1
        inside = xx**2 + yy**2 < 0.8
        height = np.sqrt(np.clip(1.2 - xx**2 - yy**2, 0, None)) * size / 2
        shade = np.clip(0.3 + 0.7 * (0.5 * xx + 0.8 * np.sqrt(np.clip(1 - xx**2 - yy**2, 0, 1))), 0, 1)
        image = np.stack([200 * shade, 150 * shade, 120 * shade])
        t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32, device=self.device)  # noqa: E731
        mask = torch.as_tensor(inside, device=self.device)
        albedo = t(np.broadcast_to(np.array([200.0, 150.0, 120.0])[:, None, None], image.shape))
        self.solver.solve(self.solver.Problem(t(image), mask, mask, t(height), albedo), self.options)
        for sigma in (2.0, HALF_RATE_SIGMA):  # step 1's compiled fits, at full and at half rate
            smooth_within(height, inside, sigma, self.options.pass_threads())

    def refine(self, image: np.ndarray, face: Face, mesh: Mesh, segmentation: Segmentation | None) -> Refinement:
        import torch

        setup = self.prepare(image, face, mesh, segmentation)
        if setup is None:
            return Refinement(mesh)  # the face is too small or off the image: nothing to refine
        grid, raster, covered, problem = setup.grid, setup.raster, setup.covered, setup.problem
        try:
            solution = self.solver.solve(problem, self.options)
        except self.solver.NoShading as error:
            warnings.warn(f"sfs: {error}; the fine mesh is the medium one", ShadingWarning, stacklevel=2)
            return Refinement(mesh)
        # Step 6: the solved detail on the base surface it was solved on (height = -depth).
        depth = -solution.height.cpu().numpy().astype(np.float64)
        # (the last phase's height is the solution's: its mesh is the fine mesh, not built twice)
        depths = {
            name: -h.cpu().numpy().astype(np.float64)
            for name, h in solution.phase_heights.items()
            if not torch.equal(h, solution.height)
        }
        meshes = grid.meshes(mesh, raster, {"fine": depth, **depths}, covered)
        fine = meshes["fine"]
        phases = {name: meshes.get(name, fine) for name in solution.phase_heights}
        maps = self._maps(grid, problem, solution, setup.base, depth, covered, setup.mask)
        return Refinement(fine, maps, phases)

    def prepare(self, image: np.ndarray, face: Face, mesh: Mesh, segmentation: Segmentation | None) -> Prepared | None:
        """Step 1: the depth-map grid around the face and the solver's ``Problem`` on it; None when the
        mesh is empty, lies off the image or covers fewer than 64 samples."""
        import torch

        image = check_image(image)
        if len(mesh.vertices) == 0 or len(mesh.triangles) == 0:
            return None
        grid = Grid.around(face, mesh, image.shape[:2], self.options)
        if min(grid.width, grid.height) < 8:  # the mesh and the face box lie (almost) off the image
            return None
        raster = grid.render(mesh)
        covered = raster.mask
        if covered.sum() < 64:
            return None
        # The medium mesh's depth (z away from the camera, in samples), smoothed by a local quadric fit:
        # its mid-scale bumps (landmark-mesh wobble finer than a few percent of the face) would be read
        # as shading to explain; a quadric keeps its curvature (a nose tip) where a blur would flatten it.
        # The eyes and the mouth keep the medium mesh's depth (their shape is sharp and real), joined to the
        # smoothed surface over a few samples; the quadrics are fitted without them.
        medium_depth = grid.depth_in_samples(mesh, raster)
        crop = grid.sample_image(image)  # (h, w, 3) 0-255
        labels = grid.sample_labels(segmentation)
        mask, lit, kept, albedo_avg = regions(crop, covered, labels, segmentation)
        smoothed = covered & ~kept
        depth0 = smooth_within(
            medium_depth,
            smoothed if smoothed.sum() >= 64 else covered,
            self.medium_sigma(covered),
            self.options.pass_threads(),
        )
        base = depth0 + (1 - _away_from(kept)) * (medium_depth - depth0)
        linear = self.options.linear_shading
        if linear:  # the Lambertian + SH model holds for linear intensities, not sRGB-encoded ones
            crop, albedo_avg = self.operators.srgb_to_linear(crop), self.operators.srgb_to_linear(albedo_avg)
        t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32, device=self.device)  # noqa: E731
        problem = self.solver.Problem(
            image=t(crop.transpose(2, 0, 1)),
            mask=torch.as_tensor(mask, device=self.device),
            lit=torch.as_tensor(lit, device=self.device),
            height0=t(np.where(covered, -base, 0.0)),
            albedo_avg=t(albedo_avg.transpose(2, 0, 1)),
            linear=linear,
        )
        return Prepared(grid, raster, covered, medium_depth, depth0, base, mask, problem)

    def medium_sigma(self, covered: np.ndarray) -> float:
        """σ (samples) of the medium depth's local quadric smoothing (step 1)."""
        if self.options.medium_smoothing_fraction > 0:
            return self.options.medium_smoothing_fraction * float(covered.any(0).sum())
        return self.options.medium_smoothing

    def _maps(self, grid, problem, solution, base, depth_samples, covered, mask) -> ImageMaps:
        """The output maps on the grid: ``base`` and ``depth_samples`` (h, w) are the medium surface the
        detail sits on and the fine depth, in samples away from the camera."""
        import torch

        with torch.no_grad():
            shade = self.lighting.shading(solution.height, solution.sh)
            rendered = solution.albedo * shade + self.options.specular_scale * solution.specular
            height = torch.as_tensor(-depth_samples, dtype=solution.height.dtype)
            normals = self.operators.normals_from_height(height).cpu().numpy()
        encode = self.operators.linear_to_srgb if problem.linear else (lambda x: x)

        def to_image(x):  # (C, H, W) 0-255 in the solver's intensities -> (H, W, C) sRGB 0-1, C-ordered
            planes = encode(x.cpu().numpy().transpose(1, 2, 0))
            image = np.divide(planes, 255.0, out=np.empty(planes.shape, planes.dtype))
            return np.clip(image, 0, 1, out=image)

        nan = np.where(covered, 1.0, np.nan)
        depth = depth_samples * grid.step  # mesh-frame z in image pixels
        return ImageMaps(
            origin=(int(round(grid.x0)), int(round(grid.y0))),
            step=grid.step,
            maps={
                "depth": depth * nan,
                "displacement": (depth - base * grid.step) * nan,
                # viewer -> mesh frame
                "normal": normals * np.array([1.0, -1.0, -1.0]) * nan[..., None],
                "albedo": to_image(solution.albedo),
                "shading": _normalised(shade.cpu().numpy().transpose(1, 2, 0), mask),
                "specular": to_image(solution.specular.expand(3, -1, -1)),
                "rendering": to_image(rendered),
                "input": to_image(problem.image),
                "mask": mask.astype(np.float32),
            },
        )


def _away_from(region: np.ndarray, feather: float = 3.0) -> np.ndarray:
    """(h, w) float64: 0 in ``region`` and on the samples next to it, rising smoothly (a smoothstep of the
    distance to the region) to 1 at ``2 * feather + 1`` samples from it; 1 everywhere without a region.
    Continuous: a blend of two surfaces by it has no step (before 0.15.0 the blend weight jumped from
    ~0.5 to 0 at the border: a ledge along every eyebrow)."""
    import cv2

    if not region.any():
        return np.ones(region.shape)
    distance = cv2.distanceTransform((~region).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    t = np.clip((distance.astype(np.float64) - 1.0) / (2.0 * feather), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _normalised(shading: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The SH shading (h, w, 3), dimensionless, scaled to 0-1 with its 99th percentile in the mask at 1."""
    top = float(np.percentile(shading[mask], 99)) if mask.any() else 1.0
    return np.clip(shading / max(top, 1e-6), 0, 1)


def _torch_installed() -> bool:
    """The solver runs on PyTorch, an optional dependency (``facerecon[fine]``): whether it imports (the
    stage imports it anyway when it is built; a broken install counts as missing)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


@hookimpl
def facerecon_register_stages(registry: Registrar) -> None:
    registry.register(
        "refiner",
        "sfs",
        SfsRefiner,
        options=SfsOptions,
        summary="fine stage: shape-from-shading details (SH lighting, RTV-regularised albedo, specular, 2 phases)",
        mesh_units=("px", "mm"),
        available=_torch_installed,
        install_hint="the fine stage needs PyTorch: pip install 'facerecon[fine]'",
    )
