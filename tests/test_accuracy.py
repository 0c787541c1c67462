"""Landmark accuracy of the default pipeline on 112 real LFPW photos with human 68-point annotations.

The bounds would catch a broken iBUG-68 mapping, a frame mix-up (x/y swapped, y flipped, normalised
coordinates) or a half-image offset; the measured values are in the README (benchmarks/evaluate_lfpw.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.evaluate_lfpw import evaluate


@pytest.fixture(scope="module")
def scores(pipeline, shared_data):
    return evaluate(pipeline)


def test_every_annotated_face_is_found(scores):
    assert scores["photos"] == 112
    assert scores["missed"] == []


def test_coarse_landmarks68_nme(scores):
    assert scores["nme_mean"]["coarse"] < 0.045
    assert scores["nme_mean_held_out_odd_half"]["coarse"] < 0.05  # photos the map was not fitted on
    assert scores["failure_rate_nme_over_0.1"]["coarse"] <= 0.02


def test_nme_detects_a_frame_mix_up(pipeline, lfpw):
    """The metric itself: swapping x and y on a good prediction must blow the error up."""
    from facerecon.evaluation import nme, read_pts
    from facerecon.kernel.host.imageio import load_image

    image = load_image(lfpw[3])
    truth = read_pts(lfpw[3].with_suffix(".pts"))
    rec = pipeline(image)
    good = rec.reconstructions[0].final.mesh.landmarks("ibug68").xy
    assert nme(good, truth) < 0.06
    assert nme(good[:, ::-1], truth) > 0.3
    assert nme(np.asarray(good) + [0, 0.5 * image.shape[0]], truth) > 0.5


@pytest.fixture(scope="module")
def sfm_scores(shared_data):
    from facerecon.kernel import Pipeline, PipelineConfig

    model = shared_data / "models" / "sfm" / "sfm_shape_3448.bin"
    config = PipelineConfig(regressor="3dmm-fit", refiners=("laplace",), device="cpu").with_options(
        "regressor", "3dmm-fit", {"model": str(model)}
    )
    with Pipeline(config) as pipe:
        return evaluate(pipe)


def test_surrey_model_fit_nme(sfm_scores, scores):
    """3dmm-fit with the real Surrey model: within about 1.5 points of the detector's own landmarks."""
    assert sfm_scores["missed"] == []
    assert sfm_scores["landmarks_defined"]["coarse"] == [66]  # eos's map lacks iBUG 61 and 65
    assert sfm_scores["nme_mean"]["coarse"] < 0.052
    assert sfm_scores["nme_mean"]["coarse"] < scores["nme_mean"]["coarse"] + 0.015
    assert sfm_scores["failure_rate_nme_over_0.1"]["coarse"] <= 0.02


def test_medium_stage_pulls_the_3dmm_towards_the_landmarks(sfm_scores, scores):
    """Seed section 3.3 on real photos: the Laplacian deformation clearly lowers the coarse 3DMM's error,
    approaching the detector's own (the landmark mesh's) error."""
    coarse, medium = sfm_scores["nme_mean"]["coarse"], sfm_scores["nme_mean"]["medium"]
    assert medium < 0.9 * coarse
    assert medium < scores["nme_mean"]["coarse"] + 0.006
    assert sfm_scores["nme_mean_held_out_odd_half"]["medium"] < 0.9 * sfm_scores["nme_mean_held_out_odd_half"]["coarse"]


def test_medium_stage_does_not_worsen_the_landmark_mesh(pipeline, shared_data):
    from facerecon.kernel import Pipeline, PipelineConfig

    with Pipeline(PipelineConfig(regressor="landmark-mesh", refiners=("laplace",), device="cpu")) as pipe:
        result = evaluate(pipe)
    assert result["nme_mean"]["medium"] <= result["nme_mean"]["coarse"] + 0.0005


@pytest.fixture(scope="module")
def dlib_scores(shared_data, dlib_detector):
    """dlib's own 68 points over all 112 photos (the detector alone: the pipeline behind it is tested on a
    few photos in test_dlib.py; benchmarks/configs/dlib.toml measures it on all)."""
    from facerecon.kernel import Pipeline, PipelineConfig

    with Pipeline(PipelineConfig(detector="dlib", device="cpu", refiners=())) as pipe:
        return evaluate(pipe, reconstruct=False)


def test_dlib_detector_nme(dlib_scores):
    """The "detector" row scores a 68-point detector's own landmarks (README: mean 0.026)."""
    assert dlib_scores["missed"] == []
    assert dlib_scores["landmarks_defined"] == {"detector": [68]}
    assert dlib_scores["nme_mean"]["detector"] < 0.032
    assert dlib_scores["nme_mean_held_out_odd_half"]["detector"] < 0.032
    assert dlib_scores["failure_rate_nme_over_0.1"]["detector"] == 0.0


def test_no_detector_row_for_other_schemes(scores):
    assert "detector" not in scores["nme_mean"]  # MediaPipe's 478 points are not iBUG-68: no such row
