"""Step 1 of the fine stage, in numpy: the depth-map grid around the face (one sample per image pixel,
the crop taken without resampling), the medium mesh rendered and smoothed on it, the regions the solver
may carve, and the fine mesh built back from the solved depth."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from facerecon.geometry import sampling
from facerecon.geometry.jit import compiled, map_in_parallel
from facerecon.geometry.raster import rasterize
from facerecon.kernel.contract import Face, LandmarkMap, Mesh, Segmentation
from facerecon.plugins.sfs.options import SfsOptions

SKIN_LABELS = ("skin", "nose")
"""Regions whose colour is skin: the lighting is fitted there, and the albedo prior is trusted there."""


EXCLUDED_LABELS = ("l_eye", "r_eye", "eye_g", "mouth", "hair", "hat", "l_brow", "r_brow")
"""Regions left out of the depth refinement's mask (not skin-like; they would fake geometry)."""


def smooth_within(values: np.ndarray, region: np.ndarray, sigma: float, threads: int = 1) -> np.ndarray:
    """``values`` (h, w) smoothed inside ``region`` (h, w) bool by a Gaussian-weighted (σ in samples)
    local quadratic fit (each sample: the value at its own position of the weighted least-squares
    quadric over the region's samples around it); unchanged outside the region, or everywhere for σ = 0.
    A quadric reproduces a surface's curvature, so a nose tip or a chin is not flattened as a plain blur
    would flatten it (by millimetres on a Kinect face), and the cut-off at the region's border does not
    bias the mean; what it removes is the piecewise-planar facets of a rasterised mesh. Its 29 filter
    passes are shared out over ``threads`` threads, in float32 (about twice as fast as float64 at the
    default σ of ~28 samples on a 400 px face; the fit is solved in float64, and the values are centred on
    their mean first: within 1e-3 samples of a float64 fit)."""
    import cv2

    if sigma <= 0 or not region.any():
        return values
    radius = int(np.ceil(3 * sigma))
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    gauss = np.exp(-0.5 * (offsets / sigma) ** 2)
    taps = [(gauss * (offsets / sigma) ** k).astype(np.float32) for k in range(5)]  # g(t)·t^k, scaled offsets

    one = np.ones(1, np.float32)

    def along_x(image: np.ndarray, a: int) -> np.ndarray:
        """Σ_t g(t_x) t_x^a image(p + (t_x, 0)) at every p (cv2 filters correlate)."""
        return cv2.sepFilter2D(image, cv2.CV_32F, taps[a], one, borderType=cv2.BORDER_CONSTANT)

    def along_y(image: np.ndarray, b: int) -> np.ndarray:
        return cv2.sepFilter2D(image, cv2.CV_32F, one, taps[b], borderType=cv2.BORDER_CONSTANT)

    # The moments Σ_t g(t) t_x^a t_y^b image(p + t) are separable: one pass along x per power a, shared
    # by every b (8 passes along x and 21 along y instead of 22 of each, ~30 % less time).
    weight = region.astype(np.float32)
    centre = float(np.mean(values[region]))  # (the fit is linear in the values: centred, float32 loses less)
    data = np.where(region, values - centre, 0.0).astype(np.float32)
    powers = [(0, 0), (1, 0), (0, 1), (2, 0), (1, 1), (0, 2)]
    along_x_of = [(weight, a) for a in range(5)] + [(data, a) for a in range(3)]
    weight_x, data_x = np.split(np.asarray(map_in_parallel(along_x, along_x_of, threads)), [5])
    # Each distinct moment of the weight once (15 of the normal matrix's 36 entries), then the data's 6
    # (the right-hand side).
    keys = list(dict.fromkeys((a1 + a2, b1 + b2) for a1, b1 in powers for a2, b2 in powers))
    # (Planes apart, not one (21, H, W) array: numpy asks the kernel for huge pages for arrays of 4 MB
    # and more, and a fresh one then often waits on memory compaction, 3x slower on these machines.)
    along_y_of = [(weight_x[a], b) for a, b in keys] + [(data_x[a], b) for a, b in powers]
    moments = tuple(map_in_parallel(along_y, along_y_of, threads))
    rows = region & (moments[0] > 1e-6)  # keys[0] is (0, 0): the weight's sum
    entry = np.array([[keys.index((a1 + a2, b1 + b2)) for a2, b2 in powers] for a1, b1 in powers])
    out = np.array(values, np.float64, copy=True)
    fit = compiled(_fit_quadrics)
    if fit is not None:
        fitted = np.zeros_like(out)
        fit(moments, entry, rows, fitted)
        out[rows] = fitted[rows] + centre
        return out
    normal = [[moments[entry[i, j]][rows].astype(np.float64) for j in range(6)] for i in range(6)]
    for i in range(1, 6):  # the ridge keeps thin strips (a quadric badly determined) near a plain mean
        normal[i][i] = normal[i][i] + RIDGE
    rhs = [moments[len(keys) + i][rows].astype(np.float64) for i in range(6)]
    out[rows] = _solve_spd(normal, rhs)[0] + centre
    return out


RIDGE = 1e-3
"""Added to the normal matrix's diagonal but the constant's: keeps thin strips (a quadric badly
determined) near a plain mean."""


