"""Records <-> protobuf messages of ``facerecon.v1``: the one place that knows both.

Arrays travel as :class:`Tensor` (dtype + shape + row-major little-endian bytes); decoding checks the
dtype, the shape and the byte count before it looks at the bytes, and returns read-only numpy views of
the message's bytes (no copy). Every problem with a message is a :class:`~facerecon.kernel.RecordError`
(or :class:`~facerecon.kernel.InputError` for images) naming the field, which the servers answer with
INVALID_ARGUMENT.

    message = to_proto(record)        # Landmarks, Face, LandmarkMap, Mesh, CoarseResult, Segmentation,
    record = from_proto(message)      # ImageMaps, Refinement, StageResult, FaceReconstruction, Reconstruction
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import singledispatch
from typing import Any

import numpy as np

from facerecon.kernel.contract.errors import RecordError
from facerecon.kernel.contract.records import (
    CoarseResult,
    Face,
    FaceReconstruction,
    ImageMaps,
    LandmarkMap,
    Landmarks,
    Mesh,
    Reconstruction,
    Refinement,
    Segmentation,
    StageResult,
)
from facerecon.v1 import records_pb2 as pb

from .images import encoded_image, image_from_proto, image_to_proto  # noqa: F401 - re-exported
from .layouts import MeshLayouts

DTYPES: dict[pb.DType, np.dtype] = {
    pb.DTYPE_UINT8: np.dtype("u1"),
    pb.DTYPE_INT32: np.dtype("<i4"),
    pb.DTYPE_INT64: np.dtype("<i8"),
    pb.DTYPE_FLOAT32: np.dtype("<f4"),
    pb.DTYPE_FLOAT64: np.dtype("<f8"),
}
MAX_DIMENSIONS = 32
MAX_EXTENT = 2**31 - 1
"""Limits on a Tensor's shape: rank, and each dimension's size (numpy's own limits are 64 and the address
space; a zero-size array with a huge dimension passes the byte count but not numpy)."""
_CODES: dict[tuple[str, int], pb.DType] = {(dtype.kind, dtype.itemsize): code for code, dtype in DTYPES.items()}


# -- arrays ------------------------------------------------------------------------------------


def tensor(array: Any, into: pb.Tensor | None = None) -> pb.Tensor:
    """A Tensor of a numpy array (uint8, int32, int64, float32 or float64), row-major, little-endian;
    ``into``: fill that message in place (how every converter here builds nested messages: constructing a
    message from sub-messages copies them again)."""
    array = np.asarray(array)
    code = _CODES.get((array.dtype.kind, array.dtype.itemsize))
    if code is None:
        raise RecordError(
            f"arrays of dtype {array.dtype} have no Tensor type (use uint8, int32, int64, float32, float64)"
        )
    message = pb.Tensor() if into is None else into
    message.dtype = code
    del message.shape[:]
    message.shape.extend(array.shape)
    message.data = np.ascontiguousarray(array, dtype=DTYPES[code]).tobytes()
    return message


def array(
    message: pb.Tensor, field: str, *, ndim: int | None = None, dtypes: Sequence[int] | None = None
) -> np.ndarray:
    """The read-only numpy array a Tensor holds; checks dtype, rank and byte count first."""
    dtype = DTYPES.get(message.dtype)
    if dtype is None:
        raise RecordError(f"{field}: unknown or unset dtype {message.dtype}")
    if dtypes is not None and message.dtype not in dtypes:
        names = ", ".join(dtype_name(d) for d in dtypes)
        raise RecordError(f"{field}: dtype must be {names}, got {dtype_name(message.dtype)}")
    shape = tuple(int(n) for n in message.shape)
    if ndim is not None and len(shape) != ndim:
        raise RecordError(f"{field}: expected {ndim} dimensions, got shape {list(shape)}")
    if len(shape) > MAX_DIMENSIONS:
        raise RecordError(f"{field}: {len(shape)} dimensions, more than the {MAX_DIMENSIONS} allowed")
    if any(n < 0 for n in shape):
        raise RecordError(f"{field}: negative size in shape {list(shape)}")
    if any(n > MAX_EXTENT for n in shape):  # even with a zero elsewhere (no bytes), numpy refuses such shapes
        raise RecordError(f"{field}: size above {MAX_EXTENT} in shape {list(shape)}")
    expected = math.prod(shape) * dtype.itemsize  # Python ints: no overflow on absurd shapes
    if expected != len(message.data):
        raise RecordError(
            f"{field}: shape {list(shape)} of {dtype.name} needs {expected} bytes, got {len(message.data)}"
        )
    return np.frombuffer(message.data, dtype=dtype).reshape(shape)


def dtype_name(code: int) -> str:
    """The DType's name, or the bare number for a value the protocol does not define (a client's enum may
    be newer or wrong; proto3 keeps unknown enum values)."""
    try:
        return pb.DType.Name(code)
    except ValueError:
        return f"unknown dtype {code}"


def _optional_tensor(message: Any, name: str) -> pb.Tensor | None:
    return getattr(message, name) if message.HasField(name) else None


def _set_optional(target: Any, name: str, value: np.ndarray | None) -> None:
    if value is not None:
        tensor(value, getattr(target, name))


# -- records -----------------------------------------------------------------------------------


@singledispatch
def to_proto(record: Any) -> Any:
    """The protobuf message of a record (see the module docstring for the types)."""
    raise TypeError(f"no protobuf message for {type(record).__name__}")


def landmarks_to_proto(marks: Landmarks, into: pb.Landmarks | None = None) -> pb.Landmarks:
    message = pb.Landmarks() if into is None else into
    message.scheme = marks.scheme
    tensor(marks.points, message.points)
    _set_optional(message, "visibility", marks.visibility)
    return message


def landmarks_from_proto(message: pb.Landmarks, field: str = "landmarks") -> Landmarks:
    visibility = _optional_tensor(message, "visibility")
    return Landmarks(
        scheme=message.scheme,
        points=array(message.points, f"{field}.points", ndim=2),
        visibility=None if visibility is None else array(visibility, f"{field}.visibility", ndim=1),
    )


def face_to_proto(face: Face, into: pb.Face | None = None) -> pb.Face:
    message = pb.Face() if into is None else into
    tensor(face.box, message.box)
    message.score = face.score
    landmarks_to_proto(face.landmarks, message.landmarks)
    _set_optional(message, "head_pose", face.head_pose)
    for name, value in face.attributes.items():
        message.attributes.add(name=name, value=value)
    return message


def face_from_proto(message: pb.Face, field: str = "face") -> Face:
    if not message.HasField("landmarks"):
        raise RecordError(f"{field}: no landmarks")
    head_pose = _optional_tensor(message, "head_pose")
    return Face(
        box=array(message.box, f"{field}.box", ndim=1),
        score=message.score,
        landmarks=landmarks_from_proto(message.landmarks, f"{field}.landmarks"),
        head_pose=None if head_pose is None else array(head_pose, f"{field}.head_pose", ndim=2),
        attributes={a.name: a.value for a in message.attributes},
    )


def landmark_map_to_proto(lmap: LandmarkMap, into: pb.LandmarkMap | None = None) -> pb.LandmarkMap:
    message = pb.LandmarkMap() if into is None else into
    message.scheme = lmap.scheme
    tensor(lmap.vertex_ids, message.vertex_ids)
    tensor(lmap.weights, message.weights)
    return message


def landmark_map_from_proto(message: pb.LandmarkMap, field: str = "landmark_map") -> LandmarkMap:
    return LandmarkMap(
        scheme=message.scheme,
        vertex_ids=array(message.vertex_ids, f"{field}.vertex_ids", ndim=2, dtypes=(pb.DTYPE_INT32, pb.DTYPE_INT64)),
        weights=array(message.weights, f"{field}.weights", ndim=2),
    )


def mesh_to_proto(mesh: Mesh, into: pb.Mesh | None = None, *, layout_digest: str | None = None) -> pb.Mesh:
    """``layout_digest``: the receiver holds this mesh's layout (:mod:`.layouts`): send vertices and camera
    only, and the digest."""
    message = pb.Mesh() if into is None else into
    tensor(mesh.vertices, message.vertices)
    if layout_digest:
        message.topology = mesh.topology
        message.layout_digest = layout_digest
        _set_optional(message, "camera_matrix", mesh.camera_matrix)
        return message
    tensor(mesh.triangles, message.triangles)
    message.topology = mesh.topology
    _set_optional(message, "uvs", mesh.uvs)
    for lmap in mesh.landmark_maps.values():
        landmark_map_to_proto(lmap, message.landmark_maps.add())
    message.units = mesh.units
    _set_optional(message, "camera_matrix", mesh.camera_matrix)
    return message


def mesh_from_proto(message: pb.Mesh, field: str = "mesh", layouts: MeshLayouts | None = None) -> Mesh:
    """``layouts``: where a vertices-only mesh (``layout_digest``) finds its layout (UnknownLayout if it is
    not there), and where a whole mesh's layout is kept for the next call."""
    uvs = _optional_tensor(message, "uvs")
    camera = _optional_tensor(message, "camera_matrix")
    if message.layout_digest and not message.HasField("triangles"):
        if layouts is None:
            raise RecordError(f"{field}: a mesh sent as vertices only (layout_digest) where no layouts are kept")
        vertices = array(message.vertices, f"{field}.vertices", ndim=2)
        matrix = None if camera is None else array(camera, f"{field}.camera_matrix", ndim=2)
        return layouts.rebuild(message.layout_digest, vertices, matrix, field)
    mesh = _whole_mesh_from_proto(message, field, uvs, camera)
    if layouts is not None:
        layouts.remember(mesh)
    return mesh


