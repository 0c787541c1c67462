"""3DDFA_V2's 62 parameters: the crop the network sees, its parameter statistics, and the camera and pose
the parameters describe, in facerecon's frames (the maths are in :mod:`facerecon.plugins.tddfa`'s
docstring). numpy (and OpenCV for the crop's resize) only: no network here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from facerecon.facelib.unpickle import safe_load
from facerecon.geometry.transforms import FLIP_YZ, yaw_pitch_roll
from facerecon.kernel.contract.errors import InputError, ModelFileError

__all__ = [
    "BFM_UNITS_PER_MM",
    "INPUT_SIZE",
    "N_EXPRESSION",
    "N_IDENTITY",
    "N_PARAMS",
    "N_POSE",
    "PARAM_STATS_NAME",
    "aflw_pitch_yaw_roll",
    "camera_from_params",
    "load_param_stats",
    "locate_param_stats",
    "network_input",
    "pose_from_params",
    "roi_box_from_box",
    "roi_box_from_landmarks",
]

INPUT_SIZE = 120
"""Side of the network's square input crop, pixels."""
N_POSE, N_IDENTITY, N_EXPRESSION = 12, 40, 10
N_PARAMS = N_POSE + N_IDENTITY + N_EXPRESSION
BFM_UNITS_PER_MM = 1000.0
"""3DDFA's BFM is in micrometres; a MorphableModel is in millimetres."""
PARAM_STATS_NAME = "param_mean_std_62d_120x120.pkl"


# -- crops ---------------------------------------------------------------------------------------------


def roi_box_from_box(box: Iterable[float]) -> np.ndarray:
    """3DDFA_V2's crop for a face box (x0, y0, x1, y1): float64 (4,) x0, y0, x1, y1 of a square."""
    left, top, right, bottom = (float(v) for v in box)
    old_size = (right - left + bottom - top) / 2
    center_x = right - (right - left) / 2
    center_y = bottom - (bottom - top) / 2 + old_size * 0.14
    size = int(old_size * 1.58)
    x0, y0 = center_x - size / 2, center_y - size / 2
    return np.array([x0, y0, x0 + size, y0 + size])


def roi_box_from_landmarks(points: np.ndarray) -> np.ndarray:
    """3DDFA_V2's crop for landmarks (K, 2+) in image pixels: a square centred on their bounding box, its
    side the diagonal of the smallest square holding that box. float64 (4,) x0, y0, x1, y1."""
    xy = np.asarray(points, np.float64)[:, :2]
    lo, hi = xy.min(0), xy.max(0)
    center = (lo + hi) / 2
    radius = float((hi - lo).max()) / 2
    side = float(np.sqrt(2.0) * 2 * radius)
    x0, y0 = center - side / 2
    return np.array([x0, y0, x0 + side, y0 + side])


def network_input(image: np.ndarray, roi_box: Iterable[float], size: int = INPUT_SIZE) -> np.ndarray:
    """float32 (1, 3, size, size): the RGB ``image``'s crop ``roi_box`` as 3DDFA_V2 feeds it — bounds
    rounded to integers, zeros outside the image, bilinear resize, BGR, (x - 127.5) / 128."""
    import cv2

    sx, sy, ex, ey = (round(float(v)) for v in roi_box)
    height, width = image.shape[:2]
    if ex - sx < 1 or ey - sy < 1:
        raise InputError(f"3ddfa: the face crop {[sx, sy, ex, ey]} is under one pixel; is the face box valid?")
    if (ex - sx) * (ey - sy) > 25 * height * width + 1_000_000:
        raise InputError(f"3ddfa: the face crop {[sx, sy, ex, ey]} is far larger than the {width}x{height} image")
    patch = np.zeros((ey - sy, ex - sx, 3), np.uint8)
    x0, y0, x1, y1 = max(sx, 0), max(sy, 0), min(ex, width), min(ey, height)
    if x0 < x1 and y0 < y1:
        patch[y0 - sy : y1 - sy, x0 - sx : x1 - sx] = image[y0:y1, x0:x1, ::-1]  # RGB -> BGR
    resized = cv2.resize(patch, (size, size), interpolation=cv2.INTER_LINEAR)
    return ((resized.astype(np.float32).transpose(2, 0, 1) - 127.5) / 128.0)[None]


# -- parameters -> camera, pose ------------------------------------------------------------------------


