"""The whole pipeline with every detector x regressor x segmenter on a real photo: any landmark scheme
reaches every later stage, which either uses it or is refused when the pipeline is built (landmark-mesh
needs MediaPipe's: the chain check names the scheme before any photo is read)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import missing

from facerecon.evaluation import nme, read_pts
from facerecon.kernel import ConfigError, Pipeline, PipelineConfig, PluginHost
from facerecon.kernel.contract.errors import ModelFileError, PluginError

DETECTORS = ("mediapipe", "dlib")
REGRESSORS = ("landmark-mesh", "canonical-fit", "3dmm-fit")
SEGMENTERS = (None, "landmark-regions", "onnx-parsing")
REFUSED = {("dlib", "landmark-mesh")}
"""Combinations refused when the pipeline is built, with a ConfigError naming the landmark scheme."""


class CachingHost(PluginHost):
    """Builds each (stage, options) once for the whole module, so twelve pipelines load models once."""

    def __init__(self) -> None:
        super().__init__()
        self.built: dict[tuple[str, str, str], object] = {}

    def create(self, kind, name, options, device):  # type: ignore[no-untyped-def]
        key = (kind, name, repr(sorted((options or {}).items())))
        if key not in self.built:
            self.built[key] = super().create(kind, name, options, device)
        return self.built[key]


@pytest.fixture(scope="module")
def host():
    h = CachingHost()
    yield h
    for stage in h.built.values():
        getattr(stage, "close", lambda: None)()


@pytest.mark.parametrize(
    ("detector", "regressor", "segmenter"), list(itertools.product(DETECTORS, REGRESSORS, SEGMENTERS))
)
def test_combination(detector, regressor, segmenter, host, face_photo, lfpw, shared_data, tiny_parser):
    config = PipelineConfig(detector=detector, regressor=regressor, segmenter=segmenter, device="cpu", refiners=())
    config = config.with_options("regressor", "3dmm-fit", {"model": str(shared_data / "models/sfm/sfm_shape_3448.bin")})
    config = config.with_options("segmenter", "onnx-parsing", {"model_path": str(tiny_parser)})
    if (detector, regressor) in REFUSED:
        with pytest.raises(
            ConfigError, match=f"takes mediapipe478 or mediapipe468 landmarks, but detector {detector!r} gives ibug68"
        ):
            Pipeline(config, host)
        return
    pipe = Pipeline(config, host)
    try:
        _ = pipe.detector
    except (PluginError, ModelFileError) as exc:
        missing(f"detector {detector!r} unavailable: {exc}")
    rec = pipe(face_photo)
    (face,) = rec.reconstructions
    scheme = {"mediapipe": "mediapipe478", "dlib": "ibug68"}[detector]
    assert face.face.landmarks.scheme == scheme
    marks = face.final.mesh.landmarks("ibug68")
    truth = read_pts(lfpw[0].with_suffix(".pts"))
    assert nme(marks.xy, truth, marks.visibility > 0) < 0.07
    if segmenter is None:
        assert face.segmentation is None and "segmenter" not in rec.timings_ms
    else:
        labels = face.segmentation.labels
        assert labels.shape == face_photo.shape[:2]
        x0, y0, x1, y1 = (int(v) for v in face.face.box)
        assert (labels[y0:y1, x0:x1] == 1).mean() > 0.3  # mostly skin inside the face box
        assert np.all(np.asarray(face.segmentation.region_colors["skin"]) > 0.2)


def test_dlib_landmarks_reach_the_medium_stage(host, face_photo, lfpw, shared_data):
    """iBUG-68 landmarks drive the Laplacian refiner too (when it is installed)."""
    if "laplace" not in host.names("refiner"):
        pytest.skip("no laplace refiner registered")
    config = PipelineConfig(detector="dlib", regressor="3dmm-fit", refiners=("laplace",), device="cpu")
    config = config.with_options("regressor", "3dmm-fit", {"model": str(shared_data / "models/sfm/sfm_shape_3448.bin")})
    pipe = Pipeline(config, host)
    try:
        _ = pipe.detector
    except (PluginError, ModelFileError) as exc:
        missing(f"detector 'dlib' unavailable: {exc}")
    stages = pipe(face_photo).reconstructions[0].stages
    truth = read_pts(lfpw[0].with_suffix(".pts"))
    errors = {
        s.stage: nme(s.mesh.landmarks("ibug68").xy, truth, s.mesh.landmarks("ibug68").visibility > 0) for s in stages
    }
    assert set(errors) == {"coarse", "medium"} and errors["medium"] <= errors["coarse"] + 0.002
