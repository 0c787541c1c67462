"""The plugin host: registration, lookup by name, overrides, refusal of broken plugins, options."""

from __future__ import annotations

import logging
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from plugin_support import builtin_host, plugin_module

from facerecon.kernel import (
    ClosedError,
    ConfigError,
    InputError,
    Pipeline,
    PipelineConfig,
    PluginError,
    PluginHost,
    hookimpl,
)


@dataclass(frozen=True)
class ShiftOptions:
    dx: float = 0.0
    label: str = "shift"
    path: Path | None = None


class ShiftRefiner:
    """Moves the mesh sideways by dx pixels — enough to see options arrive and refiners chain."""

    stage = "shifted"

    def __init__(self, options: ShiftOptions, device: str) -> None:
        self.options, self.device = options, device

    def refine(self, image, face, mesh, segmentation):
        return mesh.with_vertices(mesh.vertices + [self.options.dx, 0, 0])


def register_shift(registry) -> None:
    registry.register("refiner", "shift", ShiftRefiner, options=ShiftOptions, summary="test refiner")


@pytest.fixture
def host() -> PluginHost:
    """A host with the default pipeline's built-ins only, registered by hand (no entry points)."""
    return builtin_host()


def test_entry_points_load_builtins_with_distribution():
    host = PluginHost()
    spec = host.spec("regressor", "landmark-mesh")
    assert (spec.plugin, spec.distribution) == ("landmark-mesh", "facerecon")
    assert host.plugins["mediapipe"].version == spec.version


def test_unknown_stage_name_lists_known(host):
    with pytest.raises(ConfigError, match=r"unknown detector: 'nope' \(known: mediapipe\)"):
        host.spec("detector", "nope")
    with pytest.raises(ConfigError, match="unknown stage kind"):
        host.spec("tokenizer", "x")


def test_pipeline_rejects_unknown_plugin_before_loading_models(host):
    with pytest.raises(ConfigError, match="unknown refiner: 'laplace'"):
        Pipeline(PipelineConfig(refiners=("laplace",)), host)


def test_wrong_hook_signature_is_refused_naming_the_plugin(host, caplog):
    bad = types.ModuleType("bad_plugin")

    @hookimpl
    def facerecon_register_stages(registry, extra_argument):  # not in the spec
        raise AssertionError("never called")

    bad.facerecon_register_stages = facerecon_register_stages
    with caplog.at_level(logging.WARNING):
        assert host.register_plugin(bad, name="bad-plugin") is False
    assert "bad-plugin" in host.failures and "extra_argument" in host.failures["bad-plugin"]
    assert "bad-plugin" in caplog.text
    assert host.names("detector") == ["mediapipe"]  # the rest keeps working


def test_unknown_hook_name_is_refused(host):
    typo = types.ModuleType("typo")
    typo.facerecon_register_stage = hookimpl(lambda registry: None)  # missing "s"
    assert host.register_plugin(typo, name="typo") is False
    assert "typo" in host.failures


def test_plugin_that_raises_while_registering_is_refused(host):
    def boom(registry):
        raise RuntimeError("model index missing")

    host.register_plugin(plugin_module("boom", boom), name="boom")
    assert host.names("refiner") == []
    assert "model index missing" in host.failures["boom"]


def test_bad_registration_is_refused(host):
    def wrong_kind(registry):
        registry.register("tokenizer", "x", ShiftRefiner)

    host.register_plugin(plugin_module("wrong", wrong_kind), name="wrong")
    assert host.names("refiner") == []
    assert "unknown stage kind 'tokenizer'" in host.failures["wrong"]


def test_later_plugin_replaces_a_stage_by_name(host, caplog):
    class MyDetector:
        def __init__(self, options, device):
            pass

        def detect(self, image):
            return []

    def register(registry):
        registry.register("detector", "mediapipe", MyDetector, summary="override")

    with caplog.at_level(logging.WARNING):
        host.register_plugin(plugin_module("override", register), name="override", distribution="mine")
    spec = host.spec("detector", "mediapipe")
    assert (spec.plugin, spec.distribution, spec.summary) == ("override", "mine", "override")
    assert "replaces" in caplog.text


def test_block_list_keeps_a_plugin_out():
    host = PluginHost(block=["landmark-mesh"])
    assert "landmark-mesh" not in host.names("regressor")
    assert "mediapipe" in host.names("detector")


