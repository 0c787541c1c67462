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
import logging
import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from facerecon.kernel.contract.errors import InputError

log = logging.getLogger(__name__)

OUTER_EYE_CORNERS = (36, 45)
IBUG_POINTS = 68
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
DUPLICATE_TOLERANCE_PX = 0.01  # points this close are the same annotation (see drop_duplicates)


@dataclass(frozen=True)
class AnnotatedPhoto:
    """One annotated face: ``image`` the photo, ``points`` float64 (68, 2) 0-based pixels (iBUG order),
    ``source`` the annotation it came from (a ``.pts`` path, or ``file.json#id``), ``duplicates`` the
    sources of the same annotation found again and dropped (see :func:`drop_duplicates`)."""

    image: Path
    points: np.ndarray
    source: str
    duplicates: tuple[str, ...] = ()


def read_pts(path: str | Path) -> np.ndarray:
    """An iBUG ``.pts`` file as float64 (K, 2) image-frame pixels (its 1-based coordinates minus 1).

    Raises :class:`InputError` saying what is wrong: no ``{`` / ``}`` around the points, a line that is not
    two numbers, NaN or infinity, no points, or a header ``n_points`` other than the points' count."""
    try:
        lines = [line.strip() for line in Path(path).read_text(encoding="utf-8-sig").splitlines()]
    except OSError as exc:
        raise InputError(f"{path}: cannot read the .pts file ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not an iBUG .pts file (not text)") from None
    if "{" not in lines:
        raise InputError(f"{path}: not an iBUG .pts file (no line '{{' opening the points)")
    start = lines.index("{") + 1
    if "}" not in lines[start:]:
        raise InputError(f"{path}: not an iBUG .pts file (no line '}}' closing the points: truncated?)")
    end = lines.index("}", start)
    rows = []
    for number, line in enumerate(lines[start:end], start + 1):
        if not line:
            continue
        try:
            x, y = (float(v) for v in line.split()[:2])
        except ValueError:
            raise InputError(f"{path}: line {number}: {line[:40]!r} is not two numbers x y") from None
        if not (math.isfinite(x) and math.isfinite(y)):
            raise InputError(f"{path}: line {number}: {line[:40]!r}: coordinates must be finite, not NaN or infinity")
        rows.append((x, y))
    if not rows:
        raise InputError(f"{path}: not an iBUG .pts file (no points between the braces)")
    declared = next((m for m in (re.fullmatch(r"n_points\s*:\s*(\d+)", line) for line in lines[:start]) if m), None)
    if declared is not None and int(declared.group(1)) != len(rows):
        raise InputError(f"{path}: its header says n_points: {declared.group(1)}, but {len(rows)} points follow")
    return np.array(rows, np.float64) - 1.0


def read_coco(path: str | Path, origin: float = 0.0) -> list[AnnotatedPhoto]:
    """The 68-point faces of a COCO-style keypoint json (``images`` with ``file_name``, ``annotations``
    with ``image_id`` and ``keypoints`` x, y, v triples), photos relative to the json's folder; keypoints
    minus ``origin``. A file that does not parse, annotations with another number of points than 68, NaN
    or infinite keypoints, or an ``image_id`` not among its images are an :class:`InputError`."""
    path = Path(path)
    data = _load_json(path)
    try:
        images = {item["id"]: item for item in data["images"]}
        faces = []
        for item in data["annotations"]:
            keypoints = np.asarray(item["keypoints"], np.float64)
            if keypoints.size != 3 * IBUG_POINTS:
                raise InputError(
                    f"{path}: annotation {item.get('id')} has {keypoints.size // 3} keypoints, not {IBUG_POINTS}"
                )
            if not np.isfinite(keypoints).all():
                raise InputError(f"{path}: annotation {item.get('id')} has NaN or infinite keypoints")
            if item["image_id"] not in images:
                raise InputError(
                    f"{path}: annotation {item.get('id')} is of image_id {item['image_id']!r}, not among its images"
                )
            image = images[item["image_id"]]
            points = keypoints.reshape(IBUG_POINTS, 3)[:, :2] - origin
            faces.append(AnnotatedPhoto(path.parent / image["file_name"], points, f"{path}#{item.get('id')}"))
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: not a COCO-style keypoint json ({type(exc).__name__}: {exc})") from None
    return faces


