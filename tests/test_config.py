from __future__ import annotations

import numpy as np
import pytest

from facerecon.kernel import ConfigError, PipelineConfig

GOOD = """
[pipeline]
detector = "mediapipe"
regressor = "landmark-mesh"
segmenter = "none"
refiners = ["a", "b"]
device = "cpu"
all_faces = true

[plugins]
block = ["x"]

[options.detector.mediapipe]
max_faces = 2
"""


def test_full_config_round_trip(tmp_path):
    path = tmp_path / "f.toml"
    path.write_text(GOOD)
    config = PipelineConfig.load(path)
    assert config.refiners == ("a", "b") and config.segmenter is None and config.all_faces
    assert config.options_for("detector", "mediapipe") == {"max_faces": 2}
    assert config.block_plugins == ("x",) and config.allow_plugins is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[pipeline\n", "not valid TOML"),
        ("[pipline]\n", r"unknown key\(s\) pipline"),
        ("[pipeline]\ndetecter = 'x'\n", r"unknown key\(s\) detecter"),
        ("[pipeline]\nrefiners = 'laplace'\n", "refiners must be a list"),
        ("[pipeline]\ndevice = 'tpu'\n", r"bad.toml: \[pipeline\] device must be one of auto, cpu, cuda"),
        ("[pipeline]\ndetector = ''\n", r"\[pipeline\] detector must name a plugin \(a non-empty string\), got ''"),
        ("[pipeline]\nrefiners = ['laplace', 3]\n", r"\[pipeline\] refiners must be a list of plugin names"),
        ("[pipeline]\nblas_threads = -1\n", r"\[pipeline\] blas_threads must be an integer >= 0"),
        ("[pipeline]\nall_faces = 1\n", "all_faces must be a bool"),
        ("[pipeline]\nmax_image_pixels = -5\n", "max_image_pixels must be a positive integer"),
        ("[plugins]\nallow = 'x'\n", "allow must be a list"),
        ("[options.painter.x]\n", "unknown stage kind"),
        ("[options]\ndetector = 3\n", "must be a table"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        PipelineConfig.load(path)
    assert "bad.toml" in str(info.value)


def test_a_byte_order_mark_is_read_and_utf16_is_said_not_to_be_utf8(tmp_path):
    path = tmp_path / "notepad.toml"  # Windows' Notepad starts a UTF-8 file with a BOM
    path.write_bytes(b"\xef\xbb\xbf[pipeline]\r\ndevice = 'cpu'\r\n")
    assert PipelineConfig.load(path).device == "cpu"
    path.write_text("[pipeline]\ndevice = 'cpu'\n", encoding="utf-16")
    with pytest.raises(ConfigError, match=r"^cannot read config file .*notepad.toml: not UTF-8 text"):
        PipelineConfig.load(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        PipelineConfig.load(tmp_path / "none.toml")


def test_stage_flags_read_the_same_for_every_command():
    """`reconstruct`, `plugins` and `serve pipeline` read their stage flags through one function: a
    spaced refiner list gives plugin names, not " sfs" (which one command used to pass on)."""
    import argparse

    from facerecon.cli import build_parser, load_config
    from facerecon.services.commands import _config

    flags = ["--detector", "dlib", "--refiners", "laplace, sfs ,", "--all-faces"]
    cli = build_parser().parse_args(["reconstruct", "photo.jpg", *flags])
    serve = build_parser().parse_args(["serve", "pipeline", *flags])
    for config in (load_config(cli), _config(serve)):
        assert config.detector == "dlib" and config.all_faces
        assert config.refiners == ("laplace", "sfs")
    base = PipelineConfig(refiners=("laplace",))
    assert base.with_stage_flags(argparse.Namespace(refiners="")).refiners == ()
    assert base.with_stage_flags(argparse.Namespace()) is base  # nothing given: nothing changed


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"refiners": "laplace"}, "refiners must be a list of plugin names, got 'laplace'"),  # not l, a, p...
        ({"refiners": None}, "refiners must be a list"),
        ({"segmenter": 3}, r"segmenter must name a plugin \(a non-empty string\), got 3"),
        ({"all_faces": "no"}, "all_faces must be a boolean"),  # truthy: every face, silently
        ({"max_image_pixels": True}, "max_image_pixels must be a positive integer, got True"),
        ({"allow_plugins": "mine"}, "allow_plugins must be a list of plugin names"),
        ({"block_plugins": "sfs"}, "block_plugins must be a list of plugin names"),
        ({"options": {"detector": {}}}, r"options keys must be \(kind, plugin name\)"),
        ({"options": {("detector", 3): {}}}, r"options keys must be .* got \('detector', 3\)"),
        ({"options": {("detector", "mediapipe"): 3}}, "must be a mapping of option names to values"),
    ],
)
def test_a_config_built_in_code_is_checked_like_a_toml_file(values, message):
    with pytest.raises(ConfigError, match=message):
        PipelineConfig(**values)


def test_numpy_integers_are_integers():
    config = PipelineConfig(
        max_image_pixels=np.int64(1_000_000), detect_max_side=np.int32(1024), blas_threads=np.uint8(2)
    )
    assert (config.max_image_pixels, config.detect_max_side, config.blas_threads) == (1_000_000, 1024, 2)
    assert type(config.max_image_pixels) is int
    assert PipelineConfig(refiners=["laplace"], block_plugins=["x"]).refiners == ("laplace",)
