"""The model catalogue, `facerecon models`, the auto regressor, and 3dmm-fit on real photos (Surrey model)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from facerecon.cli import main
from facerecon.evaluation import nme, read_pts
from facerecon.facelib.morphable import catalog
from facerecon.kernel import IBUG68, ConfigError, Face, Landmarks, ModelFileError, Pipeline, PipelineConfig
from facerecon.kernel.host.imageio import load_image


@pytest.fixture
def sfm_file(shared_data):
    return shared_data / "models" / "sfm" / "sfm_shape_3448.bin"


@pytest.fixture
def catalogue(tmp_path, monkeypatch, sfm_file):
    path = tmp_path / "models.toml"
    path.write_text(f'default = "sfm"\n[models.sfm]\npath = "{sfm_file}"\n')
    monkeypatch.setenv("FACERECON_MODELS", str(path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return path


def test_auto_regressor_is_landmark_mesh_without_a_model(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("FACERECON_MODELS", raising=False)
    assert Pipeline(PipelineConfig()).config.regressor == "landmark-mesh"


def test_auto_regressor_is_3dmm_fit_once_a_model_is_configured(catalogue, face_photo, lfpw):
    with Pipeline(PipelineConfig(device="cpu", refiners=())) as pipe:
        assert pipe.config.regressor == "3dmm-fit"
        rec = pipe(face_photo)
    coarse = rec.reconstructions[0]
    assert coarse.stages[0].mesh.topology.startswith("sfm")
    assert coarse.coarse.parameters["identity"].shape == (63,)
    assert coarse.coarse.parameters["expression"].shape == (6,)
    marks = coarse.final.mesh.landmarks(IBUG68)
    assert marks.visibility.sum() == 66  # eos's map lacks the inner mouth corners 61 and 65
    assert nme(marks.xy, read_pts(lfpw[0].with_suffix(".pts")), marks.visibility > 0) < 0.06
    # The derived MediaPipe correspondence was cached on disk for the next process.
    assert list((catalogue.parent / "cache" / "facerecon" / "correspondence").glob("*.npz"))


def test_checksum_mismatch_is_refused(tmp_path, monkeypatch, sfm_file):
    path = tmp_path / "models.toml"
    path.write_text(f'[models.sfm]\npath = "{sfm_file}"\nsha256 = "{"0" * 64}"\n')
    monkeypatch.setenv("FACERECON_MODELS", str(path))
    catalog._load_cached.cache_clear()
    with pytest.raises(ModelFileError, match="does not match the catalogue"):
        catalog.load(catalog.resolve("sfm"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[models.a]\nfile = 'x'\n", "needs a path"),
        ("default = 'b'\n[models.a]\npath = 'x'\n", "default 'b' is not one of"),
        ("[models.a]\npath = 'x'\ncolour = 1\n", "unknown key"),
        ("[models\n", "model catalogue"),
    ],
)
def test_bad_catalogue(tmp_path, monkeypatch, text, message):
    path = tmp_path / "models.toml"
    path.write_text(text)
    monkeypatch.setenv("FACERECON_MODELS", str(path))
    with pytest.raises(Exception, match=message):
        catalog.read_catalogue()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("models = 5\n", r"\[models\] must be a table"),
        ("[models.a]\npath = 5\n", r"\[models\.a\] path must be a file name, got 5"),
        ("[models.a]\npath = ''\n", r"\[models\.a\] path must be a file name, got ''"),
        ("[models.a]\npath = 'x'\nexpressions = 5\n", r"\[models\.a\] expressions must be a file name"),
        ("[models.a]\npath = 'x'\nformat = 5\n", r"\[models\.a\] format must be a format name, got 5"),
        ("[models.a]\npath = 'x'\nsha256 = 5\n", r"\[models\.a\] sha256 must be 64 hex digits, got 5"),
        ("[models.a]\npath = 'x'\nsha256 = 'abc'\n", r"sha256 must be 64 hex digits, got 'abc'"),
        ("[models.a]\npath = '~no-such-user-here/x.npz'\n", r"\[models\.a\] path: cannot expand ~no-such-user"),
    ],
)
def test_catalogue_values_of_the_wrong_type_are_config_errors(tmp_path, monkeypatch, capsys, text, message):
    """These raised TypeError / AttributeError / RuntimeError tracebacks from `facerecon models list`."""
    path = tmp_path / "models.toml"
    path.write_text(text)
    monkeypatch.setenv("FACERECON_MODELS", str(path))
    with pytest.raises(ConfigError, match=message):
        catalog.read_catalogue()
    assert main(["models", "list", "--verify"]) == 2
    assert "models.toml" in capsys.readouterr().err


def test_catalogue_variable_naming_a_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("FACERECON_MODELS", str(tmp_path))
    with pytest.raises(ConfigError, match=rf"\$FACERECON_MODELS points at {tmp_path}, which is not a file"):
        catalog.read_catalogue()


def test_unknown_model_name_lists_the_catalogue(catalogue):
    with pytest.raises(ModelFileError, match=r"no such file and no such catalogue entry \(known: sfm\)"):
        catalog.resolve("bfm2017")


def test_models_cli(catalogue, sfm_file, tmp_path, capsys):
    assert main(["models", "info", "sfm", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["vertices"], info["identity_components"], info["expression_components"]) == (3448, 63, 6)
    assert info["landmarks"]["ibug68"] == 50 and info["contours"] == {"right": 17, "left": 17}
    assert info["recognised_as"] is not None
    out = tmp_path / "sfm.npz"
    assert main(["models", "convert", str(sfm_file), str(out)]) == 0
    assert main(["models", "info", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1])["vertices"] == 3448
    assert main(["models", "list"]) == 0
    assert "* sfm" in capsys.readouterr().out
    broken = tmp_path / "broken.bin"
    broken.write_bytes(sfm_file.read_bytes()[:1000])
    assert main(["models", "info", str(broken)]) == 2
    assert "broken.bin" in capsys.readouterr().err


def test_regressor_with_a_bad_model_file_is_a_clear_error(tmp_path, face_photo):
    bad = tmp_path / "01_MorphableModel.mat"
    bad.write_text("not a mat file")
    config = PipelineConfig(regressor="3dmm-fit").with_options("regressor", "3dmm-fit", {"model": str(bad)})
    pipe = Pipeline(config)
    with pytest.raises(ModelFileError, match="01_MorphableModel.mat"):
        pipe.warm_up()


def test_fit_to_68_point_landmarks(sfm_file, lfpw):
    """Any detector scheme: human iBUG-68 annotations as a 68-point detector would give them."""
    config = PipelineConfig(regressor="3dmm-fit", refiners=()).with_options(
        "regressor", "3dmm-fit", {"model": str(sfm_file)}
    )
    errors = []
    with Pipeline(config) as pipe:
        for photo in lfpw[:20]:
            truth = read_pts(photo.with_suffix(".pts"))
            face = Face(np.r_[truth.min(0), truth.max(0)], 1.0, Landmarks(IBUG68, truth))
            mesh = pipe.regressor.regress(load_image(photo), face).mesh
            marks = mesh.landmarks(IBUG68)
            errors.append(nme(marks.xy, truth, marks.visibility > 0))
    # The model reproduces the annotations it was fitted to, jaw line included, to a few percent.
    assert np.mean(errors) < 0.045, np.mean(errors)
