"""Which model vertex each detector landmark sits on.

* iBUG-68: from the model's own map (shipped with the model: eos's ``ibug_to_*.txt``, 3DDFA's keypoints,
  Deep3DFaceRecon's keypoints), with the jaw line (points 0-16) sliding along the model's contour
  vertices where the model lists them.
* MediaPipe-478: derived automatically for any model that has an iBUG-68 map. MediaPipe's canonical
  face is aligned to the model's mean shape by the similarity transform between the two faces' inner
  iBUG points (17-67), warped by a thin-plate spline through those points so eyes, nose and mouth line
  up, and each of its 468 vertices is then snapped to the nearest point of the model's surface
  (barycentric). Points farther than ``max_distance_mm`` from the surface (outside the model's extent,
  e.g. the forehead of a face-only model) are left out. The result is cached on disk per model.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from facerecon.geometry.transforms import similarity_transform
from facerecon.kernel.contract.errors import ModelFileError
from facerecon.kernel.contract.records import IBUG68, LandmarkMap

from .fitting import Correspondence
from .model import MorphableModel

MEDIAPIPE478 = "mediapipe478"
JAW_RIGHT = tuple(range(0, 8))  # iBUG points 1-8: the subject's right side of the jaw (image left)
JAW_LEFT = tuple(range(9, 17))  # iBUG points 10-17: the subject's left side
INNER_IBUG = np.arange(17, 68)
CACHE_VERSION = 1


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "facerecon" / "correspondence"


def model_key(model: MorphableModel) -> str:
    """A content hash of what the correspondence depends on (mean shape, triangles, iBUG map)."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(model.mean).tobytes())
    digest.update(np.ascontiguousarray(model.triangles).tobytes())
    lmap = model.landmark_maps.get(IBUG68)
    if lmap is not None:
        digest.update(np.ascontiguousarray(lmap.vertex_ids).tobytes())
        digest.update(np.ascontiguousarray(lmap.weights).tobytes())
    digest.update(str(CACHE_VERSION).encode())
    return digest.hexdigest()[:24]


def for_scheme(
    model: MorphableModel,
    scheme: str,
    *,
    canonical: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    contour_weight: float = 1.0,
) -> Correspondence:
    """The correspondence for a detector scheme ("ibug68" or "mediapipe478"/"mediapipe468").

    canonical: (vertices (468, 3) model-frame-like canonical face, ibug ids (68, 3), ibug weights (68, 3)),
        needed only for MediaPipe schemes (see :func:`mediapipe_map`).
    """
    if scheme == IBUG68:
        lmap = model.landmark_maps.get(IBUG68)
        if lmap is None:
            raise ModelFileError(f"model {model.name or model.topology!r} has no iBUG-68 landmark map")
        weights = np.ones(68)
        weights[list(JAW_RIGHT + JAW_LEFT) + [8]] = contour_weight
        ids, bary = lmap.vertex_ids.copy(), lmap.weights.copy()
        contour: dict[int, np.ndarray] = {}
        if len(model.contours.get("right", ())) and len(model.contours.get("left", ())):
            contour = {k: model.contours["right"] for k in JAW_RIGHT}
            contour.update({k: model.contours["left"] for k in JAW_LEFT})
            # Maps such as eos's leave the jaw line out (it has no fixed vertex): start each jaw landmark
            # on a contour vertex; the fitter slides it to the silhouette.
            for k, candidates in contour.items():
                if not bary[k].any():
                    ids[k], bary[k] = candidates[len(candidates) // 2], (1.0, 0.0, 0.0)
        return Correspondence(ids, bary, weights, contour)
    if scheme in (MEDIAPIPE478, "mediapipe468"):
        if canonical is None:
            raise ValueError("MediaPipe correspondence needs the canonical face")
        lmap = mediapipe_map(model, *canonical)
        n = 478 if scheme == MEDIAPIPE478 else 468
        ids = np.zeros((n, 3), np.int64)
        weights = np.zeros((n, 3))
        ids[:468], weights[:468] = lmap.vertex_ids[:468], lmap.weights[:468]
        return Correspondence(ids, weights, np.ones(n))
    raise ModelFileError(f"no correspondence between landmark scheme {scheme!r} and model {model.topology!r}")


def mediapipe_map(
    model: MorphableModel,
    canonical_vertices: np.ndarray,
    canonical_ibug_ids: np.ndarray,
    canonical_ibug_weights: np.ndarray,
    *,
    max_distance_mm: float = 8.0,
    use_cache: bool = True,
) -> LandmarkMap:
    """MediaPipe-478 -> model surface points (iris points and far points get zero rows)."""
    path = cache_dir() / f"{model.topology}-{model_key(model)}.npz"
    if use_cache and path.is_file():
        try:
            with np.load(path) as cached:
                return LandmarkMap(MEDIAPIPE478, cached["vertex_ids"], cached["weights"])
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry is recomputed
    lmap = _derive_mediapipe_map(model, canonical_vertices, canonical_ibug_ids, canonical_ibug_weights, max_distance_mm)
    if use_cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, vertex_ids=lmap.vertex_ids, weights=lmap.weights)
            tmp.replace(path)
        except OSError:
            pass  # a read-only home only costs the recomputation
    return lmap