def test_allow_list_applies_to_third_party_only(monkeypatch, tmp_path):
    # A real third-party distribution on sys.path, found through importlib.metadata entry points.
    dist = tmp_path / "acme_facerecon-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-facerecon\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[facerecon]\nacme = acme_refiner\n")
    (tmp_path / "acme_refiner.py").write_text(
        "from facerecon.kernel import hookimpl\n"
        "class Same:\n"
        "    stage = 'same'\n"
        "    def __init__(self, options, device): pass\n"
        "    def refine(self, image, face, mesh, segmentation): return mesh\n"
        "@hookimpl\n"
        "def facerecon_register_stages(registry):\n"
        "    registry.register('refiner', 'acme-same', Same, summary='identity')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    loaded = PluginHost()
    assert loaded.spec("refiner", "acme-same").distribution == "acme-facerecon"
    assert loaded.spec("refiner", "acme-same").version == "1.0"
    assert "acme-same" in PluginHost(allow=["acme"]).names("refiner")
    restricted = PluginHost(allow=[])
    assert "acme-same" not in restricted.names("refiner")
    assert "mediapipe" in restricted.names("detector")  # built-ins always load
    assert {restricted.spec("detector", name).distribution for name in restricted.names("detector")} == {"facerecon"}
    sys.modules.pop("acme_refiner", None)


def test_options_reach_the_factory_typed(host, face_photo):
    host.register_plugin(plugin_module("shift", register_shift), name="shift")
    config = PipelineConfig(refiners=("shift",), device="cpu").with_options(
        "refiner", "shift", {"dx": 5, "path": "~/x"}
    )
    pipe = Pipeline(config, host)
    refiner = pipe.refiners[0][1]
    assert refiner.options == ShiftOptions(dx=5.0, path=Path("~/x").expanduser())
    assert isinstance(refiner.options.dx, float)
    rec = pipe(face_photo)
    coarse, shifted = rec.reconstructions[0].stages
    assert (coarse.stage, shifted.stage, shifted.plugin) == ("coarse", "shifted", "shift")
    assert abs(float((shifted.mesh.vertices - coarse.mesh.vertices)[:, 0].mean()) - 5.0) < 1e-3
    pipe.close()


def test_a_closed_pipeline_says_so_instead_of_loading_its_models_again(host, face_photo):
    host.register_plugin(plugin_module("shift", register_shift), name="shift")
    with Pipeline(PipelineConfig(refiners=("shift",), device="cpu"), host) as pipe:
        assert len(pipe(face_photo).reconstructions) == 1
    for use in (lambda: pipe(face_photo), lambda: pipe.detect(face_photo), pipe.warm_up):
        with pytest.raises(ClosedError, match=r"this pipeline was closed; its detector 'mediapipe' is unloaded"):
            use()
    pipe.close()  # closing twice is harmless


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"dy": 1}, r"unknown option\(s\) dy \(known: dx, label, path\)"),
        ({"dx": "far"}, "option 'dx' must be float"),
        ({"dx": True}, "must be a number"),
        ({"label": 3}, "option 'label' must be str"),
        ({"path": 3}, "must be a path string"),
    ],
)
def test_bad_options_are_refused_with_the_key(host, table, message):
    host.register_plugin(plugin_module("shift", register_shift), name="shift")
    with pytest.raises(ConfigError, match=message):
        host.create("refiner", "shift", table, "cpu")


def test_options_validation_inside_the_dataclass(host):
    with pytest.raises(ConfigError, match=r"max_faces must be in 1\.\.2147483647, got 0"):
        host.create("detector", "mediapipe", {"max_faces": 0}, "cpu")


def test_factory_returning_wrong_object_is_a_plugin_error(host):
    def register(registry):
        registry.register("regressor", "lazy", lambda options, device: object())

    host.register_plugin(plugin_module("lazy", register), name="lazy")
    with pytest.raises(PluginError, match=r"regressor 'lazy' from plugin 'lazy' does not implement"):
        host.create("regressor", "lazy", None, "cpu")


def test_stage_breaking_the_contract_at_run_time_is_named(host, face_photo):
    class Liar:
        stage = "liar"

        def __init__(self, options, device):
            pass

        def refine(self, image, face, mesh, segmentation):
            return mesh.vertices  # an array, not a Mesh

    def register(registry):
        registry.register("refiner", "liar", Liar)

    host.register_plugin(plugin_module("liar", register), name="liar")
    pipe = Pipeline(PipelineConfig(refiners=("liar",), device="cpu"), host)
    with pytest.raises(PluginError, match=r"refiner 'liar' \(plugin 'liar'\) broke the stage contract"):
        pipe(face_photo)
    pipe.close()


def test_device_resolution(monkeypatch):
    import importlib.util

    from facerecon.kernel.host.devices import resolve_device

    assert resolve_device("cpu") == "cpu"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)  # as on a machine without torch
    assert resolve_device("auto") == "cpu"
    assert resolve_device("cuda") == "cuda"  # left to plugins with their own CUDA runtime


def test_the_pipelines_public_steps_refuse_what_is_not_theirs(pipeline, face_photo):
    """``detect`` and ``reconstruct_face`` are public (videos, Ray, the evaluations call them): what a caller
    hands them wrongly is an InputError saying what, not an AttributeError from inside, a plugin blamed for
    it, nor a reconstruction of a face that is not in the image."""
    face = pipeline.detect(face_photo)[0]
    assert face.box[0] > 60 and face.box[1] > 60  # (the corner cut below holds none of it)
    with pytest.raises(InputError, match="must be a numpy array, got list"):
        pipeline.detect(face_photo.tolist())
    with pytest.raises(InputError, match="sides above 16384 px"):  # before the detector shrinks it
        pipeline.detect(np.broadcast_to(np.uint8(0), (20000, 20000, 3)))
    with pytest.raises(InputError, match="must be uint8, got float32"):
        pipeline.reconstruct_face(face_photo.astype(np.float32), face)
    with pytest.raises(InputError, match="face must be a Face .*got NoneType"):
        pipeline.reconstruct_face(face_photo, None)
    with pytest.raises(InputError, match=r"off the 50x50 image: a face of another image\?"):
        pipeline.reconstruct_face(face_photo[:50, :50], face)
    with pytest.raises(InputError, match="coarse must be a CoarseResult or None, got str"):
        pipeline.reconstruct_face(face_photo, face, coarse="mesh")
    assert pipeline.reconstruct_face(face_photo, face).final.mesh.vertices.shape[1] == 3


def test_a_pipeline_built_from_a_path_points_to_from_config():
    with pytest.raises(ConfigError, match=r"Pipeline takes a PipelineConfig, got str: use Pipeline.from_config"):
        Pipeline("facerecon.toml")  # type: ignore[arg-type]
