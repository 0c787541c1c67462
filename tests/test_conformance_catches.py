"""The conformance battery is only worth running if it catches the classic mistakes: these stages are
deliberately wrong in one way each and must fail it."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from facerecon.kernel import CoarseResult, Face, Landmarks, Mesh, RecordError
from facerecon.kernel import testing as conformance


@pytest.fixture(scope="module")
def detected(pipeline, face_photo):
    return pipeline.detect(face_photo)[0]


@pytest.fixture(scope="module")
def good(pipeline, face_photo, detected):
    return pipeline.regressor.regress(face_photo, detected)


class MeshRegressor:
    """Returns a transformed copy of a real coarse mesh."""

    def __init__(self, result: CoarseResult, transform) -> None:
        self.result, self.transform = result, transform

    def regress(self, image, face):
        from facerecon.kernel.contract.images import check_image

        check_image(image)
        return replace(self.result, mesh=self.result.mesh.with_vertices(self.transform(self.result.mesh.vertices)))


def test_good_regressor_passes(good, face_photo, detected):
    conformance.check_regressor(MeshRegressor(good, lambda v: v), face_photo, detected)


@pytest.mark.parametrize(
    ("mistake", "transform", "message"),
    [
        ("y up instead of down", lambda v: v * [1, -1, 1] + [0, 800, 0], "outside the face|face away"),
        ("z towards the camera", lambda v: v * [1, 1, -1], "nose tip is behind"),
        ("normalised coordinates", lambda v: v / 533.0, "outside the face"),
    ],
)
def test_frame_mistakes_are_caught(good, face_photo, detected, mistake, transform, message):
    with pytest.raises(AssertionError, match=message):
        conformance.check_regressor(MeshRegressor(good, transform), face_photo, detected)


def test_flipped_winding_is_caught(good, face_photo, detected):
    mesh = good.mesh
    flipped = Mesh(mesh.vertices, mesh.triangles[:, ::-1], mesh.topology, mesh.uvs, mesh.landmark_maps)
    regressor = MeshRegressor(replace(good, mesh=flipped), lambda v: v)
    with pytest.raises(AssertionError, match="face away from the camera"):
        conformance.check_regressor(regressor, face_photo, detected)


class HalfPixelDetector:
    """Wraps a real detector but reports x with pixel EDGES at integers (off by half a pixel) and a box
    that ignores the mirror convention; the mirror check must notice a frame that is wrong by more."""

    def __init__(self, inner, shift: float) -> None:
        self.inner, self.shift = inner, shift

    def detect(self, image):
        faces = self.inner.detect(image)
        return [
            Face(
                f.box + [self.shift, 0, self.shift, 0],
                f.score,
                Landmarks(f.landmarks.scheme, f.landmarks.points + [self.shift, 0, 0]),
            )
            for f in faces
        ]


def test_detector_frame_shift_is_caught(pipeline, face_photo):
    with pytest.raises(AssertionError, match="mirror"):
        conformance.check_detector(HalfPixelDetector(pipeline.detector, shift=25.0), face_photo)


def test_detector_that_crashes_on_bad_input_is_caught(pipeline, face_photo):
    class Fragile:
        def detect(self, image):
            if image.ndim != 3 or image.dtype != np.uint8 or min(image.shape[:2]) < 16:
                raise RuntimeError("boom")
            return pipeline.detector.detect(image)

    with pytest.raises(AssertionError, match="expected InputError"):
        conformance.check_detector(Fragile(), face_photo)


def test_segmenter_colours_on_the_wrong_scale_are_caught(face_photo, detected):
    from facerecon.kernel import Segmentation
    from facerecon.plugins.landmark_regions import LandmarkRegions

    class Bytes:
        """Reports region colours in 0..255 instead of [0, 1]."""

        def __init__(self) -> None:
            self.inner = LandmarkRegions()

        def segment(self, image, face):
            seg = self.inner.segment(image, face)
            return Segmentation(seg.labels, seg.label_names, {k: v * 255 for k, v in seg.region_colors.items()})

    conformance.check_segmenter(LandmarkRegions(), face_photo, detected)
    # (since 0.16.0 the record itself refuses them, before the battery's own check)
    with pytest.raises(RecordError, match=r"must be RGB in \[0, 1\]"):
        conformance.check_segmenter(Bytes(), face_photo, detected)
