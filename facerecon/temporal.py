"""Temporal stability over a video's frames: One-Euro filters on landmarks and head pose, pose removal, jitter.

The One-Euro filter (Casiez, Roussel and Vogel, CHI 2012) is a low-pass filter whose cut-off rises with the
signal's speed: still faces are smoothed hard (no jitter), moving ones little (no lag). Every value is
filtered in units where its speed means the same for any photo size: landmarks and translation in face
sizes (the detector box's diagonal), rotation in radians, scale as its logarithm.

Pose removal maps a mesh from the mesh frame back to the regressor's model frame (``v_model = Rᵀ(v − t)/s``,
see :class:`~facerecon.kernel.contract.records.CoarseResult`), then a similarity (Procrustes) alignment
removes what the regressor's pose did not explain, so shapes of different frames can be compared and averaged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from facerecon.kernel.contract.records import CoarseResult, Face


@dataclass(frozen=True)
class OneEuroSettings:
    """min_cutoff: cut-off (Hz) of a still signal — lower smooths more; beta: how fast the cut-off rises with
    speed (per unit of speed per second) — higher lags less; d_cutoff: cut-off (Hz) of the speed estimate."""

    min_cutoff: float = 1.0
    beta: float = 5.0
    d_cutoff: float = 1.0


class OneEuroFilter:
    """Element-wise One-Euro filter of float arrays of one shape; ``__call__(x, t)`` returns the filtered x."""

    def __init__(self, settings: OneEuroSettings) -> None:
        self.settings = settings
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None
        self._t = 0.0

    @staticmethod
    def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
        tau = 1.0 / (2.0 * math.pi * np.asarray(cutoff))
        return 1.0 / (1.0 + tau / dt)

    def __call__(self, x: np.ndarray, t: float) -> np.ndarray:
        x = np.asarray(x, np.float64)
        if self._x is None or self._x.shape != x.shape or t <= self._t:
            self._x, self._dx, self._t = x.copy(), np.zeros_like(x), t
            return x
        assert self._dx is not None
        dt = t - self._t
        s = self.settings
        dx = (x - self._x) / dt
        a_d = self._alpha(s.d_cutoff, dt)
        self._dx = self._dx + a_d * (dx - self._dx)
        a = self._alpha(s.min_cutoff + s.beta * np.abs(self._dx), dt)
        self._x = self._x + a * (x - self._x)
        self._t = t
        return self._x.copy()


def face_size(face: Face) -> float:
    """The detector box's diagonal in pixels: the unit landmarks and translation are filtered in."""
    x0, y0, x1, y1 = (float(v) for v in face.box)
    return max(math.hypot(x1 - x0, y1 - y0), 1.0)


class LandmarkSmoother:
    """Filters a face's landmarks (and its box with them) frame after frame."""

    def __init__(self, settings: OneEuroSettings) -> None:
        self._filter = OneEuroFilter(settings)

    def __call__(self, face: Face, t: float) -> Face:
        size = face_size(face)
        stacked = np.vstack([face.landmarks.points, np.column_stack([face.box.reshape(2, 2), np.zeros(2)])])
        smooth = self._filter(stacked / size, t) * size
        points, box = smooth[:-2], smooth[-2:, :2].reshape(4)
        if not (box[0] < box[2] and box[1] < box[3]):
            return face
        return replace(face, box=box, landmarks=replace(face.landmarks, points=points))


def rotation_log(rotation: np.ndarray) -> np.ndarray:
    """The axis-angle vector (3,) of a rotation matrix (angle below π)."""
    from scipy.spatial.transform import Rotation

    return np.asarray(Rotation.from_matrix(np.asarray(rotation, np.float64)).as_rotvec())


