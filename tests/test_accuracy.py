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
    from facerecon.kernel.imageio import load_image

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
    config = PipelineConfig(regressor="3dmm-fit", device="cpu").with_options(
        "regressor", "3dmm-fit", {"model": str(model)}
    )
    with Pipeline(config) as pipe:
        return evaluate(pipe)


def test_surrey_model_fit_nme(sfm_scores, scores):
    """3dmm-fit with the real Surrey model: within about 1.5 points of the detector's own landmarks."""
    assert sfm_scores["missed"] == []
    assert sfm_scores["landmarks_defined"]["coarse"] == [66]  # eos's map lacks iBUG 61 and 65
    assert sfm_scores["nme_mean"]["coarse"] < 0.055
    assert sfm_scores["nme_mean"]["coarse"] < scores["nme_mean"]["coarse"] + 0.02
    assert sfm_scores["failure_rate_nme_over_0.1"]["coarse"] <= 0.02
