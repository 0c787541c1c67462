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
