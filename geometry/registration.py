"""Point-to-surface distances and ICP, for scoring a mesh against a scan (pure numpy / scipy).

Frames and units are the caller's: every function takes float (n, 3) points and int (m, 3) triangles in
one frame and returns distances in its unit. A transform (s, R, t) maps x -> s · R @ x + t.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from facerecon.geometry.transforms import similarity_transform

NEAR = 4.0
"""Points within NEAR x (the largest centroid-to-corner distance) of the surface get exact distances."""
_PAIRS = 2_000_000
"""Point-triangle pairs evaluated at once (bounds memory)."""


def closest_on_triangles(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """The closest point to each p[i] on triangle (a[i], b[i], c[i]), all float64 (k, 3) (Ericson,
    Real-Time Collision Detection 5.1.5, vectorised: vertex, edge and face regions)."""
    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = _dot(ab, ap), _dot(ac, ap)
    bp = p - b
    d3, d4 = _dot(ab, bp), _dot(ac, bp)
    cp = p - c
    d5, d6 = _dot(ab, cp), _dot(ac, cp)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
    # inside the face region by default
    denom = va + vb + vc
    denom = np.where(np.abs(denom) > 1e-30, denom, 1e-30)
    v, w = vb / denom, vc / denom
    result = a + ab * v[:, None] + ac * w[:, None]
    # edge regions (later assignments are the more specific ones, as in the sequential algorithm)
    on_bc = (va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0)
    t_bc = (d4 - d3) / np.where(on_bc, (d4 - d3) + (d5 - d6), 1.0)
    result = np.where(on_bc[:, None], b + (c - b) * t_bc[:, None], result)
    on_ac = (vb <= 0) & (d2 >= 0) & (d6 <= 0)
    t_ac = d2 / np.where(on_ac, d2 - d6, 1.0)
    result = np.where(on_ac[:, None], a + ac * t_ac[:, None], result)
    on_ab = (vc <= 0) & (d1 >= 0) & (d3 <= 0)
    t_ab = d1 / np.where(on_ab, d1 - d3, 1.0)
    result = np.where(on_ab[:, None], a + ab * t_ab[:, None], result)
    # vertex regions
    result = np.where(((d6 >= 0) & (d5 <= d6))[:, None], c, result)
    result = np.where(((d3 >= 0) & (d4 <= d3))[:, None], b, result)
    return np.where(((d1 <= 0) & (d2 <= 0))[:, None], a, result)


def _dot(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, y)


class SurfaceQuery:
    """Closest points on a triangle mesh. Candidate triangles come from a k-d tree of their centroids: the
    ``k`` nearest give an upper bound d; every triangle whose centroid lies within d + (the largest
    centroid-to-corner distance, ``reach``) is then tested — no closer triangle can lie outside that
    ball, so the result is exact — for points within ``NEAR`` reaches of the surface."""

    def __init__(self, vertices: np.ndarray, triangles: np.ndarray, k: int = 8) -> None:
        self.vertices = np.asarray(vertices, np.float64)
        self.triangles = np.asarray(triangles, np.int64)
        if self.triangles.ndim != 2 or len(self.triangles) == 0:
            raise ValueError("a surface needs at least one triangle")
        corners = self.vertices[self.triangles]  # (m, 3, 3)
        self.centroids = corners.mean(axis=1)
        self.reach = float(np.linalg.norm(corners - self.centroids[:, None], axis=2).max())
        self.tree = cKDTree(self.centroids)
        self.k = min(k, len(self.triangles))

    def _distances(self, points: np.ndarray, tri: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a, b, c = (self.vertices[self.triangles[tri, j]] for j in range(3))
        closest = closest_on_triangles(points, a, b, c)
        return closest, np.linalg.norm(points - closest, axis=1)

    def closest(self, points: np.ndarray, exact: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For float (n, 3) ``points``: the closest surface points float64 (n, 3), their distances (n,) and
        triangles int64 (n,). ``exact=False`` stops at the ``k`` nearest centroids' triangles (at most one
        reach too far, in practice exact on even meshes; what ICP's iterations use)."""
        points = np.asarray(points, np.float64)
        n = len(points)
        _, near = self.tree.query(points, k=self.k)
        near = np.asarray(near).reshape(n, -1)
        best = np.full(n, np.inf)
        best_tri = np.zeros(n, np.int64)
        best_point = np.zeros((n, 3))
        for j in range(near.shape[1]):  # an upper bound from the k nearest centroids' triangles
            point, distance = self._distances(points, near[:, j])
            better = distance < best
            best[better], best_tri[better], best_point[better] = distance[better], near[better, j], point[better]
        if not exact:
            return best_point, best, best_tri
        # Exact for points within NEAR reaches of the surface (every scan point once aligned); farther
        # ones keep the bound's triangle, at most one reach (the largest triangle's size) too far.
        near_points = np.flatnonzero(best <= NEAR * self.reach)
        candidates = self.tree.query_ball_point(points[near_points], best[near_points] + self.reach + 1e-9)
        counts = np.array([len(c) for c in candidates], np.int64)
        order = np.repeat(near_points, counts)
        flat = np.fromiter((t for c in candidates for t in c), np.int64, count=int(counts.sum()))
        for start in range(0, len(flat), _PAIRS):
            rows, tri = order[start : start + _PAIRS], flat[start : start + _PAIRS]
            point, distance = self._distances(points[rows], tri)
            # the minimum per point within this chunk, then against the best so far
            sort = np.lexsort((distance, rows))
            rows, tri, point, distance = rows[sort], tri[sort], point[sort], distance[sort]
            first = np.r_[True, rows[1:] != rows[:-1]]
            rows, tri, point, distance = rows[first], tri[first], point[first], distance[first]
            better = distance < best[rows]
            r = rows[better]
            best[r], best_tri[r], best_point[r] = distance[better], tri[better], point[better]
        return best_point, best, best_tri


