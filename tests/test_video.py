"""Videos and image sequences (issue 18): videos written here with OpenCV from the real 300-VW frames,
sampling, per-frame outputs and video.json, bad videos beside a good one, the temporal filters and the
shared 3DMM identity (jitter before/after on a static-head clip), and --aggregate mean."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from benchmarks.video_jitter import sfm_config, static_head_frames
from facerecon.batch import WriteOptions
from facerecon.cli import main
from facerecon.kernel import Pipeline
from facerecon.temporal import OneEuroFilter, OneEuroSettings, similarity_align
from facerecon.video import Sampling, write_video
from facerecon.video_reconstruct import VideoOptions, reconstruct_video
from tests.conftest import missing

FPS = 30.0


@pytest.fixture(scope="module")
def clip_frames(shared_data: Path) -> list[np.ndarray]:
    """8 frames of a static head (real 300-VW frames, sub-pixel shifts), at half size (640x360) for speed."""
    folder = shared_data / "faces" / "samples" / "300vw" / "001" / "imgs"
    if not folder.is_dir():
        missing(f"{folder} not found")
    return [cv2.resize(f, (640, 360), interpolation=cv2.INTER_AREA) for f in static_head_frames(folder, 8)]


@pytest.fixture(scope="module")
def videos(clip_frames, tmp_path_factory) -> dict[str, Path]:
    """A good mp4 and five bad videos, each bad in its own way."""
    folder = tmp_path_factory.mktemp("videos")
    good = write_video(folder / "good.mp4", clip_frames, FPS)
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "garbage.mp4").write_bytes(np.random.default_rng(1).bytes(50_000))
    data = good.read_bytes()
    (folder / "cut.mp4").write_bytes(data[: len(data) // 2])  # the index (moov) of OpenCV's mp4 is at the end
    grey = np.full_like(clip_frames[0], 128)
    grey[:, ::7] = 90  # stripes, no face
    write_video(folder / "noface.mp4", [grey] * 4, FPS)
    # an AVI whose codec no decoder knows: an MJPG AVI with its FourCC (stream header and format) renamed
    mjpg = write_video(folder / "mjpg.avi", clip_frames, FPS, "MJPG").read_bytes()
    assert mjpg.count(b"MJPG") >= 2
    (folder / "unknown_codec.avi").write_bytes(mjpg.replace(b"MJPG", b"ZZZZ"))
    (folder / "truncated.avi").write_bytes(mjpg[: int(len(mjpg) * 0.6)])  # frames 5-8 and the index cut off
    (folder / "mjpg.avi").unlink()
    return {p.stem: p for p in folder.iterdir()}


def test_sampling_every_and_fps():
    assert [i for i in range(10) if Sampling(every=3).picks(i, 30.0)] == [0, 3, 6, 9]
    assert [i for i in range(10) if Sampling(fps=10.0).picks(i, 30.0)] == [0, 3, 6, 9]
    assert [i for i in range(6) if Sampling(fps=60.0).picks(i, 30.0)] == list(range(6))  # no frame twice
    # 25 fps sampled at 10: the first frame of each 0.1 s
    picked = [i for i in range(25) if Sampling(fps=10.0).picks(i, 25.0)]
    assert picked == [0, 3, 5, 8, 10, 13, 15, 18, 20, 23]


def test_video_batch_with_bad_videos_and_a_sequence(videos, shared_data, tmp_path):
    """The good video and the image sequence are reconstructed; every bad video is a failure with its own
    clear reason and leaves no folder; exit code 1."""
    out = tmp_path / "out"
    sequence = shared_data / "faces" / "samples" / "300vw" / "401" / "imgs"
    code = main(
        ["reconstruct", *(str(p) for p in sorted(videos.values())), str(sequence), "-o", str(out), "-q"]
        + ["--sequence", "--sequence-fps", "15", "--fps", "15", "--regressor", "landmark-mesh"]
        + ["--segmenter", "none", "--refiners", "", "--texture-size", "64", "--jobs", "2"]
    )
    assert code == 1
    reasons = {Path(f["input"]).stem: f["error"] for f in json.loads((out / "failures.json").read_text())["failures"]}
    assert sorted(reasons) == ["cut", "empty", "garbage", "noface", "truncated", "unknown_codec"]
    assert "zero-length video file" in reasons["empty"]
    assert "not a video OpenCV can open (corrupt, truncated" in reasons["garbage"]
    assert "not a video OpenCV can open (corrupt, truncated" in reasons["cut"]  # no index: nothing to read
    assert (
        "truncated or corrupt" in reasons["truncated"]
        and "of the 8 frames its header announces" in reasons["truncated"]
    )
    assert "no face in any of the 2 sampled frame(s)" in reasons["noface"]
    assert "codec 'ZZZZ' is unsupported by this OpenCV build" in reasons["unknown_codec"]
    assert sorted(p.name for p in out.iterdir()) == ["failures.json", "good", "imgs", "summary.json"]

    video = json.loads((out / "good" / "video.json").read_text())
    assert video["source"]["fps"] == FPS and video["source"]["frame_count"] == 8
    assert [f["index"] for f in video["frames"]] == [0, 2, 4, 6]  # --fps 15 of a 30 fps video
    assert [f["time_s"] for f in video["frames"]] == [0.0, round(2 / 30, 4), round(4 / 30, 4), 0.2]
    for frame in video["frames"]:
        folder = out / "good" / frame["output"]
        assert (folder / "coarse.obj").is_file() and frame["stages"][0]["plugin"] == "landmark-mesh"
        result = json.loads((folder / "result.json").read_text())
        assert result["input"] == f"{videos['good']}#frame={frame['index']}"
    assert video["jitter"]["pairs"] == 3 and 0 < video["jitter"]["relative"] < 0.05

    seq = json.loads((out / "imgs" / "video.json").read_text())
    assert [f["index"] for f in seq["frames"]] == [0, 1] and seq["source"]["codec"] == "images"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"succeeded": 2, "failed": 6, "skipped": 0, "images": 6}
    assert {Path(s["input"]).stem: s["frames"] for s in summary["succeeded"]} == {"good": 4, "imgs": 2}
    assert summary["images_per_s"] > 0 and summary["jobs"] == 2


@pytest.fixture(scope="module")
def sfm_runs(clip_frames, shared_data, tmp_path_factory) -> dict[bool, Path]:
    """The static-head clip through 3dmm-fit with the real Surrey model, without and with smoothing."""
    if not (shared_data / "models" / "sfm" / "sfm_shape_3448.bin").is_file():
        missing("the Surrey model is not in ../shared/data/models/sfm")
    folder = tmp_path_factory.mktemp("sfm")
    clip = write_video(folder / "static.mp4", clip_frames, FPS)
    runs = {}
    with Pipeline(sfm_config("3dmm-fit")) as pipeline:
        for smooth in (False, True):
            out = folder / f"smooth_{smooth}"
            options = VideoOptions(smooth=smooth, aggregate="mean")
            outcome = reconstruct_video(pipeline, clip, out, WriteOptions(texture_size=64), options)
            assert outcome.error is None and outcome.frames == 8
            runs[smooth] = out
    return runs


def frame_results(run: Path) -> list[dict]:
    video = json.loads((run / "video.json").read_text())
    return [json.loads((run / f["output"] / "result.json").read_text()) for f in video["frames"]]


def test_one_identity_per_video_with_a_3dmm(sfm_runs):
    raw = [r["reconstructions"][0]["parameters"]["identity"] for r in frame_results(sfm_runs[False])]
    shared = [r["reconstructions"][0]["parameters"]["identity"] for r in frame_results(sfm_runs[True])]
    assert json.loads((sfm_runs[True] / "video.json").read_text())["shared_identity"] is True
    # one identity for all frames (the mean of a first pass over the filtered landmarks) ...
    np.testing.assert_allclose(shared, [shared[0]] * len(shared), atol=1e-3)
    # ... where each frame fitted alone has its own
    assert np.ptp(np.asarray(raw), axis=0).max() > 1.0
    expressions = np.asarray(
        [r["reconstructions"][0]["parameters"]["expression"] for r in frame_results(sfm_runs[True])]
    )
    assert np.ptp(expressions, axis=0).max() > 0  # expression stays per frame


def test_filters_reduce_the_jitter_of_a_static_head(sfm_runs):
    """Measured (README): 0.91 mm -> 0.13 mm per frame on 16 full-size frames; here 8 half-size frames."""
    raw = json.loads((sfm_runs[False] / "video.json").read_text())["jitter"]
    smooth = json.loads((sfm_runs[True] / "video.json").read_text())["jitter"]
    assert raw["pairs"] == smooth["pairs"] == 7
    assert 0.2 < raw["mean"] < 5.0  # mm: a still head's shape moving from frame to frame
    assert smooth["mean"] < 0.5 * raw["mean"]


def read_obj_vertices(path: Path) -> np.ndarray:
    rows = [line.split()[1:4] for line in path.read_text().splitlines() if line.startswith("v ")]
    return np.asarray(rows, np.float64) * np.array([1.0, -1.0, -1.0])  # file frame (y up) -> mesh frame


def test_aggregate_mean_is_the_mean_of_the_pose_removed_frames(sfm_runs):
    """aggregate_mean.obj, rebuilt from the per-frame meshes: their files are in the head frame (pose removed,
    centred, y up, mm), so a similarity to the running mean, then the average, gives the same shape."""
    for run in sfm_runs.values():
        video = json.loads((run / "video.json").read_text())
        to_model_axes = np.array([1.0, -1.0, -1.0])  # the files' y up, z towards the viewer -> the model's axes
        shapes = [read_obj_vertices(run / f["output"] / "coarse.obj") * to_model_axes for f in video["frames"]]
        mean = shapes[0]
        for _ in range(2):
            mean = np.mean([similarity_align(s, mean) for s in shapes], axis=0)
        aggregate = read_obj_vertices(run / "aggregate_mean.obj") * to_model_axes  # model frame
        header = (run / "aggregate_mean.obj").read_text().splitlines()[0]  # said so (0.14.0: "image frame, px")
        assert "model (pose removed, mean over the frames) frame, units model" in header, header
        assert np.abs(similarity_align(aggregate, mean) - mean).max() < 2e-3  # mm (files rounded to 1e-6)
        rms = video["aggregate"]["rms_to_mean"]
        assert len(rms) == 8 and max(rms) < 3.0  # mm
        # a face-sized mean shape (the SFM's face is ~150 mm wide), not a collapsed one
        assert 100 < np.ptp(aggregate[:, 0]) < 220
    smooth = json.loads((sfm_runs[True] / "video.json").read_text())["aggregate"]
    raw = json.loads((sfm_runs[False] / "video.json").read_text())["aggregate"]
    assert smooth["rms_to_mean_mean"] < raw["rms_to_mean_mean"]  # one identity: the frames agree more


def test_one_euro_filter_smooths_still_signals_and_follows_moving_ones():
    rng = np.random.default_rng(0)
    times = np.arange(120) / FPS
    noise = rng.normal(0, 1.0, (120, 5))
    still = OneEuroFilter(OneEuroSettings(min_cutoff=1.0, beta=0.0))
    smoothed = np.array([still(1.0 + n, t) for n, t in zip(noise, times, strict=True)])
    assert smoothed[30:].std() < 0.35 * noise.std()  # jitter of a still value cut by > 65 %
    ramp = OneEuroFilter(OneEuroSettings(min_cutoff=1.0, beta=5.0))
    moving = [ramp(np.array([10.0 * t]), t) for t in times]  # 10 units/s, no noise
    lag = 10.0 * times[-1] - float(moving[-1][0])
    slow = OneEuroFilter(OneEuroSettings(min_cutoff=1.0, beta=0.0))
    slow_lag = 10.0 * times[-1] - float([slow(np.array([10.0 * t]), t) for t in times][-1][0])
    assert 0 <= lag < 0.2 * slow_lag  # the speed term removes most of the lag
    assert math.isclose(slow_lag, 10.0 / (2 * math.pi * 1.0), rel_tol=0.2)  # a first-order low-pass: v·τ


def test_a_video_run_again_into_its_folder_resumes_or_overwrites(videos, tmp_path):
    """A second run into the same -o refused the video's own folder ("not a facerecon result": it holds
    video.json, not result.json), with and without --overwrite, and the whole batch with it."""
    from facerecon.cli import main

    good = videos["good"]
    out = tmp_path / "out"
    args = ["reconstruct", str(good), "-o", str(out), "-q", "--refiners", ""]
    assert main(args) == 0
    assert main(args) == 0
    assert json.loads((out / "summary.json").read_text())["skipped"] == [str(good)]
    assert main([*args, "--overwrite"]) == 0
    assert json.loads((out / "summary.json").read_text())["counts"]["succeeded"] == 1
    assert (out / "good" / "video.json").is_file()


def test_a_video_failing_mid_run_is_named_in_the_log(videos, tmp_path, caplog, monkeypatch):
    """A remote server that died during a video logged "RemoteError: remote regressor ..." without the
    video's name (a photo's failure line starts with its path)."""
    from facerecon.batch import WriteOptions, reconstruct_job
    from facerecon.kernel import Pipeline, PipelineConfig
    from facerecon.video_reconstruct import VideoOptions

    with Pipeline(PipelineConfig(refiners=(), device="cpu")) as pipe:

        def dead_server(image):
            raise RuntimeError("the server went away")

        monkeypatch.setattr(pipe, "detect", dead_server)
        with caplog.at_level("ERROR", logger="facerecon"):
            outcome = reconstruct_job(pipe, videos["good"], tmp_path / "good", WriteOptions(), VideoOptions())
    assert outcome.error == "RuntimeError: the server went away"
    assert f"{videos['good']}: RuntimeError: the server went away" in caplog.text


@pytest.mark.parametrize("flag", ["--fps", "--sequence-fps"])
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "0", "-5"])
def test_a_frame_rate_that_is_not_a_positive_number_is_a_usage_error(videos, tmp_path, capsys, flag, value):
    """--fps inf sampled nothing (each video an OverflowError in failures.json); --sequence-fps inf gave every
    frame time 0 and "fps": Infinity in video.json (not JSON). Now one clear line and exit 2, nothing written."""
    out = tmp_path / "out"
    assert main(["reconstruct", str(videos["good"]), "-o", str(out), f"{flag}={value}", "-q"]) == 2
    err = capsys.readouterr().err
    assert f"{flag} must be a positive number" in err and "Traceback" not in err
    assert not out.exists()


def test_every_and_fps_together_is_a_usage_error(videos, tmp_path, capsys):
    """--fps took over silently from --every (video.json still said "every": 3, a sampling not used)."""
    out = tmp_path / "out"
    assert main(["reconstruct", str(videos["good"]), "-o", str(out), "--every", "3", "--fps", "5", "-q"]) == 2
    assert "--every and --fps both choose the frames: give one of them" in capsys.readouterr().err
    assert not out.exists()