def _whole_mesh_from_proto(message: pb.Mesh, field: str, uvs: pb.Tensor | None, camera: pb.Tensor | None) -> Mesh:
    maps = {}
    for i, m in enumerate(message.landmark_maps):
        if m.scheme in maps:
            raise RecordError(f"{field}.landmark_maps: scheme {m.scheme!r} appears twice")
        maps[m.scheme] = landmark_map_from_proto(m, f"{field}.landmark_maps[{i}]")
    return Mesh(
        vertices=array(message.vertices, f"{field}.vertices", ndim=2),
        triangles=array(message.triangles, f"{field}.triangles", ndim=2, dtypes=(pb.DTYPE_INT32, pb.DTYPE_INT64)),
        topology=message.topology,
        uvs=None if uvs is None else array(uvs, f"{field}.uvs", ndim=2),
        landmark_maps=maps,
        units=message.units or "px",
        camera_matrix=None if camera is None else array(camera, f"{field}.camera_matrix", ndim=2),
    )


def coarse_to_proto(
    coarse: CoarseResult,
    into: pb.CoarseResult | None = None,
    *,
    with_mesh: bool = True,
    layout_digest: str | None = None,
) -> pb.CoarseResult:
    message = pb.CoarseResult() if into is None else into
    if with_mesh:
        mesh_to_proto(coarse.mesh, message.mesh, layout_digest=layout_digest)
    tensor(coarse.rotation, message.rotation)
    tensor(coarse.translation, message.translation)
    message.scale = coarse.scale
    for name, value in coarse.parameters.items():
        tensor(value, message.parameters.add(name=name).value)
    return message