def _fit_quadrics(moments, entry, rows, out):
    """At each sample of ``rows`` (H, W) bool: out = the constant of the quadric solving N x = r, N (6, 6)
    from the weight's moments (moments[entry[i, j]], plus ``RIDGE`` on the diagonal but its first entry),
    r the data's moments (moments[15 + i]); ``moments`` a tuple of 21 (H, W) planes (numba compiles it;
    ``_solve_spd``'s Cholesky, per sample)."""
    size = entry.shape[0]
    first = len(moments) - size
    a = np.empty((size, size))
    low = np.empty((size, size))
    y = np.empty(size)
    x = np.empty(size)
    for p in range(rows.shape[0]):
        for q in range(rows.shape[1]):
            if not rows[p, q]:
                continue
            for i in range(size):
                for j in range(size):
                    a[i, j] = moments[entry[i, j]][p, q]
                if i > 0:
                    a[i, i] += RIDGE
            for j in range(size):
                total = a[j, j]
                for m in range(j):
                    total -= low[j, m] * low[j, m]
                low[j, j] = np.sqrt(total)
                for i in range(j + 1, size):
                    total = a[i, j]
                    for m in range(j):
                        total -= low[i, m] * low[j, m]
                    low[i, j] = total / low[j, j]
            for i in range(size):
                total = moments[first + i][p, q]
                for m in range(i):
                    total -= low[i, m] * y[m]
                y[i] = total / low[i, i]
            for i in range(size - 1, -1, -1):
                total = y[i]
                for m in range(i + 1, size):
                    total -= low[m, i] * x[m]
                x[i] = total / low[i, i]
            out[p, q] = x[0]


def _solve_spd(a: list[list[np.ndarray]], b: list[np.ndarray]) -> list[np.ndarray]:
    """x of a x = b at every sample, a (k x k nested lists of (n,) arrays) symmetric positive definite, b
    (k lists of (n,)): a Cholesky factorisation unrolled over the entries, each vectorised over the n
    samples (LAPACK called per 6 x 6 system is ~20x slower)."""
    k = len(b)
    low: list[list[Any]] = [[None] * k for _ in range(k)]
    for j in range(k):
        low[j][j] = np.sqrt(a[j][j] - sum(low[j][m] ** 2 for m in range(j)))
        for i in range(j + 1, k):
            low[i][j] = (a[i][j] - sum(low[i][m] * low[j][m] for m in range(j))) / low[j][j]
    y: list[Any] = [None] * k
    for i in range(k):
        y[i] = (b[i] - sum(low[i][m] * y[m] for m in range(i))) / low[i][i]
    x: list[Any] = [None] * k
    for i in reversed(range(k)):
        x[i] = (y[i] - sum(low[m][i] * x[m] for m in range(i + 1, k))) / low[i][i]
    return x


def regions(crop, covered, labels, segmentation):
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

    def meshes(self, medium: Mesh, raster, depths: dict[str, np.ndarray], covered: np.ndarray) -> dict[str, Mesh]:
        """Pixel-grid meshes of the covered samples, one per entry of ``depths`` (name: z (h, w) in grid
        units, away from the camera), UVs and landmark maps carried over from the medium mesh. They differ
        in their vertices only: the triangles, UVs and maps are one set of arrays, shared."""
        h, w = covered.shape
        index = np.full((h, w), -1, np.int32)  # (int32: the triangles as a Mesh keeps them, not copied)
        index[covered] = np.arange(int(covered.sum()))
        ii, jj = np.nonzero(covered)
        x = self.x0 + jj * self.step
        y = self.y0 + ii * self.step
        a, b, c, d = index[:-1, :-1], index[:-1, 1:], index[1:, :-1], index[1:, 1:]
        full = (a >= 0) & (b >= 0) & (c >= 0) & (d >= 0)
        # (a, c, b) and (b, c, d): normals towards the camera (-z) for a surface facing it.
        triangles = np.concatenate([np.stack([a[full], c[full], b[full]], 1), np.stack([b[full], c[full], d[full]], 1)])
        uvs = None
        if medium.uvs is not None:  # (at the covered samples only; the medium mesh covers them all)
            corners = np.asarray(medium.triangles)[raster.triangle[covered]]
            uvs = sampling.barycentric(corners, raster.barycentric[covered], np.asarray(medium.uvs, np.float64))
        maps = {scheme: self._carry_map(medium, lmap, index) for scheme, lmap in medium.landmark_maps.items()}
        mean_z = 0.0
        if medium.camera_matrix is not None:
            mean_z = float(np.nanmean(np.where(raster.mask, raster.depth, np.nan)[covered]))

        def vertices(z_samples: np.ndarray) -> np.ndarray:
            z = z_samples[covered] * self.step
            if medium.camera_matrix is None:
                return np.column_stack([x, y, z])
            k = np.asarray(medium.camera_matrix, np.float64)
            z_mm = z * mean_z / k[0, 0]
            return np.column_stack([(x - k[0, 2]) * z_mm / k[0, 0], (y - k[1, 2]) * z_mm / k[1, 1], z_mm])

        return {
            name: Mesh(
                vertices=vertices(z_samples),
                triangles=triangles,
                topology=f"sfs-grid-{self.width}x{self.height}",
                uvs=uvs,
                landmark_maps=maps,
                units=medium.units,
                camera_matrix=medium.camera_matrix,
            )
            for name, z_samples in depths.items()
        }

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
