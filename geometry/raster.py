"""A small z-buffer rasteriser on the CPU: no OpenGL context, no GPU needed, no CUDA-only code.

The inner loop is compiled with numba when it is installed (about 5 ms for a 57k-triangle face mesh);
without numba the same algorithm runs vectorised in numpy (about 15 times slower). Both give the same
result (tests/test_geometry.py checks it).

Input vertices are in the image/mesh frame (x right, y down, pixel centres at integers, z away from the
camera; orthographic). A pixel (row i, column j) is covered by a triangle when its centre (x=j, y=i)
lies inside it; the nearest (smallest z) triangle wins.

Outputs (H, W) maps: ``depth`` float32 (inf where empty), ``triangle`` int32 (-1 where empty) and
``barycentric`` float32 (H, W, 3) weights of the triangle's three vertices. Anything interpolated over
the surface (normals, UVs, image positions) is ``interpolate(raster, faces, per_vertex_values)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facerecon.geometry.jit import compiled

_CHUNK = 4_000_000
"""Candidate pixels processed at once (bounds memory for meshes with huge triangles)."""


@dataclass(frozen=True)
class Raster:
    depth: np.ndarray
    triangle: np.ndarray
    barycentric: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        """bool (H, W): pixels covered by the mesh."""
        return self.triangle >= 0


def rasterize(vertices: np.ndarray, faces: np.ndarray, height: int, width: int) -> Raster:
    """Z-buffer ``faces`` (M, 3) of ``vertices`` (N, 3) into an (height, width) image."""
    V = np.ascontiguousarray(vertices, dtype=np.float64)
    F = np.ascontiguousarray(faces, dtype=np.int64)
    kernel = compiled(_scan_triangles)
    if kernel is not None:
        depth = np.full((height, width), np.inf, dtype=np.float32)
        triangle = np.full((height, width), -1, dtype=np.int32)
        bary = np.zeros((height, width, 3), dtype=np.float32)
        kernel(V, F, height, width, depth.reshape(-1), triangle.reshape(-1), bary.reshape(-1, 3), True)
        return Raster(depth, triangle, bary)
    return rasterize_numpy(V, F, height, width)


def warm_up() -> None:
    """Load the compiled scan-conversion kernel now: numba's import and its cached machine code take ~1 s
    in a fresh process, which a worker can spend while its models load instead of on its first photo."""
    rasterize(np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), np.array([[0, 1, 2]]), 2, 2)


def rasterize_depth(vertices: np.ndarray, faces: np.ndarray, window: tuple[int, int, int, int]) -> np.ndarray:
    """Only the depth map, only inside ``window`` = (left, top, right, bottom) pixels (right and bottom
    excluded): float32 (bottom - top, right - left), inf where empty — the same values :func:`rasterize`
    gives there, without the triangle and barycentric maps (what a stage that reads a few depths needs)."""
    left, top, right, bottom = window
    width, height = max(right - left, 0), max(bottom - top, 0)
    V = np.array(vertices, dtype=np.float64)
    V[:, 0] -= left
    V[:, 1] -= top
    F = np.ascontiguousarray(faces, dtype=np.int64)
    kernel = compiled(_scan_triangles)
    if kernel is None:
        return rasterize_numpy(V, F, height, width).depth
    depth = np.full((height, width), np.inf, dtype=np.float32)
    no_ids = np.empty(0, dtype=np.int32)  # the triangle and barycentric maps are not written
    kernel(V, F, height, width, depth.reshape(-1), no_ids, np.empty((0, 3), dtype=np.float32), False)
    return depth


def _scan_triangles(V, F, height, width, depth, triangle, bary, with_ids):
    """For each triangle, every pixel centre inside its bounding box: barycentrics by signed areas,
    keep the nearest z, and with ``with_ids`` its triangle and barycentrics. (Plain loops: numba compiles
    them; see rasterize_numpy for the same in numpy.)"""
    for f in range(F.shape[0]):
        a, b, c = F[f, 0], F[f, 1], F[f, 2]
        x0, y0, z0 = V[a, 0], V[a, 1], V[a, 2]
        x1, y1, z1 = V[b, 0], V[b, 1], V[b, 2]
        x2, y2, z2 = V[c, 0], V[c, 1], V[c, 2]
        area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
        if not abs(area) > 1e-12:  # also skips NaN
            continue
        xmin = max(int(np.ceil(min(x0, x1, x2))), 0)
        xmax = min(int(np.floor(max(x0, x1, x2))), width - 1)
        ymin = max(int(np.ceil(min(y0, y1, y2))), 0)
        ymax = min(int(np.floor(max(y0, y1, y2))), height - 1)
        inv = 1.0 / area
        for py in range(ymin, ymax + 1):
            for px in range(xmin, xmax + 1):
                l0 = ((x1 - px) * (y2 - py) - (x2 - px) * (y1 - py)) * inv
                l1 = ((x2 - px) * (y0 - py) - (x0 - px) * (y2 - py)) * inv
                l2 = 1.0 - l0 - l1
                if l0 >= -1e-9 and l1 >= -1e-9 and l2 >= -1e-9:
                    z = l0 * z0 + l1 * z1 + l2 * z2
                    i = py * width + px
                    if z < depth[i]:
                        depth[i] = z
                        if with_ids:
                            triangle[i] = f
                            bary[i, 0] = l0
                            bary[i, 1] = l1
                            bary[i, 2] = l2


def rasterize_numpy(V: np.ndarray, F: np.ndarray, height: int, width: int) -> Raster:
    """The vectorised-numpy rasteriser (used when numba is not installed)."""
    depth = np.full(height * width, np.inf)
    triangle = np.full(height * width, -1, dtype=np.int64)
    bary = np.zeros((height * width, 3))
    if len(F) == 0:
        return _raster(depth, triangle, bary, height, width)

    P = V[F]  # (M, 3 corners, 3)
    x, y = P[:, :, 0], P[:, :, 1]
    x0 = np.clip(np.ceil(x.min(1)), 0, width).astype(np.int64)
    x1 = np.clip(np.floor(x.max(1)), -1, width - 1).astype(np.int64)
    y0 = np.clip(np.ceil(y.min(1)), 0, height).astype(np.int64)
    y1 = np.clip(np.floor(y.max(1)), -1, height - 1).astype(np.int64)
    # Barycentric coordinates as affine functions of the pixel centre: lambda_k = a_k x + b_k y + c_k.
    area = (x[:, 1] - x[:, 0]) * (y[:, 2] - y[:, 0]) - (x[:, 2] - x[:, 0]) * (y[:, 1] - y[:, 0])
    keep = (np.abs(area) > 1e-12) & (x1 >= x0) & (y1 >= y0) & np.isfinite(area)
    ids = np.flatnonzero(keep)
    if len(ids) == 0:
        return _raster(depth, triangle, bary, height, width)
    inv = 1.0 / area[ids]
    a = np.empty((len(ids), 3))
    b = np.empty((len(ids), 3))
    c = np.empty((len(ids), 3))
    for k in range(3):
        i, j = (k + 1) % 3, (k + 2) % 3
        a[:, k] = (y[ids, i] - y[ids, j]) * inv
        b[:, k] = (x[ids, j] - x[ids, i]) * inv
        c[:, k] = (x[ids, i] * y[ids, j] - x[ids, j] * y[ids, i]) * inv
    z = P[ids, :, 2]
    w = x1[ids] - x0[ids] + 1
    n = w * (y1[ids] - y0[ids] + 1)

    # Walk the triangles in chunks of about _CHUNK candidate pixels.
    ends = np.cumsum(n)
    start = 0
    while start < len(ids):
        base = ends[start - 1] if start else 0
        stop = max(int(np.searchsorted(ends, base + _CHUNK, side="right")), start + 1)
        sel = np.arange(start, stop)
        counts = n[sel]
        t = np.repeat(sel, counts)
        local = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        px = x0[ids[t]] + local % w[t]
        py = y0[ids[t]] + local // w[t]
        lam = a[t] * px[:, None] + b[t] * py[:, None] + c[t]
        inside = (lam >= -1e-9).all(axis=1)
        t, px, py, lam = t[inside], px[inside], py[inside], lam[inside]
        zs = (lam * z[t]).sum(axis=1)
        pixel = py * width + px
        # Nearest candidate per pixel in this chunk, then merge with what earlier chunks left.
        order = np.lexsort((zs, pixel))
        pixel, zs, t, lam = pixel[order], zs[order], t[order], lam[order]
        first = np.ones(len(pixel), dtype=bool)
        first[1:] = pixel[1:] != pixel[:-1]
        pixel, zs, t, lam = pixel[first], zs[first], t[first], lam[first]
        nearer = zs < depth[pixel]
        pixel = pixel[nearer]
        depth[pixel] = zs[nearer]
        triangle[pixel] = ids[t[nearer]]
        bary[pixel] = lam[nearer]
        start = stop
    return _raster(depth, triangle, bary, height, width)


def _raster(depth: np.ndarray, triangle: np.ndarray, bary: np.ndarray, height: int, width: int) -> Raster:
    return Raster(
        depth.reshape(height, width).astype(np.float32),
        triangle.reshape(height, width).astype(np.int32),
        bary.reshape(height, width, 3).astype(np.float32),
    )


def interpolate(raster: Raster, faces: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per-pixel values (H, W, C) interpolated from per-vertex ``values`` (N, C); zero where empty."""
    values = np.asarray(values)
    out = np.zeros((*raster.triangle.shape, values.shape[1]), dtype=np.float32)
    mask = raster.mask
    corners = np.asarray(faces)[raster.triangle[mask]]  # (P, 3)
    out[mask] = np.einsum("pk,pkc->pc", raster.barycentric[mask], values[corners])
    return out


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals (N, 3), oriented like the triangle winding."""
    V = np.asarray(vertices, dtype=np.float64)
    F = np.asarray(faces)
    loop = compiled(_normals_loop)
    if loop is not None and len(F):  # the same sums in the same order (~6x faster)
        normals = np.zeros((len(V), 3))
        loop(np.ascontiguousarray(V), np.ascontiguousarray(F, dtype=np.int64), normals)
        return normals
    face_normals = np.cross(V[F[:, 1]] - V[F[:, 0]], V[F[:, 2]] - V[F[:, 0]])
    # Each vertex sums the normals of its triangles: bincount adds in the order np.add.at would (corner 0 of
    # every face, then corner 1, then 2), ~5x faster.
    corners = F.T.ravel()
    normals = np.column_stack(
        [np.bincount(corners, np.tile(face_normals[:, c], 3), minlength=len(V)) for c in range(3)]
    )
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    return normals / np.where(length > 0, length, 1.0)


def _normals_loop(V, F, normals):
    """``vertex_normals`` in loops (numba compiles it): each face's cross product added to its corners,
    corner 0 of every face, then corner 1, then 2, as the numpy form's bincount adds them; then each
    normal divided by its length (left as is when 0)."""
    count = F.shape[0]
    face_normals = np.empty((count, 3))
    for f in range(count):
        a, b, c = F[f, 0], F[f, 1], F[f, 2]
        ux, uy, uz = V[b, 0] - V[a, 0], V[b, 1] - V[a, 1], V[b, 2] - V[a, 2]
        vx, vy, vz = V[c, 0] - V[a, 0], V[c, 1] - V[a, 1], V[c, 2] - V[a, 2]
        face_normals[f, 0] = uy * vz - uz * vy
        face_normals[f, 1] = uz * vx - ux * vz
        face_normals[f, 2] = ux * vy - uy * vx
    for corner in range(3):
        for f in range(count):
            vertex = F[f, corner]
            for k in range(3):
                normals[vertex, k] += face_normals[f, k]
    for v in range(normals.shape[0]):
        length = np.sqrt(normals[v, 0] * normals[v, 0] + normals[v, 1] * normals[v, 1] + normals[v, 2] * normals[v, 2])
        if length > 0:
            for k in range(3):
                normals[v, k] /= length


def shade(vertices: np.ndarray, faces: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A grey Lambertian render lit from the camera: (float32 (H, W) in [0, 1], bool (H, W) mask)."""
    raster = rasterize(vertices, faces, height, width)
    mask = raster.mask
    per_vertex = vertex_normals(vertices, faces).astype(np.float32)
    loop = compiled(_shade_loop)
    if loop is not None:  # the same float32 arithmetic in one pass (~4x faster)
        grey = np.zeros((height, width), np.float32)
        loop(raster.triangle, raster.barycentric, np.ascontiguousarray(faces, dtype=np.int64), per_vertex, grey)
        return grey, mask
    corners = np.asarray(faces)[raster.triangle[mask]]  # only the covered pixels are shaded
    weights = raster.barycentric[mask]
    normals = sum(weights[:, k : k + 1] * per_vertex[corners[:, k]] for k in range(3))
    length = np.linalg.norm(normals, axis=1)
    # The camera looks along +z, so a surface facing it has a normal along -z: light = |n_z|.
    lit = np.abs(normals[:, 2]) / np.where(length > 0, length, 1.0)
    grey = np.zeros((height, width), np.float32)
    grey[mask] = 0.15 + 0.85 * lit
    return grey, mask


def _shade_loop(triangle, barycentric, faces, per_vertex, grey):
    """``shade``'s grey at every covered pixel, in float32 as the numpy form computes it: the normal
    Σ_k w_k · n_k, |n_z| / |n|, 0.15 + 0.85 · that (numba compiles it)."""
    low, high, zero = np.float32(0.15), np.float32(0.85), np.float32(0.0)
    for i in range(triangle.shape[0]):
        for j in range(triangle.shape[1]):
            t = triangle[i, j]
            if t < 0:
                continue
            nx, ny, nz = zero, zero, zero
            for k in range(3):
                w = barycentric[i, j, k]
                v = faces[t, k]
                nx += w * per_vertex[v, 0]
                ny += w * per_vertex[v, 1]
                nz += w * per_vertex[v, 2]
            length = np.sqrt(nx * nx + ny * ny + nz * nz)
            lit = abs(nz) / (length if length > 0 else np.float32(1.0))
            grey[i, j] = low + high * lit
