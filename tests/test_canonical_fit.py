"""Any detector out of the box (issue 14): ``canonical-fit`` takes any landmark scheme with no model file,
``auto`` picks it for dlib's iBUG-68 points, and a chain of stages that cannot use the detector's
landmarks is refused when the pipeline is built — before any photo is read."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from facerecon.evaluation import annotated_face_index, nme, read_pts
from facerecon.kernel import ConfigError, Face, InputError, Landmarks, Pipeline, PipelineConfig, PluginHost
from facerecon.kernel import testing as conformance
from facerecon.kernel.contract import hookimpl
from facerecon.kernel.host.imageio import load_image
from facerecon.plugins import canonical_fit, landmark_mesh


@pytest.fixture(scope="module")
def fitter():
    return canonical_fit.CanonicalFitRegressor(canonical_fit.CanonicalFitOptions())


def _depth_over_width(mesh) -> float:
    extent = np.ptp(np.asarray(mesh.vertices), axis=0)
    return float(extent[2] / extent[0])


def test_auto_takes_dlib_landmarks_with_no_model_file():
    pipe = Pipeline(PipelineConfig(detector="dlib"))
    assert pipe.config.regressor == "canonical-fit"
    assert Pipeline(PipelineConfig()).config.regressor == "landmark-mesh"  # MediaPipe's own stays first


def test_dlib_faces_through_canonical_fit_land_on_the_annotations(fitter, dlib_detector, lfpw):
    """On real photos the coarse mesh's re-projected iBUG-68 points are as good as dlib's own (it
    follows them; README: 0.0262 vs dlib's 0.0261 over all 112 photos) and the face keeps the canonical
    face's depth (depth / width as MediaPipe's mesh gives on the same photo, not a flat face)."""
    mediapipe = landmark_mesh.LandmarkMeshRegressor(landmark_mesh.LandmarkMeshOptions())
    pipe = Pipeline(PipelineConfig(refiners=()))
    errors, detector_errors = [], []
    for photo in lfpw[:6]:
        image, truth = load_image(photo), read_pts(photo.with_suffix(".pts"))
        faces = dlib_detector.detect(image)
        face = faces[annotated_face_index(np.array([f.box for f in faces]), truth)]
        coarse = fitter.regress(image, face)
        errors.append(nme(coarse.mesh.landmarks("ibug68").xy, truth))
        detector_errors.append(nme(face.landmarks.xy, truth))
        ratio = _depth_over_width(coarse.mesh)
        reference = _depth_over_width(mediapipe.regress(image, pipe.detect(image)[0]).mesh)
        assert abs(ratio - reference) < 0.15, (photo.name, ratio, reference)
        assert 0.5 < ratio < 1.1, (photo.name, ratio)
    assert np.mean(errors) < np.mean(detector_errors) + 0.003, (errors, detector_errors)
    assert max(errors) < 0.06


def test_pose_is_the_heads(fitter, dlib_detector, shared_data):
    """A face turned in the photo gives a turned mesh: mirroring the photo mirrors the yaw."""
    from facerecon.geometry.transforms import yaw_pitch_roll

    photo = sorted((shared_data / "faces" / "lfpw-68").glob("*.png"))[3]
    image = load_image(photo)
    yaws = []
    for picture in (image, np.ascontiguousarray(image[:, ::-1])):
        face = max(dlib_detector.detect(picture), key=lambda f: f.area)
        yaws.append(yaw_pitch_roll(fitter.regress(picture, face).rotation)[0])
    assert abs(yaws[0] + yaws[1]) < 4.0, yaws


def test_conformance_with_dlib_and_mediapipe_faces(fitter, dlib_detector, face_photo, pipeline):
    conformance.check_regressor(fitter, face_photo, max(dlib_detector.detect(face_photo), key=lambda f: f.area))
    conformance.check_regressor(fitter, face_photo, pipeline.detect(face_photo)[0])


def test_unknown_scheme_is_refused_with_a_clear_error(fitter, face_photo):
    face = Face(box=np.array([10.0, 10.0, 90.0, 90.0]), score=1.0, landmarks=Landmarks("five", np.ones((5, 2))))
    with pytest.raises(InputError, match=r"canonical-fit takes ibug68, mediapipe478, mediapipe468 landmarks"):
        fitter.regress(face_photo, face)


@dataclass(frozen=True)
class _FivePointDetector:
    def detect(self, image: np.ndarray) -> list[Face]:
        raise AssertionError("never called: the chain is refused before any photo")


class _FivePointPlugin:
    @hookimpl
    def facerecon_register_stages(self, registry) -> None:  # type: ignore[no-untyped-def]
        registry.register("detector", "five", lambda options, device: _FivePointDetector(), produces=("five5",))


def _host_with_five() -> PluginHost:
    host = PluginHost()
    host.register_plugin(_FivePointPlugin(), name="five")
    return host


def test_a_made_up_scheme_fails_when_the_pipeline_is_built():
    with pytest.raises(ConfigError, match=r"no available regressor takes five5 landmarks") as info:
        Pipeline(PipelineConfig(detector="five"), _host_with_five())
    assert "canonical-fit takes ibug68 or mediapipe478 or mediapipe468" in str(info.value)
    with pytest.raises(ConfigError, match=r"regressor 'landmark-mesh' takes mediapipe478 or mediapipe468 landmarks"):
        Pipeline(PipelineConfig(detector="five", regressor="landmark-mesh"), _host_with_five())


def test_an_incompatible_choice_names_the_fix():
    with pytest.raises(ConfigError) as info:
        Pipeline(PipelineConfig(detector="dlib", regressor="landmark-mesh"))
    message = str(info.value)
    assert "detector 'dlib' gives ibug68" in message
    assert "canonical-fit" in message and "(mediapipe)" in message


def test_cli_refuses_once_with_exit_code_2(tmp_path, lfpw, capsys):
    from facerecon.cli import main

    code = main(
        [
            "reconstruct",
            str(lfpw[0]),
            str(lfpw[1]),
            "-o",
            str(tmp_path),
            "--detector",
            "dlib",
            "--regressor",
            "landmark-mesh",
            "-q",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("error:") == 1, err
    assert "use a regressor that takes them (3ddfa, 3dmm-fit, canonical-fit, remote)" in err
    assert not any(tmp_path.iterdir())  # nothing written