def _derive_mediapipe_map(
    model: MorphableModel,
    canonical: np.ndarray,
    ibug_ids: np.ndarray,
    ibug_weights: np.ndarray,
    max_distance_mm: float,
) -> LandmarkMap:
    model_ibug = model.landmark_maps.get(IBUG68)
    if model_ibug is None:
        raise ModelFileError(
            f"model {model.name or model.topology!r} has no iBUG-68 map, so MediaPipe landmarks cannot be "
            "placed on it; add one (e.g. eos's ibug_to_*.txt) or use a 68-point detector"
        )
    mean = model.mean.astype(np.float64)
    canonical = np.asarray(canonical, np.float64)
    source = np.einsum("kj,kjc->kc", ibug_weights, canonical[ibug_ids])
    target = model_ibug.locate(mean)
    inner = INNER_IBUG[model_ibug.valid[INNER_IBUG]]
    if len(inner) < 20:
        raise ModelFileError(f"model {model.topology!r}: too few inner iBUG landmarks ({len(inner)}) to align")
    scale, rotation, translation = similarity_transform(source[inner], target[inner])
    moved = scale * canonical @ rotation.T + translation
    # Thin-plate warp through the inner landmarks: canonical features land on the model's features.
    from scipy.interpolate import RBFInterpolator  # imported here: ~0.5 s, which start-up need not pay

    warp = RBFInterpolator(
        scale * source[inner] @ rotation.T + translation,
        target[inner] - (scale * source[inner] @ rotation.T + translation),
        kernel="thin_plate_spline",
        smoothing=1.0,
    )
    moved = moved + warp(moved)
    triangle, bary, distance = closest_surface_points(mean, model.triangles, moved)
    ids = model.triangles[triangle].astype(np.int32)
    weights = bary.astype(np.float32)
    far = distance > max_distance_mm
    weights[far] = 0.0
    out_ids = np.zeros((478, 3), np.int32)
    out_weights = np.zeros((478, 3), np.float32)
    out_ids[: len(ids)], out_weights[: len(ids)] = ids, weights
    out_weights /= np.where(out_weights.sum(1, keepdims=True) > 0, out_weights.sum(1, keepdims=True), 1.0)
    return LandmarkMap(MEDIAPIPE478, out_ids, out_weights)


def closest_surface_points(
    vertices: np.ndarray, triangles: np.ndarray, points: np.ndarray, candidates: int = 12
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each point (P, 3): nearest triangle index (P,), barycentric weights (P, 3), distance (P,).

    Searches the triangles around the ``candidates`` nearest vertices (exact for reasonable meshes).
    """
    vertices = np.asarray(vertices, np.float64)
    triangles = np.asarray(triangles)
    from scipy.spatial import cKDTree

    _, near = cKDTree(vertices).query(points, k=min(candidates, len(vertices)))
    near = np.atleast_2d(near)
    # Vertex -> incident triangles as a padded table.
    order = np.argsort(triangles.ravel(), kind="stable")
    owner = order // 3
    counts = np.bincount(triangles.ravel(), minlength=len(vertices))
    starts = np.concatenate([[0], np.cumsum(counts)])
    width = int(counts.max())
    table = np.full((len(vertices), width), -1)
    for k in range(width):
        has = counts > k
        table[has, k] = owner[starts[:-1][has] + k]
    cand = table[near].reshape(len(points), -1)  # (P, candidates * width)
    valid = cand >= 0
    tri = triangles[np.where(valid, cand, 0)]  # (P, C, 3)
    closest, bary = _closest_on_triangles(vertices[tri], points[:, None, :])
    dist = np.linalg.norm(closest - points[:, None, :], axis=2)
    dist[~valid] = np.inf
    best = np.argmin(dist, axis=1)
    rows = np.arange(len(points))
    return cand[rows, best], bary[rows, best], dist[rows, best]


def _closest_on_triangles(tri: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Closest points on triangles tri (..., 3, 3) to points p (..., 3), with barycentrics
    (Ericson, Real-Time Collision Detection, 5.1.5), vectorised over all pairs."""
    a, b, c = tri[..., 0, :], tri[..., 1, :], tri[..., 2, :]
    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = (ab * ap).sum(-1), (ac * ap).sum(-1)
    bp = p - b
    d3, d4 = (ab * bp).sum(-1), (ac * bp).sum(-1)
    cp = p - c
    d5, d6 = (ab * cp).sum(-1), (ac * cp).sum(-1)
    va = d3 * d6 - d5 * d4
    vb = d5 * d2 - d1 * d6
    vc = d1 * d4 - d3 * d2
    denom = va + vb + vc
    with np.errstate(divide="ignore", invalid="ignore"):
        v = vb / denom
        w = vc / denom
        bary = np.stack([1 - v - w, v, w], -1)  # interior by default
        # Edge regions.
        t_ab = d1 / (d1 - d3)
        t_ac = d2 / (d2 - d6)
        t_bc = (d4 - d3) / ((d4 - d3) + (d5 - d6))
    regions = [
        ((d1 <= 0) & (d2 <= 0), np.stack([np.ones_like(d1), 0 * d1, 0 * d1], -1)),
        ((d3 >= 0) & (d4 <= d3), np.stack([0 * d1, np.ones_like(d1), 0 * d1], -1)),
        ((d6 >= 0) & (d5 <= d6), np.stack([0 * d1, 0 * d1, np.ones_like(d1)], -1)),
        ((vc <= 0) & (d1 >= 0) & (d3 <= 0), np.stack([1 - t_ab, t_ab, 0 * d1], -1)),
        ((vb <= 0) & (d2 >= 0) & (d6 <= 0), np.stack([1 - t_ac, 0 * d1, t_ac], -1)),
        ((va <= 0) & ((d4 - d3) >= 0) & ((d5 - d6) >= 0), np.stack([0 * d1, 1 - t_bc, t_bc], -1)),
    ]
    decided = np.zeros(d1.shape, bool)
    for mask, value in regions:
        take = mask & ~decided
        bary = np.where(take[..., None], value, bary)
        decided |= take
    bary = np.nan_to_num(bary, nan=1.0 / 3.0)
    closest = (bary[..., None] * tri).sum(-2)
    return closest, bary