def coarse_from_proto(
    message: pb.CoarseResult, field: str = "coarse", mesh: Mesh | None = None, layouts: MeshLayouts | None = None
) -> CoarseResult:
    """``mesh``: the mesh to use when the message leaves it unset (inside a FaceReconstruction)."""
    if message.HasField("mesh"):
        mesh = mesh_from_proto(message.mesh, f"{field}.mesh", layouts)
    if mesh is None:
        raise RecordError(f"{field}: no mesh")
    return CoarseResult(
        mesh=mesh,
        rotation=array(message.rotation, f"{field}.rotation", ndim=2),
        translation=array(message.translation, f"{field}.translation", ndim=1),
        scale=message.scale,
        parameters={p.name: array(p.value, f"{field}.parameters[{p.name!r}]") for p in message.parameters},
    )


def segmentation_to_proto(seg: Segmentation, into: pb.Segmentation | None = None) -> pb.Segmentation:
    message = pb.Segmentation() if into is None else into
    tensor(seg.labels, message.labels)
    for label, name in seg.label_names.items():
        message.label_names.add(id=int(label), name=name)
    for name, rgb in seg.region_colors.items():
        message.region_colors.add(name=name, rgb=np.asarray(rgb, np.float32).tolist())
    return message


def segmentation_from_proto(message: pb.Segmentation, field: str = "segmentation") -> Segmentation:
    for c in message.region_colors:
        if len(c.rgb) != 3:
            raise RecordError(f"{field}.region_colors[{c.name!r}]: rgb needs 3 values, got {len(c.rgb)}")
    return Segmentation(
        labels=array(message.labels, f"{field}.labels", ndim=2, dtypes=(pb.DTYPE_UINT8,)),
        label_names={label.id: label.name for label in message.label_names},
        region_colors={c.name: np.asarray(c.rgb, np.float32) for c in message.region_colors},
    )


