"""Refiner ``sfs`` (stage "fine", seed section 3.4; hyper-parameters section 4.1's where they hold): multi-scale
details carved into the medium mesh by shape-from-shading, with the albedo kept free of detail.

In torch, numbered as the issue numbers them:

1. Depth map d0: the medium mesh rendered by the shared rasteriser over the face region, one sample per
   image pixel up to ``max_side`` (``Grid``), smoothed by a local quadric fit (``smooth_within``: the
   mesh's mid-scale bumps are not shading to explain; a quadric keeps the face's curvature).
2. Lighting: Lambertian with 2nd-order spherical harmonics, I = γ·S(n) + ε·β, S(n) = Σ_k r_k Y_k(n);
   with the mean albedo γ_avg (the segmenter's per-region skin colours, else the face's median colour)
   and the normals of d0 (ε = 0), r is one linear least-squares solve per colour channel, refitted
   ``lighting_rounds`` times with the albedo the current light implies (``sfs_solver.fit_lighting``).
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
medium face). The solver (``sfs_solver``, imported when the refiner is built) documents the other
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

from facerecon.geometry.raster import interpolate, rasterize
from facerecon.kernel import Face, ImageMaps, LandmarkMap, Mesh, Refinement, Segmentation, StageRegistrar, hookimpl
from facerecon.kernel.errors import PluginError
from facerecon.kernel.imageio import check_image


class ShadingWarning(UserWarning):
    """The photo has no usable shading in the face (clipped to black or white): nothing was refined."""


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
    depth_intensity_unit: grey levels per intensity unit in the depth energy, which sets the balance
        between its data terms and the λd regularisers on depths in samples (chosen on the first 8
        known-detail renders of ../shared/data/synth-detail; the albedo and specular energies are in grey
        levels).
    noise_weighting: the unit is at least this many times the image's noise std (Immerkær's estimate),
        so that a noisy image leans more on the priors; 0 disables.
    robust_threshold: grey levels where the depth's Cauchy data term starts to redescend.
    chroma_tolerance, skin_prior_boost: the skin-chromaticity confidence (see sfs_solver.skin_confidence)
        and how much more the albedo prior weighs where the colour is the skin's.
    saturation, dark: pixels with a channel above ``saturation`` or a brightest channel at most ``dark``
        (clipped, or holes in a registered RGB-D colour frame) carry no shading evidence.
    specular_model: "lobe" (a white Blinn-Phong lobe rendered from the current normals; default) or
        "per-pixel" (the seed's β map); specular_min_peak: a fitted lobe fainter than this (grey levels)
        is dropped.
    detail_noise_threshold: ΔI is soft-thresholded at this many of its noise std (Immerkær's estimate)
        before the λd3 term copies it into Δd; 0 disables.
    albedo_sigma: the Gaussian σ (samples) of the local skin colour that is the albedo prior γ_avg;
        skin_colour_sigma: that of the colour the chromaticity confidence compares with.
    medium_smoothing: σ (samples) of the local quadric fit that smooths the medium depth (0: none).
    lighting_rounds, lighting_albedo_sigma: how many times the lighting is refitted with the albedo the
        current light implies (masked Gaussian σ of image / shading).
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
    phase1_weights: tuple[float, ...] = (0.001, 1000.0, 0.0, 0.0)
    phase1_lr: float = 0.015
    phase1_iterations: int = 20
    phase2_weights: tuple[float, ...] = (0.001, 100.0, 0.0, 2.5)
    phase2_lr: float = 0.05
    phase2_iterations: int = 20
    alternate_every: int = 10
    depth_intensity_unit: float = 1.0
    noise_weighting: float = 1.0
    robust_threshold: float = 3.0
    chroma_tolerance: float = 0.02
    skin_prior_boost: float = 100.0
    saturation: float = 250.0
    dark: float = 5.0
    detail_noise_threshold: float = 1.0
    specular_model: str = "lobe"
    specular_min_peak: float = 8.0
    depth_optimizer: str = "lbfgs"
    base_weight: float = 1.0
    base_sigma: float = 6.0
    rtv_sigma: float = 2.0
    specular_sigma: float = 3.0
    albedo_blur: float = 3.0
    albedo_sigma: float = 4.0
    skin_colour_sigma: float = 8.0
    medium_smoothing: float = 6.0
    lighting_rounds: int = 3
    lighting_albedo_sigma: float = 12.0
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


@dataclass
class Prepared:
    """Step 1's output: the ``grid`` and the medium mesh's ``raster`` on it, the samples it ``covered``
    (h, w) bool, its smoothed depth ``depth0`` (h, w) float64 in samples (away from the camera), the
    refined ``mask`` (h, w) bool, and the solver's ``problem`` (``sfs_solver.Problem``)."""

    grid: Grid
    raster: Any
    covered: np.ndarray
    depth0: np.ndarray
    mask: np.ndarray
    problem: Any


# -- the stage ----------------------------------------------------------------------------------------


