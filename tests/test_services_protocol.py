"""The gRPC protocol: committed generated code matches the protos, and every record survives the trip
through protobuf unchanged."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys

import numpy as np
import pytest
from google.protobuf import descriptor_pb2
from services_support import REPO, differences

from facerecon.kernel import (
    CoarseResult,
    Face,
    FaceReconstruction,
    ImageMaps,
    InputError,
    LandmarkMap,
    Landmarks,
    Mesh,
    Reconstruction,
    RecordError,
    Refinement,
    Segmentation,
    StageResult,
)
from facerecon.services import codegen, convert
from facerecon.v1 import pipeline_pb2, pipeline_pb2_grpc, records_pb2, stages_pb2, stages_pb2_grpc

pytest.importorskip("grpc_tools", reason="grpcio-tools (a dev dependency) regenerates the protocol code")


def test_generated_code_matches_the_protos(tmp_path):
    """Fails when a .proto was edited without `python -m facerecon.services.codegen`."""
    from grpc_tools import protoc

    # Semantics, independent of the generator's version: the descriptors compiled from the .proto files
    # now equal the ones embedded in the committed modules.
    out = tmp_path / "set.pb"
    include = f"--proto_path={protoc.__file__.rsplit('/', 1)[0]}/_proto"
    files = [f"facerecon/v1/{name}" for name in codegen.PROTO_FILES]
    assert (
        protoc.main(["protoc", f"--proto_path={REPO / 'protos'}", include, f"--descriptor_set_out={out}", *files]) == 0
    )
    compiled = {f.name: f for f in descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file}
    for module in (records_pb2, stages_pb2, pipeline_pb2):
        embedded = descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
        fresh = compiled[module.DESCRIPTOR.name]
        assert _without_json_names(embedded) == _without_json_names(fresh), f"{module.__name__} is stale: run codegen"
    # Text, where this grpcio-tools made the committed files: byte for byte (also catches hand edits).
    header = (REPO / "facerecon" / "v1" / "stages_pb2_grpc.py").read_text()
    committed_with = re.search(r"GRPC_GENERATED_VERSION = '([^']+)'", header).group(1)
    if importlib.metadata.version("grpcio-tools") == committed_with:
        assert codegen.stale_files(REPO) == []
    else:  # the .proto copies and package files must still match
        stale = [n for n in codegen.stale_files(REPO) if not n.endswith((".py", ".pyi")) or n == "__init__.py"]
        assert stale == []


def _without_json_names(file: descriptor_pb2.FileDescriptorProto) -> descriptor_pb2.FileDescriptorProto:
    """protoc's descriptor sets carry json_name, the embedded descriptors may not."""
    file = descriptor_pb2.FileDescriptorProto.FromString(file.SerializeToString())
    pending = list(file.message_type)
    while pending:
        message = pending.pop()
        pending.extend(message.nested_type)
        for f in message.field:
            f.ClearField("json_name")
    return file


def test_generated_modules_import_under_the_facerecon_namespace():
    code = "import facerecon.v1.pipeline_pb2_grpc as m; print(m.__name__, m.PipelineStub.__name__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["facerecon.v1.pipeline_pb2_grpc", "PipelineStub"]
    assert stages_pb2_grpc.DetectorStub and pipeline_pb2_grpc.PipelineStub
    for name in codegen.PROTO_FILES:  # the installed package carries the protocol for other languages
        copy = (REPO / "facerecon" / "v1" / name).read_text()
        assert copy.endswith((REPO / "protos" / "facerecon" / "v1" / name).read_text())


# -- round trips --------------------------------------------------------------------------------

RNG = np.random.default_rng(7)


def landmarks(k: int = 5, visibility: bool = True) -> Landmarks:
    return Landmarks("scheme5", RNG.random((k, 3)) * 100, RNG.random(k) if visibility else None)


def face(head_pose: bool = True) -> Face:
    return Face(
        box=[10.5, 20.25, 80.0, 120.0],
        score=0.9123456789,
        landmarks=landmarks(),
        head_pose=RNG.random((4, 4)) if head_pose else None,
        attributes={"jawOpen": 0.125, "blink": 1e-9, "smile": 0.3333333333333},
    )


