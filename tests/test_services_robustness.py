"""gRPC robustness (issue 19): a call that ends early — cancelled by its client or past its deadline — stops
its work on the server (a pipeline server between stages; a stage server abandons the stage it runs and
accounts for it); a stage that is still warming up answers health NOT_SERVING; ``--deadline`` sets the call
deadline of every remote stage. Real servers on loopback, in threads of this process."""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from services_support import serving, small_refine_request, toy_host

from facerecon.kernel import ConfigError, PipelineConfig
from facerecon.services import convert
from facerecon.services.remote import apply_remote, facerecon_apply_pipeline_flags
from facerecon.services.server import Server, ServerSettings
from facerecon.v1 import pipeline_pb2, pipeline_pb2_grpc, stages_pb2_grpc
from tests.polling import wait_for

ANY_PORT = ServerSettings(port=0)


@pytest.fixture(scope="module")
def host():
    return toy_host()


def test_a_cancelled_call_returns_at_once_and_its_stage_is_accounted_for(host):
    server = Server.for_stage("refiner", "slow", host=host, options={"seconds": 1.5}, settings=ANY_PORT)
    with serving(server) as address, grpc.insecure_channel(address) as channel:
        stub = stages_pb2_grpc.RefinerStub(channel)
        call = stub.Refine.future(small_refine_request(), timeout=30)
        assert wait_for(lambda: server.loader.borrowed == 1)
        call.cancel()
        # The server side ends the call at once; the stage it runs is abandoned, still lent until it returns.
        assert wait_for(lambda: server.loader.abandoned == 1, timeout=1.0)
        assert server.loader.borrowed == 1
        started = time.monotonic()
        # The next call waits for the model the abandoned work holds, then runs.
        assert stub.Refine(small_refine_request(), timeout=30).refinement.mesh.topology == "t"
        assert 0.5 < time.monotonic() - started < 5.0
        assert wait_for(lambda: server.loader.borrowed == 0)


def test_a_call_past_its_deadline_gets_deadline_exceeded_when_it_passes(host):
    server = Server.for_stage("refiner", "slow", host=host, options={"seconds": 2.0}, settings=ANY_PORT)
    with serving(server) as address, grpc.insecure_channel(address) as channel:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            stages_pb2_grpc.RefinerStub(channel).Refine(small_refine_request(), timeout=0.4)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 1.5
        assert wait_for(lambda: server.loader.abandoned == 1, timeout=1.5)


def test_the_pipeline_stops_between_stages_once_the_call_has_ended(host, face_photo):
    """A pipeline server whose slow refiner outlives the call's deadline: the refiners after it never run,
    and the pipeline goes back to the pool as soon as the slow one returns."""
    config = PipelineConfig(
        regressor="landmark-mesh", segmenter=None, refiners=("slow", "toy-smooth"), device="cpu"
    ).with_options("refiner", "slow", {"seconds": 1.0})
    server = Server.for_pipeline(config, host=host, settings=ANY_PORT)
    with serving(server) as address, grpc.insecure_channel(address) as channel:
        pipe = server.loader.objects[0]
        smooth = pipe.stage("refiner", "toy-smooth")
        calls: list[int] = []
        original = smooth.refine
        smooth.refine = lambda *a: calls.append(1) or original(*a)
        stub = pipeline_pb2_grpc.PipelineStub(channel)
        request = pipeline_pb2.ReconstructRequest()
        convert.image_to_proto(face_photo, request.image)
        assert stub.Reconstruct(request, timeout=60).reconstruction.reconstructions  # runs every stage
        assert calls == [1]
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            stub.Reconstruct(request, timeout=0.5)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 1.0  # answered when the deadline passed, not after the work
        assert wait_for(lambda: server.loader.stopped == 1 and server.loader.borrowed == 0)
        assert server.loader.abandoned == 1
        assert calls == [1]  # toy-smooth, after the slow refiner, never ran for the ended call