def rotation_exp(vector: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return np.asarray(Rotation.from_rotvec(np.asarray(vector, np.float64)).as_matrix())


class PoseSmoother:
    """Filters a CoarseResult's pose (rotation, translation, scale) and re-poses its mesh to match. The
    rotation is filtered relative to the first frame's (the model frames' y/z flip is a half turn, where an
    axis-angle vector wraps)."""

    def __init__(self, settings: OneEuroSettings) -> None:
        self._filter = OneEuroFilter(settings)
        self._reference: np.ndarray | None = None

    def __call__(self, coarse: CoarseResult, face: Face, t: float) -> CoarseResult:
        rotation = np.asarray(coarse.rotation, np.float64)
        if self._reference is None:
            self._reference = rotation
        size = face_size(face)
        state = np.concatenate(
            [
                rotation_log(self._reference.T @ rotation),
                np.asarray(coarse.translation) / size,
                [math.log(coarse.scale)],
            ]
        )
        smooth = self._filter(state, t)
        new_rotation = self._reference @ rotation_exp(smooth[:3])
        new_translation = smooth[3:6] * size
        new_scale = math.exp(smooth[6])
        model = to_model_frame(coarse.mesh.vertices, coarse)
        vertices = new_scale * model @ new_rotation.T + new_translation
        return replace(
            coarse,
            mesh=coarse.mesh.with_vertices(vertices),
            rotation=new_rotation,
            translation=new_translation,
            scale=new_scale,
        )


def to_model_frame(vertices: np.ndarray, coarse: CoarseResult) -> np.ndarray:
    """float64 (N, 3): mesh-frame ``vertices`` mapped back through the regressor's pose, ``Rᵀ(v − t)/s``."""
    rotation = np.asarray(coarse.rotation, np.float64)
    return (np.asarray(vertices, np.float64) - np.asarray(coarse.translation, np.float64)) @ rotation / coarse.scale


def similarity_align(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``source`` (N, 3) moved by the similarity (rotation, uniform scale, translation) that best fits it
    to ``target`` (N, 3) in least squares (Umeyama 1991)."""
    mu_s, mu_t = source.mean(0), target.mean(0)
    a, b = source - mu_s, target - mu_t
    u, sigma, vt = np.linalg.svd(b.T @ a)
    d = np.sign(np.linalg.det(u @ vt))
    fix = np.diag([1.0, 1.0, d])
    rotation = u @ fix @ vt
    scale = float((sigma * np.diag(fix)).sum() / max((a**2).sum(), 1e-12))
    return scale * a @ rotation.T + mu_t


def shape_size(shape: np.ndarray) -> float:
    """RMS distance of the vertices from their centroid: the unit jitter is reported in."""
    return float(np.sqrt(((shape - shape.mean(0)) ** 2).sum(1).mean()))


def jitter(shapes: list[np.ndarray]) -> dict[str, float | int]:
    """Frame-to-frame vertex motion of pose-removed shapes (each (N, 3), one topology, model units):
    each frame aligned (similarity) to the previous one, the mean vertex distance; ``mean`` in model units
    (mm for a 3DMM), ``relative`` as a fraction of the shape's RMS radius."""
    if len(shapes) < 2:
        return {"pairs": 0, "mean": 0.0, "relative": 0.0}
    motions = [
        float(np.linalg.norm(similarity_align(b, a) - a, axis=1).mean())
        for a, b in zip(shapes[:-1], shapes[1:], strict=True)
    ]
    size = float(np.mean([shape_size(s) for s in shapes]))
    return {"pairs": len(motions), "mean": float(np.mean(motions)), "relative": float(np.mean(motions)) / size}


def mean_shape(shapes: list[np.ndarray]) -> tuple[np.ndarray, list[float]]:
    """The average of pose-removed shapes (each aligned to the first, then to the running mean, twice) and
    each frame's RMS vertex distance to it (model units)."""
    mean = shapes[0]
    for _ in range(2):
        aligned = [similarity_align(s, mean) for s in shapes]
        mean = np.mean(aligned, axis=0)
    distances = [float(np.sqrt(((a - mean) ** 2).sum(1).mean())) for a in aligned]
    return mean, distances
