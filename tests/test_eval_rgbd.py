"""``facerecon eval rgbd``: the instrument on known answers (a synthetic sensor depth made from the coarse
stage's own depth, scaled and offset, quantised as the Kinect format is; the alignment on an exact
plane + face), the detector's upscaling mapped back, a real run on three RAP3DF faces, and bad input
refused with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facerecon.cli import main
from facerecon.evaluation.rgbd import (
    RgbdSample,
    aligned_rmse,
    decode_depth,
    detect_upscaled,
    evaluate_sample,
    find_samples,
    stage_depth,
)
from facerecon.kernel.host.imageio import load_image


def encode_depth(mm: np.ndarray) -> np.ndarray:
    """The RAP3DF uint16 of depths in 512..2047 mm (FORMAT.md; 0 where NaN), rounded to its steps."""
    v = np.where(mm < 1024, np.round((mm / 512 - 1) * 128), 128 + np.round((mm / 1024 - 1) * 128))
    return np.where(np.isfinite(mm), np.clip(v, 1, 255), 0).astype("<u2")


def test_depth_codec_round_trip(tmp_path):
    mm = np.array([[600.0, 1000.0, np.nan], [1030.0, 1500.0, 2000.0]])
    (tmp_path / "d.data").write_bytes(encode_depth(mm).tobytes())
    decoded = decode_depth(tmp_path / "d.data", (2, 3))
    assert np.isnan(decoded[0, 2])
    np.testing.assert_allclose(decoded[np.isfinite(mm)], mm[np.isfinite(mm)], atol=4.0)  # 4 / 8 mm steps


def test_alignment_removes_scale_tilt_and_offset_only():
    rng = np.random.default_rng(1)
    v, u = np.mgrid[0:60, 0:50].astype(float)
    z = 30 * np.exp(-((u - 25) ** 2 + (v - 30) ** 2) / 300)  # a bump: the "face"
    mask = np.ones(z.shape, bool)
    exact = 2.6 * z + 0.3 * u - 0.2 * v + 812.0
    assert aligned_rmse(z, exact, mask) < 1e-9
    noisy = exact + rng.normal(0, 1.5, z.shape)
    assert aligned_rmse(z, noisy, mask) == pytest.approx(1.5, rel=0.05)
    # the tilted plane cannot explain the bump: its residual is the bump's, far above the noise
    plane = aligned_rmse(None, noisy, mask)
    assert plane > 10 * 1.5


@pytest.fixture(scope="module")
def rap3df(shared_data) -> list[Path]:
    folders = sorted(p for p in (shared_data / "rgbd" / "rap3df").iterdir() if p.is_dir())
    assert len(folders) == 20
    return folders


def test_synthetic_depth_with_known_scale_and_offset(tmp_path, pipeline, rap3df):
    """The sensor depth = 2.7 mm/px · the coarse stage's own depth + 780 mm, through the Kinect format:
    the coarse stage's error must be the format's quantisation error (the scale and the offset are
    removed by the alignment), the tilted plane's far above it."""
    colour = np.asarray(Image.open(rap3df[0] / "k1_box_xy.bmp").convert("RGB"))
    height, width = colour.shape[:2]
    face = detect_upscaled(pipeline, colour, 256)[0]
    z = stage_depth(pipeline.regressor.regress(colour, face).mesh, height, width)
    truth = 2.7 * (z - np.nanmin(z)) + 780.0
    sample = tmp_path / "synthetic"
    sample.mkdir()
    (sample / "k1_box_xy.bmp").symlink_to(rap3df[0] / "k1_box_xy.bmp")
    (sample / "k1_box_xyz_depth.data").write_bytes(encode_depth(truth).tobytes())
    measured = decode_depth(sample / "k1_box_xyz_depth.data", (height, width))
    quantisation = float(np.sqrt(np.nanmean((measured - truth) ** 2)))
    assert 0.5 < quantisation < 1.5  # 4 mm steps: about 4 / sqrt(12)
    row = evaluate_sample(
        pipeline, RgbdSample("synthetic", sample / "k1_box_xy.bmp", sample / "k1_box_xyz_depth.data"), None, 256
    )
    assert row["pixels"] > 2000
    assert row["rmse_mm"]["coarse"] <= quantisation + 1e-6
    assert row["rmse_mm"]["coarse"] > 0.8 * quantisation
    assert row["rmse_mm"]["tilted_plane"] > 5 * quantisation


