"""gRPC stage services on loopback: a pipeline with every stage remote equals the in-process one; status
codes, health, reflection, tokens, TLS, round_robin with retries, graceful shutdown, the serve command.

Servers run in threads of this process (real grpc servers on 127.0.0.1, started once per module), except
the shutdown test, which signals a `python -m facerecon.services serve`-style subprocess."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from services_support import (
    Slow,
    SlowOptions,
    differences,
    make_test_certificates,
    serving,
    slow_server_process,
    small_refine_request,
    subprocess_env,
    toy_host,
)

from facerecon.kernel import ConfigError, Face, InputError, Landmarks, Mesh, Pipeline, PipelineConfig
from facerecon.services import commands, convert
from facerecon.services.commands import main as services_main
from facerecon.services.remote import RemoteError, RemoteOptions, RemoteRefiner, RemoteSegmenter, apply_remote
from facerecon.services.server import ServeError, Server, ServerSettings
from facerecon.v1 import pipeline_pb2, pipeline_pb2_grpc, stages_pb2, stages_pb2_grpc

LOCAL = PipelineConfig(
    detector="mediapipe",
    regressor="landmark-mesh",
    segmenter="toy-seg",
    refiners=("toy-smooth", "toy-maps"),
    device="cpu",
)
ANY_PORT = ServerSettings(port=0)


@pytest.fixture(scope="module")
def host():
    return toy_host()


@pytest.fixture(scope="module")
def servers(host):
    """One server per stage of LOCAL, and a pipeline server running LOCAL in-process."""
    specs = {
        "detector": ("detector", "mediapipe"),
        "regressor": ("regressor", "landmark-mesh"),
        "segmenter": ("segmenter", "toy-seg"),
        "toy-smooth": ("refiner", "toy-smooth"),
        "toy-maps": ("refiner", "toy-maps"),
    }
    started = {
        key: Server.for_stage(kind, name, host=host, device="cpu", settings=ANY_PORT)
        for key, (kind, name) in specs.items()
    }
    started["pipeline"] = Server.for_pipeline(LOCAL, host=host, settings=ANY_PORT)
    addresses = {key: f"127.0.0.1:{server.start()}" for key, server in started.items()}
    for server in started.values():
        assert server.wait_ready(60)
    yield addresses
    for server in started.values():
        server.stop(0)


@pytest.fixture(scope="module")
def local_pipeline(host):
    with Pipeline(LOCAL, host) as pipe:
        yield pipe


def remote_config(servers) -> PipelineConfig:
    entries = [f"{key}={servers[key]}" for key in ("detector", "regressor", "segmenter", "toy-smooth", "toy-maps")]
    return apply_remote(LOCAL, entries)


# Timings and provenance differ by design: a remote stage's StageResult names the `remote` plugin.
NOT_COMPARED = frozenset({"elapsed_ms", "timings_ms", "plugin", "version"})


def test_every_stage_remote_equals_in_process(servers, host, local_pipeline, face_photo):
    config = remote_config(servers)
    assert (config.detector, config.regressor, config.segmenter) == ("remote", "remote", "remote")
    assert config.refiners == ("remote@toy-smooth", "remote@toy-maps")
    expected = local_pipeline(face_photo)
    with Pipeline(config, host) as remote:
        got = remote(face_photo)
        assert [stage.stage for _, stage in remote.refiners] == ["medium", "fine"]  # learnt from Info
    assert len(got.faces) == 1 and len(got.reconstructions) == 1
    assert differences(expected, got, skip=NOT_COMPARED) == []
    final = got.reconstructions[0].stages
    assert [s.stage for s in final] == ["coarse", "medium", "fine"] and {s.plugin for s in final} == {"remote"}
    assert final[2].maps is not None and list(final[2].phases) == ["half"]
    assert list(got.timings_ms) == [
        "detector",
        "segmenter",
        "regressor",
        "refiner:remote@toy-smooth",
        "refiner:remote@toy-maps",
    ]


def test_compressed_requests_give_the_same_reconstruction(servers, host, local_pipeline, face_photo):
    """`compression = "gzip"` on every remote stage: gRPC compresses each request; the records are the same."""
    config = remote_config(servers)
    for kind, name in [("detector", "remote"), ("regressor", "remote"), ("segmenter", "remote")] + [
        ("refiner", r) for r in config.refiners
    ]:
        config = config.with_options(kind, name, {"compression": "gzip"})
    with Pipeline(config, host) as remote:
        assert remote.detector.options.compression == "gzip"
        got = remote(face_photo)
    assert differences(local_pipeline(face_photo), got, skip=NOT_COMPARED) == []
    with pytest.raises(ConfigError, match="compression must be one of none, gzip"):  # before any model loads
        Pipeline(config.with_options("detector", "remote", {"compression": "zstd"}), host)


def test_only_callers_on_other_machines_get_compressed_label_maps():
    from facerecon.services.servicers import peer_is_local

    for peer in ("ipv4:127.0.0.1:50051", "ipv6:%5B::1%5D:40000", "ipv6:[::1]:40000", "unix:/run/fr.sock"):
        assert peer_is_local(peer), peer
    for peer in ("ipv4:10.254.1.1:50051", "ipv6:%5B2001:db8::1%5D:5", "ipv4:192.168.0.7:1"):
        assert not peer_is_local(peer), peer


def test_remote_segmenter_and_regressor_overlap_and_errors_keep_their_order(servers, host, local_pipeline, face_photo):
    """The pipeline runs the segmenter beside the regressor when one of them runs elsewhere (their waits
    overlap; the result is the in-process one, above), and raises what a sequential run would raise."""
    assert not local_pipeline._overlapped(None)
    with Pipeline(remote_config(servers), host) as pipe:
        assert pipe._overlapped(None)
        coarse = local_pipeline(face_photo).reconstructions[0].coarse
        assert not pipe._overlapped(coarse)  # a given coarse result (a video's frame): the segmenter alone
        first_in, second_in = threading.Event(), threading.Event()

        def first() -> bool:
            first_in.set()
            return second_in.wait(10)

        def second() -> bool:
            second_in.set()
            return first_in.wait(10)

        assert pipe._side_by_side(first, second) == (True, True)  # each saw the other running

        def fails(message: str):
            def run() -> None:
                raise InputError(message)

            return run

        with pytest.raises(InputError, match="first"):
            pipe._side_by_side(fails("first"), fails("second"))
        with pytest.raises(InputError, match="second"):
            pipe._side_by_side(lambda: 1, fails("second"))
        with pytest.raises(InputError, match="first"):
            pipe._side_by_side(fails("first"), lambda: 2)


def test_pipeline_service_equals_in_process_and_returns_files(servers, local_pipeline, face_photo, lfpw):
    big = [("grpc.max_receive_message_length", 64 * 2**20)]  # meshes, textures and previews: ~20 MB
    with grpc.insecure_channel(servers["pipeline"], options=big) as channel:
        stub = pipeline_pb2_grpc.PipelineStub(channel)
        info = stub.Info(stages_pb2.InfoRequest(), timeout=10)
        assert info.kind == "pipeline"
        assert [(s.kind, s.plugin, s.stage) for s in info.stages] == [
            ("detector", "mediapipe", ""),
            ("segmenter", "toy-seg", ""),
            ("regressor", "landmark-mesh", "coarse"),
            ("refiner", "toy-smooth", "medium"),
            ("refiner", "toy-maps", "fine"),
        ]
        request = pipeline_pb2.ReconstructRequest(formats=["obj"], source="image_0001.png")
        request.image.encoded = lfpw[0].read_bytes()  # an encoded file: decoded by the server
        response = stub.Reconstruct(request, timeout=60)
    got = convert.from_proto(response.reconstruction)
    assert differences(local_pipeline(face_photo), got, skip=frozenset({"elapsed_ms", "timings_ms"})) == []
    result = json.loads(response.result_json)
    assert result["input"] == "image_0001.png" and result["reconstructions"][0]["stages"][0]["mesh"] == "coarse.obj"
    names = {f.name for f in response.files}
    assert {"coarse.obj", "coarse.mtl", "coarse.png", "medium.obj", "fine.obj", "preview.png", "result.json"} <= names


def test_pipeline_service_sends_held_layouts_as_vertices_only(servers, local_pipeline, face_photo):
    """`--remote pipeline=`'s client names the mesh layouts it holds: from the second photo on, the
    reconstruction's meshes come back as vertices only, and the records are the same; it asks for the
    records only (no result_json: it writes its own)."""
    from facerecon.services.remote_pipeline import RemotePipeline

    responses = []
    with RemotePipeline(apply_remote(LOCAL, [f"pipeline={servers['pipeline']}"])) as remote:
        call = remote.stub.Reconstruct

        def recorded(request, *args, **kwargs):
            responses.append((request, call(request, *args, **kwargs)))
            return responses[-1][1]

        remote.stub.Reconstruct = recorded
        first, second = remote(face_photo), remote(face_photo)
    expected = local_pipeline(face_photo)
    for got in (first, second):
        assert differences(expected, got, skip=frozenset({"elapsed_ms", "timings_ms"})) == []
    (ask_first, whole), (ask_second, short) = responses
    assert list(ask_first.known_layouts) == [] and len(ask_second.known_layouts) >= 1
    assert ask_first.records_only and whole.result_json == "" and short.result_json == ""
    meshes = [m.mesh for m in short.reconstruction.reconstructions[0].stages]
    assert all(m.layout_digest and not m.HasField("triangles") for m in meshes)
    assert all(m.HasField("triangles") for m in (s.mesh for s in whole.reconstruction.reconstructions[0].stages))
    assert short.ByteSize() < 0.6 * whole.ByteSize()


def test_status_codes_and_a_bad_request_never_takes_the_server_down(servers, face_photo):
    with grpc.insecure_channel(servers["detector"]) as channel:
        stub = stages_pb2_grpc.DetectorStub(channel)

        def code_of(request):
            with pytest.raises(grpc.RpcError) as err:
                stub.Detect(request, timeout=10)
            return err.value.code(), err.value.details()

        garbage = stages_pb2.DetectRequest()
        garbage.image.encoded = b"\x89PNG but not really"
        assert code_of(garbage)[0] == grpc.StatusCode.INVALID_ARGUMENT
        wrong_shape = stages_pb2.DetectRequest()
        wrong_shape.image.pixels.CopyFrom(convert.tensor(np.zeros((32, 32, 4), np.uint8)))
        assert code_of(wrong_shape) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "raw pixels must be DTYPE_UINT8 of shape (height, width, 3), got DTYPE_UINT8 [32, 32, 4]",
        )
        short = stages_pb2.DetectRequest()
        short.image.pixels.CopyFrom(convert.tensor(np.zeros((32, 32, 3), np.uint8)))
        short.image.pixels.data = b"\0" * 100
        assert code_of(short)[0] == grpc.StatusCode.INVALID_ARGUMENT
        assert code_of(stages_pb2.DetectRequest())[0] == grpc.StatusCode.INVALID_ARGUMENT  # no image
        other = stages_pb2.DetectRequest(plugin="dlib")
        convert.image_to_proto(face_photo, other.image)
        code, details = code_of(other)
        assert code == grpc.StatusCode.NOT_FOUND and "runs detector 'mediapipe', not 'dlib'" in details
        # "No face" is OK with an empty list; then the server still answers real photos.
        blank = stages_pb2.DetectRequest()
        convert.image_to_proto(np.full((200, 300, 3), 128, np.uint8), blank.image)
        assert len(stub.Detect(blank, timeout=10).faces) == 0
        good = stages_pb2.DetectRequest(plugin="mediapipe")
        convert.image_to_proto(face_photo, good.image)
        assert len(stub.Detect(good, timeout=10).faces) == 1
    # A face the plugin cannot use: the plugin's InputError becomes INVALID_ARGUMENT, then an InputError again.
    with RemoteOptionsStage(servers["regressor"], "regressor") as regressor:
        face = Face([10, 10, 50, 50], 0.9, Landmarks("ibug68", np.full((68, 3), 20.0)))
        with pytest.raises(InputError, match="landmark-mesh needs MediaPipe landmarks"):
            regressor.regress(face_photo, face)
    with pytest.raises(ConfigError, match="runs 'mediapipe', not 'dlib'"):
        from facerecon.services.remote import RemoteDetector

        RemoteDetector(RemoteOptions(address=servers["detector"], plugin="dlib"))


class RemoteOptionsStage:
    """A remote stage of ``kind`` at ``address``, closed on exit."""

    def __init__(self, address: str, kind: str, **options) -> None:
        from facerecon.services.remote import REMOTE_STAGES

        self.stage = REMOTE_STAGES[kind](RemoteOptions(address=address, **options))

    def __enter__(self):
        return self.stage

    def __exit__(self, *exc):
        self.stage.close()


def test_concurrency_limit_deadline_and_message_size(host):
    settings = replace(ANY_PORT, max_concurrent=2, max_message_bytes=200_000)
    server = Server.for_stage("refiner", "slow", host=host, options={"seconds": 1.2}, settings=settings)
    with serving(server) as address, grpc.insecure_channel(address) as channel:
        stub = stages_pb2_grpc.RefinerStub(channel)
        slow: Slow = server.loader.objects[0]
        calls = []
        original = slow.refine
        slow.refine = lambda *a: calls.append(1) or original(*a)  # type: ignore[method-assign]
        first = stub.Refine.future(small_refine_request(), timeout=10)
        time.sleep(0.15)
        # The second call waits for the only model past its deadline: refused without running.
        with pytest.raises(grpc.RpcError) as err:
            stub.Refine(small_refine_request(), timeout=0.3)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        second = stub.Refine.future(small_refine_request(), timeout=10)
        time.sleep(0.1)
        with pytest.raises(grpc.RpcError) as err:  # a third simultaneous call: over maximum_concurrent_rpcs
            stub.Refine(small_refine_request(), timeout=10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert first.result().refinement.mesh.topology == "t" and second.result().refinement.mesh.topology == "t"
        time.sleep(0.35)  # the call that timed out while queued must not have run the model
        assert len(calls) == 2
        big = small_refine_request()
        convert.image_to_proto(np.zeros((300, 300, 3), np.uint8), big.image)  # 270 kB > 200 kB limit
        with pytest.raises(grpc.RpcError) as err:
            stub.Refine(big, timeout=10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        small_pixels = replace(settings, max_image_pixels=500)
    server = Server.for_stage("refiner", "slow", host=host, options={"seconds": 0}, settings=small_pixels)
    with serving(server) as address, grpc.insecure_channel(address) as channel:
        with pytest.raises(grpc.RpcError) as err:
            stages_pb2_grpc.RefinerStub(channel).Refine(small_refine_request(), timeout=10)
        assert (
            err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "above the server's limit" in err.value.details()
        )


def test_health_not_serving_and_unavailable_until_loaded(host):
    server = Server.for_stage(
        "refiner", "slow", host=host, options={"seconds": 0, "load_seconds": 1.0}, settings=ANY_PORT
    )
    port = server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "facerecon.v1.Refiner"):
                status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
                assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.RpcError) as err:
                stages_pb2_grpc.RefinerStub(channel).Refine(small_refine_request(), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "loading" in err.value.details()
            # A remote stage built now waits for the model, then works.
            with RemoteOptionsStage(f"127.0.0.1:{port}", "refiner", connect_timeout_s=20) as refiner:
                assert refiner.stage == "slow"
            assert (
                health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                == health_pb2.HealthCheckResponse.SERVING
            )
            from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
                ProtoReflectionDescriptorDatabase,
            )

            services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
            assert {
                "facerecon.v1.Refiner",
                "grpc.health.v1.Health",
                "grpc.reflection.v1alpha.ServerReflection",
            } <= services
        server.stop(0)
    finally:
        server.stop(0)


def test_bearer_token(host, tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    server = Server.for_stage(
        "refiner", "slow", host=host, options={"seconds": 0}, settings=replace(ANY_PORT, token="s3cret")
    )
    with serving(server) as address:
        with grpc.insecure_channel(address) as channel:
            with pytest.raises(grpc.RpcError) as err:
                stages_pb2_grpc.RefinerStub(channel).Info(stages_pb2.InfoRequest(), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            wrong = (("authorization", "Bearer nope"),)
            with pytest.raises(grpc.RpcError) as err:
                stages_pb2_grpc.RefinerStub(channel).Refine(small_refine_request(), timeout=5, metadata=wrong)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert health.status == health_pb2.HealthCheckResponse.SERVING  # probes need no token
        with RemoteOptionsStage(address, "refiner", token_file=token) as refiner:
            image = np.zeros((32, 32, 3), np.uint8)
            face = Face([1, 1, 20, 20], 0.9, Landmarks("s", np.ones((3, 3))))
            assert refiner.refine(image, face, Mesh(np.eye(3), [[0, 1, 2]], "t"), None).topology == "t"
        (tmp_path / "empty").write_text("\n")  # used to send no token at all: UNAUTHENTICATED on every call
        with pytest.raises(ConfigError, match="the remote refiner's token_file .*empty is empty"):
            RemoteRefiner(RemoteOptions(address=address, token_file=tmp_path / "empty", connect_timeout_s=1))


def test_a_refused_token_is_one_log_line_without_the_token(host, caplog):
    """Refusals used to leave no trace on the server: an operator could not see a misconfigured client."""
    server = Server.for_stage(
        "refiner", "slow", host=host, options={"seconds": 0}, settings=replace(ANY_PORT, token="s3cret")
    )
    with serving(server) as address, grpc.insecure_channel(address) as channel:
        info = stages_pb2_grpc.RefinerStub(channel).Info
        caplog.clear()
        with caplog.at_level("INFO", logger="facerecon.services"):
            for metadata in ((), (("authorization", "Bearer guess-s3cret"),), (("authorization", "Bearer s3cret"),)):
                try:
                    info(stages_pb2.InfoRequest(), timeout=5, metadata=metadata)
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
    logged = [r.getMessage() for r in caplog.records if r.name == "facerecon.services"]
    assert not any("s3cret" in line for line in logged)
    lines = [line for line in logged if "UNAUTHENTICATED" in line]  # (the loader's "ready" line may come late)
    assert len(lines) == 2, logged  # one per refused call, none for the accepted one
    assert "/facerecon.v1.Refiner/Info from ipv" in lines[0] and lines[0].endswith("UNAUTHENTICATED: no bearer token")
    assert lines[1].endswith("UNAUTHENTICATED: wrong bearer token")
    assert not any("s3cret" in line or "\n" in line for line in lines)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    """A throw-away CA, a server certificate for localhost/127.0.0.1 and a client certificate (openssl)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make test certificates")
    return make_test_certificates(tmp_path_factory.mktemp("tls"))


