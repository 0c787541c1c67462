"""A small z-buffer rasteriser in vectorised numpy: no OpenGL context, no GPU, no compiled code.

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
    V = np.asarray(vertices, dtype=np.float64)
    F = np.asarray(faces, dtype=np.int64)
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
    face_normals = np.cross(V[F[:, 1]] - V[F[:, 0]], V[F[:, 2]] - V[F[:, 0]])
    normals = np.zeros_like(V)
    for k in range(3):
        np.add.at(normals, F[:, k], face_normals)
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    return normals / np.where(length > 0, length, 1.0)


def shade(vertices: np.ndarray, faces: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A grey Lambertian render lit from the camera: (float32 (H, W) in [0, 1], bool (H, W) mask)."""
    raster = rasterize(vertices, faces, height, width)
    normals = interpolate(raster, faces, vertex_normals(vertices, faces))
    length = np.linalg.norm(normals, axis=2)
    # The camera looks along +z, so a surface facing it has a normal along -z: light = |n_z|.
    lit = np.abs(normals[:, :, 2]) / np.where(length > 0, length, 1.0)
    grey = 0.15 + 0.85 * lit
    return np.where(raster.mask, grey, 0.0).astype(np.float32), raster.mask