class _BrokenJson(InputError):
    """A json file that cannot be read or parsed; ``reason`` says why."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def _load_json(path: Path) -> Any:
    """The parsed json of ``path``, or an :class:`InputError` saying why it cannot be read."""
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except OSError as exc:
        reason = f"cannot read the file: {exc.strerror or exc}"
    except UnicodeDecodeError:
        reason = "not UTF-8 text"
    except json.JSONDecodeError as exc:
        reason = "empty file" if not exc.doc.strip() else f"{exc.msg} at line {exc.lineno}, column {exc.colno}"
    raise _BrokenJson(f"{path}: a COCO-style keypoint json that does not parse ({reason}): truncated?", reason)


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


ANNOTATION_NAME = re.compile(r"coco|anno|keypoint|landmark", re.IGNORECASE)
"""A json whose name says it holds annotations (mmpose's ``face_landmarks_300w_*``, 300-VW's ``anno_300vw``,
COCO's ``person_keypoints_*``, ``coco_wholebody_*``)."""
ANNOTATION_KEYS = re.compile(r'"(?:annotations|keypoints)"\s*:|"images"\s*:\s*\[')
"""Text only a COCO-style json holds: facerecon's own json files have none of it (a ``reconstruct``
summary's ``"images"`` is a count, not a list; an ``eval landmarks`` summary says ``"annotation"``)."""


def _is_coco(path: Path) -> bool:
    """Whether the json ``path`` is an annotation file to read.

    One that parses is one when it is an object with ``annotations`` and ``images`` (anything else -- a
    facerecon ``summary.json`` or ``result.json``, a config -- is not, and is passed over as before).
    One that does NOT parse (truncated, empty, not json) cannot say what it is: it is taken for a broken
    annotation file, and refused with an :class:`InputError` naming it, when its name (``ANNOTATION_NAME``)
    or its text (``ANNOTATION_KEYS``) says it is one -- its faces must not vanish without a word; any other
    is passed over with a warning."""
    try:
        data = _load_json(path)
    except _BrokenJson as exc:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            text = ""
        if ANNOTATION_NAME.search(path.stem) or ANNOTATION_KEYS.search(text):
            raise
        log.warning(
            "%s: passed over: not valid json (%s), and neither its name nor its text says it holds annotations",
            path,
            exc.reason,
        )
        return False
    if isinstance(data, dict) and "annotations" in data and "images" not in data:
        log.warning("%s: has annotations but no images list: passed over, not a COCO-style keypoint json", path)
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
        raise InputError(f"{folder}: {len(missing)} annotation(s) without their photo: {_listed(missing)}")
    if not found:
        raise InputError(f"{folder}: no annotations (iBUG .pts files or COCO-style keypoint .json) found in it")
    return drop_duplicates(found)


def drop_duplicates(faces: list[AnnotatedPhoto]) -> list[AnnotatedPhoto]:
    """``faces`` without the annotations that repeat an earlier one, each dropped one named in a warning
    and in its kept twin's ``duplicates``.

    Chosen: a repeat is an annotation of the same photo file (symlinks resolved) whose points are an
    earlier annotation's within ``DUPLICATE_TOLERANCE_PX``, or those points shifted by exactly (1, 1) or
    (-1, -1) px -- the same numbers read with the other pixel origin (mmpose's 300-VW json copy the
    ``.pts`` numbers: read with ``--coco-origin 0`` they are 1 px off their ``.pts``). Such a pair is one
    human annotation stored twice (the shared samples' ``300vw/anno_300vw.json`` and the ``.pts`` beside
    its frames); scored twice it would weigh twice in every mean. The earlier is kept (``.pts`` files are
    read before json, each kind in path order: the ``.pts``, whose origin is fixed, wins). Two different
    annotations of one photo (two faces, or two annotators' points of one face) are both kept."""
    kept: list[AnnotatedPhoto] = []
    by_photo: dict[str, list[int]] = {}
    same: list[str] = []
    shifted: list[str] = []
    for face in faces:
        key = os.path.realpath(face.image)
        twins = ((i, _repeat_shift(face.points, kept[i].points)) for i in by_photo.get(key, []))
        twin, shift = next(((i, d) for i, d in twins if d is not None), (None, None))
        if twin is None:
            by_photo.setdefault(key, []).append(len(kept))
            kept.append(face)
            continue
        first = kept[twin]
        kept[twin] = replace(first, duplicates=(*first.duplicates, face.source))
        (shifted if shift else same).append(f"{face.source} (= {first.source})")
    if same:
        log.warning(
            "%d annotation(s) repeat another of the same photo with the same points, scored once: %s",
            len(same),
            _listed(same),
        )
    if shifted:
        log.warning(
            "%d annotation(s) repeat another of the same photo with the same points 1 px apart (one of them read "
            "with the other pixel origin: mmpose's 300-W / 300-VW json need --coco-origin 1), scored once: %s",
            len(shifted),
            _listed(shifted),
        )
    return kept


def _repeat_shift(points: np.ndarray, earlier: np.ndarray) -> float | None:
    """0 when ``points`` are ``earlier``'s, +-1 when they are shifted by (1, 1) / (-1, -1) px (within
    ``DUPLICATE_TOLERANCE_PX``), else None."""
    difference = np.asarray(points, np.float64) - np.asarray(earlier, np.float64)
    return next((d for d in (0.0, 1.0, -1.0) if np.abs(difference - d).max() <= DUPLICATE_TOLERANCE_PX), None)


def _listed(items: list[str], shown: int = 5) -> str:
    return "; ".join(items[:shown]) + (f" and {len(items) - shown} more" if len(items) > shown else "")


def nme(predicted: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Mean point error of (68, 2) landmarks normalised by the outer-eye-corner distance, over the
    ``valid`` points only when given (a model may not define every iBUG point). A ``ValueError`` when the
    annotation is degenerate (its eye corners at one point: see :func:`check_annotation`) or no point is
    valid."""
    return _mean_error(predicted, truth, valid) / inter_ocular_distance(truth)


def nme_box(predicted: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Mean point error normalised by sqrt(w·h) of the annotation's bounding box (a ``ValueError`` when
    that is zero: see :func:`check_annotation`)."""
    return _mean_error(predicted, truth, valid) / box_size(truth)


def inter_ocular_distance(truth: np.ndarray) -> float:
    """The NME's normaliser: the distance between the outer eye corners (iBUG points 37 and 46), > 0, or
    a ``ValueError`` saying the annotation is degenerate."""
    corners = _finite_points(truth)[list(OUTER_EYE_CORNERS)]
    distance = float(np.linalg.norm(corners[0] - corners[1]))
    if not distance > 0:
        first, second = (i + 1 for i in OUTER_EYE_CORNERS)
        raise ValueError(
            f"a degenerate annotation: its outer eye corners (points {first} and {second}) are at the same point "
            f"({corners[0, 0]:g}, {corners[0, 1]:g}), so the normalising distance is zero"
        )
    return distance


def box_size(truth: np.ndarray) -> float:
    """The box NME's normaliser: sqrt(w·h) of the annotation's bounding box, > 0, or a ``ValueError``
    saying the annotation is degenerate."""
    width, height = np.ptp(_finite_points(truth), axis=0)
    size = float(np.sqrt(width * height))
    if not size > 0:
        raise ValueError(
            f"a degenerate annotation: its points' box is {width:g} x {height:g} px (all on one line), so the "
            "normalising size sqrt(w·h) is zero"
        )
    return size


def check_annotation(truth: np.ndarray) -> None:
    """A ``ValueError`` naming what is wrong when an annotation cannot normalise an error: NaN or infinite
    points, its outer eye corners at one point, or all its points on one line."""
    inter_ocular_distance(truth)
    box_size(truth)


def _finite_points(truth: np.ndarray) -> np.ndarray:
    points = np.asarray(truth, np.float64)[:, :2]
    if not np.isfinite(points).all():
        raise ValueError("an annotation with NaN or infinite points: no error can be normalised by it")
    return points


def _mean_error(predicted: np.ndarray, truth: np.ndarray, valid: np.ndarray | None) -> float:
    errors = np.linalg.norm(np.asarray(predicted, np.float64)[:, :2] - np.asarray(truth, np.float64)[:, :2], axis=1)
    if valid is not None:
        errors = errors[np.asarray(valid, bool)]
    if len(errors) == 0:
        raise ValueError("no point to score: every point is marked as not valid")
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