def image_maps_to_proto(maps: ImageMaps, into: pb.ImageMaps | None = None) -> pb.ImageMaps:
    message = pb.ImageMaps() if into is None else into
    message.origin_x, message.origin_y = (int(v) for v in maps.origin)
    message.step = maps.step
    for name, value in maps.maps.items():
        tensor(value, message.maps.add(name=name).value)
    return message


def image_maps_from_proto(message: pb.ImageMaps, field: str = "maps") -> ImageMaps:
    return ImageMaps(
        origin=(message.origin_x, message.origin_y),
        maps={m.name: array(m.value, f"{field}[{m.name!r}]") for m in message.maps},
        step=message.step or 1.0,
    )


def _phases_to_proto(phases: Any, target: Any) -> None:
    for name, mesh in phases.items():
        mesh_to_proto(mesh, target.add(name=name).mesh)


def _phases_from_proto(phases: Any, field: str) -> dict[str, Mesh]:
    return {p.name: mesh_from_proto(p.mesh, f"{field}[{p.name!r}]") for p in phases}


def refinement_to_proto(
    refinement: Refinement | Mesh, into: pb.Refinement | None = None, *, layout_digest: str | None = None
) -> pb.Refinement:
    """A refiner's output: a Refinement, or a bare Mesh (a Refinement with nothing else)."""
    message = pb.Refinement() if into is None else into
    if isinstance(refinement, Mesh):
        refinement = Refinement(refinement)
    mesh_to_proto(refinement.mesh, message.mesh, layout_digest=layout_digest)
    if refinement.maps is not None:
        image_maps_to_proto(refinement.maps, message.maps)
    _phases_to_proto(refinement.phases, message.phases)
    return message


def refinement_from_proto(
    message: pb.Refinement, field: str = "refinement", layouts: MeshLayouts | None = None
) -> Refinement:
    if not message.HasField("mesh"):
        raise RecordError(f"{field}: no mesh")
    return Refinement(
        mesh=mesh_from_proto(message.mesh, f"{field}.mesh", layouts),
        maps=image_maps_from_proto(message.maps, f"{field}.maps") if message.HasField("maps") else None,
        phases=_phases_from_proto(message.phases, f"{field}.phases"),
    )


LayoutOf = Callable[[Mesh], "str | None"]
"""The layout digest to send a mesh under (the receiver holds its layout: vertices only), or None (whole)."""


def stage_result_to_proto(
    result: StageResult, into: pb.StageResult | None = None, *, layout_of: LayoutOf | None = None
) -> pb.StageResult:
    message = pb.StageResult() if into is None else into
    message.stage, message.plugin, message.version = result.stage, result.plugin, result.version
    mesh_to_proto(result.mesh, message.mesh, layout_digest=None if layout_of is None else layout_of(result.mesh))
    message.elapsed_ms = result.elapsed_ms
    if result.maps is not None:
        image_maps_to_proto(result.maps, message.maps)
    _phases_to_proto(result.phases, message.phases)
    return message


def stage_result_from_proto(
    message: pb.StageResult, field: str = "stage", layouts: MeshLayouts | None = None
) -> StageResult:
    return StageResult(
        stage=message.stage,
        plugin=message.plugin,
        version=message.version,
        mesh=mesh_from_proto(message.mesh, f"{field}.mesh", layouts),
        elapsed_ms=message.elapsed_ms,
        maps=image_maps_from_proto(message.maps, f"{field}.maps") if message.HasField("maps") else None,
        phases=_phases_from_proto(message.phases, f"{field}.phases"),
    )


def face_reconstruction_to_proto(
    result: FaceReconstruction,
    into: pb.FaceReconstruction | None = None,
    faces: Sequence[Face] | None = None,
    *,
    layout_of: LayoutOf | None = None,
) -> pb.FaceReconstruction:
    """Leaves out what the message can point to: the face when it is ``faces[face_index]``, the coarse mesh
    when it is ``stages[0].mesh`` (as the pipeline makes them), and (``layout_of``) the layout of a mesh the
    receiver holds."""
    message = pb.FaceReconstruction() if into is None else into
    in_list = faces is not None and 0 <= result.face_index < len(faces) and faces[result.face_index] is result.face
    if not in_list:
        face_to_proto(result.face, message.face)
    message.face_index = result.face_index
    share_mesh = bool(result.stages) and result.stages[0].mesh is result.coarse.mesh
    coarse_digest = None if share_mesh or layout_of is None else layout_of(result.coarse.mesh)
    coarse_to_proto(result.coarse, message.coarse, with_mesh=not share_mesh, layout_digest=coarse_digest)
    for stage in result.stages:
        stage_result_to_proto(stage, message.stages.add(), layout_of=layout_of)
    if result.segmentation is not None:
        segmentation_to_proto(result.segmentation, message.segmentation)
    return message


