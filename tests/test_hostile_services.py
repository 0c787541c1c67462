"""Hostile clients of the gRPC servers (issue 16), on loopback: each test first reproduces what one request
used to do to a server (poison a cache for everyone, decode gigabytes before waiting, INTERNAL for a bad
field, a slow exit) and then checks the server answers with the right status and keeps serving."""

from __future__ import annotations

import io
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import grpc
import numpy as np
import pytest
from PIL import Image
from services_support import serving, slow_server_process, small_refine_request, toy_host

from facerecon.kernel import Face, Landmarks, Mesh, Pipeline, PipelineConfig
from facerecon.services import MAX_IMAGE_PIXELS, convert
from facerecon.services.server import Server, ServerSettings
from facerecon.v1 import pipeline_pb2, pipeline_pb2_grpc, records_pb2, stages_pb2, stages_pb2_grpc

ANY_PORT = ServerSettings(port=0)


@pytest.fixture(scope="module")
def host():
    return toy_host()


def status_of(call) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


# -- 2. a client cannot poison the laplace server's caches ------------------------------------------


@pytest.fixture(scope="module")
def coarse(face_photo):
    """A real face and its coarse mesh (MediaPipe -> landmark-mesh) on a real photo."""
    with Pipeline(PipelineConfig(device="cpu", segmenter=None, refiners=())) as pipe:
        face = pipe.detect(face_photo)[0]
        return face, pipe.regressor.regress(face_photo, face).mesh


def refine_request(image: np.ndarray, face: Face, mesh: Mesh) -> stages_pb2.RefineRequest:
    request = stages_pb2.RefineRequest()
    convert.image_to_proto(image, request.image)
    convert.face_to_proto(face, request.face)
    convert.mesh_to_proto(mesh, request.mesh)
    return request


def with_extra_vertices(mesh: Mesh, count: int) -> Mesh:
    """The same name, a different layout: ``count`` extra vertices, each in one extra triangle."""
    vertices = np.asarray(mesh.vertices)
    n = len(vertices)
    extra = vertices[:count] + [0.0, 0.0, 1.0]
    triangles = np.vstack([mesh.triangles, [[i, (i + 1) % n, n + i] for i in range(count)]])
    uvs = None if mesh.uvs is None else np.vstack([mesh.uvs, mesh.uvs[:count]])
    return replace(mesh, vertices=np.vstack([vertices, extra]), triangles=triangles, uvs=uvs)


def test_a_mesh_borrowing_a_topology_name_cannot_break_laplace_for_others(host, face_photo, coarse):
    face, mesh = coarse
    server = Server.for_stage("refiner", "laplace", host=host, device="cpu", settings=ANY_PORT)
    with serving(server) as address, grpc.insecure_channel(address) as channel:
        refine = stages_pb2_grpc.RefinerStub(channel).Refine
        legit = refine(refine_request(face_photo, face, mesh), timeout=60).refinement.mesh
        attack = with_extra_vertices(mesh, 1)
        assert attack.topology == mesh.topology  # the name it borrows
        refine(refine_request(face_photo, face, attack), timeout=60)
        again = refine(refine_request(face_photo, face, mesh), timeout=60).refinement.mesh  # was INTERNAL
        assert np.array_equal(convert.mesh_from_proto(again).vertices, convert.mesh_from_proto(legit).vertices)
        for count in range(2, 8):  # seven layouts under one name: the caches stay bounded
            refine(refine_request(face_photo, face, with_extra_vertices(mesh, count)), timeout=60)
        refiner = server.loader.objects[0]
        limit = refiner.options.cached_topologies
        assert len(refiner.deformers) == limit and len(refiner.subdividers) <= limit
        latest = refine(refine_request(face_photo, face, mesh), timeout=60).refinement.mesh
        assert np.array_equal(convert.mesh_from_proto(latest).vertices, convert.mesh_from_proto(legit).vertices)


# -- 3. pixels and memory ------------------------------------------------------------------------------


