"""Tangent frames from UVs, and tangent-space normals (what a normal map stores).

A tangent-space normal map stores, per texel, a unit normal in the frame (T, B, N) of the low-poly
surface there: N the interpolated vertex normal, T the direction of increasing u, B = sign · N x T the
direction of increasing v. This is the MikkTSpace convention that Blender, three.js and glTF use
("OpenGL" maps: +Y along increasing v, i.e. up in the image), with per-vertex tangents built as
MikkTSpace builds them for a smooth mesh (per-triangle UV derivatives summed per vertex, made orthogonal
to the vertex normal) and a renderer's decoding: n = normalise(x·T + y·B + z·N) with the interpolated T
and N and B = sign · N x T per pixel. :func:`encode` inverts exactly that decoding, so a map applied to
its mesh gives back the normals it was baked from (up to 8-bit quantisation).

Arrays: vertices float (V, 3), faces int (F, 3), uvs float (V, 2) with v up; frames any right-handed
frame (the mesh frame or a file's y-up frame: a rotation turns T, B, N and the normal alike).
"""

from __future__ import annotations

import numpy as np


def vertex_tangents(vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """float64 (V, 4): unit tangent (x, y, z) orthogonal to the vertex normal, and the bitangent sign w
    (B = w · N x T), from the UV derivatives of the triangles around each vertex (area-weighted)."""
    V = np.asarray(vertices, np.float64)
    F = np.asarray(faces)
    UV = np.asarray(uvs, np.float64)
    N = np.asarray(normals, np.float64)
    e1, e2 = V[F[:, 1]] - V[F[:, 0]], V[F[:, 2]] - V[F[:, 0]]
    d1, d2 = UV[F[:, 1]] - UV[F[:, 0]], UV[F[:, 2]] - UV[F[:, 0]]
    det = d1[:, 0] * d2[:, 1] - d2[:, 0] * d1[:, 1]
    # dP/du and dP/dv of each triangle, times det (so each triangle weighs by its 3D area / UV area ratio's
    # sign-free magnitude, and a degenerate UV triangle (det 0) adds nothing).
    sign = np.where(det < 0, -1.0, 1.0)[:, None]
    tangent_f = (e1 * d2[:, 1:2] - e2 * d1[:, 1:2]) * sign
    bitangent_f = (e2 * d1[:, 0:1] - e1 * d2[:, 0:1]) * sign
    tangent = np.zeros_like(V)
    bitangent = np.zeros_like(V)
    for k in range(3):
        np.add.at(tangent, F[:, k], tangent_f)
        np.add.at(bitangent, F[:, k], bitangent_f)
    tangent -= N * np.sum(tangent * N, axis=1, keepdims=True)  # Gram-Schmidt against the normal
    length = np.linalg.norm(tangent, axis=1, keepdims=True)
    fallback = _any_perpendicular(N)
    tangent = np.where(length > 1e-12, tangent / np.maximum(length, 1e-300), fallback)
    handedness = np.where(np.sum(np.cross(N, tangent) * bitangent, axis=1) < 0, -1.0, 1.0)
    return np.column_stack([tangent, handedness])


def _any_perpendicular(normals: np.ndarray) -> np.ndarray:
    helper = np.where(np.abs(normals[:, :1]) < 0.9, [[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]])
    t = np.cross(normals, helper)
    return t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-300)


def frames(normal: np.ndarray, tangent: np.ndarray) -> np.ndarray:
    """float64 (..., 3, 3) matrices [T B N] (columns) from interpolated normals (..., 3) and tangents
    (..., 4) (xyz + sign), as a renderer forms them per pixel (T and N not re-normalised, see the module)."""
    n = np.asarray(normal, np.float64)
    t = np.asarray(tangent, np.float64)
    b = np.where(t[..., 3:4] < 0, -1.0, 1.0) * np.cross(n, t[..., :3])
    return np.stack([t[..., :3], b, n], axis=-1)


def encode(world_normals: np.ndarray, tbn: np.ndarray) -> np.ndarray:
    """Unit tangent-space normals (..., 3) that :func:`decode` turns back into ``world_normals`` (..., 3)."""
    local = np.linalg.solve(tbn, np.asarray(world_normals, np.float64)[..., None])[..., 0]
    return local / np.maximum(np.linalg.norm(local, axis=-1, keepdims=True), 1e-300)


def decode(tangent_normals: np.ndarray, tbn: np.ndarray) -> np.ndarray:
    """World-space unit normals (..., 3) of tangent-space normals (..., 3): normalise([T B N] @ n)."""
    world = np.einsum("...ij,...j->...i", tbn, np.asarray(tangent_normals, np.float64))
    return world / np.maximum(np.linalg.norm(world, axis=-1, keepdims=True), 1e-300)


def to_rgb8(tangent_normals: np.ndarray) -> np.ndarray:
    """uint8 (..., 3) RGB of unit tangent-space normals: (n + 1) / 2 · 255, flat (0, 0, 1) = (128, 128, 255)."""
    return np.clip(np.rint((np.asarray(tangent_normals) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def from_rgb8(rgb: np.ndarray) -> np.ndarray:
    """Unit tangent-space normals (..., 3) of a uint8 normal map."""
    n = np.asarray(rgb, np.float64) / 127.5 - 1.0
    return n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-300)
