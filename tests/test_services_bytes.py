"""What a remote stage sends (issue 19): only what the served stage reads (no pixel for landmark-mesh and
laplace, the face's window for landmark-regions), and a mesh whose layout both ends hold as its vertices
only — with the same results as in-process, and whole messages for clients and servers that predate it."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from services_support import differences, serving, toy_host

from facerecon.kernel import Pipeline, PipelineConfig
from facerecon.kernel.contract.stages import face_window
from facerecon.services import convert
from facerecon.services.remote import RemoteOptions, RemoteRefiner, RemoteRegressor, RemoteSegmenter
from facerecon.services.server import Server, ServerSettings
from facerecon.v1 import stages_pb2, stages_pb2_grpc

ANY_PORT = ServerSettings(port=0)


@pytest.fixture(scope="module")
def host():
    return toy_host()


@pytest.fixture(scope="module")
def local(host):
    with Pipeline(PipelineConfig(regressor="landmark-mesh", refiners=("laplace",), device="cpu"), host) as pipe:
        yield pipe


def recording(stage, method: str) -> list:
    """Wrap a remote stage's stub method to keep every [request, response] (response None: refused)."""
    calls: list = []
    call = getattr(stage.stub, method)

    def recorded(request, *args, **kwargs):
        entry = [type(request).FromString(request.SerializeToString()), None]  # as sent (requests are reused)
        calls.append(entry)
        entry[1] = call(request, *args, **kwargs)
        return entry[1]

    setattr(stage.stub, method, recorded)
    return calls


def test_regressor_gets_no_pixel_and_later_meshes_come_as_vertices(host, local, face_photo, lfpw):
    from facerecon.kernel.host.imageio import load_image

    face = local.detect(face_photo)[0]
    with serving(Server.for_stage("regressor", "landmark-mesh", host=host, settings=ANY_PORT)) as address:
        stage = RemoteRegressor(RemoteOptions(address=address))
        calls = recording(stage, "Regress")
        assert stage.reads == "landmarks"
        first = stage.regress(face_photo, face)
        assert differences(first, local.regressor.regress(face_photo, face), skip=frozenset()) == []
        other = load_image(lfpw[1])
        other_face = local.detect(other)[0]
        second = stage.regress(other, other_face)
        assert differences(second, local.regressor.regress(other, other_face)) == []
        stage.close()
    (request, response), (request2, response2) = calls
    assert list(request.image.pixels.shape) == [0, 0, 3] and request.image.window.width == face_photo.shape[1]
    assert response.result.mesh.HasField("triangles")  # the client held no layout yet
    assert len(request2.known_layouts) == 1
    assert not response2.result.mesh.HasField("triangles") and response2.result.mesh.layout_digest
    assert response2.ByteSize() < 0.4 * response.ByteSize()
    assert request.ByteSize() < 20_000  # the landmarks, not the 1.3 MB photo


def test_laplace_is_sent_vertices_once_it_holds_the_layout_and_resent_whole_when_it_does_not(host, local, face_photo):
    face = local.detect(face_photo)[0]
    coarse = local.regressor.regress(face_photo, face).mesh
    expected = local.refiners[0][1].refine(face_photo, face, coarse, None)
    server = Server.for_stage("refiner", "laplace", host=host, settings=ANY_PORT)
    with serving(server) as address:
        stage = RemoteRefiner(RemoteOptions(address=address))
        calls = recording(stage, "Refine")
        for _ in range(2):
            medium = stage.refine(face_photo, face, coarse, None)
            np.testing.assert_allclose(medium.vertices, expected.vertices, atol=1e-4)
            assert medium.topology == expected.topology and medium.uvs is not None
        server.servicer.layouts = type(server.servicer.layouts)()  # the server forgot (a restart, a replica)
        medium = stage.refine(face_photo, face, coarse, None)
        np.testing.assert_allclose(medium.vertices, expected.vertices, atol=1e-4)
        stage.close()
    (first, _), (second, answer), (short, refused), (whole, _) = calls
    assert first.mesh.HasField("triangles") and first.image.pixels.shape[0] == 0
    assert not second.mesh.HasField("triangles") and not answer.refinement.mesh.HasField("triangles")
    assert second.ByteSize() < 0.4 * first.ByteSize()
    assert not short.mesh.HasField("triangles") and refused is None  # FAILED_PRECONDITION...
    assert whole.mesh.HasField("triangles")  # ...so the mesh went again whole


def test_segmenter_gets_the_face_window_only(host, local, face_photo):
    face = local.detect(face_photo)[0]
    with serving(Server.for_stage("segmenter", "landmark-regions", host=host, settings=ANY_PORT)) as address:
        stage = RemoteSegmenter(RemoteOptions(address=address))
        calls = recording(stage, "Segment")
        assert stage.reads == "face-crop"
        seg = stage.segment(face_photo, face)
        stage.close()
    assert differences(seg, local.segmenter.segment(face_photo, face)) == []
    ((request, _),) = calls
    left, top, right, bottom = face_window(face, *face_photo.shape[:2])
    assert list(request.image.pixels.shape) == [bottom - top, right - left, 3]
    assert (request.image.window.left, request.image.window.top) == (left, top)
    assert (right - left) * (bottom - top) < face_photo.shape[0] * face_photo.shape[1]


def test_a_client_that_predates_it_gets_whole_messages(host, local, face_photo):
    face = local.detect(face_photo)[0]
    server = Server.for_stage("regressor", "landmark-mesh", host=host, settings=ANY_PORT)
    with serving(server) as address, grpc.insecure_channel(address) as channel:
        stub = stages_pb2_grpc.RegressorStub(channel)
        info = stub.Info(stages_pb2.InfoRequest(), timeout=10)
        assert info.reads == "landmarks" and "mesh-layouts" in info.features
        request = stages_pb2.RegressRequest()
        convert.image_to_proto(face_photo, request.image)
        convert.face_to_proto(face, request.face)
        for _ in range(2):
            mesh = stub.Regress(request, timeout=30).result.mesh
            assert mesh.HasField("triangles") and not mesh.layout_digest
        # A window that does not fit its image.
        bad = stages_pb2.RegressRequest()
        convert.image_to_proto(face_photo, bad.image, (0, 0, 10, 10))
        bad.image.window.width = 5
        convert.face_to_proto(face, bad.face)
        with pytest.raises(grpc.RpcError) as err:
            stub.Regress(bad, timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "window" in err.value.details()