def test_health_says_not_serving_until_the_stage_is_warmed_up(host):
    server = Server.for_stage(
        "refiner", "slow", host=host, options={"seconds": 0, "warm_seconds": 1.5}, settings=ANY_PORT
    )
    port = server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            assert wait_for(lambda: bool(server.loader._threads), timeout=5)  # built, warming up
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.RpcError) as err:
                stages_pb2_grpc.RefinerStub(channel).Refine(small_refine_request(), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # at once, not after the caller's deadline
            assert server.wait_ready(10)
            assert wait_for(
                lambda: (
                    health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                    == health_pb2.HealthCheckResponse.SERVING
                )
            )
            started = time.monotonic()
            stages_pb2_grpc.RefinerStub(channel).Refine(small_refine_request(), timeout=5)
            assert time.monotonic() - started < 1.0  # the warm-up is not paid by the first call
    finally:
        server.stop(0)


def test_deadline_flag_sets_every_remote_stage():
    config = apply_remote(PipelineConfig(refiners=("laplace",)), ["detector=h:1", "laplace=h:2"])
    args = argparse.Namespace(remote=[], deadline=120.0)
    flagged = facerecon_apply_pipeline_flags(config=config, args=args)
    assert flagged.options_for("detector", "remote")["deadline_s"] == 120.0
    assert flagged.options_for("refiner", "remote@laplace")["deadline_s"] == 120.0
    assert "deadline_s" not in flagged.options_for("regressor", "remote")
    both = facerecon_apply_pipeline_flags(
        config=PipelineConfig(), args=argparse.Namespace(remote=["regressor=h:3"], deadline=5.0)
    )
    assert both.options_for("regressor", "remote") == {"address": "h:3", "deadline_s": 5.0}
    with pytest.raises(ConfigError, match="no.*remote|none is configured"):
        facerecon_apply_pipeline_flags(config=PipelineConfig(), args=argparse.Namespace(remote=[], deadline=5.0))
    with pytest.raises(ConfigError, match=r"--deadline must be in \(0, 1e\+06\] seconds"):
        facerecon_apply_pipeline_flags(config=config, args=argparse.Namespace(remote=[], deadline=0.0))


def test_requests_are_bounded_and_replies_are_not(host, lfpw):
    """``--max-message-mb`` bounds what a server receives (a caller's request) and what a client sends, not
    the replies: a group photo's fine reconstructions pass 100 MB, and a reply refused once the work is done
    (RESOURCE_EXHAUSTED, "Sent message larger than max") helped nobody."""
    from facerecon.kernel.host.imageio import load_image
    from facerecon.services.remote import RemoteError
    from facerecon.services.remote_pipeline import RemotePipeline

    config = PipelineConfig(regressor="landmark-mesh", refiners=(), device="cpu")
    server = Server.for_pipeline(config, host=host, settings=replace(ANY_PORT, max_message_bytes=2**20))
    with serving(server) as address:
        remote_config = apply_remote(config, [f"pipeline={address}"]).with_options(
            "pipeline", "remote", {"max_message_mb": 1, "retries": 0}
        )
        big = np.zeros((700, 700, 3), np.uint8)  # 1.5 MB of pixels: a request over the bound
        with RemotePipeline(remote_config) as remote:
            small = np.ascontiguousarray(load_image(lfpw[0])[::2, ::2])  # 0.3 MB of pixels: under it
            rec = remote(small, all_faces=True)
            reply = convert.to_proto(rec).ByteSize()
            assert reply > 2**20 and len(rec.reconstructions) == 1  # a 1.3 MB mesh: over the bound, received
            with pytest.raises(RemoteError, match="RESOURCE_EXHAUSTED: CLIENT: Sent message larger than max"):
                remote(big)  # refused by the client, which sends at most its max_message_mb
        looser = remote_config.with_options("pipeline", "remote", {"max_message_mb": 4})
        refused = pytest.raises(RemoteError, match="RESOURCE_EXHAUSTED: SERVER: Received message larger than max")
        with RemotePipeline(looser) as remote, refused:
            remote(big)  # refused by the server


def test_reconstruct_sends_whole_photos_to_a_pipeline_server(host, lfpw, tmp_path, monkeypatch):
    """`--remote pipeline=ADDRESS`: the photo goes to `serve pipeline`, which runs every stage; the outputs are
    written here, the same meshes as a local run's."""
    import json

    from services_support import install_entry_points

    from facerecon.cli import main

    install_entry_points(monkeypatch, tmp_path)
    config = PipelineConfig(regressor="landmark-mesh", refiners=(), device="cpu")
    server = Server.for_pipeline(config, host=host, settings=ANY_PORT)
    with serving(server) as address:
        far, near = tmp_path / "far", tmp_path / "near"
        argv = ["reconstruct", str(lfpw[0]), "-q", "--regressor", "landmark-mesh", "--refiners", "", "--device", "cpu"]
        assert main([*argv, "-o", str(far), "--remote", f"pipeline={address}", "--deadline", "60"]) == 0
        assert main([*argv, "-o", str(near)]) == 0
    remote, local = (json.loads((out / lfpw[0].stem / "result.json").read_text()) for out in (far, near))
    assert remote["reconstructions"][0]["stages"][0]["plugin"] == "landmark-mesh"  # run by the server
    assert (
        remote["reconstructions"][0]["stages"][0]["landmarks68"]
        == local["reconstructions"][0]["stages"][0]["landmarks68"]
    )
    assert (far / lfpw[0].stem / "coarse.obj").read_bytes() == (near / lfpw[0].stem / "coarse.obj").read_bytes()
    with pytest.raises(ConfigError, match="no other --remote"):
        apply_remote(PipelineConfig(), ["pipeline=h:1", "detector=h:2"])
