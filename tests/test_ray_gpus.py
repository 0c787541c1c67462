"""The Ray engine's GPU requests (issue 18), on a real local Ray cluster that declares one logical GPU
(``ray.init(num_gpus=1)``; no GPU is needed): a stage whose plugin declares CUDA gets an actor holding the
GPU resource, with CUDA_VISIBLE_DEVICES set by Ray, the CPU-only stages do not take it, and where the GPU
cannot be had the engine says so instead of waiting for ever."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import pytest

from facerecon.batch import WriteOptions
from facerecon.kernel import PipelineConfig
from facerecon.kernel.contract.errors import ConfigError

ray = pytest.importorskip("ray", reason="the Ray engine needs pip install 'facerecon[ray]'")

from facerecon.engines.ray_engine import RayEngine  # noqa: E402

# mediapipe and landmark-mesh declare devices=("cpu",); laplace the default ("cpu", "cuda")
CONFIG = PipelineConfig(regressor="landmark-mesh", segmenter=None, refiners=("laplace",), device="auto")
WRITE = WriteOptions(texture_size=64)


@pytest.fixture(scope="module")
def gpu_cluster():
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield ray.cluster_resources()
    ray.shutdown()


def test_only_the_stage_that_declares_cuda_gets_the_gpu(gpu_cluster, lfpw, tmp_path):
    assert gpu_cluster["GPU"] == 1
    engine = RayEngine(CONFIG, WRITE)
    assert engine.gpu_stages() == ("refine",)
    engine.start()
    try:
        placed = {stage: ray.get(actors[0].placement.remote()) for stage, actors in engine.actors.items()}
        # the GPU is held while the actors live
        assert ray.available_resources().get("GPU", 0.0) == 0.0
        outcomes = list(engine.run([(p, tmp_path / p.stem, None) for p in lfpw[:2]]))
    finally:
        engine.close()
    assert placed["refine"]["gpu_ids"] == ["0"] and placed["refine"]["cuda_visible_devices"] == "0"
    # no CUDA-capable PyTorch sees a real GPU here: "auto" falls back to the CPU inside the GPU actor
    assert placed["refine"]["device"] in ("cpu", "cuda")
    for stage in ("detect", "coarse"):
        assert placed[stage]["gpu_ids"] == [] and placed[stage]["cuda_visible_devices"] == ""
        assert placed[stage]["device"] == "cpu"
    assert [o.error for o in outcomes] == [None, None]
    for photo in lfpw[:2]:  # the medium stage ran in the GPU actor
        result = json.loads((tmp_path / photo.stem / "result.json").read_text())
        assert [s["plugin"] for s in result["reconstructions"][0]["stages"]] == ["landmark-mesh", "laplace"]
    assert _wait_gpu_free()


def _wait_gpu_free(timeout: float = 60.0) -> bool:
    """The killed actors give the GPU back (asynchronously)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if ray.available_resources().get("GPU", 0.0) == 1.0:
            return True
        time.sleep(0.1)
    return False


def test_replicas_share_the_gpu(gpu_cluster):
    shares = RayEngine(CONFIG, WRITE, replicas=2).resources(ray)
    assert shares["refine"]["num_gpus"] == 0.5 and shares["detect"]["num_gpus"] == shares["coarse"]["num_gpus"] == 0
    cpu_only = RayEngine(PipelineConfig(regressor="landmark-mesh", segmenter=None, refiners=(), device="cuda"), WRITE)
    assert cpu_only.gpu_stages() == ()  # no stage can use it: nobody asks
    assert all(r["num_gpus"] == 0 and r["device"] == "cpu" for r in cpu_only.resources(ray).values())
    on_cpu = RayEngine(replace(CONFIG, device="cpu"), WRITE)  # --device cpu: nobody asks either
    assert all(r["num_gpus"] == 0 and r["device"] == "cpu" for r in on_cpu.resources(ray).values())


def test_a_gpu_that_cannot_be_had_is_an_error_not_a_hang(gpu_cluster):
    """Another job holds the cluster's only GPU: start() gives up after its timeout with a clear error."""

    @ray.remote(num_gpus=1)
    class Holder:
        def ready(self) -> bool:
            return True

    holder = Holder.remote()
    ray.get(holder.ready.remote())
    try:
        engine = RayEngine(CONFIG, WRITE, start_timeout_s=5.0)
        with pytest.raises(ConfigError, match="not all placed and loaded within 5 s.*refine: 0.5 CPU 1 GPU"):
            engine.start()
        assert engine.actors == {}
    finally:
        ray.kill(holder)
    assert _wait_gpu_free()