def camera_from_params(
    params62: np.ndarray, roi_box: Iterable[float] | None = None, size: int = INPUT_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """The regressed affine camera in facerecon's frames: ``(A (3, 3), b (3,))`` float64 with
    ``mesh-frame vertex = A @ model_vertex_mm + b`` (see the package docstring). ``roi_box``: the crop the
    parameters refer to (default: the 120x120 crop itself, i.e. crop pixels)."""
    p = np.asarray(params62, np.float64).reshape(-1)
    if p.size < N_POSE:
        raise ValueError(f"need at least the 12 pose parameters, got {p.size}")
    camera = p[:N_POSE].reshape(3, 4)
    sx, sy, ex, ey = (float(v) for v in (roi_box if roi_box is not None else (0, 0, size, size)))
    scale_x, scale_y = (ex - sx) / size, (ey - sy) / size
    scale_z = (scale_x + scale_y) / 2
    matrix = BFM_UNITS_PER_MM * np.diag([scale_x, -scale_y, -scale_z]) @ camera[:, :3]
    offset = np.array([(camera[0, 3] - 1.0) * scale_x + sx, (size - camera[1, 3]) * scale_y + sy, 0.0])
    return matrix, offset


def aflw_pitch_yaw_roll(rotation: np.ndarray) -> np.ndarray:
    """Pitch, yaw, roll (degrees) of a model -> mesh-frame rotation in AFLW2000-3D / 300W-LP's
    ``Pose_Para`` convention (3DDFA's training labels): in the y-up camera frame the rotation is
    ``Rx(pitch) @ Ry(yaw) @ Rz(roll)`` with their matrices ``Rx = [[1,0,0],[0,c,s],[0,-s,c]]``,
    ``Ry = [[c,0,-s],[0,1,0],[s,0,c]]``, ``Rz = [[c,s,0],[-s,c,0],[0,0,1]]``. Yaw > 0: the nose points to
    the image's left; pitch > 0: looks up; roll > 0: tilts clockwise in the image."""
    r = FLIP_YZ @ np.asarray(rotation, np.float64)  # back to the y-up camera frame
    yaw = np.arcsin(np.clip(-r[0, 2], -1.0, 1.0))
    pitch = np.arctan2(r[1, 2], r[2, 2])
    roll = np.arctan2(r[0, 1], r[0, 0])
    return np.degrees([pitch, yaw, roll])


def pose_from_params(
    params62: np.ndarray, roi_box: Iterable[float] | None = None, size: int = INPUT_SIZE
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """``(scale, R, t, yaw_pitch_roll_deg)`` of the regressed camera: R float64 (3, 3) the rotation
    nearest (SVD) to the affine camera, model frame -> mesh frame; scale in image pixels per model
    millimetre (3DDFA's image-plane scale); t (3,) image pixels (the model origin, depth 0); angles in
    facerecon's convention (:func:`facerecon.geometry.transforms.yaw_pitch_roll`). Without ``roi_box``,
    scale and t are in pixels of the 120x120 crop."""
    matrix, offset = camera_from_params(params62, roi_box, size)
    u, _, vt = np.linalg.svd(matrix)
    fix = np.diag([1.0, 1.0, float(np.sign(np.linalg.det(u @ vt)))])
    rotation = u @ fix @ vt
    scale = float(np.linalg.norm(matrix[0]) + np.linalg.norm(matrix[1])) / 2
    return scale, rotation, offset, yaw_pitch_roll(rotation)


# -- files, parameter statistics ------------------------------------------------------------------------


def existing_file(path: Path | str, what: str) -> Path:
    """``path`` (``~`` expanded); ModelFileError naming ``what`` when it is no file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file ({what})")
    return path


def short_error(exc: BaseException) -> str:
    """``"Type: first line of the message"`` (200 characters at most) for an error message."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first[:200]}" if first else type(exc).__name__


def locate_param_stats(weights: Path) -> Path:
    """The default ``param_stats`` file for ``weights``: beside it, or in ``configs/`` next to it or next
    to its folder (3DDFA_V2 keeps weights in ``weights/`` and the statistics in ``configs/``)."""
    candidates = [
        weights.parent / PARAM_STATS_NAME,
        weights.parent / "configs" / PARAM_STATS_NAME,
        weights.parent.parent / "configs" / PARAM_STATS_NAME,
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ModelFileError(
        f"{PARAM_STATS_NAME} not found beside {weights} (looked in: {', '.join(str(c) for c in candidates)}); "
        "set the 3ddfa option param_stats"
    )


def load_param_stats(path: Path | str) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, std)`` float32 (62,) from 3DDFA's ``param_mean_std_62d_120x120.pkl``."""
    path = existing_file(path, "3DDFA parameter statistics")
    try:
        with path.open("rb") as stream:
            data = safe_load(stream)
    except Exception as exc:
        raise ModelFileError(f"{path}: not a 3DDFA parameter-statistics pickle ({short_error(exc)})") from None
    if not isinstance(data, Mapping) or "mean" not in data or "std" not in data:
        found = sorted(data) if isinstance(data, Mapping) else type(data).__name__
        raise ModelFileError(f"{path}: expected a dict with 'mean' and 'std' arrays, found {found}")
    mean = np.asarray(data["mean"], np.float32).reshape(-1)
    std = np.asarray(data["std"], np.float32).reshape(-1)
    if mean.shape != (N_PARAMS,) or std.shape != (N_PARAMS,):
        raise ModelFileError(f"{path}: 'mean' and 'std' must have {N_PARAMS} values, got {mean.size}, {std.size}")
    if not (np.isfinite(mean).all() and np.isfinite(std).all()):
        raise ModelFileError(f"{path}: parameter statistics contain NaN or infinity")
    return mean, std
