"""Rotations between a face model's frame and the image's mesh frame.

Model frames are y up, z towards the viewer (out of the face); the mesh frame is the image's camera
frame: x right, y down, z away from the camera. A face looking straight at the camera therefore has
rotation FLIP_YZ (180 degrees about x).
"""

from __future__ import annotations

import numpy as np

FLIP_YZ = np.diag([1.0, -1.0, -1.0])
"""Model frame -> mesh frame for a frontal face."""


def yaw_pitch_roll(rotation: np.ndarray) -> np.ndarray:
    """Head angles in degrees (float64 (3,)) of a model -> mesh frame rotation; all zero when frontal.

    yaw > 0: the face turns towards the image's right (its nose points to +x);
    pitch > 0: the face tilts down (nose towards +y, the image's bottom);
    roll > 0: the head tilts clockwise in the image.
    The head rotation H = R · FLIP_YZ (identity when frontal) is decomposed about the mesh frame's
    axes as H = R_y(-yaw) · R_x(pitch) · R_z(roll).
    """
    head = np.asarray(rotation, np.float64) @ FLIP_YZ
    yaw = -np.degrees(np.arctan2(head[0, 2], head[2, 2]))
    pitch = np.degrees(np.arcsin(np.clip(-head[1, 2], -1.0, 1.0)))
    roll = np.degrees(np.arctan2(head[1, 0], head[1, 1]))
    return np.array([yaw, pitch, roll])


def rotation_from_yaw_pitch_roll(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """The model -> mesh frame rotation with these head angles in degrees (inverse of yaw_pitch_roll)."""
    a, b, c = np.radians([-yaw, pitch, roll])
    ry = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return ry @ rx @ rz @ FLIP_YZ


def similarity_transform(
    source: np.ndarray, target: np.ndarray, weights: np.ndarray | None = None
) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares s, R, t with target ≈ s·R·source + t for (n, 3) point sets, optionally weighted
    (Umeyama 1991); R is a proper rotation."""
    source = np.asarray(source, np.float64)
    target = np.asarray(target, np.float64)
    w = (
        np.full(len(source), 1.0 / len(source))
        if weights is None
        else np.asarray(weights, np.float64) / np.sum(weights)
    )
    mu_s, mu_t = w @ source, w @ target
    a, b = source - mu_s, target - mu_t
    u, sigma, vt = np.linalg.svd((b * w[:, None]).T @ a)
    correction = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    rotation = u @ correction @ vt
    scale = float(np.trace(np.diag(sigma) @ correction) / (w @ (a**2).sum(1)))
    return scale, rotation, mu_t - scale * rotation @ mu_s


def orthographic_pose(
    source: np.ndarray, target_xy: np.ndarray, weights: np.ndarray | None = None, iterations: int = 20
) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares s, R, t with target_xy ≈ (s·R·source + t)[:, :2] (scaled orthographic projection) for
    (n, 3) model points and (n, 2) image points; t's z is 0 for the points' weighted centre.

    Starts from the best affine camera's nearest scaled rotation, then alternates: the targets' unknown
    depths are set to the posed model's, and s, R, t refitted in 3D (``similarity_transform``); each round
    lowers the image-plane error, which the depths never add to."""
    source = np.asarray(source, np.float64)
    xy = np.asarray(target_xy, np.float64)[:, :2]
    w = np.full(len(source), 1.0) if weights is None else np.asarray(weights, np.float64)
    mu_s, mu_t = (w @ source) / w.sum(), (w @ xy) / w.sum()
    a, b = source - mu_s, xy - mu_t
    affine = np.linalg.lstsq(a * np.sqrt(w)[:, None], b * np.sqrt(w)[:, None], rcond=None)[0].T  # (2, 3)
    u, sigma, vt = np.linalg.svd(affine, full_matrices=False)
    rows = u @ vt
    rotation = np.vstack([rows, np.cross(rows[0], rows[1])])
    scale = float(sigma.mean())
    translation = np.append(mu_t - scale * (rotation @ mu_s)[:2], -scale * (rotation @ mu_s)[2])
    for _ in range(iterations):
        depth = (scale * source @ rotation.T + translation)[:, 2]
        scale, rotation, translation = similarity_transform(source, np.column_stack([xy, depth]), w)
    translation[2] -= (w @ (scale * source @ rotation.T + translation)[:, 2]) / w.sum()
    return scale, rotation, translation