def test_small_photo_is_upscaled_for_the_detector_and_mapped_back(pipeline, lfpw):
    """A photo shrunk 4x to ~130 px: the face found on it upscaled lands where the full photo's face is."""
    image = load_image(lfpw[0])
    full = pipeline.detect(image)[0]
    small = np.asarray(Image.fromarray(image).resize((image.shape[1] // 4, image.shape[0] // 4), Image.BOX))
    (face,) = detect_upscaled(pipeline, small, 512)
    expected = (np.asarray(full.box, np.float64) + 0.5) / 4 - 0.5
    size = expected[2] - expected[0]
    np.testing.assert_allclose(face.box, expected, atol=0.08 * size)
    marks = (np.asarray(full.landmarks.xy, np.float64) + 0.5) / 4 - 0.5
    assert np.median(np.linalg.norm(face.landmarks.xy - marks, axis=1)) < 0.03 * size


def test_real_rgbd_faces(tmp_path, rap3df, capsys):
    """Three RAP3DF faces through the command, medium stage included: every stage and both baselines
    scored on the same pixels; the stages beat the tilted plane by far."""
    folder = tmp_path / "rgbd"
    folder.mkdir()
    for sample in rap3df[:3]:
        (folder / sample.name).symlink_to(sample)
    out = tmp_path / "report"
    assert main(["eval", "rgbd", str(folder), "-o", str(out), "-q", "--refiners", "laplace", "--device", "cpu"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scored"] == 3
    means = summary["mean_rmse_mm"]
    assert set(means) == {"coarse", "medium", "mean_face", "tilted_plane"}
    for name in ("coarse", "medium", "mean_face"):
        assert 3.0 < means[name] < 0.6 * means["tilted_plane"]
    assert (out / "per_sample.csv").read_text().count("\n") == 4
    assert json.loads(capsys.readouterr().out)["scored"] == 3


@pytest.mark.parametrize("case", ["empty", "no depth", "wrong size", "no colour"])
def test_bad_input_is_refused(tmp_path, case, capsys):
    """Refused before anything runs, naming what is missing; "no colour": a sample folder with its depth
    file but without its colour image (as an annotation without its photo), not silently dropped."""
    sample = tmp_path / "data" / "person"
    sample.mkdir(parents=True)
    if case != "empty":
        Image.new("RGB", (20, 30)).save(sample / "k1_box_xy.bmp")
    if case == "wrong size":
        (sample / "k1_box_xyz_depth.data").write_bytes(b"\0" * (20 * 29 * 2))
    if case == "no colour":  # beside a complete sample
        (sample / "k1_box_xyz_depth.data").write_bytes(b"\0" * (20 * 30 * 2))
        (tmp_path / "data" / "lost").mkdir()
        (tmp_path / "data" / "lost" / "k1_box_xy_depth.data").write_bytes(b"\0" * (20 * 30 * 2))
    out = tmp_path / "report"
    assert main(["eval", "rgbd", str(tmp_path / "data"), "-o", str(out)]) == 2
    expected = {
        "empty": "no RGB-D samples",
        "no depth": "without a depth file",
        "wrong size": "mismatched",
        "no colour": f"1 sample(s) with a depth file but without their colour image (k1_box_xy.bmp): "
        f"{tmp_path / 'data' / 'lost'}",
    }[case]
    assert expected in capsys.readouterr().err
    assert not out.exists()
    if case == "wrong size":
        with pytest.raises(Exception, match="mismatched"):
            find_samples(tmp_path / "data")


@pytest.mark.parametrize("case", ["text", "empty", "truncated"])
def test_an_unreadable_colour_image_is_listed_and_the_others_scored(tmp_path, rap3df, case, capsys):
    """A sample whose k1_box_xy.bmp is not an image (text, empty, cut short) is a failed sample with the
    reason (exit code 1), not a crash; the other sample is scored."""
    folder = tmp_path / "rgbd"
    good, bad = folder / rap3df[0].name, folder / "broken"
    good.mkdir(parents=True)
    bad.mkdir()
    for name in ("k1_box_xy.bmp", "k1_box_xyz_depth.data"):
        (good / name).symlink_to(rap3df[0] / name)
    (bad / "k1_box_xyz_depth.data").symlink_to(rap3df[1] / "k1_box_xyz_depth.data")
    colour = (rap3df[1] / "k1_box_xy.bmp").read_bytes()
    (bad / "k1_box_xy.bmp").write_bytes({"text": b"not an image\n", "empty": b"", "truncated": colour[:2000]}[case])
    out = tmp_path / "report"
    argv = ["eval", "rgbd", str(folder), "-o", str(out), "-q", "--refiners", "", "--no-mean-face", "--device", "cpu"]
    assert main(argv) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["samples"] == 2 and summary["scored"] == 1 and set(summary["mean_rmse_mm"]) >= {"coarse"}
    (failed,) = summary["failed"]
    reason = {"text": "not an image file", "empty": "empty file", "truncated": "truncated"}[case]
    assert failed["sample"] == "broken" and str(bad / "k1_box_xy.bmp") in failed["error"] and reason in failed["error"]
    capsys.readouterr()