def test_tls_with_client_certificates(host, certificates):
    d = certificates
    settings = replace(ANY_PORT, tls_cert=d / "server.pem", tls_key=d / "server.key", tls_client_ca=d / "ca.pem")
    server = Server.for_stage("refiner", "slow", host=host, options={"seconds": 0}, settings=settings)
    with serving(server) as address:
        with RemoteOptionsStage(
            address, "refiner", tls_ca=d / "ca.pem", tls_cert=d / "client.pem", tls_key=d / "client.key"
        ) as refiner:
            assert refiner.info.plugin == "slow"
        with pytest.raises(RemoteError, match="not ready"):  # no client certificate: the handshake fails
            RemoteRefiner(RemoteOptions(address=address, tls_ca=d / "ca.pem", connect_timeout_s=1))
        with pytest.raises(RemoteError):  # plaintext against a TLS port
            RemoteRefiner(RemoteOptions(address=address, connect_timeout_s=1))
        # the health probe (a TLS pod's exec probe) speaks TLS too, with the client certificate it asks for
        probe = ["health", address, "--timeout", "10", "--tls-ca", str(d / "ca.pem")]
        assert services_main([*probe, "--tls-cert", str(d / "client.pem"), "--tls-key", str(d / "client.key")]) == 0
        assert services_main([*probe, "--timeout", "2"]) == 1  # no client certificate: refused, not SERVING
        assert services_main(["health", address, "--timeout", "2"]) == 1  # plaintext against TLS
        assert services_main([*probe, "--tls-cert", str(d / "client.pem")]) == 2  # a certificate without its key


