"""A plugin author's mistakes, each refused or reported naming the plugin (a hostile walk-through of
writing a plugin): names that cannot be typed or that would name files outside the output folder,
registration values of the wrong type, stages that fail, or return records that break the contract."""

from __future__ import annotations

import logging
import types

import numpy as np
import pytest
from plugin_support import builtin_host, plugin_module

from facerecon.kernel import (
    ConfigError,
    Mesh,
    Pipeline,
    PipelineConfig,
    PluginError,
    PluginHost,
    Segmentation,
)
from facerecon.plugins import landmark_mesh, mediapipe_detector


@pytest.fixture
def host() -> PluginHost:
    """A host with the default pipeline's built-ins only, registered by hand (no entry points)."""
    return builtin_host()


def refiner_named(stage: str):  # type: ignore[no-untyped-def]
    class Named:
        def __init__(self, options, device):
            self.stage = stage

        def refine(self, image, face, mesh, segmentation):
            return mesh

    return Named


@pytest.mark.parametrize("stage", ["../../escaped", "my stage/x", "coarse", "final", ""])
def test_a_stage_name_that_would_write_elsewhere_or_over_another_file_is_refused(host, stage):
    host.register_plugin(
        plugin_module("acme", lambda registry: registry.register("refiner", "acme", refiner_named(stage))), name="acme"
    )
    with pytest.raises(PluginError, match=r"refiner 'acme' from plugin 'acme' names its stage"):
        host.create("refiner", "acme", None, "cpu")


def test_two_refiners_of_one_stage_name_are_refused(host, face_photo):
    def register(registry):
        registry.register("refiner", "one", refiner_named("same"))
        registry.register("refiner", "two", refiner_named("same"))

    host.register_plugin(plugin_module("acme", register), name="acme")
    refused = pytest.raises(ConfigError, match="refiners 'one' and 'two' both name their stage 'same'")
    with Pipeline(PipelineConfig(refiners=("one", "two"), device="cpu"), host) as pipe, refused:
        pipe(face_photo)


@pytest.mark.parametrize(
    ("keywords", "message"),
    [
        ({"priority": "high"}, "priority of regressor 'acme' must be a number"),
        ({"available": True}, "available of regressor 'acme' must be a function"),
        ({"accepts": ()}, "accepts of regressor 'acme' must be a non-empty tuple"),
        ({"summary": None}, "summary of regressor 'acme' must be a string"),
    ],
)
def test_registration_values_of_the_wrong_type_refuse_the_plugin_not_the_pipeline(host, caplog, keywords, message):
    def register(registry):
        registry.register("regressor", "acme", landmark_mesh.LandmarkMeshRegressor, **keywords)

    host.register_plugin(plugin_module("acme", register), name="acme")
    with caplog.at_level(logging.WARNING):
        assert host.auto("regressor", ("mediapipe478",)) == "landmark-mesh"  # the default still resolves
    assert message in caplog.text and "plugin 'acme'" in caplog.text


@pytest.mark.parametrize("name", ["a,b", "-dash", "two words", "x=y", "../up", "line\nbreak"])
def test_a_stage_name_that_cannot_be_typed_is_refused(host, caplog, name):
    def register(registry):
        registry.register("refiner", name, refiner_named("ok"))

    host.register_plugin(plugin_module("acme", register), name="acme")
    with caplog.at_level(logging.WARNING):
        assert ("refiner", name) not in host.stages
    assert "a name is letters, digits and . _ + -" in caplog.text


def test_an_available_function_that_fails_is_not_available(host, caplog):
    def register(registry):
        registry.register(
            "regressor", "acme", landmark_mesh.LandmarkMeshRegressor, priority=99, available=lambda: 1 / 0
        )

    host.register_plugin(plugin_module("acme", register), name="acme")
    with caplog.at_level(logging.WARNING):
        assert host.auto("regressor", ("mediapipe478",)) == "landmark-mesh"
    assert "regressor 'acme' from plugin 'acme': available() failed (ZeroDivisionError" in caplog.text


class Failing:
    """A refiner whose constructor or refine() fails the way plugin code does."""

    stage = "failing"

    def __init__(self, options, device):
        if options is not None and options.fail_to_build:
            raise ValueError("my model config is broken")

    def refine(self, image, face, mesh, segmentation):
        return 1 / 0


def test_errors_of_plugin_code_name_the_stage_and_the_plugin(host, face_photo):
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Options:
        fail_to_build: bool = False

    host.register_plugin(
        plugin_module("acme", lambda registry: registry.register("refiner", "failing", Failing, options=Options)),
        name="acme",
    )
    with pytest.raises(PluginError, match=r"refiner 'failing' from plugin 'acme' failed to build: ValueError: my"):
        host.create("refiner", "failing", {"fail_to_build": True}, "cpu")
    refused = pytest.raises(PluginError, match=r"refiner 'failing' \(plugin 'acme'\) failed: ZeroDivisionError")
    with Pipeline(PipelineConfig(refiners=("failing",), device="cpu"), host) as pipe, refused:
        pipe(face_photo)


class EmptyRegressor:
    def __init__(self, options, device):
        self.inner = landmark_mesh.LandmarkMeshRegressor(landmark_mesh.LandmarkMeshOptions(), device)

    def regress(self, image, face):
        coarse = self.inner.regress(image, face)
        empty = Mesh(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int32), topology="none")
        return type(coarse)(empty, coarse.rotation, coarse.translation, coarse.scale)


