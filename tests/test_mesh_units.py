"""Stages declare the mesh frames they give and take ("px" orthographic pixels, "mm" + camera matrix): an
incompatible chain is refused when the pipeline is built; a mesh in the wrong units at run time is named."""

from __future__ import annotations

import json

import numpy as np
import pytest

from facerecon.kernel import ConfigError, Pipeline, PipelineConfig, PluginError, PluginHost, hookimpl
from facerecon.plugins import fit3dmm, landmark_mesh, landmark_regions, mediapipe_detector


class PixelOnlyRefiner:
    """A refiner that works in image pixels only (say, an image-space filter): moves nothing."""

    stage = "pixel"

    def refine(self, image, face, mesh, segmentation):  # type: ignore[no-untyped-def]
        return mesh


class MillimetreRefiner(PixelOnlyRefiner):
    stage = "metric"


class _Plugins:
    @hookimpl
    def facerecon_register_stages(self, registry) -> None:  # type: ignore[no-untyped-def]
        registry.register("refiner", "pixel-only", lambda o, d: PixelOnlyRefiner(), mesh_units=("px",))
        registry.register("refiner", "mm-only", lambda o, d: MillimetreRefiner(), mesh_units=("mm",))
        # landmark-mesh's regressor again, declaring no units (as a remote or an older plugin would)
        registry.register(
            "regressor",
            "undeclared",
            landmark_mesh.LandmarkMeshRegressor,
            options=landmark_mesh.LandmarkMeshOptions,
            accepts=("mediapipe478",),
        )


@pytest.fixture
def host() -> PluginHost:
    h = PluginHost(load_entrypoints=False)
    stages = (mediapipe_detector, "mediapipe"), (landmark_mesh, "landmark-mesh"), (landmark_regions, "landmark-regions")
    for module, name in (*stages, (fit3dmm, "3dmm-fit")):
        h.register_plugin(module, name=name, distribution="facerecon", version="0")
    h.register_plugin(_Plugins(), name="units-test")
    return h


def _fit_config(camera: str, refiners: tuple[str, ...]) -> PipelineConfig:
    # the model is not loaded while the pipeline is built: the chain is checked from the options alone
    options = {"regressor": {"3dmm-fit": {"model": "sfm", "camera": camera}}}
    return PipelineConfig.from_mapping(
        {"pipeline": {"regressor": "3dmm-fit", "refiners": list(refiners)}, "options": options}
    )


def test_a_pixel_refiner_after_a_perspective_fit_is_refused_when_built(host):
    with pytest.raises(ConfigError) as info:
        Pipeline(_fit_config("perspective", ("pixel-only",)), host)
    message = str(info.value)
    assert "refiner 'pixel-only' takes meshes in px, but regressor '3dmm-fit' gives mm" in message
    assert "mm-only" in message and "camera" in message  # names the refiners that would work, and the option


def test_the_regressor_options_decide_its_units(host):
    Pipeline(_fit_config("orthographic", ("pixel-only",)), host)  # pixels: accepted
    Pipeline(_fit_config("perspective", ("mm-only",)), host)
    with pytest.raises(ConfigError, match="takes meshes in mm, but regressor '3dmm-fit' gives px"):
        Pipeline(_fit_config("orthographic", ("mm-only",)), host)


def test_the_built_in_refiners_take_both(host):
    from facerecon.plugins import laplace, sfs

    host.register_plugin(laplace, name="laplace", distribution="facerecon", version="0")
    host.register_plugin(sfs, name="sfs", distribution="facerecon", version="0")
    for camera in ("orthographic", "perspective"):
        Pipeline(_fit_config(camera, ("laplace", "sfs")), host)


def test_an_undeclared_regressor_is_checked_on_the_mesh(host, face_photo):
    pipeline = Pipeline(PipelineConfig(regressor="undeclared", refiners=("mm-only",)), host)  # not known: allowed
    with pytest.raises(
        PluginError, match=r"refiner 'mm-only' takes meshes in mm; the stage before it gave one in 'px'"
    ):
        pipeline(face_photo)
    result = Pipeline(PipelineConfig(regressor="undeclared", refiners=("pixel-only",)), host)(face_photo)
    assert [s.stage for s in result.reconstructions[0].stages] == ["coarse", "pixel"]


def test_bad_declarations_are_refused(host):
    class Bad:
        @hookimpl
        def facerecon_register_stages(self, registry) -> None:  # type: ignore[no-untyped-def]
            registry.register("refiner", "cm", lambda o, d: PixelOnlyRefiner(), mesh_units=("cm",))

    host.register_plugin(Bad(), name="bad-units")
    assert ("refiner", "cm") not in host.stages  # stages are collected (and bad ones refused) when first asked
    assert "mesh_units of refiner 'cm' must be a tuple of px, mm" in host.failures["bad-units"]


def test_plugins_command_shows_the_units(capsys):
    from facerecon.cli import main

    assert main(["plugins", "--json"]) == 0
    rows = {(r["kind"], r["name"]): r for r in json.loads(capsys.readouterr().out)["stages"]}
    assert rows[("regressor", "landmark-mesh")]["mesh_units"] == "px"
    assert rows[("regressor", "3dmm-fit")]["mesh_units"].startswith("px|mm")
    assert rows[("refiner", "sfs")]["mesh_units"] == "px|mm"
    assert rows[("detector", "mediapipe")]["mesh_units"] is None
    assert np.all([rows[("refiner", n)]["mesh_units"] == "px|mm" for n in ("laplace", "sfs")])