def mesh(full: bool = True) -> Mesh:
    vertices = RNG.random((6, 3)) * 50
    triangles = [[0, 1, 2], [2, 1, 3], [3, 4, 5]]
    maps = {
        "ibug68": LandmarkMap("ibug68", [[0, 1, 2], [3, 0, 0]], [[0.2, 0.3, 0.5], [0, 0, 0]]),
        "five": LandmarkMap("five", [[5, 4, 3]], [[1, 0, 0]]),
    }
    if not full:
        return Mesh(vertices, triangles, "plain")
    k = np.array([[500, 0, 100], [0, 500, 80], [0, 0, 1]])
    return Mesh(vertices, triangles, "full", uvs=RNG.random((6, 2)), landmark_maps=maps, units="mm", camera_matrix=k)


def coarse() -> CoarseResult:
    return CoarseResult(
        mesh(),
        rotation=np.diag([1.0, -1.0, -1.0]),
        translation=[1, 2, 3],
        scale=0.123456789,
        parameters={"identity": RNG.random(80), "expression": RNG.random(64)},
    )


def segmentation() -> Segmentation:
    labels = RNG.integers(0, 3, (20, 30)).astype(np.uint8)
    return Segmentation(labels, {0: "background", 1: "skin", 2: "nose"}, {"skin": [0.8, 0.6, 0.5], "nose": [1, 0, 0]})


def image_maps() -> ImageMaps:
    depth = RNG.random((4, 5)).astype(np.float32)
    depth[0, 0] = np.nan
    return ImageMaps((3, 7), {"depth": depth, "albedo": RNG.random((4, 5, 3))}, step=2.5)


def stage_result(extras: bool = True) -> StageResult:
    if not extras:
        return StageResult("coarse", "landmark-mesh", "0.1.0", mesh(), 1.25)
    return StageResult("fine", "sfs", "2.0", mesh(), 30.5, image_maps(), {"phase1": mesh(False), "phase2": mesh()})


def reconstruction() -> Reconstruction:
    faces = (face(), face(head_pose=False))
    c = coarse()
    r0 = FaceReconstruction(faces[0], 0, c, (StageResult("coarse", "p", "1", c.mesh, 2.0), stage_result()), None)
    r1 = FaceReconstruction(faces[1], 1, coarse(), (stage_result(False),), segmentation())
    return Reconstruction((640, 480), faces, (r0, r1), {"detector": 7.5, "regressor": 1.0, "refiner:sfs": 30.5})


RECORDS = {
    "landmarks": landmarks,
    "landmarks without visibility": lambda: landmarks(visibility=False),
    "face": face,
    "face without head pose": lambda: face(head_pose=False),
    "landmark map": lambda: LandmarkMap("m", [[0, 1, 2]], [[0.5, 0.25, 0.25]]),
    "mesh with uvs, landmark maps and camera": mesh,
    "bare mesh": lambda: mesh(False),
    "coarse result": coarse,
    "segmentation": segmentation,
    "image maps": image_maps,
    "refinement": lambda: Refinement(mesh(), image_maps(), {"p": mesh(False)}),
    "bare refinement": lambda: Refinement(mesh(False)),
    "stage result with maps and phases": stage_result,
    "stage result": lambda: stage_result(False),
    "reconstruction": reconstruction,
    "empty reconstruction": lambda: Reconstruction((10, 10), (), (), {}),
}


@pytest.mark.parametrize("name", RECORDS)
def test_every_record_round_trips(name):
    record = RECORDS[name]()
    message = convert.to_proto(record)
    again = convert.from_proto(type(message).FromString(message.SerializeToString()))
    assert differences(record, again) == []


def test_face_reconstruction_round_trips_alone_and_shares_what_it_can():
    rec = reconstruction()
    alone = convert.to_proto(rec.reconstructions[0])
    assert alone.HasField("face") and not alone.coarse.HasField("mesh")  # coarse mesh == stages[0].mesh
    assert differences(rec.reconstructions[0], convert.from_proto(alone)) == []
    in_list = convert.to_proto(rec).reconstructions[0]
    assert not in_list.HasField("face")  # it is faces[face_index]