class HalfMapSegmenter:
    def __init__(self, options, device):
        pass

    def segment(self, image, face):
        h, w = image.shape[:2]
        return Segmentation(np.zeros((h // 2, w // 2), np.uint8), {0: "background"})


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (PipelineConfig(regressor="acme-empty", refiners=(), device="cpu"), "returned an empty mesh"),
        (PipelineConfig(segmenter="acme-half", refiners=(), device="cpu"), "a label map of"),
    ],
)
def test_records_that_break_the_contract_are_refused_naming_the_stage(host, face_photo, config, message):
    def register(registry):
        registry.register("regressor", "acme-empty", EmptyRegressor, accepts=("mediapipe478",))
        registry.register("segmenter", "acme-half", HalfMapSegmenter)

    host.register_plugin(plugin_module("acme", register), name="acme")
    with (
        Pipeline(config, host) as pipe,
        pytest.raises(PluginError, match=r"\(plugin 'acme'\) broke the stage contract"),
    ):
        try:
            pipe(face_photo)
        except PluginError as error:
            assert message in str(error)
            raise


def test_a_refiner_without_its_stage_name_is_told_what_it_lacks(host):
    class NoStage:
        def __init__(self, options, device):
            pass

        def refine(self, image, face, mesh, segmentation):
            return mesh

    host.register_plugin(
        plugin_module("acme", lambda registry: registry.register("refiner", "acme", NoStage)), name="acme"
    )
    with pytest.raises(PluginError, match=r"does not implement the refiner protocol \(it lacks stage\)"):
        host.create("refiner", "acme", None, "cpu")


def test_a_hook_without_hookimpl_and_a_plugin_that_exits_are_said(host, caplog):
    unmarked = types.ModuleType("unmarked")
    unmarked.facerecon_register_stages = lambda registry: None  # no @hookimpl: pluggy passes it over
    quitter = plugin_module("quitter", lambda registry: exec("raise SystemExit(3)"))
    with caplog.at_level(logging.WARNING):
        host.register_plugin(unmarked, name="unmarked")
        host.register_plugin(quitter, name="quitter")
        assert "landmark-mesh" in host.names("regressor")  # the host goes on
    assert "plugin 'unmarked' defines facerecon_register_stages without @hookimpl" in caplog.text
    assert "plugin 'quitter' failed while registering its stages: SystemExit" in caplog.text


def test_a_blocked_plugin_is_never_imported_not_even_to_build_the_command_line(monkeypatch, tmp_path, capsys):
    """The command line is built with the ``-c`` config's [plugins] lists applied: a blocked plugin's
    module does not run (one that exits at import would otherwise end every command)."""
    from facerecon.cli import main

    dist = tmp_path / "quitter_facerecon-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: quitter-facerecon\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[facerecon]\nquitter = quitter_plugin\n")
    marker = tmp_path / "imported"
    (tmp_path / "quitter_plugin.py").write_text(f"open({str(marker)!r}, 'w').close()\nraise SystemExit(3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    config = tmp_path / "block.toml"
    config.write_text('[plugins]\nblock = ["quitter"]\n')
    assert main(["plugins", "-c", str(config)]) == 0
    assert not marker.exists()
    assert main(["plugins"]) == 0  # not blocked: imported, refused (its SystemExit), the rest goes on
    assert marker.exists()
    assert "refused: plugin 'quitter' could not be imported: SystemExit: 3" in capsys.readouterr().out


def test_a_plugins_list_naming_no_installed_plugin_is_warned_about(caplog):
    with caplog.at_level(logging.WARNING):
        PluginHost(block=["shifted-mp-typo"])
    assert "[plugins] block names 'shifted-mp-typo', which no installed plugin is called" in caplog.text
    assert "landmark-mesh" in caplog.text  # the installed plugins' names, to pick from


class OffImageDetector:
    def __init__(self, options, device):
        self.inner = mediapipe_detector.MediaPipeDetector(mediapipe_detector.MediaPipeOptions(), device)

    def detect(self, image):
        from dataclasses import replace

        faces = self.inner.detect(image)
        return [replace(f, box=np.asarray(f.box) + 5000, landmarks=f.landmarks) for f in faces]

    def close(self):
        self.inner.close()


def test_maps_region_colours_and_boxes_that_break_their_conventions_are_refused(host, face_photo):
    from facerecon.kernel import ImageMaps, RecordError

    with pytest.raises(RecordError, match=r"image map 'albedo' must be \(h, w, 3\), got \(4, 4, 5\)"):
        ImageMaps((0, 0), {"albedo": np.zeros((4, 4, 5), np.float32)})
    with pytest.raises(RecordError, match=r"region colour 'skin' must be RGB in \[0, 1\]"):
        Segmentation(np.zeros((4, 4), np.uint8), {0: "background"}, {"skin": np.array([200.0, 150.0, 120.0])})
    host.register_plugin(
        plugin_module("acme", lambda registry: registry.register("detector", "acme-off", OffImageDetector)),
        name="acme",
    )
    refused = pytest.raises(PluginError, match=r"detector 'acme-off' \(plugin 'acme'\) broke .* off the 533x800")
    with Pipeline(PipelineConfig(detector="acme-off", refiners=(), device="cpu"), host) as pipe, refused:
        pipe(face_photo)
