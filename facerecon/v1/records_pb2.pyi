from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    DTYPE_UINT8: _ClassVar[DType]
    DTYPE_INT32: _ClassVar[DType]
    DTYPE_INT64: _ClassVar[DType]
    DTYPE_FLOAT32: _ClassVar[DType]
    DTYPE_FLOAT64: _ClassVar[DType]
DTYPE_UNSPECIFIED: DType
DTYPE_UINT8: DType
DTYPE_INT32: DType
DTYPE_INT64: DType
DTYPE_FLOAT32: DType
DTYPE_FLOAT64: DType

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("encoded", "pixels", "window")
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    PIXELS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    encoded: bytes
    pixels: Tensor
    window: ImageWindow
    def __init__(self, encoded: _Optional[bytes] = ..., pixels: _Optional[_Union[Tensor, _Mapping]] = ..., window: _Optional[_Union[ImageWindow, _Mapping]] = ...) -> None: ...

class ImageWindow(_message.Message):
    __slots__ = ("width", "height", "left", "top")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    LEFT_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    left: int
    top: int
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., left: _Optional[int] = ..., top: _Optional[int] = ...) -> None: ...

class NamedValue(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: float
    def __init__(self, name: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...

class NamedTensor(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: Tensor
    def __init__(self, name: _Optional[str] = ..., value: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class Landmarks(_message.Message):
    __slots__ = ("scheme", "points", "visibility")
    SCHEME_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    VISIBILITY_FIELD_NUMBER: _ClassVar[int]
    scheme: str
    points: Tensor
    visibility: Tensor
    def __init__(self, scheme: _Optional[str] = ..., points: _Optional[_Union[Tensor, _Mapping]] = ..., visibility: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class Face(_message.Message):
    __slots__ = ("box", "score", "landmarks", "head_pose", "attributes")
    BOX_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    LANDMARKS_FIELD_NUMBER: _ClassVar[int]
    HEAD_POSE_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    box: Tensor
    score: float
    landmarks: Landmarks
    head_pose: Tensor
    attributes: _containers.RepeatedCompositeFieldContainer[NamedValue]
    def __init__(self, box: _Optional[_Union[Tensor, _Mapping]] = ..., score: _Optional[float] = ..., landmarks: _Optional[_Union[Landmarks, _Mapping]] = ..., head_pose: _Optional[_Union[Tensor, _Mapping]] = ..., attributes: _Optional[_Iterable[_Union[NamedValue, _Mapping]]] = ...) -> None: ...

class LandmarkMap(_message.Message):
    __slots__ = ("scheme", "vertex_ids", "weights")
    SCHEME_FIELD_NUMBER: _ClassVar[int]
    VERTEX_IDS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    scheme: str
    vertex_ids: Tensor
    weights: Tensor
    def __init__(self, scheme: _Optional[str] = ..., vertex_ids: _Optional[_Union[Tensor, _Mapping]] = ..., weights: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class Mesh(_message.Message):
    __slots__ = ("vertices", "triangles", "topology", "uvs", "landmark_maps", "units", "camera_matrix", "layout_digest")
    VERTICES_FIELD_NUMBER: _ClassVar[int]
    TRIANGLES_FIELD_NUMBER: _ClassVar[int]
    TOPOLOGY_FIELD_NUMBER: _ClassVar[int]
    UVS_FIELD_NUMBER: _ClassVar[int]
    LANDMARK_MAPS_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    CAMERA_MATRIX_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    vertices: Tensor
    triangles: Tensor
    topology: str
    uvs: Tensor
    landmark_maps: _containers.RepeatedCompositeFieldContainer[LandmarkMap]
    units: str
    camera_matrix: Tensor
    layout_digest: str
    def __init__(self, vertices: _Optional[_Union[Tensor, _Mapping]] = ..., triangles: _Optional[_Union[Tensor, _Mapping]] = ..., topology: _Optional[str] = ..., uvs: _Optional[_Union[Tensor, _Mapping]] = ..., landmark_maps: _Optional[_Iterable[_Union[LandmarkMap, _Mapping]]] = ..., units: _Optional[str] = ..., camera_matrix: _Optional[_Union[Tensor, _Mapping]] = ..., layout_digest: _Optional[str] = ...) -> None: ...

class CoarseResult(_message.Message):
    __slots__ = ("mesh", "rotation", "translation", "scale", "parameters")
    MESH_FIELD_NUMBER: _ClassVar[int]
    ROTATION_FIELD_NUMBER: _ClassVar[int]
    TRANSLATION_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    mesh: Mesh
    rotation: Tensor
    translation: Tensor
    scale: float
    parameters: _containers.RepeatedCompositeFieldContainer[NamedTensor]
    def __init__(self, mesh: _Optional[_Union[Mesh, _Mapping]] = ..., rotation: _Optional[_Union[Tensor, _Mapping]] = ..., translation: _Optional[_Union[Tensor, _Mapping]] = ..., scale: _Optional[float] = ..., parameters: _Optional[_Iterable[_Union[NamedTensor, _Mapping]]] = ...) -> None: ...

class Label(_message.Message):
    __slots__ = ("id", "name")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    id: int
    name: str
    def __init__(self, id: _Optional[int] = ..., name: _Optional[str] = ...) -> None: ...

class RegionColor(_message.Message):
    __slots__ = ("name", "rgb")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RGB_FIELD_NUMBER: _ClassVar[int]
    name: str
    rgb: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, name: _Optional[str] = ..., rgb: _Optional[_Iterable[float]] = ...) -> None: ...

class Segmentation(_message.Message):
    __slots__ = ("labels", "label_names", "region_colors")
    LABELS_FIELD_NUMBER: _ClassVar[int]
    LABEL_NAMES_FIELD_NUMBER: _ClassVar[int]
    REGION_COLORS_FIELD_NUMBER: _ClassVar[int]
    labels: Tensor
    label_names: _containers.RepeatedCompositeFieldContainer[Label]
    region_colors: _containers.RepeatedCompositeFieldContainer[RegionColor]
    def __init__(self, labels: _Optional[_Union[Tensor, _Mapping]] = ..., label_names: _Optional[_Iterable[_Union[Label, _Mapping]]] = ..., region_colors: _Optional[_Iterable[_Union[RegionColor, _Mapping]]] = ...) -> None: ...

class NamedMesh(_message.Message):
    __slots__ = ("name", "mesh")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MESH_FIELD_NUMBER: _ClassVar[int]
    name: str
    mesh: Mesh
    def __init__(self, name: _Optional[str] = ..., mesh: _Optional[_Union[Mesh, _Mapping]] = ...) -> None: ...

class ImageMaps(_message.Message):
    __slots__ = ("origin_x", "origin_y", "maps", "step")
    ORIGIN_X_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_Y_FIELD_NUMBER: _ClassVar[int]
    MAPS_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    origin_x: int
    origin_y: int
    maps: _containers.RepeatedCompositeFieldContainer[NamedTensor]
    step: float
    def __init__(self, origin_x: _Optional[int] = ..., origin_y: _Optional[int] = ..., maps: _Optional[_Iterable[_Union[NamedTensor, _Mapping]]] = ..., step: _Optional[float] = ...) -> None: ...

class Refinement(_message.Message):
    __slots__ = ("mesh", "maps", "phases")
    MESH_FIELD_NUMBER: _ClassVar[int]
    MAPS_FIELD_NUMBER: _ClassVar[int]
    PHASES_FIELD_NUMBER: _ClassVar[int]
    mesh: Mesh
    maps: ImageMaps
    phases: _containers.RepeatedCompositeFieldContainer[NamedMesh]
    def __init__(self, mesh: _Optional[_Union[Mesh, _Mapping]] = ..., maps: _Optional[_Union[ImageMaps, _Mapping]] = ..., phases: _Optional[_Iterable[_Union[NamedMesh, _Mapping]]] = ...) -> None: ...

class StageResult(_message.Message):
    __slots__ = ("stage", "plugin", "version", "mesh", "elapsed_ms", "maps", "phases")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MESH_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_MS_FIELD_NUMBER: _ClassVar[int]
    MAPS_FIELD_NUMBER: _ClassVar[int]
    PHASES_FIELD_NUMBER: _ClassVar[int]
    stage: str
    plugin: str
    version: str
    mesh: Mesh
    elapsed_ms: float
    maps: ImageMaps
    phases: _containers.RepeatedCompositeFieldContainer[NamedMesh]
    def __init__(self, stage: _Optional[str] = ..., plugin: _Optional[str] = ..., version: _Optional[str] = ..., mesh: _Optional[_Union[Mesh, _Mapping]] = ..., elapsed_ms: _Optional[float] = ..., maps: _Optional[_Union[ImageMaps, _Mapping]] = ..., phases: _Optional[_Iterable[_Union[NamedMesh, _Mapping]]] = ...) -> None: ...

class FaceReconstruction(_message.Message):
    __slots__ = ("face", "face_index", "coarse", "stages", "segmentation")
    FACE_FIELD_NUMBER: _ClassVar[int]
    FACE_INDEX_FIELD_NUMBER: _ClassVar[int]
    COARSE_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    SEGMENTATION_FIELD_NUMBER: _ClassVar[int]
    face: Face
    face_index: int
    coarse: CoarseResult
    stages: _containers.RepeatedCompositeFieldContainer[StageResult]
    segmentation: Segmentation
    def __init__(self, face: _Optional[_Union[Face, _Mapping]] = ..., face_index: _Optional[int] = ..., coarse: _Optional[_Union[CoarseResult, _Mapping]] = ..., stages: _Optional[_Iterable[_Union[StageResult, _Mapping]]] = ..., segmentation: _Optional[_Union[Segmentation, _Mapping]] = ...) -> None: ...

class Reconstruction(_message.Message):
    __slots__ = ("width", "height", "faces", "reconstructions", "timings_ms")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FACES_FIELD_NUMBER: _ClassVar[int]
    RECONSTRUCTIONS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_MS_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    faces: _containers.RepeatedCompositeFieldContainer[Face]
    reconstructions: _containers.RepeatedCompositeFieldContainer[FaceReconstruction]
    timings_ms: _containers.RepeatedCompositeFieldContainer[NamedValue]
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., faces: _Optional[_Iterable[_Union[Face, _Mapping]]] = ..., reconstructions: _Optional[_Iterable[_Union[FaceReconstruction, _Mapping]]] = ..., timings_ms: _Optional[_Iterable[_Union[NamedValue, _Mapping]]] = ...) -> None: ...