def face_reconstruction_from_proto(
    message: pb.FaceReconstruction,
    faces: Sequence[Face] = (),
    field: str = "reconstruction",
    layouts: MeshLayouts | None = None,
) -> FaceReconstruction:
    stages = tuple(stage_result_from_proto(s, f"{field}.stages[{i}]", layouts) for i, s in enumerate(message.stages))
    if message.HasField("face"):
        face = face_from_proto(message.face, f"{field}.face")
    elif 0 <= message.face_index < len(faces):
        face = faces[message.face_index]
    else:
        raise RecordError(f"{field}: no face, and face_index {message.face_index} is not in faces")
    coarse = coarse_from_proto(
        message.coarse, f"{field}.coarse", mesh=stages[0].mesh if stages else None, layouts=layouts
    )
    segmentation = (
        segmentation_from_proto(message.segmentation, f"{field}.segmentation")
        if message.HasField("segmentation")
        else None
    )
    return FaceReconstruction(face, message.face_index, coarse, stages, segmentation)


def reconstruction_to_proto(
    rec: Reconstruction, into: pb.Reconstruction | None = None, *, layout_of: LayoutOf | None = None
) -> pb.Reconstruction:
    """``layout_of``: see :func:`face_reconstruction_to_proto`."""
    message = pb.Reconstruction() if into is None else into
    message.width, message.height = rec.image_size
    for face in rec.faces:
        face_to_proto(face, message.faces.add())
    for result in rec.reconstructions:
        face_reconstruction_to_proto(result, message.reconstructions.add(), rec.faces, layout_of=layout_of)
    for name, value in rec.timings_ms.items():
        message.timings_ms.add(name=name, value=value)
    return message


def reconstruction_from_proto(message: pb.Reconstruction, layouts: MeshLayouts | None = None) -> Reconstruction:
    """``layouts``: where meshes sent as vertices only find their layout, and whole ones are kept."""
    faces = tuple(face_from_proto(f, f"faces[{i}]") for i, f in enumerate(message.faces))
    return Reconstruction(
        image_size=(message.width, message.height),
        faces=faces,
        reconstructions=tuple(
            face_reconstruction_from_proto(r, faces, f"reconstructions[{i}]", layouts)
            for i, r in enumerate(message.reconstructions)
        ),
        timings_ms={t.name: t.value for t in message.timings_ms},
    )


_TO: list[tuple[type, Callable[[Any], Any]]] = [
    (Landmarks, landmarks_to_proto),
    (Face, face_to_proto),
    (LandmarkMap, landmark_map_to_proto),
    (Mesh, mesh_to_proto),
    (CoarseResult, coarse_to_proto),
    (Segmentation, segmentation_to_proto),
    (ImageMaps, image_maps_to_proto),
    (Refinement, refinement_to_proto),
    (StageResult, stage_result_to_proto),
    (FaceReconstruction, face_reconstruction_to_proto),
    (Reconstruction, reconstruction_to_proto),
]
for _type, _function in _TO:
    to_proto.register(_type)(_function)

_FROM: dict[type, Callable[[Any], Any]] = {
    pb.Landmarks: landmarks_from_proto,
    pb.Face: face_from_proto,
    pb.LandmarkMap: landmark_map_from_proto,
    pb.Mesh: mesh_from_proto,
    pb.CoarseResult: coarse_from_proto,
    pb.Segmentation: segmentation_from_proto,
    pb.ImageMaps: image_maps_from_proto,
    pb.Refinement: refinement_from_proto,
    pb.StageResult: stage_result_from_proto,
    pb.FaceReconstruction: face_reconstruction_from_proto,
    pb.Reconstruction: reconstruction_from_proto,
}


def from_proto(message: Any) -> Any:
    """The record of a protobuf message (the inverse of :func:`to_proto`)."""
    try:
        function = _FROM[type(message)]
    except KeyError:
        raise TypeError(f"no record for message {type(message).__name__}") from None
    return function(message)
