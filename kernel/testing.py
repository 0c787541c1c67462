"""Conformance checks every stage plugin of a kind must pass — one battery for every backend.

Each ``check_*`` function exercises a built stage on real inputs you give it and raises
``AssertionError`` with a message naming what broke. facerecon's own test suite runs them on every
registered plugin; a third-party plugin runs them in its own tests:

    from facerecon.kernel import testing
    def test_my_detector(face_photo):
        testing.check_detector(MyDetector(MyOptions(), "cpu"), face_photo)

The frames being checked are those of :mod:`facerecon.kernel.contract.records`: x right, y down, pixel centres
at integers, z away from the camera.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from facerecon.kernel.contract.errors import InputError
from facerecon.kernel.contract.records import IBUG68, CoarseResult, Face, Landmarks, Mesh, Refinement, Segmentation
from facerecon.kernel.contract.stages import Detector, Refiner, Regressor, Segmenter, stage_name_problem

BAD_IMAGES: dict[str, np.ndarray] = {
    "float image": np.zeros((64, 64, 3), np.float32),
    "greyscale (H, W) array": np.zeros((64, 64), np.uint8),
    "RGBA array": np.zeros((64, 64, 4), np.uint8),
    "4x4 image": np.zeros((4, 4, 3), np.uint8),
}
"""Inputs every stage must refuse with :class:`InputError` (not crash on)."""


def faceless_images() -> dict[str, np.ndarray]:
    """Images with no face in them: flat grey, and smooth colour noise."""
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (48, 64, 3)).astype(np.float32)
    noise = np.kron(noise, np.ones((8, 8, 1)))  # blocky: no face-like structure at any scale
    return {"flat grey": np.full((384, 512, 3), 128, np.uint8), "colour blocks": noise.astype(np.uint8)}


def _assert_refuses(call: Callable[[np.ndarray], object], what: str) -> None:
    for name, image in BAD_IMAGES.items():
        try:
            call(image)
        except InputError:
            continue
        except Exception as exc:  # noqa: BLE001 - the point is to name the wrong exception
            raise AssertionError(f"{what} raised {type(exc).__name__} for a {name}, expected InputError") from exc
        raise AssertionError(f"{what} accepted a {name}; it must raise InputError")


def check_landmarks(marks: Landmarks, width: int, height: int, margin: float = 0.25) -> None:
    assert isinstance(marks, Landmarks), f"landmarks must be Landmarks, got {type(marks).__name__}"
    assert marks.scheme and isinstance(marks.scheme, str), "landmarks need a scheme name"
    assert marks.points.dtype == np.float32 and marks.points.shape[1] == 3, "landmarks must be float32 (K, 3)"
    xy = marks.xy
    lo = -margin * np.array([width, height])
    hi = (1 + margin) * np.array([width, height])
    assert ((xy >= lo) & (xy <= hi)).all(), "landmarks lie far outside the image: wrong frame or units?"


def check_detector(detector: Detector, face_image: np.ndarray) -> list[Face]:
    """``face_image``: uint8 (H, W, 3) RGB photo of one clearly visible, roughly frontal face."""
    assert isinstance(detector, Detector), "detector does not implement detect(image)"
    height, width = face_image.shape[:2]
    faces = detector.detect(face_image)
    assert isinstance(faces, list), f"detect() must return a list, got {type(faces).__name__}"
    assert len(faces) >= 1, "no face found on a photo with a clear face"
    for face in faces:
        assert isinstance(face, Face), f"detect() must return Face records, got {type(face).__name__}"
        check_landmarks(face.landmarks, width, height)
        x0, y0, x1, y1 = face.box
        assert -0.1 * width <= x0 < x1 <= 1.1 * width and -0.1 * height <= y0 < y1 <= 1.1 * height, (
            f"face box {face.box} is not an xyxy box inside the {width}x{height} image"
        )
        inside = (face.landmarks.xy >= face.box[:2] - 0.2 * (x1 - x0)) & (
            face.landmarks.xy <= face.box[2:] + 0.2 * (x1 - x0)
        )
        assert inside.all(axis=1).mean() > 0.95, "landmarks are not inside their face box"
    # Image frame: mirroring the photo mirrors the landmarks about x = (W - 1) / 2 (pixel centres at
    # integers); their centroid, as a box may snap to a detector's scan grid (dlib's HOG pyramid).
    big = max(faces, key=lambda f: f.area)
    mirrored = detector.detect(np.ascontiguousarray(face_image[:, ::-1]))
    assert mirrored, "no face found on the mirrored photo"
    twin = max(mirrored, key=lambda f: f.area)
    centre, twin_centre = big.landmarks.xy.mean(axis=0), twin.landmarks.xy.mean(axis=0)
    expected = np.array([width - 1 - centre[0], centre[1]])
    size = float(big.box[2] - big.box[0])
    assert np.abs(twin_centre - expected).max() < 0.04 * size, (
        f"mirrored photo's landmarks centre on {twin_centre}, not on the mirror {expected} of {centre}: x frame off?"
    )
    for name, image in faceless_images().items():
        found = detector.detect(image)
        assert found == [], f"detect() found {len(found)} face(s) in a face-less image ({name})"
    _assert_refuses(detector.detect, "detect()")
    return faces


def _check_mesh(mesh: Mesh, face: Face, width: int, height: int) -> None:
    assert isinstance(mesh, Mesh), f"expected a Mesh, got {type(mesh).__name__}"
    assert len(mesh.vertices) >= 3 and len(mesh.triangles) >= 1, "empty mesh"
    assert mesh.topology, "a mesh needs a topology id"
    assert IBUG68 in mesh.landmark_maps, "a mesh must carry an ibug68 landmark map (for evaluation)"
    marks = mesh.landmarks(IBUG68)
    assert marks is not None and marks.visibility is not None
    valid = marks.visibility > 0
    assert valid.sum() >= 60, "fewer than 60 of the 68 iBUG landmarks lie on the mesh"
    check_landmarks(Landmarks(f"{IBUG68}-on-mesh", marks.points[valid]), width, height)
    x0, y0, x1, y1 = face.box
    pad = 0.3 * max(x1 - x0, y1 - y0)
    xy = marks.xy[valid]
    assert ((xy >= [x0 - pad, y0 - pad]) & (xy <= [x1 + pad, y1 + pad])).all(), (
        "re-projected iBUG landmarks fall outside the face: mesh not in the image's mesh frame?"
    )
    # Depth points away from the camera: the nose tip (iBUG 30) is nearer than the jaw-line ends.
    points = mesh.landmark_maps[IBUG68].locate(np.asarray(mesh.vertices))
    if valid[30] and valid[0] and valid[16]:
        assert points[30, 2] < (points[0, 2] + points[16, 2]) / 2, "nose tip is behind the jaw: z not away?"
    # Winding: triangles facing the camera have normals along -z (see records.Mesh).
    v = np.asarray(mesh.vertices, np.float64)
    f = np.asarray(mesh.triangles)
    normals = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    area = np.linalg.norm(normals, axis=1)
    assert (area * (normals[:, 2] < 0)).sum() > 0.6 * area.sum(), "most triangles face away from the camera"


def check_regressor(regressor: Regressor, image: np.ndarray, face: Face) -> CoarseResult:
    """``face``: a detection of a face in ``image`` (from the detector the regressor is meant for)."""
    assert isinstance(regressor, Regressor), "regressor does not implement regress(image, face)"
    height, width = image.shape[:2]
    result = regressor.regress(image, face)
    assert isinstance(result, CoarseResult), f"regress() must return CoarseResult, got {type(result).__name__}"
    _check_mesh(result.mesh, face, width, height)
    rotation = np.asarray(result.rotation, np.float64)
    assert np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-3), "rotation is not orthonormal"
    assert abs(np.linalg.det(rotation) - 1) < 1e-3, "rotation is a reflection"
    again = regressor.regress(image, face)
    assert np.allclose(again.mesh.vertices, result.mesh.vertices, atol=1e-3), "regress() is not deterministic"
    _assert_refuses(lambda bad: regressor.regress(bad, face), "regress()")
    return result


def check_segmenter(segmenter: Segmenter, image: np.ndarray, face: Face) -> Segmentation:
    assert isinstance(segmenter, Segmenter), "segmenter does not implement segment(image, face)"
    result = segmenter.segment(image, face)
    assert isinstance(result, Segmentation), f"segment() must return Segmentation, got {type(result).__name__}"
    assert result.labels.shape == image.shape[:2], "label map must have the image's height and width"
    assert set(np.unique(result.labels).tolist()) <= set(result.label_names) | {0}, "unnamed labels"
    x0, y0, x1, y1 = (int(v) for v in face.box)
    assert (result.labels[max(y0, 0) : y1, max(x0, 0) : x1] > 0).mean() > 0.3, "face box is mostly unlabelled"
    # Region colours (the albedo prior): named regions, sRGB in [0, 1] (not 0..255), at least the skin's.
    names = set(result.label_names.values())
    assert set(result.region_colors) <= names, f"region colours for unknown regions {set(result.region_colors) - names}"
    for name, color in result.region_colors.items():
        assert bool(np.all((color >= 0) & (color <= 1))), f"region colour of {name!r} is not in [0, 1]: {color}"
    if "skin" in names and (result.labels == _label_id(result, "skin")).sum() >= 100:
        assert "skin" in result.region_colors, "no region colour for the skin"
    again = segmenter.segment(image, face)
    assert np.array_equal(again.labels, result.labels), "segment() is not deterministic"
    _assert_refuses(lambda bad: segmenter.segment(bad, face), "segment()")
    return result


def _label_id(segmentation: Segmentation, name: str) -> int:
    return next((int(i) for i, n in segmentation.label_names.items() if n == name), -1)


def check_refiner(
    refiner: Refiner, image: np.ndarray, face: Face, mesh: Mesh, segmentation: Segmentation | None
) -> Mesh:
    assert isinstance(refiner, Refiner), "refiner does not implement refine(...) and stage"
    problem = stage_name_problem(getattr(refiner, "stage", None))
    assert problem is None, f"refiner.stage {getattr(refiner, 'stage', None)!r}: {problem}"
    height, width = image.shape[:2]
    output = refiner.refine(image, face, mesh, segmentation)
    refined = output.mesh if isinstance(output, Refinement) else output
    _check_mesh(refined, face, width, height)
    if isinstance(output, Refinement) and output.maps is not None:
        for name, value in output.maps.maps.items():
            assert np.isfinite(value[~np.isnan(value)]).all(), f"map {name!r} holds infinities"
    before = np.asarray(mesh.vertices).mean(0)
    after = np.asarray(refined.vertices).mean(0)
    size = float(np.ptp(np.asarray(mesh.vertices)[:, 0]))
    assert np.linalg.norm(after[:2] - before[:2]) < 0.2 * size, "refiner moved the face: frame changed?"
    _assert_refuses(lambda bad: refiner.refine(bad, face, mesh, segmentation), "refine()")
    return refined
