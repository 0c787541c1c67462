"""Landmark annotations: iBUG ``.pts`` files and COCO-style json, the photos they belong to, and the
normalised mean error (NME).

NME = mean over the scored points of the Euclidean error, divided by either the distance between the
outer eye corners (iBUG points 37 and 46, 1-based; indices 36 and 45 here: the 300-W convention) or the
annotation's box size sqrt(w·h) (the AFLW / Menpo convention, usable on profiles).

Coordinates here are 0-based image pixels (the centre of the top-left pixel is (0, 0)). ``.pts`` files
are 1-based (1 is subtracted); COCO json keypoints are 0-based unless the caller says otherwise (mmpose's
300-W / 300-VW conversions copy the ``.pts`` numbers unchanged, so they are 1-based: ``origin=1``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facerecon.kernel.contract.errors import InputError

OUTER_EYE_CORNERS = (36, 45)
IBUG_POINTS = 68
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class AnnotatedPhoto:
    """One annotated face: ``image`` the photo, ``points`` float64 (68, 2) 0-based pixels (iBUG order),
    ``source`` the annotation it came from (a ``.pts`` path, or ``file.json#id``)."""

    image: Path
    points: np.ndarray
    source: str


def read_pts(path: str | Path) -> np.ndarray:
    """An iBUG ``.pts`` file as float64 (K, 2) image-frame pixels (its 1-based coordinates minus 1)."""
    try:
        lines = [line.strip() for line in Path(path).read_text().splitlines()]
        start, end = lines.index("{") + 1, lines.index("}")
        points = np.array([[float(v) for v in line.split()[:2]] for line in lines[start:end]], np.float64)
    except (OSError, UnicodeDecodeError, ValueError, IndexError) as exc:
        raise InputError(f"{path}: not an iBUG .pts file ({exc})") from None
    if points.ndim != 2 or points.shape[1] != 2 or not np.isfinite(points).all():
        raise InputError(f"{path}: not an iBUG .pts file (no points between braces)")
    return points - 1.0


def read_coco(path: str | Path, origin: float = 0.0) -> list[AnnotatedPhoto]:
    """The 68-point faces of a COCO-style keypoint json (``images`` with ``file_name``, ``annotations``
    with ``image_id`` and ``keypoints`` x, y, v triples), photos relative to the json's folder; keypoints
    minus ``origin``. Annotations with another number of points are an :class:`InputError`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        images = {item["id"]: item for item in data["images"]}
        faces = []
        for item in data["annotations"]:
            keypoints = np.asarray(item["keypoints"], np.float64)
            if keypoints.size != 3 * IBUG_POINTS:
                raise InputError(
                    f"{path}: annotation {item.get('id')} has {keypoints.size // 3} keypoints, not {IBUG_POINTS}"
                )
            image = images[item["image_id"]]
            points = keypoints.reshape(IBUG_POINTS, 3)[:, :2] - origin
            faces.append(AnnotatedPhoto(path.parent / image["file_name"], points, f"{path}#{item.get('id')}"))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: not a COCO-style keypoint json ({type(exc).__name__}: {exc})") from None
    return faces


def files_under(folder: Path, pattern: str) -> list[Path]:
    """Files matching the glob ``pattern`` under ``folder`` at any depth, symlinked folders followed
    (``Path.rglob`` does not follow them), sorted."""
    found = []
    for root, _, _ in os.walk(folder, followlinks=True):
        found += [p for p in Path(root).glob(pattern) if p.is_file()]
    return sorted(found)


def _photo_for(pts: Path) -> Path | None:
    """The photo a ``.pts`` file annotates: same stem beside it, or in a sibling ``imgs``/``images`` folder
    (300-VW's ``annot/`` + ``imgs/`` layout)."""
    for folder in (pts.parent, pts.parent.parent / "imgs", pts.parent.parent / "images"):
        for suffix in IMAGE_SUFFIXES:
            for candidate in (folder / (pts.stem + suffix), folder / (pts.stem + suffix.upper())):
                if candidate.is_file():
                    return candidate
    return None


def _is_coco(path: Path) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(data, dict) and "annotations" in data and "images" in data


def find_annotations(folder: str | Path, coco_origin: float = 0.0) -> list[AnnotatedPhoto]:
    """Every annotated face under ``folder`` (recursively): ``.pts`` files and COCO-style ``.json`` files.

    Raises :class:`InputError` when there are none, when an annotation's photo is missing, or when an
    annotation has another number of points than 68: a mismatched folder is refused before any photo runs.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    found: list[AnnotatedPhoto] = []
    missing: list[str] = []
    for pts in files_under(folder, "*.pts"):
        points = read_pts(pts)
        if len(points) != IBUG_POINTS:
            raise InputError(f"{pts}: {len(points)} points, not the {IBUG_POINTS} of iBUG-68")
        photo = _photo_for(pts)
        if photo is None:
            missing.append(str(pts))
        else:
            found.append(AnnotatedPhoto(photo, points, str(pts)))
    for js in files_under(folder, "*.json"):
        if not _is_coco(js):  # another json (a result.json, a config): not an annotation file
            continue
        for face in read_coco(js, coco_origin):
            (found.append(face) if face.image.is_file() else missing.append(f"{face.source} ({face.image})"))
    if missing:
        shown = "; ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise InputError(f"{folder}: {len(missing)} annotation(s) without their photo: {shown}")
    if not found:
        raise InputError(f"{folder}: no annotations (iBUG .pts files or COCO-style keypoint .json) found in it")
    return found


def nme(predicted: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Mean point error of (68, 2) landmarks normalised by the outer-eye-corner distance, over the
    ``valid`` points only when given (a model may not define every iBUG point)."""
    iod = np.linalg.norm(np.subtract(*np.asarray(truth, np.float64)[list(OUTER_EYE_CORNERS), :2]))
    return _mean_error(predicted, truth, valid) / float(iod)


def nme_box(predicted: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Mean point error normalised by sqrt(w·h) of the annotation's bounding box."""
    extent = np.ptp(np.asarray(truth, np.float64)[:, :2], axis=0)
    return _mean_error(predicted, truth, valid) / float(np.sqrt(extent[0] * extent[1]))


def _mean_error(predicted: np.ndarray, truth: np.ndarray, valid: np.ndarray | None) -> float:
    errors = np.linalg.norm(np.asarray(predicted, np.float64)[:, :2] - np.asarray(truth, np.float64)[:, :2], axis=1)
    if valid is not None:
        errors = errors[np.asarray(valid, bool)]
    return float(errors.mean())


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
