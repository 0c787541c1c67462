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
