"""The default pipeline is the seed's: detector -> segmenter -> coarse -> laplace -> sfs; without PyTorch it
runs coarse + medium and says once how to get the fine stage; --fast / --refiners '' keep the fast paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from facerecon.cli import main
from facerecon.kernel import ConfigError, Pipeline, PipelineConfig, PluginHost, hookimpl
from facerecon.kernel.host.config import DEFAULT_REFINERS
from facerecon.plugins import landmark_mesh, landmark_regions, laplace, mediapipe_detector

# Hides torch from this interpreter and every process it spawns (sitecustomize), as if it were not installed.
NO_TORCH = """
import importlib.machinery
_find_spec = importlib.machinery.PathFinder.find_spec.__func__
def _hide_torch(cls, name, path=None, target=None):
    if name == "torch" or name.startswith("torch."):
        return None  # as if it were not installed: find_spec gives None, import raises ModuleNotFoundError
    return _find_spec(cls, name, path, target)
importlib.machinery.PathFinder.find_spec = classmethod(_hide_torch)
"""


def test_the_default_config_runs_the_medium_and_fine_stages():
    assert PipelineConfig().refiners == DEFAULT_REFINERS == ("laplace", "sfs")
    assert Pipeline(PipelineConfig()).config.refiners == ("laplace", "sfs")  # torch is installed here
    assert Pipeline(PipelineConfig(refiners=())).config.refiners == ()  # coarse alone, when asked


class _UnavailableFine:
    """A fine stage whose dependency is missing (stands for sfs on an install without PyTorch)."""

    @hookimpl
    def facerecon_register_stages(self, registry) -> None:  # type: ignore[no-untyped-def]
        registry.register(
            "refiner", "sfs", lambda o, d: None, available=lambda: False, install_hint="pip install 'facerecon[fine]'"
        )


def _host_without_fine() -> PluginHost:
    host = PluginHost(load_entrypoints=False)
    for module, name in (
        (mediapipe_detector, "mediapipe"),
        (landmark_mesh, "landmark-mesh"),
        (landmark_regions, "landmark-regions"),
        (laplace, "laplace"),
    ):
        host.register_plugin(module, name=name)
    host.register_plugin(_UnavailableFine(), name="fine")
    return host


def test_an_unavailable_default_refiner_is_skipped_with_one_warning(caplog):
    host = _host_without_fine()
    with caplog.at_level("WARNING"):
        pipe = Pipeline(PipelineConfig(), host)
    assert pipe.config.refiners == ("laplace",)
    warnings = [r.getMessage() for r in caplog.records if "sfs" in r.getMessage()]
    assert len(warnings) == 1 and "pip install 'facerecon[fine]'" in warnings[0], warnings


def test_without_torch_the_cli_runs_coarse_and_medium_and_says_so_once(tmp_path, lfpw):
    """A real run in an interpreter where torch cannot be imported (nor in the batch worker it spawns)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(NO_TORCH)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "out"
    command = [str(Path(sys.executable).parent / "facerecon"), "reconstruct", str(lfpw[0]), "-o", str(out), "-q"]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stderr.count("pip install 'facerecon[fine]'") == 1, run.stderr
    result = json.loads((out / lfpw[0].stem / "result.json").read_text())
    stages = [s["stage"] for s in result["reconstructions"][0]["stages"]]
    assert stages == ["coarse", "medium"], stages


def test_without_torch_jobs_2_says_so_once_for_the_run(tmp_path, lfpw):
    """Each worker builds its own pipeline: the warning is still the run's, said once (not once per worker)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(NO_TORCH)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    command = [str(Path(sys.executable).parent / "facerecon"), "reconstruct", str(lfpw[0]), str(lfpw[1])]
    command += ["-o", str(tmp_path / "out"), "-q", "--jobs", "2", "--formats", "glb"]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stderr.count("pip install 'facerecon[fine]'") == 1, run.stderr


def test_a_pipeline_server_says_so_once_for_all_its_copies(caplog):
    from facerecon.services.server import Server, ServerSettings

    with caplog.at_level("WARNING"):
        server = Server.for_pipeline(
            PipelineConfig(device="cpu"), host=_host_without_fine(), settings=ServerSettings(port=0, workers=2)
        )
        server.start()
        try:
            assert server.wait_ready(timeout=300)
        finally:
            server.stop(grace=0)
    warnings = [r.getMessage() for r in caplog.records if "runs without refiner 'sfs'" in r.getMessage()]
    assert len(warnings) == 1, warnings


@pytest.fixture(scope="module")
def default_run(tmp_path_factory, lfpw) -> Path:
    out = tmp_path_factory.mktemp("default")
    assert main(["reconstruct", str(lfpw[2]), "-o", str(out), "-q"]) == 0
    return out / lfpw[2].stem


def test_a_plain_reconstruct_gives_the_detailed_face(default_run):
    result = json.loads((default_run / "result.json").read_text())
    stages = [s["stage"] for s in result["reconstructions"][0]["stages"]]
    assert stages == ["coarse", "medium", "fine"], stages
    assert (default_run / "fine.obj").is_file() and (default_run / "medium.obj").is_file()
    assert result["plugins"]["segmenter"]["plugin"] == "landmark-regions"


def test_fast_keeps_the_medium_stage_only(tmp_path, lfpw):
    assert main(["reconstruct", str(lfpw[2]), "-o", str(tmp_path), "-q", "--fast"]) == 0
    result = json.loads((tmp_path / lfpw[2].stem / "result.json").read_text())
    assert [s["stage"] for s in result["reconstructions"][0]["stages"]] == ["coarse", "medium"]
    with pytest.raises(ConfigError, match="--fast and --refiners"):
        from facerecon.cli import build_parser, load_config

        load_config(build_parser().parse_args(["reconstruct", "x.jpg", "--fast", "--refiners", "sfs"]))
