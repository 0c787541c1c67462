"""Step 1 of the fine stage, in numpy: the depth-map grid around the face (one sample per image pixel,
the crop taken without resampling), the medium mesh rendered and smoothed on it, the regions the solver
may carve, and the fine mesh built back from the solved depth."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from facerecon.geometry import sampling
from facerecon.geometry.jit import compiled, in_parallel, map_in_parallel, row_blocks
from facerecon.geometry.raster import rasterize
from facerecon.kernel.contract import Face, LandmarkMap, Mesh, Segmentation
from facerecon.plugins.sfs.options import SfsOptions

SKIN_LABELS = ("skin", "nose")
"""Regions whose colour is skin: the lighting is fitted there, and the albedo prior is trusted there."""


EXCLUDED_LABELS = ("l_eye", "r_eye", "eye_g", "mouth", "hair", "hat", "l_brow", "r_brow")
"""Regions left out of the depth refinement's mask (not skin-like; they would fake geometry)."""

KEPT_LABELS = ("l_eye", "r_eye", "mouth")
"""Regions whose depth is the medium mesh's own, not smoothed: their shape (eyelids, the lip line) is
sharp and real. The other excluded regions (brows, hair, glasses over skin) take the smoothed surface."""


def smooth_within(values: np.ndarray, region: np.ndarray, sigma: float, threads: int = 1) -> np.ndarray:
    """``values`` (h, w) smoothed inside ``region`` (h, w) bool by a Gaussian-weighted (σ in samples)
    local quadratic fit (each sample: the value at its own position of the weighted least-squares
    quadric over the region's samples around it); unchanged outside the region, or everywhere for σ = 0.
    A quadric reproduces a surface's curvature, so a nose tip or a chin is not flattened as a plain blur
    would flatten it (by millimetres on a Kinect face), and the cut-off at the region's border does not
    bias the mean; what it removes is the piecewise-planar facets of a rasterised mesh.

    From σ = ``HALF_RATE_SIGMA`` on, the quadrics are fitted at the centres of the 2 x 2 blocks of samples
    only (from every sample around them, as at full rate), and each sample takes the bilinear blend of
    its four nearest fits' quadrics evaluated at its own position: a quadric σ wide barely changes from
    one fit to the next (every sample sits half a sample from its fits along each axis, so what it does
    change is smooth, not a ripple between samples), and the work is ~3x less (README, "Speed")."""
    import cv2

    if sigma <= 0 or not region.any():
        return values
    centre = float(np.mean(values[region]))  # (the fit is linear in the values: centred, float32 loses less)
    weight = region.astype(np.float32)
    data = np.where(region, values - centre, 0.0).astype(np.float32)
    out = np.array(values, np.float64, copy=True)
    if sigma < HALF_RATE_SIGMA:
        fits = _quadric_fits(weight, data, region, sigma, 1, 1, threads)
        out[region] = fits[0][region] + centre
        return out
    # the fits a sample of the region blends: those of its 2 x 2 block and of the blocks beside it
    near = cv2.dilate((_block_sums(weight) > 0).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    fits = _quadric_fits(weight, data, near, sigma, len(POWERS), 2, threads)
    out[region] = _blend(fits, region, sigma) + centre
    return out


HALF_RATE_SIGMA = 8.0
"""σ (samples) from which ``smooth_within`` fits its quadrics at the 2 x 2 blocks' centres only."""

POWERS = ((0, 0), (1, 0), (0, 1), (2, 0), (1, 1), (0, 2))
"""The quadric's monomials t_x^a t_y^b, (a, b), in the order of its coefficients."""


def _quadric_fits(
    weight: np.ndarray, data: np.ndarray, where: np.ndarray, sigma: float, count: int, step: int, threads: int
) -> np.ndarray:
    """The weighted local quadric fits at every sample (``step`` 1) or at the centres of its 2 x 2 blocks
    (``step`` 2, block b centred at sample 2b + ½): at each of those positions p where ``where`` (their
    shape) holds, the first ``count`` coefficients (``POWERS``' order, offsets t in units of σ) of the
    quadric q minimising Σ_t g(t)·weight·(q(t) − value)²(p + t) (``data`` holds weight · value, float32);
    (count, *where.shape) float64, 0 elsewhere. Its 29 filter passes and the fits are shared out over
    ``threads`` threads; the passes in float32 (the fit is solved in float64)."""

    def along_x(image: np.ndarray, a: int) -> np.ndarray:
        """Σ_t g(t_x) t_x^a image(p + (t_x, 0)) at every fit's p."""
        return _correlate(image, sigma, a, 1, step)

    def along_y(image: np.ndarray, b: int) -> np.ndarray:
        return _correlate(image, sigma, b, 0, step)

    # The moments Σ_t g(t) t_x^a t_y^b image(p + t) are separable: one pass along x per power a, shared
    # by every b (8 passes along x and 21 along y instead of 22 of each, ~30 % less time).
    along_x_of = [(weight, a) for a in range(5)] + [(data, a) for a in range(3)]
    weight_x, data_x = np.split(np.asarray(map_in_parallel(along_x, along_x_of, threads)), [5])
    # Each distinct moment of the weight once (15 of the normal matrix's 36 entries), then the data's 6
    # (the right-hand side).
    keys = list(dict.fromkeys((a1 + a2, b1 + b2) for a1, b1 in POWERS for a2, b2 in POWERS))
    # (Planes apart, not one (21, H, W) array: numpy asks the kernel for huge pages for arrays of 4 MB
    # and more, and a fresh one then often waits on memory compaction, 3x slower on these machines.)
    along_y_of = [(weight_x[a], b) for a, b in keys] + [(data_x[a], b) for a, b in POWERS]
    moments = tuple(map_in_parallel(along_y, along_y_of, threads))
    rows = where & (moments[0] > 1e-6)  # keys[0] is (0, 0): the weight's sum
    entry = np.array([[keys.index((a1 + a2, b1 + b2)) for a2, b2 in POWERS] for a1, b1 in POWERS])
    fits = np.zeros((count, *where.shape))
    fit = compiled(_fit_quadrics)
    if fit is not None:
        blocks = row_blocks(rows.shape[0], threads, work=rows.sum(1))
        in_parallel([functools.partial(fit, moments, entry, rows, start, end, fits) for start, end in blocks])
        return fits
    normal = [[moments[entry[i, j]][rows].astype(np.float64) for j in range(6)] for i in range(6)]
    for i in range(1, 6):  # the ridge keeps thin strips (a quadric badly determined) near a plain mean
        normal[i][i] = normal[i][i] + RIDGE
    rhs = [moments[len(keys) + i][rows].astype(np.float64) for i in range(6)]
    for k, coefficient in enumerate(_solve_spd(normal, rhs)[:count]):
        fits[k][rows] = coefficient
    return fits


def _correlate(image: np.ndarray, sigma: float, power: int, axis: int, step: int) -> np.ndarray:
    """Σ_t g(t)·t^power·image(p + t) along ``axis`` of ``image`` (H, W) float32 (t in units of σ, g the
    Gaussian, |t| ≤ 3σ samples; zeros beyond the border), at every sample p (``step`` 1) or at the 2 x 2
    blocks' centres 2P + ½ (``step`` 2: each half of the samples, the even and the odd ones, correlated with
    the taps at its own offsets: half the work of correlating every sample)."""
    import cv2

    radius = int(np.ceil(3 * sigma))

    def taps(offsets: np.ndarray) -> np.ndarray:
        t = offsets / sigma
        return np.where(np.abs(offsets) <= radius + 0.5, np.exp(-0.5 * t * t) * t**power, 0.0).astype(np.float32)

    one = np.ones(1, np.float32)

    def along(plane: np.ndarray, kernel: np.ndarray) -> np.ndarray:
        x, y = (kernel, one) if axis == 1 else (one, kernel)
        return cv2.sepFilter2D(plane, cv2.CV_32F, x, y, borderType=cv2.BORDER_CONSTANT)  # (cv2 correlates)

    if step == 1:
        return along(image, taps(np.arange(-radius, radius + 1, dtype=np.float64)))
    if axis == 0:  # (OpenCV's column filter is vectorised for symmetric kernels only: ~3x slower on these)
        return np.ascontiguousarray(_correlate(np.ascontiguousarray(image.T), sigma, power, 1, step).T)
    half = radius // 2 + 1
    shifts = 2.0 * np.arange(-half, half + 1)  # even sample 2(P + s) lies 2s − ½ from 2P + ½, odd 2s + ½
    evens = np.ascontiguousarray(image[:, 0::2])
    odds = np.zeros_like(evens)  # (one more even sample than odd ones at odd sizes: a zero, as the border)
    odds[:, : image.shape[1] // 2] = image[:, 1::2]
    return along(evens, taps(shifts - 0.5)) + along(odds, taps(shifts + 0.5))


def _block_sums(plane: np.ndarray) -> np.ndarray:
    """The sums of ``plane``'s 2 x 2 blocks (the last row and column of blocks partial at odd sizes)."""
    rows, cols = plane.shape
    padded = np.zeros((rows + rows % 2, cols + cols % 2), plane.dtype)
    padded[:rows, :cols] = plane
    return padded.reshape(padded.shape[0] // 2, 2, padded.shape[1] // 2, 2).sum(axis=(1, 3))


def _blend(fits: np.ndarray, region: np.ndarray, sigma: float) -> np.ndarray:
    """At each sample of ``region`` (its values, in order): the bilinear blend of the quadrics ``fits``
    (6, ⌈h/2⌉, ⌈w/2⌉) fitted at the 2 x 2 blocks' centres (fit b at 2b + ½) around it, each evaluated at
    the sample's own offset from its fit (in units of σ)."""
    i, j = np.nonzero(region)
    loop = compiled(_blend_loop)
    out = np.empty(i.size)
    if loop is not None:
        loop(fits, i, j, float(sigma), out)
        return out
    out[:] = 0.0
    for upper_i in (0, 1):
        for upper_j in (0, 1):
            bi, wi = _neighbour(i, upper_i, fits.shape[1])
            bj, wj = _neighbour(j, upper_j, fits.shape[2])
            tx, ty = (j - 2 * bj - 0.5) / sigma, (i - 2 * bi - 0.5) / sigma
            c = fits[:, bi, bj]
            out += wi * wj * (c[0] + c[1] * tx + c[2] * ty + c[3] * tx * tx + c[4] * tx * ty + c[5] * ty * ty)
    return out


def _blend_loop(fits, rows, cols, sigma, out):
    """``_blend``'s arithmetic at the samples (rows[k], cols[k]) (numba compiles it; ``_neighbour`` inlined)."""
    fits_i, fits_j = fits.shape[1], fits.shape[2]
    for k in range(rows.shape[0]):
        i, j = rows[k], cols[k]
        position_i = min(max((i - 0.5) / 2, 0.0), fits_i - 1)
        position_j = min(max((j - 0.5) / 2, 0.0), fits_j - 1)
        low_i, low_j = min(int(position_i), max(fits_i - 2, 0)), min(int(position_j), max(fits_j - 2, 0))
        total = 0.0
        for upper_i in range(2):
            bi = min(low_i + upper_i, fits_i - 1)
            wi = position_i - low_i if upper_i else 1 - (position_i - low_i)
            for upper_j in range(2):
                bj = min(low_j + upper_j, fits_j - 1)
                wj = position_j - low_j if upper_j else 1 - (position_j - low_j)
                tx, ty = (j - 2 * bj - 0.5) / sigma, (i - 2 * bi - 0.5) / sigma
                quadric = fits[0, bi, bj] + fits[1, bi, bj] * tx + fits[2, bi, bj] * ty
                quadric += fits[3, bi, bj] * tx * tx + fits[4, bi, bj] * tx * ty + fits[5, bi, bj] * ty * ty
                total += wi * wj * quadric
        out[k] = total


def _neighbour(index: np.ndarray, upper: int, fits: int) -> tuple[np.ndarray, np.ndarray]:
    """Along one axis, the sample's lower (``upper`` 0) or upper (1) nearest fit (fit b at 2b + ½) and its
    linear weight (beyond the first or last fit, that fit takes all)."""
    position = np.clip((index - 0.5) / 2, 0, fits - 1)
    lower = np.minimum(np.floor(position).astype(np.intp), max(fits - 2, 0))
    fraction = position - lower  # (0 with a single fit)
    return (np.minimum(lower + 1, fits - 1), fraction) if upper else (lower, 1 - fraction)


RIDGE = 1e-3
"""Added to the normal matrix's diagonal but the constant's: keeps thin strips (a quadric badly
determined) near a plain mean."""


def _fit_quadrics(moments, entry, rows, row_start, row_end, out):
    """At each sample of ``rows`` (H, W) bool in rows [row_start, row_end): out[:, p, q] = the first
    out.shape[0] coefficients of the quadric solving N x = r, N (6, 6) from the weight's moments
    (moments[entry[i, j]], plus ``RIDGE`` on the diagonal but its first entry), r the data's moments
    (moments[15 + i]); ``moments`` a tuple of 21 (H, W) planes (numba compiles it; ``_solve_spd``'s
    Cholesky, per sample)."""
    size = entry.shape[0]
    first = len(moments) - size
    a = np.empty((size, size))
    low = np.empty((size, size))
    y = np.empty(size)
    x = np.empty(size)
    for p in range(row_start, row_end):
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
            for k in range(out.shape[0]):
                out[k, p, q] = x[k]


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
    """The refined mask, the pixels the lighting is fitted on, the samples that keep the medium depth
    (``KEPT_LABELS``; all (h, w) bool) and γ_avg (h, w, 3) in 0-255."""
    mask = covered.copy()
    lit = covered.copy()
    kept = np.zeros_like(covered)
    albedo = np.empty(crop.shape, np.float64)
    median = np.median(crop[covered], axis=0) if covered.any() else np.full(3, 128.0)
    albedo[:] = median
    if segmentation is not None and labels is not None:
        names = dict(segmentation.label_names)
        for label, name in names.items():
            region = labels == label
            if name in EXCLUDED_LABELS:
                mask &= ~region
            if name in KEPT_LABELS:
                kept |= region & covered
            colour = segmentation.region_colors.get(name)
            if colour is not None:
                albedo[region] = np.asarray(colour, np.float64) * 255.0
        skin = np.isin(labels, [k for k, v in names.items() if v in SKIN_LABELS])
        if (skin & covered).sum() > 100:
            lit = skin & covered
    return mask, lit, kept, albedo


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
        in their vertices only: the triangles, UVs and maps are one set of arrays, shared. A covered sample
        in no 2 x 2 block of covered samples (a lone corner) is left out: it would be a vertex of no triangle,
        which the mesh files drop (the files then disagreed with result.json's counts and bounds)."""
        h, w = covered.shape
        quad = covered[:-1, :-1] & covered[:-1, 1:] & covered[1:, :-1] & covered[1:, 1:]
        on_mesh = np.zeros_like(covered)
        for di in (0, 1):
            for dj in (0, 1):
                on_mesh[di : h - 1 + di, dj : w - 1 + dj] |= quad
        covered = on_mesh
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