def jpeg_bytes(width: int, height: int, *, claim: tuple[int, int] | None = None) -> bytes:
    """A JPEG of a flat colour; ``claim``: its frame header (SOF0) rewritten to say that width x height."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 140)).save(buffer, format="JPEG", quality=50)
    data = bytearray(buffer.getvalue())
    if claim is not None:
        sof = data.index(b"\xff\xc0") + 5  # marker, length (2), precision (1), then height and width
        data[sof : sof + 4] = claim[1].to_bytes(2, "big") + claim[0].to_bytes(2, "big")
    return bytes(data)


@pytest.fixture(scope="module")
def pipeline_server(host):
    server = Server.for_pipeline(PipelineConfig(device="cpu", refiners=()), host=host, settings=ANY_PORT)
    with serving(server) as address:
        yield server, address


def test_a_small_file_with_a_huge_header_is_refused_before_decoding(pipeline_server):
    server, address = pipeline_server
    assert server.settings.max_image_pixels == MAX_IMAGE_PIXELS == 25_000_000  # lower than the CLI's 80 MP
    bomb = jpeg_bytes(64, 64, claim=(8900, 8900))  # says 79 MP
    assert len(bomb) < 50_000 and Image.open(io.BytesIO(bomb)).size == (8900, 8900)
    with grpc.insecure_channel(address) as channel:
        stub = pipeline_pb2_grpc.PipelineStub(channel)
        start = time.perf_counter()
        with pytest.raises(grpc.RpcError) as err:
            stub.Reconstruct(pipeline_pb2.ReconstructRequest(image=convert.encoded_image(bomb)), timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "above the limit of 25 MP" in err.value.details()
        assert time.perf_counter() - start < 1.0  # the header was read, not the pixels
        wide = pipeline_pb2.ReconstructRequest()
        wide.image.pixels.dtype = records_pb2.DTYPE_UINT8
        wide.image.pixels.shape.extend([16, 32767, 3])
        wide.image.pixels.data = bytes(16 * 32767 * 3)
        with pytest.raises(grpc.RpcError) as err:
            stub.Reconstruct(wide, timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not supported" in err.value.details()


def test_images_are_decoded_only_once_a_model_is_free(host):
    """One model (workers=1) busy for 1.2 s: requests waiting behind it hold their encoded bytes, not
    decoded pixels, so even a corrupt image is found out only when the model comes free."""
    server = Server.for_stage("refiner", "slow", host=host, options={"seconds": 1.2}, settings=ANY_PORT)
    valid = small_refine_request()
    corrupt = stages_pb2.RefineRequest()
    corrupt.CopyFrom(valid)
    corrupt.image.encoded = jpeg_bytes(64, 64)[:200]
    with serving(server) as address, grpc.insecure_channel(address) as channel:
        refine = stages_pb2_grpc.RefinerStub(channel).Refine
        with ThreadPoolExecutor(3) as pool:
            start = time.perf_counter()
            busy = pool.submit(refine, valid, timeout=30)
            time.sleep(0.2)
            waiting = [pool.submit(lambda: (status_of(lambda: refine(corrupt, timeout=30)), time.perf_counter()))]
            code, finished = waiting[0].result()
            assert busy.result().refinement.mesh.topology == "t"
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert finished - start >= 1.1, "the corrupt image was decoded before the model was free"


# -- 6. bad fields are INVALID_ARGUMENT, tokens, shutdown ---------------------------------------------


def test_unknown_dtype_and_wrong_landmark_count_are_invalid_argument(host, face_photo):
    server = Server.for_stage("regressor", "landmark-mesh", host=host, device="cpu", settings=ANY_PORT)
    with serving(server) as address, grpc.insecure_channel(address) as channel:
        regress = stages_pb2_grpc.RegressorStub(channel).Regress
        odd = stages_pb2.RegressRequest()
        odd.image.pixels.dtype = 99  # not in the DType enum (proto3 keeps unknown values)
        odd.image.pixels.shape.extend([32, 32, 3])
        odd.image.pixels.data = bytes(32 * 32 * 3)
        convert.face_to_proto(Face([1, 1, 20, 20], 0.9, Landmarks("x", np.ones((3, 3)))), odd.face)
        with pytest.raises(grpc.RpcError) as err:
            regress(odd, timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "unknown dtype 99" in err.value.details()
        few = stages_pb2.RegressRequest()
        convert.image_to_proto(face_photo, few.image)
        face = convert.face_to_proto(Face([1, 1, 20, 20], 0.9, Landmarks("x", np.ones((10, 3)))), few.face)
        face.landmarks.scheme = "mediapipe478"  # says 478 points, carries 10
        with pytest.raises(grpc.RpcError) as err:
            regress(few, timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "'mediapipe478' landmarks must be 478 points, got 10" in err.value.details()
        info = stages_pb2_grpc.RegressorStub(channel).Info(stages_pb2.InfoRequest(), timeout=10)
        assert info.plugin == "landmark-mesh"  # still serving


def test_the_bearer_scheme_is_case_insensitive_the_token_is_not(host):
    server = Server.for_stage(
        "refiner", "slow", host=host, options={"seconds": 0}, settings=replace(ANY_PORT, token="s3cret")
    )
    with serving(server) as address, grpc.insecure_channel(address) as channel:
        info = stages_pb2_grpc.RefinerStub(channel).Info
        for header, expected in [
            ("Bearer s3cret", grpc.StatusCode.OK),
            ("bearer s3cret", grpc.StatusCode.OK),
            ("BEARER  s3cret", grpc.StatusCode.OK),
            ("bearer S3CRET", grpc.StatusCode.UNAUTHENTICATED),
            ("Basic s3cret", grpc.StatusCode.UNAUTHENTICATED),
            ("s3cret", grpc.StatusCode.UNAUTHENTICATED),
        ]:
            got = status_of(
                lambda h=header: info(stages_pb2.InfoRequest(), timeout=5, metadata=(("authorization", h),))
            )
            assert got == expected, header


def test_a_call_running_past_the_grace_period_does_not_hold_the_exit(tmp_path):
    """--grace 0.5 with an 8 s call: the server used to exit only when the call ended (6.7 s after SIGTERM
    in the issue), after closing models the call was still using."""
    with slow_server_process(seconds=8.0, grace_s=0.5) as (process, address):
        with grpc.insecure_channel(address) as channel:
            grpc.channel_ready_future(channel).result(timeout=20)
            stub = stages_pb2_grpc.RefinerStub(channel)
            request = small_refine_request()
            deadline = time.monotonic() + 30
            while status_of(lambda: stub.Info(stages_pb2.InfoRequest(), timeout=5)) != grpc.StatusCode.OK:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            running = stub.Refine.future(request, timeout=30)
            time.sleep(0.3)
            sent = time.monotonic()
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=20) == 0
            took = time.monotonic() - sent
            assert status_of(running.result) != grpc.StatusCode.OK
        assert took < 3.0, f"exit took {took:.1f} s after SIGTERM"
        assert "1 call(s) still running after the grace period abandoned" in process.stderr.read()


def test_sigterm_while_the_model_warms_up_exits_at_once(tmp_path):
    """A pod deleted while its model still loads: the server used to wait for the 30 s warm-up (past any
    grace period, so Kubernetes' SIGKILL), and `serve pipeline` crashed at exit (status 120, "Exception
    ignored" on stderr) when its loader thread was still importing."""
    with slow_server_process(seconds=0.1, grace_s=0.5, warm_seconds=30.0) as (process, address):
        with grpc.insecure_channel(address) as channel:
            grpc.channel_ready_future(channel).result(timeout=20)
            info = stages_pb2_grpc.RefinerStub(channel).Info
            assert status_of(lambda: info(stages_pb2.InfoRequest(), timeout=5)) == grpc.StatusCode.UNAVAILABLE
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        took = time.monotonic() - sent
        assert took < 3.0, f"exit took {took:.1f} s after SIGTERM"
        err = process.stderr.read()
        assert "stopped while the model was still loading" in err
        assert "Traceback" not in err and "Exception ignored" not in err
