"""Segmenter ``landmark-regions``: face parsing from the detector's own landmarks, no model needed.

Each region is a polygon through landmarks of the face's scheme, filled into a label map the size of the
image with CelebAMask-HQ's label ids (:mod:`facerecon.facelib.face_parsing`), so this segmenter and a
learned parser (``onnx-parsing``) are interchangeable:

* ``skin`` (1): the face oval, minus every region below;
* ``nose`` (2), ``l_eye``/``r_eye`` (4/5), ``l_brow``/``r_brow`` (6/7), ``u_lip``/``l_lip`` (11/12) and
  ``mouth`` (10, the mouth interior between the lips), painted over the skin in that order.

Schemes:

* ``mediapipe478`` / ``mediapipe468`` — MediaPipe's own contours (the index lists of its
  ``FaceLandmarksConnections``: face oval, eyes, eyebrows, outer and inner lips); the nose is the convex
  hull of its nose contour. The oval reaches the upper forehead (MediaPipe point 10).
* ``ibug68`` — the jaw line (0-16), eyes (36-47), outer/inner lips (48-67). iBUG has no forehead or
  eyebrow thickness, so the oval is closed by the eyebrow line raised by ``forehead`` times the eyebrow-
  to-chin distance, each eyebrow is its annotated upper edge thickened towards the eye, and the nose is
  the hull of the bridge (27-30) and base (31-35), widened to the nostril wings.

``l_``/``r_`` are the person's left and right. Region colours (the seed's γ_avg) come from
:func:`facerecon.facelib.face_parsing.region_colors`. Other schemes are refused with an InputError that
names them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from facerecon.facelib.face_parsing import CELEBAMASK_HQ, LABEL_IDS, region_colors
from facerecon.kernel.contract import Face, Registrar, Segmentation, hookimpl
from facerecon.kernel.contract.errors import InputError
from facerecon.kernel.contract.images import check_image

SUBPIXEL_BITS = 4
"""Polygons are filled with 1/16-pixel vertex precision (cv2.fillPoly's ``shift``)."""

# -- MediaPipe 478 (indices of FaceLandmarksConnections, written as closed polygons) --------------------

MP_FACE_OVAL = (
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
    152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
)  # fmt: skip
MP_RIGHT_EYE = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
MP_LEFT_EYE = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)
MP_RIGHT_BROW = (70, 63, 105, 66, 107, 55, 65, 52, 53, 46)  # upper edge out->in, lower edge in->out
MP_LEFT_BROW = (300, 293, 334, 296, 336, 285, 295, 282, 283, 276)
MP_LIPS_OUTER_UPPER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)
MP_LIPS_OUTER_LOWER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291)
MP_LIPS_INNER_UPPER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
MP_LIPS_INNER_LOWER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
MP_NOSE = (
    168, 6, 197, 195, 5, 4, 1, 19, 94, 2, 98, 97, 326, 327, 294, 278, 344, 440, 275, 45, 220, 115, 48, 64,
)  # fmt: skip

# -- iBUG 68 (0-based) ----------------------------------------------------------------------------------

IBUG_JAW = tuple(range(0, 17))
IBUG_RIGHT_BROW = tuple(range(17, 22))  # the person's right: the image's left in a frontal photo
IBUG_LEFT_BROW = tuple(range(22, 27))
IBUG_RIGHT_EYE = tuple(range(36, 42))
IBUG_LEFT_EYE = tuple(range(42, 48))
IBUG_LIPS_OUTER_UPPER = (48, 49, 50, 51, 52, 53, 54)
IBUG_LIPS_OUTER_LOWER = (48, 59, 58, 57, 56, 55, 54)
IBUG_LIPS_INNER_UPPER = (60, 61, 62, 63, 64)
IBUG_LIPS_INNER_LOWER = (60, 67, 66, 65, 64)
BROW_THICKNESS = 0.11
"""iBUG eyebrow thickness, as a fraction of the outer-eye-corner distance (about 1 cm of 9 cm)."""
BROW_TAPER = np.array([0.6, 0.85, 1.0, 1.0, 0.9])
"""Relative thickness along the person's right eyebrow (iBUG 17 -> 21: thin tail, full head)."""