@dataclass(frozen=True)
class Alignment:
    """x -> scale · rotation @ x + translation, and how ICP got there."""

    scale: float
    rotation: np.ndarray
    translation: np.ndarray
    iterations: int = 0
    converged: bool = True

    def apply(self, points: np.ndarray) -> np.ndarray:
        return self.scale * np.asarray(points, np.float64) @ self.rotation.T + self.translation

    def inverse(self, points: np.ndarray) -> np.ndarray:
        return (np.asarray(points, np.float64) - self.translation) @ self.rotation / self.scale


def fit_transform(source: np.ndarray, target: np.ndarray, with_scale: bool) -> Alignment:
    """Least-squares target ≈ s·R·source + t (Umeyama); s = 1 unless ``with_scale``."""
    scale, rotation, translation = similarity_transform(source, target)
    if not with_scale:
        scale = 1.0
        translation = np.mean(target, axis=0) - rotation @ np.mean(source, axis=0)
    return Alignment(scale, rotation, translation)


def icp(
    surface: SurfaceQuery,
    targets: np.ndarray,
    start: Alignment,
    with_scale: bool = False,
    iterations: int = 60,
    tolerance: float = 1e-6,
) -> Alignment:
    """Align ``surface`` (a mesh, moved by the result) to the float (n, 3) ``targets`` (scan points),
    point-to-plane: each target is paired with its closest point on the moved surface, and a small
    rotation ω, translation τ (and scale σ) minimising Σ (n · (moved closest - target))² is solved
    linearised (n · (ω × c) = ω · (c × n)) and composed, until the step's largest displacement is below
    ``tolerance`` x the targets' size. Point-to-plane lets the surfaces slide, so it converges in a few
    steps where point-to-point crawls."""
    targets = np.asarray(targets, np.float64)
    extent = float(np.ptp(targets, axis=0).max()) or 1.0
    corners = surface.vertices[surface.triangles]
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-300)
    scale, rotation, translation = start.scale, start.rotation, start.translation
    for step in range(1, iterations + 1):
        current = Alignment(scale, rotation, translation)
        # closest points on the moved surface = the moved closest points to the un-moved targets
        closest, _, triangle = surface.closest(current.inverse(targets), exact=False)
        c = current.apply(closest)
        n = normals[triangle] @ rotation.T
        centre = c.mean(axis=0)
        c0 = c - centre
        columns = [np.cross(c0, n), n] + ([np.einsum("ij,ij->i", n, c0)[:, None]] if with_scale else [])
        a = np.column_stack(columns)
        b = np.einsum("ij,ij->i", n, targets - c)
        x, *_ = np.linalg.lstsq(a, b, rcond=1e-10)
        omega, tau, sigma = x[:3], x[3:6], (x[6] if with_scale else 0.0)
        delta = _rotation_from_vector(omega)
        scale = (1 + sigma) * scale
        rotation = delta @ rotation
        translation = (1 + sigma) * delta @ (translation - centre) + centre + tau
        moved = np.abs((1 + sigma) * c0 @ delta.T - c0 + tau).max()
        if moved <= tolerance * extent:
            return Alignment(scale, rotation, translation, step, True)
    return Alignment(scale, rotation, translation, iterations, False)


def _rotation_from_vector(omega: np.ndarray) -> np.ndarray:
    """The rotation by |ω| radians about ω (Rodrigues)."""
    angle = float(np.linalg.norm(omega))
    if angle < 1e-15:
        return np.eye(3)
    k = omega / angle
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross
