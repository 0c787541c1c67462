"""Faces right in depth, not only in the image (issue 14, item 3): a face fitted to a detector without
depth (dlib's z = 0) must not come out flatter than the morphable model can make a face. Fitting those
zeros as measured depth gave depth / width 0.10-0.20 where the model's faces are ~0.8."""

from __future__ import annotations

import numpy as np
import pytest

from facerecon.facelib.morphable.formats import load_model
from facerecon.kernel import Pipeline, PipelineConfig
from facerecon.kernel.host.imageio import load_image


def _depth_over_width(points: np.ndarray) -> float:
    extent = np.ptp(np.asarray(points, np.float64), axis=0)
    return float(extent[2] / extent[0])


@pytest.fixture(scope="module")
def sfm(shared_data):
    return shared_data / "models" / "sfm" / "sfm_shape_3448.bin"


def _model_range(path) -> tuple[float, float]:
    """depth / width of the model's faces at ±3 std along each of its first identity components."""
    model = load_model(path)
    ratios = [_depth_over_width(model.mean)]
    for k in range(min(10, model.identity_basis.shape[1])):
        for sign in (-3.0, 3.0):
            offset = (model.identity_basis[:, k] * sign * model.identity_std[k]).reshape(-1, 3)
            ratios.append(_depth_over_width(model.mean + offset))
    return min(ratios), max(ratios)


@pytest.mark.parametrize("detector", ["dlib", "mediapipe"])
def test_fitted_faces_are_as_deep_as_the_model_allows(detector, sfm, lfpw):
    low, high = _model_range(sfm)
    config = PipelineConfig(detector=detector, regressor="3dmm-fit", segmenter=None, refiners=()).with_options(
        "regressor", "3dmm-fit", {"model": str(sfm)}
    )
    with Pipeline(config) as pipe:
        for photo in lfpw[:4]:
            image = load_image(photo)
            mesh = pipe.regressor.regress(image, pipe.detect(image)[0]).mesh
            ratio = _depth_over_width(mesh.vertices)
            # the fitted face seen from the camera: its depth / width changes with yaw, a little
            assert 0.8 * low <= ratio <= 1.25 * high, (photo.name, ratio, (low, high))