class SfsRefiner:
    stage = "fine"

    def __init__(self, options: SfsOptions, device: str = "cpu") -> None:
        try:
            import torch

            from facerecon.plugins import sfs_solver
        except ImportError:
            raise PluginError("the sfs refiner needs PyTorch: pip install 'facerecon[fine]'") from None

        self.options = options
        self.device = torch.device(device)
        self.solver = sfs_solver

    def refine(self, image: np.ndarray, face: Face, mesh: Mesh, segmentation: Segmentation | None) -> Refinement:
        setup = self.prepare(image, face, mesh, segmentation)
        if setup is None:
            return Refinement(mesh)  # the face is too small or off the image: nothing to refine
        grid, raster, covered, problem = setup.grid, setup.raster, setup.covered, setup.problem
        try:
            solution = self.solver.solve(problem, self.options)
        except self.solver.NoShading as error:
            warnings.warn(f"sfs: {error}; the fine mesh is the medium one", ShadingWarning, stacklevel=2)
            return Refinement(mesh)
        height = solution.height.cpu().numpy().astype(np.float64)
        fine = grid.mesh(mesh, raster, -height, covered, "fine")
        phases = {
            name: grid.mesh(mesh, raster, -h.cpu().numpy().astype(np.float64), covered, name)
            for name, h in solution.phase_heights.items()
        }
        maps = self._maps(grid, problem, solution, setup.depth0, height, covered, setup.mask)
        return Refinement(fine, maps, phases)

    def prepare(self, image: np.ndarray, face: Face, mesh: Mesh, segmentation: Segmentation | None) -> Prepared | None:
        """Step 1: the depth-map grid around the face and the solver's ``Problem`` on it; None when the
        mesh covers fewer than 64 samples."""
        import torch

        image = check_image(image)
        grid = Grid.around(face, mesh, image.shape[:2], self.options)
        raster = grid.render(mesh)
        covered = raster.mask
        if covered.sum() < 64:
            return None
        # The medium mesh's depth (z away from the camera, in samples), smoothed by a local quadric fit:
        # its mid-scale bumps (landmark-mesh wobble finer than a few percent of the face) would be read
        # as shading to explain; a quadric keeps its curvature (a nose tip) where a blur would flatten it.
        depth0 = smooth_within(grid.depth_in_samples(mesh, raster), covered, self.options.medium_smoothing)
        crop = grid.sample_image(image)  # (h, w, 3) 0-255
        labels = grid.sample_labels(segmentation)
        mask, lit, albedo_avg = _regions(crop, covered, labels, segmentation)
        t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32, device=self.device)  # noqa: E731
        problem = self.solver.Problem(
            image=t(crop.transpose(2, 0, 1)),
            mask=torch.as_tensor(mask, device=self.device),
            lit=torch.as_tensor(lit, device=self.device),
            height0=t(np.where(covered, -depth0, 0.0)),
            albedo_avg=t(albedo_avg.transpose(2, 0, 1)),
        )
        return Prepared(grid, raster, covered, depth0, mask, problem)

    def _maps(self, grid, problem, solution, depth0, height, covered, mask) -> ImageMaps:
        import torch

        with torch.no_grad():
            shade = self.solver.shading(solution.height, solution.sh)
            rendered = solution.albedo * shade + self.options.specular_scale * solution.specular
            normals = self.solver.normals_from_height(solution.height).cpu().numpy()
        to_image = lambda x: np.clip(x.cpu().numpy().transpose(1, 2, 0) / 255.0, 0, 1)  # noqa: E731
        nan = np.where(covered, 1.0, np.nan)
        depth = -height * grid.step  # mesh-frame z in image pixels
        return ImageMaps(
            origin=(int(round(grid.x0)), int(round(grid.y0))),
            maps={
                "depth": depth * nan,
                "displacement": (depth - depth0 * grid.step) * nan,
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


def smooth_within(values: np.ndarray, region: np.ndarray, sigma: float) -> np.ndarray:
    """``values`` (h, w) smoothed inside ``region`` (h, w) bool by a Gaussian-weighted (σ in samples)
    local quadratic fit (each sample: the value at its own position of the weighted least-squares
    quadric over the region's samples around it); unchanged outside the region, or everywhere for σ = 0.
    A quadric reproduces a surface's curvature, so a nose tip or a chin is not flattened as a plain blur
    would flatten it (by millimetres on a Kinect face), and the cut-off at the region's border does not
    bias the mean; what it removes is the piecewise-planar facets of a rasterised mesh."""
    import cv2

    if sigma <= 0 or not region.any():
        return values
    radius = int(np.ceil(3 * sigma))
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    gauss = np.exp(-0.5 * (offsets / sigma) ** 2)
    taps = [gauss * (offsets / sigma) ** k for k in range(5)]  # g(t)·t^k, scaled offsets

    def moment(image: np.ndarray, a: int, b: int) -> np.ndarray:
        """Σ_t g(t) t_x^a t_y^b image(p + t) at every p (cv2 filters correlate)."""
        return cv2.sepFilter2D(image, cv2.CV_64F, taps[a], taps[b], borderType=cv2.BORDER_CONSTANT)

    weight = region.astype(np.float64)
    data = np.where(region, values, 0.0).astype(np.float64)
    powers = [(0, 0), (1, 0), (0, 1), (2, 0), (1, 1), (0, 2)]
    normal = np.empty((*values.shape, 6, 6))
    for i, (a1, b1) in enumerate(powers):
        for j, (a2, b2) in enumerate(powers[i:], i):
            normal[..., i, j] = normal[..., j, i] = moment(weight, a1 + a2, b1 + b2)
    rhs = np.stack([moment(data, a, b) for a, b in powers], -1)
    rows = region & (normal[..., 0, 0] > 1e-6)
    ridge = np.diag([0.0] + [1e-3] * 5)  # keeps thin strips (a quadric badly determined) near a plain mean
    fitted = np.linalg.solve(normal[rows] + ridge, rhs[rows][..., None])[:, 0, 0]
    out = np.array(values, np.float64, copy=True)
    out[rows] = fitted
    return out


def _normalised(shading: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The SH shading (h, w, 3), dimensionless, scaled to 0-1 with its 99th percentile in the mask at 1."""
    top = float(np.percentile(shading[mask], 99)) if mask.any() else 1.0
    return np.clip(shading / max(top, 1e-6), 0, 1)


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
