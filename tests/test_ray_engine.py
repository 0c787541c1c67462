"""The Ray engine (issue 18, item 5) on a real local Ray cluster (2 CPUs, loopback), shared by the tests of
this module: results identical to the in-process run, and a stage actor killed mid-batch has its inputs
retried with nothing lost and nothing written twice."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from facerecon.batch import WriteOptions, reconstruct_one
from facerecon.cli import main
from facerecon.kernel import Pipeline, PipelineConfig

ray = pytest.importorskip("ray", reason="the Ray engine needs pip install 'facerecon[ray]'")

from facerecon.engines.ray_engine import RayEngine  # noqa: E402
from tests.streams import CountedInputs  # noqa: E402

CONFIG = PipelineConfig(regressor="landmark-mesh", segmenter=None, refiners=(), device="cpu")
WRITE = WriteOptions(texture_size=64)
FLAGS = ["--regressor", "landmark-mesh", "--segmenter", "none", "--refiners", "", "--texture-size", "64", "-q"]


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield ray.cluster_resources()
    ray.shutdown()


@pytest.fixture(scope="module")
def in_process(lfpw, tmp_path_factory) -> Path:
    """The photos reconstructed in this process, the reference."""
    out = tmp_path_factory.mktemp("local")
    with Pipeline(CONFIG) as pipeline:
        for photo in lfpw[:6]:
            assert reconstruct_one(pipeline, photo, out / photo.stem, WRITE).error is None
    return out


def comparable(folder: Path) -> tuple[dict, bytes, bytes]:
    """result.json without wall times, the mesh and the preview."""
    result = json.loads((folder / "result.json").read_text())
    result.pop("timings_ms")
    for reconstruction in result["reconstructions"]:
        for stage in reconstruction["stages"]:
            stage.pop("elapsed_ms")
    return result, (folder / "coarse.obj").read_bytes(), (folder / "preview.png").read_bytes()


def test_cli_on_ray_gives_the_in_process_results(cluster, lfpw, in_process, tmp_path):
    assert cluster["CPU"] == 2
    out = tmp_path / "ray"
    photos = [str(p) for p in lfpw[:3]] + [str(tmp_path / "missing.png")]
    assert main(["reconstruct", *photos, "-o", str(out), "--engine", "ray", *FLAGS]) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["engine"] == "ray" and summary["counts"]["succeeded"] == 3 and summary["failed"] == 1
    for photo in lfpw[:3]:
        assert comparable(out / photo.stem) == comparable(in_process / photo.stem)


def test_a_killed_stage_actor_has_its_inputs_retried(cluster, lfpw, in_process, tmp_path):
    out = tmp_path / "ray"
    photos = lfpw[:6]
    engine = RayEngine(CONFIG, WRITE, in_flight=6)
    engine.start()
    try:
        writer = engine.actors["refine"][0]
        first_pid = ray.get(writer.pid.remote())
        outcomes = []
        for outcome in engine.run([(p, out / p.stem, None) for p in photos]):
            if not outcomes:  # mid-batch: the writer has five more inputs queued, one maybe half-written
                os.kill(first_pid, signal.SIGKILL)
            outcomes.append(outcome)
        assert ray.get(writer.pid.remote()) != first_pid  # it died and was restarted
    finally:
        engine.close()
    assert sorted(o.input for o in outcomes) == sorted(map(str, photos))  # nothing lost, nothing twice
    assert all(o.error is None for o in outcomes), [o.error for o in outcomes]
    from facerecon.outputs.folder import remove_stale_partials

    remove_stale_partials(out)  # what the killed actor was writing
    assert sorted(p.name for p in out.iterdir()) == sorted(p.stem for p in photos)
    for photo in photos:
        assert comparable(out / photo.stem) == comparable(in_process / photo.stem)


def test_inputs_are_streamed_with_a_bounded_number_in_flight(cluster, lfpw, tmp_path):
    """A generator of 100k inputs: the engine takes at most ``in_flight`` of them ahead of the outcomes it
    has handed back (the driver's and the object store's memory stay flat: benchmarks/bench_batch_memory)."""
    inputs = CountedInputs(lfpw[:3], tmp_path)
    engine = RayEngine(CONFIG, WRITE, in_flight=3)
    engine.start()
    handed = []
    try:
        for outcome in engine.run(inputs):
            handed.append(outcome)
            assert 0 <= inputs.taken - len(handed) <= 3, (inputs.taken, len(handed))
            if len(handed) == 8:
                break
        engine.interrupt()
    finally:
        engine.close()
    assert all(o.error is None for o in handed), [o.error for o in handed]
    assert inputs.taken <= 8 + 3


def test_device_cuda_on_a_cluster_without_gpu_is_a_usage_error(cluster, lfpw, tmp_path, capsys):
    """Actors asking for a GPU that no node has would wait for ever: the CLI says so and exits 2."""
    out = tmp_path / "out"
    assert main(["reconstruct", str(lfpw[0]), "-o", str(out), "--engine", "ray", "--device", "cuda", *FLAGS]) == 2
    assert "--device cuda: the Ray cluster has no GPU" in capsys.readouterr().err
    assert not (out / lfpw[0].stem).exists()


def test_an_outcome_handed_over_when_ctrl_c_comes_is_given_back_by_interrupt(cluster, lfpw, tmp_path):
    """As with the local pool (test_large_batches): the outcome in the consumer's hand when Ctrl-C comes is
    still pending for interrupt(), which gives it back."""
    engine = RayEngine(CONFIG, WRITE, in_flight=2)
    engine.start()
    try:
        outcomes = engine.run((photo, tmp_path / photo.stem, None) for photo in lfpw[:3])
        first = next(outcomes)
        late = engine.interrupt()
    finally:
        engine.close()
    assert first.error is None
    assert first.input in {o.input for o in late}


def test_more_jobs_than_inputs_start_one_replica_per_input_at_most(cluster, lfpw, tmp_path):
    """``--jobs 4`` for one photo: one actor per stage, not 4 (12 actors sharing the cluster's 2 CPUs; with a
    large --jobs, thousands), as the local engine starts no more workers than inputs; summary.json says so."""
    out = tmp_path / "out"
    assert main(["reconstruct", str(lfpw[0]), "-o", str(out), "--engine", "ray", "--jobs", "4", *FLAGS]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["jobs"] == 1 and summary["counts"]["succeeded"] == 1
    assert (out / lfpw[0].stem / "result.json").is_file()