@pytest.mark.parametrize(
    "files, message",
    [
        (("garbage.pem", "garbage.pem", None), "are not a PEM certificate chain and its unencrypted private key"),
        (("server.pem", "other.key", None), "KEY_VALUES_MISMATCH"),
        (("server.pem", "server.key", "garbage.pem"), "--tls-client-ca .*garbage.pem holds no PEM certificate"),
    ],
)
def test_bad_tls_files_are_one_clear_line_before_binding(certificates, files, message):
    """They used to give gRPC's own log lines and a misleading "cannot listen on 127.0.0.1:0"."""
    (certificates / "garbage.pem").write_text("not a certificate\n")
    cert, key, client_ca = files
    args = ["--tls-cert", str(certificates / cert), "--tls-key", str(certificates / key)]
    args += ["--tls-client-ca", str(certificates / client_ca)] if client_ca else []
    done = subprocess.run(
        [sys.executable, "-m", "facerecon.services", "serve", "refiner", "--plugin", "laplace", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=subprocess_env(),
    )
    assert done.returncode == 2 and done.stdout == ""  # no "serving ... on" line: nothing was bound
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("facerecon: error: "), done.stderr
    assert re.search(message, lines[0])


def test_only_loopback_without_tls():
    with pytest.raises(ServeError, match="refusing to serve plaintext on 0.0.0.0"):
        ServerSettings(host="0.0.0.0")
    assert ServerSettings(host="0.0.0.0", insecure=True).insecure
    assert ServerSettings(host="::1").host == "::1" and ServerSettings(host="localhost").host == "localhost"
    with pytest.raises(ServeError, match="both a certificate and a key"):
        ServerSettings(tls_cert=Path("c.pem"))


def test_round_robin_over_replicas_survives_one_going_away(host, face_photo):
    replicas = [Server.for_stage("segmenter", "toy-seg", host=host, settings=ANY_PORT) for _ in range(2)]
    ports = [server.start() for server in replicas]
    try:
        for server in replicas:
            assert server.wait_ready(20)
        counts = [0, 0]
        for i, server in enumerate(replicas):
            stage = server.loader.objects[0]
            original = stage.segment
            stage.segment = lambda *a, _i=i, _f=original: counts.__setitem__(_i, counts[_i] + 1) or _f(*a)
        face = Face([100, 100, 300, 400], 0.9, Landmarks("s", np.ones((3, 3)) * 150))
        address = ",".join(f"127.0.0.1:{port}" for port in ports)
        with RemoteOptionsStage(address, "segmenter", deadline_s=10) as segmenter:
            assert isinstance(segmenter, RemoteSegmenter) and segmenter.target.startswith("ipv4:")
            for _ in range(8):
                segmenter.segment(face_photo, face)
            assert counts[0] >= 2 and counts[1] >= 2, f"round_robin should spread calls, got {counts}"
            replicas[0].stop(0)
            for _ in range(8):  # retried on UNAVAILABLE, then only the live replica is picked
                assert segmenter.segment(face_photo, face).labels.shape == face_photo.shape[:2]
    finally:
        for server in replicas:
            server.stop(0)


def test_apply_remote_flags():
    config = PipelineConfig(detector="mediapipe", regressor="auto", refiners=("laplace", "sfs"))
    out = apply_remote(config, ["detector=a:1,b:2", "regressor=c:3", "sfs=d:4", "segmenter=e:5"])
    assert (out.detector, out.regressor, out.segmenter, out.refiners) == (
        "remote",
        "remote",
        "remote",
        ("laplace", "remote@sfs"),
    )
    assert out.options_for("detector", "remote") == {"address": "a:1,b:2", "plugin": "mediapipe"}
    assert out.options_for("regressor", "remote") == {"address": "c:3"}  # "auto": whatever the server runs
    assert out.options_for("refiner", "remote@sfs") == {"address": "d:4", "plugin": "sfs"}
    one = apply_remote(PipelineConfig(refiners=("laplace",)), ["refiner=x:1"])
    assert one.refiners == ("remote@laplace",)
    for bad, message in (
        ("detector", "STAGE=HOST:PORT"),
        ("fine=x:1", "no such stage"),
        ("refiner=x:1", "exactly one"),
    ):
        with pytest.raises(ConfigError, match=message):
            apply_remote(config, [bad])


@pytest.mark.parametrize("address", ["a:b", ":50052", "localhost:99999", "localhost", "h:0", "h:1,h:x", ",", "h:５"])
def test_a_mistyped_remote_address_is_refused_at_once(address):
    """`--remote detector=a:b` (or `:50052`, a port over 65535) waited the 60 s connect timeout, then said the
    server was "not ready"."""
    config = PipelineConfig(detector="mediapipe", regressor="auto", refiners=("laplace", "sfs"))
    with pytest.raises(ConfigError, match=r"HOST:PORT"):
        apply_remote(config, [f"detector={address}"])
    for good in ("h:1", "[::1]:50052", "a:1,b:2", "dns:///svc.cluster.local:50051", "unix:/run/fr.sock"):
        assert apply_remote(config, [f"sfs={good}"]).options_for("refiner", "remote@sfs")["address"] == good


def test_serve_command_errors(capsys):
    assert commands.main(["serve", "detector", "--plugin", "nope", "--port", "0"]) == 2
    assert "unknown detector: 'nope'" in capsys.readouterr().err
    assert commands.main(["serve", "detector", "--plugin", "mediapipe", "--host", "0.0.0.0"]) == 2
    assert "refusing to serve plaintext" in capsys.readouterr().err
    assert commands.main(["serve", "refiner", "--port", "0"]) == 2
    assert "needs --plugin NAME" in capsys.readouterr().err


def test_serve_is_a_facerecon_command(host):
    import argparse

    parser = argparse.ArgumentParser(prog="facerecon")
    sub = parser.add_subparsers(dest="command")
    host.pm.hook.facerecon_register_commands(subcommands=sub, host=host)
    args = parser.parse_args(["serve", "pipeline", "--remote", "detector=h:1", "--port", "50050"])
    assert args.handler is commands.cmd_serve and args.remote == ["detector=h:1"]


def test_sigterm_lets_running_calls_finish():
    with slow_server_process(seconds=1.0, grace_s=5) as (process, address):
        with grpc.insecure_channel(address) as channel:
            grpc.channel_ready_future(channel).result(timeout=20)
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 20
            while (
                health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                != health_pb2.HealthCheckResponse.SERVING
            ):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            running = stages_pb2_grpc.RefinerStub(channel).Refine.future(small_refine_request(), timeout=20)
            time.sleep(0.3)
            process.send_signal(signal.SIGTERM)
            assert running.result().refinement.mesh.topology == "t"  # finished within the grace period
        assert process.wait(timeout=20) == 0
        assert "shutting down" in process.stderr.read()


def test_result_threads_share_one_channel(servers):
    from facerecon.services.remote import CHANNELS

    with (
        RemoteOptionsStage(servers["segmenter"], "segmenter") as a,
        RemoteOptionsStage(servers["segmenter"], "segmenter") as b,
    ):
        assert a.channel is b.channel
    errors: list[BaseException] = []
    face = Face([10, 10, 60, 60], 0.9, Landmarks("s", np.ones((3, 3)) * 20))

    def work():
        try:
            with RemoteOptionsStage(servers["segmenter"], "segmenter") as stage:
                for _ in range(5):
                    stage.segment(np.zeros((80, 80, 3), np.uint8), face)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and not CHANNELS._channels
    assert isinstance(SlowOptions(), SlowOptions)


def test_reconstruct_command_with_remote_stages(servers, lfpw, tmp_path, monkeypatch):
    from services_support import install_entry_points

    from facerecon.cli import build_parser, main

    install_entry_points(monkeypatch, tmp_path)
    assert "serve" in build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    out = tmp_path / "out"
    argv = [
        "reconstruct",
        str(lfpw[0]),
        str(lfpw[1]),
        "-o",
        str(out),
        "-q",
        "--regressor",
        "landmark-mesh",
        "--refiners",
        "",
    ]
    argv += ["--remote", f"detector={servers['detector']}", "--remote", f"regressor={servers['regressor']}"]
    assert main(argv) == 0
    result = json.loads((out / "image_0001" / "result.json").read_text())
    assert result["reconstructions"][0]["stages"][0]["plugin"] == "remote"
    assert (out / lfpw[1].stem / "coarse.obj").stat().st_size > 100_000


def test_calls_answered_unavailable_are_retried_on_another_replica(host):
    """One replica still loading (UNAVAILABLE), one ready: gRPC's retry policy moves every call to the
    ready one; without retries, the calls the loading replica got fail."""
    loading = Server.for_stage(
        "refiner", "slow", host=host, options={"seconds": 0, "load_seconds": 30}, settings=ANY_PORT
    )
    ready = Server.for_stage("refiner", "slow", host=host, options={"seconds": 0}, settings=ANY_PORT)
    address = f"127.0.0.1:{loading.start()},127.0.0.1:{ready.start()}"
    try:
        assert ready.wait_ready(20)
        image = np.zeros((600, 800, 3), np.uint8)  # 1.4 MB: retried only because the channel buffers it whole
        face = Face([1, 1, 20, 20], 0.9, Landmarks("s", np.ones((3, 3))))
        mesh = Mesh(np.eye(3), [[0, 1, 2]], "t")
        with RemoteOptionsStage(address, "refiner", connect_timeout_s=10) as refiner:
            for _ in range(10):
                assert refiner.refine(image, face, mesh, None).topology == "t"
        failures = 0
        with RemoteOptionsStage(address, "refiner", connect_timeout_s=10, retries=0) as refiner:
            for _ in range(10):  # round_robin alternates: one call in two reaches the loading replica
                try:
                    refiner.refine(image, face, mesh, None)
                except RemoteError as exc:
                    assert exc.code == grpc.StatusCode.UNAVAILABLE and "loading" in str(exc)
                    failures += 1
        assert failures >= 3, "round_robin should have sent some calls to the loading replica"
    finally:
        loading.stop(0)
        ready.stop(0)


def test_a_loading_replica_answers_unavailable_before_reading_the_request(host):
    """A vertices-only mesh whose layout the replica never got would be FAILED_PRECONDITION, which no retry
    policy moves elsewhere; while it loads, the replica says UNAVAILABLE first. (Before 0.12.1 it did not,
    and a client alternating between a loading and a ready replica could send every call to the ready one,
    falling back to the whole mesh there after each FAILED_PRECONDITION.)"""
    loading = Server.for_stage(
        "refiner", "slow", host=host, options={"seconds": 0, "load_seconds": 30}, settings=ANY_PORT
    )
    request = small_refine_request()
    request.mesh.Clear()
    convert.mesh_to_proto(Mesh(np.eye(3), [[0, 1, 2]], "t"), request.mesh, layout_digest="unknown-layout")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{loading.start()}") as channel:
            stub = stages_pb2_grpc.RefinerStub(channel)
            with pytest.raises(grpc.RpcError) as err:
                stub.Refine(request, timeout=5, wait_for_ready=True)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "still loading" in err.value.details()
    finally:
        loading.stop(0)


def test_remote_stages_pass_the_conformance_battery(servers, face_photo, local_pipeline):
    """The `remote` plugin is a stage like any other: the same battery as every local plugin."""
    from facerecon.kernel import testing as conformance

    with (
        RemoteOptionsStage(servers["detector"], "detector") as detector,
        RemoteOptionsStage(servers["regressor"], "regressor") as regressor,
        RemoteOptionsStage(servers["segmenter"], "segmenter") as segmenter,
        RemoteOptionsStage(servers["toy-smooth"], "refiner") as smooth,
        RemoteOptionsStage(servers["toy-maps"], "refiner") as maps,
    ):
        (face,) = conformance.check_detector(detector, face_photo)[:1]
        coarse = conformance.check_regressor(regressor, face_photo, face)
        segmentation = conformance.check_segmenter(segmenter, face_photo, face)
        for refiner in (smooth, maps):
            conformance.check_refiner(refiner, face_photo, face, coarse.mesh, segmentation)


def test_a_failing_plugin_gives_internal_and_the_server_keeps_serving(host):
    server = Server.for_stage("refiner", "broken", host=host, settings=ANY_PORT)
    with serving(server) as address, grpc.insecure_channel(address) as channel:
        stub = stages_pb2_grpc.RefinerStub(channel)
        for expected in ("RuntimeError: boom", "refine() must return a Mesh", "RuntimeError: boom"):
            with pytest.raises(grpc.RpcError) as err:
                stub.Refine(small_refine_request(), timeout=5)
            assert err.value.code() == grpc.StatusCode.INTERNAL and expected in err.value.details()
        assert stub.Info(stages_pb2.InfoRequest(), timeout=5).plugin == "broken"


def test_name_at_instance_is_another_instance_of_a_plugin(host):
    assert host.spec("refiner", "toy-smooth@second").name == "toy-smooth"
    assert host.spec("refiner", "remote@sfs").name == "remote"
    with pytest.raises(ConfigError, match="unknown refiner: 'nothing@x'"):
        host.spec("refiner", "nothing@x")
    with pytest.raises(ConfigError, match="unknown refiner: 'toy-smooth@'"):
        host.spec("refiner", "toy-smooth@")