def test_tensors_keep_dtype_shape_and_bytes():
    for array in (np.arange(12, dtype=">f4").reshape(3, 4), np.zeros((0, 3), np.int64), np.uint8(7)):
        t = convert.tensor(array)
        back = convert.array(t, "t")
        assert back.shape == array.shape and np.array_equal(back, array) and back.dtype.byteorder in "<=|"
    with pytest.raises(RecordError, match="no Tensor type"):
        convert.tensor(np.zeros(3, np.complex64))


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (records_pb2.Tensor(dtype=records_pb2.DTYPE_FLOAT32, shape=[2, 3], data=b"\0" * 20), "needs 24 bytes"),
        (records_pb2.Tensor(dtype=records_pb2.DTYPE_UNSPECIFIED, shape=[1], data=b"\0"), "dtype"),
        (records_pb2.Tensor(dtype=records_pb2.DTYPE_FLOAT32, shape=[-1, 3], data=b""), "negative"),
        (records_pb2.Tensor(dtype=records_pb2.DTYPE_FLOAT32, shape=[2**40, 2**40], data=b""), "size above"),
    ],
)
def test_bad_tensors_are_refused(tensor, message):
    with pytest.raises(RecordError, match=message):
        convert.array(tensor, "t")


def test_bad_records_are_refused_naming_the_field():
    message = convert.to_proto(mesh())
    message.triangles.CopyFrom(convert.tensor(np.array([[0, 1, 99]], np.int32)))
    with pytest.raises(RecordError, match="out of range"):
        convert.from_proto(message)
    message = convert.to_proto(face())
    message.landmarks.points.CopyFrom(convert.tensor(np.zeros((4, 5), np.float32)))
    with pytest.raises(RecordError, match=r"\(K, 3\)"):
        convert.from_proto(message)
    message = convert.to_proto(segmentation())
    message.labels.CopyFrom(convert.tensor(np.zeros((4, 5), np.float32)))
    with pytest.raises(RecordError, match="segmentation.labels: dtype must be DTYPE_UINT8"):
        convert.from_proto(message)


def encoded_png(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def test_images_are_checked_before_decoding():
    image = RNG.integers(0, 256, (40, 30, 3)).astype(np.uint8)
    message = convert.image_to_proto(image)
    assert np.array_equal(convert.image_from_proto(message, max_pixels=10_000), image)
    limit = r"above the server's limit of 0.001 MP \(set by the server's --max-image-mp\)"
    with pytest.raises(InputError, match=limit):
        convert.image_from_proto(message, max_pixels=1000)
    # an encoded file: named as the client named it (not "<bytes>"), the server's flag for the limit
    encoded = convert.encoded_image(encoded_png(image))
    with pytest.raises(
        InputError, match=r"^face\.png: image is 30x40 = 0.0012 MP, .* \(set by the server's --max-image-mp\)$"
    ):
        convert.image_from_proto(encoded, max_pixels=1000, name="face.png")
    bad = records_pb2.Image()
    bad.pixels.CopyFrom(records_pb2.Tensor(dtype=records_pb2.DTYPE_UINT8, shape=[40, 30, 4], data=b""))
    with pytest.raises(InputError, match=r"shape \(height, width, 3\)"):
        convert.image_from_proto(bad, max_pixels=10_000)
    with pytest.raises(InputError, match="^the request's image: not an image"):
        convert.image_from_proto(convert.encoded_image(b"GIF? no, garbage"), max_pixels=10_000)
    with pytest.raises(InputError, match="no image"):
        convert.image_from_proto(records_pb2.Image(), max_pixels=10_000)
    # A real PNG whose header claims 12000 x 12000 pixels (144 MP) is refused from its header alone.
    import io
    import struct
    import zlib

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    png = bytearray(buffer.getvalue())
    png[16:24] = struct.pack(">II", 12_000, 12_000)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    with pytest.raises(InputError, match="above the limit"):
        convert.image_from_proto(convert.encoded_image(bytes(png)), max_pixels=80_000_000)
