"""Landmark evaluation helpers: read iBUG ``.pts`` annotations and compute the normalised mean error.

NME here = mean over the 68 points of the Euclidean error, divided by the distance between the outer
eye corners (iBUG points 37 and 46, 1-based; indices 36 and 45 here), the 300-W convention.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

OUTER_EYE_CORNERS = (36, 45)


def read_pts(path: str | Path) -> np.ndarray:
    """An iBUG ``.pts`` file as float64 (K, 2) image-frame pixels (its 1-based coordinates minus 1)."""
    lines = Path(path).read_text().splitlines()
    start = lines.index("{") + 1
    end = lines.index("}")
    points = np.array([[float(v) for v in line.split()[:2]] for line in lines[start:end]])
    return points - 1.0


def nme(predicted: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Mean point error of (68, 2) landmarks normalised by the outer-eye-corner distance, over the
    ``valid`` points only when given (a model may not define every iBUG point)."""
    predicted = np.asarray(predicted, np.float64)[:, :2]
    truth = np.asarray(truth, np.float64)[:, :2]
    iod = np.linalg.norm(truth[OUTER_EYE_CORNERS[0]] - truth[OUTER_EYE_CORNERS[1]])
    errors = np.linalg.norm(predicted - truth, axis=1)
    if valid is not None:
        errors = errors[np.asarray(valid, bool)]
    return float(errors.mean() / iod)


def shared_data_dir(repo_root: str | Path | None = None) -> Path | None:
    """The shared test data: ``$FACERECON_SHARED_DATA``, else ``<repo>/../shared/data``; None if absent."""
    env = os.environ.get("FACERECON_SHARED_DATA")
    if env:
        return Path(env) if Path(env).is_dir() else None
    root = Path(repo_root) if repo_root else Path(__file__).resolve().parents[1]
    candidate = root.parent / "shared" / "data"
    return candidate if candidate.is_dir() else None


def annotated_face_index(boxes: np.ndarray, truth: np.ndarray) -> int | None:
    """Which of the (n, 4) xyxy face ``boxes`` is the annotated face (its centre nearest the centre of
    the annotation's bounding box, within half the annotation's size); None when none is."""
    if len(boxes) == 0:
        return None
    lo, hi = truth.min(0), truth.max(0)
    centre, size = (lo + hi) / 2, float(np.linalg.norm(hi - lo))
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    distance = np.linalg.norm((boxes[:, :2] + boxes[:, 2:]) / 2 - centre, axis=1)
    best = int(distance.argmin())
    return best if distance[best] < 0.5 * size else None