PAINT_ORDER = ("skin", "nose", "r_brow", "l_brow", "r_eye", "l_eye", "u_lip", "l_lip", "mouth")
"""Regions are filled in this order, each over the ones before (skin = the oval minus the rest)."""


@dataclass(frozen=True)
class LandmarkRegionsOptions:
    """Options of ``landmark-regions`` (``[options.segmenter.landmark-regions]``).

    forehead: iBUG-68 only — how far above the eyebrows the face oval reaches, as a fraction of the
        eyebrow-to-chin distance (0.25: the median height of MediaPipe's oval top above the eyebrows on LFPW).
    min_region_pixels: regions smaller than this get no colour in ``region_colors``.
    """

    forehead: float = 0.25
    min_region_pixels: int = 20

    def __post_init__(self) -> None:
        if not 0.0 <= self.forehead <= 1.0:
            raise ValueError(f"forehead must be in [0, 1], got {self.forehead}")
        if self.min_region_pixels < 1:
            raise ValueError(f"min_region_pixels must be >= 1, got {self.min_region_pixels}")


Polygons = dict[str, np.ndarray]


def mediapipe_polygons(xy: np.ndarray, options: LandmarkRegionsOptions) -> Polygons:
    """Region name -> float (n, 2) polygon in image pixels, from MediaPipe's 468/478 landmarks."""

    def take(indices: tuple[int, ...]) -> np.ndarray:
        return xy[list(indices)]

    return {
        "skin": take(MP_FACE_OVAL),
        "nose": _hull(take(MP_NOSE)),
        "r_brow": take(MP_RIGHT_BROW),
        "l_brow": take(MP_LEFT_BROW),
        "r_eye": take(MP_RIGHT_EYE),
        "l_eye": take(MP_LEFT_EYE),
        "u_lip": np.concatenate([take(MP_LIPS_OUTER_UPPER), take(MP_LIPS_INNER_UPPER)[::-1]]),
        "l_lip": np.concatenate([take(MP_LIPS_OUTER_LOWER), take(MP_LIPS_INNER_LOWER)[::-1]]),
        "mouth": np.concatenate([take(MP_LIPS_INNER_UPPER), take(MP_LIPS_INNER_LOWER)[-2:0:-1]]),
    }


def ibug68_polygons(xy: np.ndarray, options: LandmarkRegionsOptions) -> Polygons:
    """Region name -> float (n, 2) polygon in image pixels, from the 68 iBUG landmarks."""

    def take(indices: tuple[int, ...]) -> np.ndarray:
        return xy[list(indices)]

    eye_distance = float(np.linalg.norm(xy[45] - xy[36])) or 1.0
    brows = take(IBUG_RIGHT_BROW + IBUG_LEFT_BROW)
    chin = xy[8]
    up = brows.mean(0) - chin
    length = float(np.linalg.norm(up)) or 1.0
    up /= length
    forehead = brows[::-1] + options.forehead * length * up  # from the left brow's outer end to the right's

    def brow(indices: tuple[int, ...], eye: tuple[int, ...], taper: np.ndarray) -> np.ndarray:
        upper = take(indices)
        down = take(eye).mean(0) - upper.mean(0)
        down /= np.linalg.norm(down) or 1.0
        lower = upper + BROW_THICKNESS * eye_distance * taper[:, None] * down
        return np.concatenate([upper, lower[::-1]])

    left, right = xy[31], xy[35]  # nostril ends (the person's right, left)
    across = right - left
    width = float(np.linalg.norm(across)) or 1.0
    across /= width
    nose = np.concatenate(
        [
            take((27, 28, 29, 30, 31, 32, 33, 34, 35)),
            xy[27] + np.outer([-0.15, 0.15], across) * width,
            xy[29] + np.outer([-0.35, 0.35], across) * width,
            [left - 0.2 * width * across, right + 0.2 * width * across],
        ]
    )
    return {
        "skin": np.concatenate([take(IBUG_JAW), forehead]),
        "nose": _hull(nose),
        "r_brow": brow(IBUG_RIGHT_BROW, IBUG_RIGHT_EYE, BROW_TAPER),
        "l_brow": brow(IBUG_LEFT_BROW, IBUG_LEFT_EYE, BROW_TAPER[::-1]),
        "r_eye": take(IBUG_RIGHT_EYE),
        "l_eye": take(IBUG_LEFT_EYE),
        "u_lip": np.concatenate([take(IBUG_LIPS_OUTER_UPPER), take(IBUG_LIPS_INNER_UPPER)[::-1]]),
        "l_lip": np.concatenate([take(IBUG_LIPS_OUTER_LOWER), take(IBUG_LIPS_INNER_LOWER)[::-1]]),
        "mouth": np.concatenate([take(IBUG_LIPS_INNER_UPPER), take(IBUG_LIPS_INNER_LOWER)[-2:0:-1]]),
    }


