"""Every registered stage plugin (built-in or installed third-party) passes its kind's battery."""

from __future__ import annotations

from pathlib import Path

import pytest

from facerecon.kernel import PluginHost
from facerecon.kernel import testing as conformance

HOST = PluginHost()


def options_for(kind: str, name: str, shared_data: Path) -> dict | None:
    """Stages that need model files get the real ones from the shared test data."""
    models = shared_data / "models"
    table = {
        ("regressor", "3dmm-fit"): {"model": str(models / "sfm" / "sfm_shape_3448.bin")},
        ("regressor", "3ddfa"): {
            "weights": str(models / "3ddfa" / "mb05_120x120.pth"),
            "param_stats": str(models / "3ddfa" / "configs" / "param_mean_std_62d_120x120.pkl"),
        },
    }
    return table.get((kind, name))


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
def test_regressor_conformance(name, face_photo, detected, shared_data):
    if name == "3ddfa":
        pytest.skip("3ddfa needs bfm_noneck_v3.pkl for a mesh; its battery runs in test_tddfa.py")
    regressor = HOST.create("regressor", name, options_for("regressor", name, shared_data), "cpu")
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
