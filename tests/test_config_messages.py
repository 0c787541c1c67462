"""What a config file's mistakes are called (docs/configuration.md: "a message that names the file and the
key"): plugins the [plugins] lists kept out are said to be blocked / not allowed, not unknown or missing;
a refused options table names its file, table, key and value; options for no registered stage are a
warning that names the file and the table."""

from __future__ import annotations

import importlib.metadata
import logging
import pickle
import types
from pathlib import Path

import pytest
from PIL import Image

from facerecon.cli import main
from facerecon.kernel import ConfigError, Pipeline, PipelineConfig, PluginHost, hookimpl
from facerecon.plugins.laplace import LaplaceOptions
from facerecon.plugins.sfs.options import SfsOptions


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    """An input that exists (no face: the config is refused before any photo is read)."""
    path = tmp_path / "blank.png"
    Image.new("RGB", (64, 64)).save(path)
    return path


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "facerecon.toml"
    path.write_text(text)
    return path


def reconstruct(photo: Path, config: Path, capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[int, str]:
    """``facerecon reconstruct PHOTO -c CONFIG FLAGS``: its exit code and stderr."""
    out = photo.parent / "out"
    code = main(["reconstruct", str(photo), "-c", str(config), "-o", str(out), "-q", *flags])
    return code, capsys.readouterr().err


# -- 1. plugins the configuration's [plugins] lists kept out ------------------------------------------------


def test_blocked_detector_is_said_to_be_blocked_not_unknown(tmp_path, photo, capsys):
    config = write_config(tmp_path, '[plugins]\nblock = ["mediapipe"]\n')
    code, err = reconstruct(photo, config, capsys, "--refiners", "")
    assert code == 2
    assert "detector 'mediapipe' is blocked by the configuration's [plugins] block list" in err
    assert "unknown detector" not in err


@pytest.mark.parametrize(
    ("blocked", "kept", "fast"),
    [("laplace", ("sfs",), False), ("sfs", ("laplace",), True)],  # --fast runs laplace: not suggested without it
)
def test_a_blocked_default_refiner_is_said_to_be_blocked(tmp_path, caplog, blocked, kept, fast):
    config = write_config(tmp_path, f'[plugins]\nblock = ["{blocked}"]\n')
    with caplog.at_level(logging.WARNING):
        pipe = Pipeline.from_config(config)
    assert pipe.config.refiners == kept
    warning = next(r.getMessage() for r in caplog.records if f"runs without refiner '{blocked}'" in r.getMessage())
    assert "blocked by the configuration" in warning and "not installed" not in warning
    assert ("--fast" in warning) == fast and "--refiners ''" in warning


def test_fast_with_the_medium_stage_blocked_says_blocked(tmp_path, photo, capsys):
    config = write_config(tmp_path, '[plugins]\nblock = ["laplace"]\n')
    code, err = reconstruct(photo, config, capsys, "--fast")
    assert code == 2
    assert "refiner 'laplace' is blocked by the configuration's [plugins] block list" in err
    assert "unknown refiner" not in err


def test_unknown_name_is_still_unknown_and_names_the_plugins_kept_out(tmp_path):
    config = write_config(tmp_path, '[pipeline]\ndetector = "nope"\n[plugins]\nblock = ["laplace"]\n')
    with pytest.raises(ConfigError, match=r"unknown detector: 'nope' \(known: .*mediapipe") as info:
        Pipeline.from_config(config)
    assert "kept from loading by the configuration's [plugins] lists: laplace" in str(info.value)


class _AcmeDistribution:
    metadata = {"Name": "acme-faces", "Version": "1.0"}


def _acme_stages(registry) -> None:  # type: ignore[no-untyped-def]
    registry.register("detector", "acme", lambda options, device: None, summary="a third-party detector")


@pytest.fixture
def third_party(monkeypatch: pytest.MonkeyPatch) -> None:
    """The installed entry points plus a third-party plugin ``acme`` (distribution acme-faces) that
    registers a detector ``acme``."""
    module = types.ModuleType("acme_faces")
    module.facerecon_register_stages = hookimpl(_acme_stages)  # type: ignore[attr-defined]
    acme = types.SimpleNamespace(name="acme", dist=_AcmeDistribution(), load=lambda: module)
    installed = importlib.metadata.entry_points

    def entry_points(**selection):  # type: ignore[no-untyped-def]
        found = list(installed(**selection))
        return found + [acme] if selection.get("group") == "facerecon" else found

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)


def test_third_party_detector_outside_the_allow_list_is_said_so(tmp_path, third_party):
    assert PluginHost(allow=["acme"]).spec("detector", "acme").distribution == "acme-faces"
    config = write_config(tmp_path, '[pipeline]\ndetector = "acme"\n[plugins]\nallow = ["other"]\n')
    with pytest.raises(ConfigError, match="detector 'acme' is not in the configuration's \\[plugins\\] allow list"):
        Pipeline.from_config(config)


# -- 2. a refused options table names the file, the table, the key and the value ----------------------------