SCHEMES: dict[str, tuple[int, Callable[[np.ndarray, LandmarkRegionsOptions], Polygons]]] = {
    "mediapipe478": (478, mediapipe_polygons),
    "mediapipe468": (468, mediapipe_polygons),
    "ibug68": (68, ibug68_polygons),
}
"""Scheme -> (number of points, polygon builder)."""


def _hull(points: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.convexHull(np.asarray(points, np.float32)).reshape(-1, 2).astype(np.float64)


def fill_regions(polygons: Polygons, height: int, width: int) -> np.ndarray:
    """uint8 (height, width) CelebAMask-HQ label map: each polygon filled (pixel centres at integers,
    1/16-pixel vertices) in :data:`PAINT_ORDER`."""
    import cv2

    labels = np.zeros((height, width), np.uint8)
    scale = float(1 << SUBPIXEL_BITS)
    for name in PAINT_ORDER:
        polygon = polygons.get(name)
        if polygon is None or len(polygon) < 3:
            continue
        fixed = np.clip(np.round(np.asarray(polygon, np.float64) * scale), -(2**28), 2**28)
        vertices = fixed.astype(np.int32).reshape(-1, 1, 2)
        cv2.fillPoly(labels, [vertices], LABEL_IDS[name], lineType=cv2.LINE_8, shift=SUBPIXEL_BITS)
    return labels


class LandmarkRegions:
    """The stage; holds nothing but its options."""

    def __init__(self, options: LandmarkRegionsOptions | None = None, device: str = "cpu") -> None:
        self.options = options or LandmarkRegionsOptions()

    def polygons(self, face: Face) -> Polygons:
        scheme = face.landmarks.scheme
        if scheme not in SCHEMES:
            raise InputError(
                f"landmark-regions has no region polygons for {scheme!r} landmarks "
                f"(it knows {', '.join(SCHEMES)}); use another detector or the onnx-parsing segmenter"
            )
        count, build = SCHEMES[scheme]
        xy = np.asarray(face.landmarks.xy, np.float64)
        if len(xy) < count:
            raise InputError(f"{scheme!r} landmarks: expected {count} points, got {len(xy)}")
        return build(xy, self.options)

    def segment(self, image: np.ndarray, face: Face) -> Segmentation:
        image = check_image(image)
        height, width = image.shape[:2]
        labels = fill_regions(self.polygons(face), height, width)
        colors = region_colors(image, labels, CELEBAMASK_HQ, self.options.min_region_pixels)
        return Segmentation(labels=labels, label_names=CELEBAMASK_HQ, region_colors=colors)


@hookimpl
def facerecon_register_stages(registry: Registrar) -> None:
    registry.register(
        "segmenter",
        "landmark-regions",
        LandmarkRegions,
        options=LandmarkRegionsOptions,
        summary="face regions (skin, brows, eyes, nose, lips, mouth) from the landmarks; CelebAMask-HQ ids",
        accepts=("ibug68", "mediapipe478", "mediapipe468"),
        devices=("cpu",),
        reads="face-crop",  # a remote segmenter is sent only the face's window
    )
