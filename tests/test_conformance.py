"""Every registered stage plugin (built-in or installed third-party) passes its kind's battery."""

from __future__ import annotations

import pytest
from facerecon.kernel import PluginHost
from facerecon.kernel import testing as conformance

HOST = PluginHost()


@pytest.fixture(scope="module")
def detected(pipeline, face_photo):
    return pipeline.detect(face_photo)[0]


@pytest.mark.parametrize("name", HOST.names("detector"))
def test_detector_conformance(name, face_photo):
    detector = HOST.create("detector", name, None, "cpu")
    try:
        conformance.check_detector(detector, face_photo)
    finally:
        getattr(detector, "close", lambda: None)()


@pytest.mark.parametrize("name", HOST.names("regressor"))
def test_regressor_conformance(name, face_photo, detected):
    regressor = HOST.create("regressor", name, None, "cpu")
    conformance.check_regressor(regressor, face_photo, detected)


@pytest.mark.parametrize("name", HOST.names("segmenter"))
def test_segmenter_conformance(name, face_photo, detected):
    segmenter = HOST.create("segmenter", name, None, "cpu")
    conformance.check_segmenter(segmenter, face_photo, detected)


@pytest.mark.parametrize("name", HOST.names("refiner"))
def test_refiner_conformance(name, face_photo, detected, pipeline):
    refiner = HOST.create("refiner", name, None, "cpu")
    coarse = pipeline.regressor.regress(face_photo, detected)
    conformance.check_refiner(refiner, face_photo, detected, coarse.mesh, None)


def test_builtin_plugins_registered():
    assert "mediapipe" in HOST.names("detector")
    assert "landmark-mesh" in HOST.names("regressor")
    assert HOST.spec("detector", "mediapipe").distribution == "facerecon"