@pytest.mark.parametrize(
    ("table", "body", "messages"),
    [
        ("refiner.sfs", "max_side = 8\n", ["max_side must be >= 16, got 8"]),
        (
            "refiner.sfs",
            "margin = -0.5\nthreads = -1\n",
            ["margin must be >= 0, got -0.5", "threads must be >= 0, got -1"],
        ),
        ("refiner.sfs", "phase1_weights = [1.0, 2.0]\n", ["phase1_weights needs 4 values (λd1..λd4), got 2"]),
        ("refiner.laplace", "eye_weight = -1.0\n", ["eye_weight must be >= 0, got -1.0"]),
        ("refiner.laplace", "outlier_tolerance = 0.0\n", ["outlier_tolerance must be > 0, got 0.0"]),
        ("refiner.laplace", "response_megabytes = -1.0\n", ["response_megabytes must be >= 0, got -1.0"]),
        ("refiner.laplace", 'threads = "x"\n', ["option 'threads' must be int"]),
        ("refiner.laplace", "eye_wieght = 0.5\n", ["unknown option(s) eye_wieght"]),
        ("detector.mediapipe", "max_faces = 1.5\n", ["option 'max_faces' must be int"]),
        # NaN passes every `< 0` check, inf every lower bound: both used to reach the solvers
        ("refiner.laplace", "eye_weight = nan\n", ["option 'eye_weight' must be a number, got nan"]),
        ("regressor.canonical-fit", "smoothing = nan\n", ["option 'smoothing' must be a number, got nan"]),
        ("refiner.laplace", "outlier_tolerance = inf\n", ["outlier_tolerance must be finite, got inf"]),
        (
            "refiner.sfs",
            "albedo_weight = -1.0\nspecular_lr = inf\nphase2_weights = [0.001, -100.0, 0.0, 2.5]\n",
            [
                "albedo_weight must be >= 0, got -1.0",
                "specular_lr must be finite, got inf",
                "phase2_weights must be >= 0, got (0.001, -100.0, 0.0, 2.5)",
            ],
        ),
        ("refiner.sfs", "lighting_rounds = -1\n", ["lighting_rounds must be >= 0, got -1"]),
        ("regressor.canonical-fit", "jaw_weight = inf\n", ["jaw_weight must be finite and >= 0, got inf"]),
        ("regressor.3dmm-fit", "focal_length = -800.0\n", ["focal_length must be a positive number of pixels"]),
        ("regressor.3dmm-fit", "contour_weight = inf\n", ["contour_weight must be finite and >= 0, got inf"]),
        # MediaPipe's C++ int overflowed into "max_vec_size should be greater than or equal to 1"
        ("detector.mediapipe", "max_faces = 9223372036854775807\n", ["max_faces must be in 1..2147483647"]),
    ],
)
def test_bad_options_name_the_file_table_key_and_value(tmp_path, photo, capsys, table, body, messages):
    config = write_config(tmp_path, f"[options.{table}]\n{body}")
    code, err = reconstruct(photo, config, capsys, "--refiners", "")  # tables of stages that do not run too
    assert code == 2
    assert f"[options.{table}] in {config}: " in err
    for message in messages:
        assert message in err


def test_option_checks_name_each_offending_key():
    with pytest.raises(ValueError, match=r"^max_side must be >= 16, got 8; alternate_every must be >= 1, got 0$"):
        SfsOptions(max_side=8, alternate_every=0)
    with pytest.raises(ValueError, match=r"^key_elevation must be within \[-90, 90\] degrees, got 95.0$"):
        SfsOptions(key_elevation=95.0)
    with pytest.raises(ValueError, match=r"^cached_topologies must be at least 1, got 0$"):
        LaplaceOptions(cached_topologies=0)
    with pytest.raises(ValueError, match=r"^nose_weight must be >= 0, got -0.1; target_vertices must be >= 0, got -1$"):
        LaplaceOptions(nose_weight=-0.1, target_vertices=-1)


def test_pipeline_type_errors_say_an_integer(tmp_path, photo, capsys):
    config = write_config(tmp_path, '[pipeline]\nblas_threads = "x"\nall_faces = 1\n')
    code, err = reconstruct(photo, config, capsys)
    assert code == 2
    assert f"{config}: [pipeline] " in err
    assert "blas_threads must be an integer, got 'x'" in err and "a int" not in err
    config.write_text("[pipeline]\ndetector = 3\n")
    code, err = reconstruct(photo, config, capsys)
    assert code == 2 and "[pipeline] detector must be a string, got 3" in err


def test_the_config_knows_its_file_and_source_is_no_key(tmp_path):
    config = PipelineConfig.load(write_config(tmp_path, "[options.refiner.sfs]\nmax_side = 256\n"))
    assert config.source == tmp_path / "facerecon.toml"
    assert pickle.loads(pickle.dumps(config)).source == config.source  # a batch's workers say it too
    assert config == PipelineConfig(options={("refiner", "sfs"): {"max_side": 256}})  # not compared
    with pytest.raises(ConfigError, match=r"\[pipeline\]: unknown key\(s\) source"):
        PipelineConfig.load(write_config(tmp_path, '[pipeline]\nsource = "elsewhere.toml"\n'))


# -- 3. options for no registered stage: a warning naming the file and the table ----------------------------


def test_options_for_an_unknown_plugin_are_a_warning_naming_file_and_table(tmp_path, caplog):
    config = write_config(tmp_path, "[options.detector.nosuch]\nx = 1\n")
    with caplog.at_level(logging.WARNING):
        Pipeline.from_config(config)  # a plugin installed on another machine: not an error
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        f"[options.detector.nosuch] in {config} is for no registered stage" in w and "unknown detector" in w
        for w in warnings
    ), warnings
