from facerecon.v1 import records_pb2 as _records_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StageInfo(_message.Message):
    __slots__ = ("kind", "plugin", "version", "distribution", "stage", "device", "server_version", "stages", "reads", "features")
    KIND_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DISTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    READS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    kind: str
    plugin: str
    version: str
    distribution: str
    stage: str
    device: str
    server_version: str
    stages: _containers.RepeatedCompositeFieldContainer[StageInfo]
    reads: str
    features: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, kind: _Optional[str] = ..., plugin: _Optional[str] = ..., version: _Optional[str] = ..., distribution: _Optional[str] = ..., stage: _Optional[str] = ..., device: _Optional[str] = ..., server_version: _Optional[str] = ..., stages: _Optional[_Iterable[_Union[StageInfo, _Mapping]]] = ..., reads: _Optional[str] = ..., features: _Optional[_Iterable[str]] = ...) -> None: ...

class DetectRequest(_message.Message):
    __slots__ = ("image", "plugin")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_FIELD_NUMBER: _ClassVar[int]
    image: _records_pb2.Image
    plugin: str
    def __init__(self, image: _Optional[_Union[_records_pb2.Image, _Mapping]] = ..., plugin: _Optional[str] = ...) -> None: ...

class DetectResponse(_message.Message):
    __slots__ = ("faces",)
    FACES_FIELD_NUMBER: _ClassVar[int]
    faces: _containers.RepeatedCompositeFieldContainer[_records_pb2.Face]
    def __init__(self, faces: _Optional[_Iterable[_Union[_records_pb2.Face, _Mapping]]] = ...) -> None: ...

class RegressRequest(_message.Message):
    __slots__ = ("image", "face", "plugin", "known_layouts")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    FACE_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_FIELD_NUMBER: _ClassVar[int]
    KNOWN_LAYOUTS_FIELD_NUMBER: _ClassVar[int]
    image: _records_pb2.Image
    face: _records_pb2.Face
    plugin: str
    known_layouts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, image: _Optional[_Union[_records_pb2.Image, _Mapping]] = ..., face: _Optional[_Union[_records_pb2.Face, _Mapping]] = ..., plugin: _Optional[str] = ..., known_layouts: _Optional[_Iterable[str]] = ...) -> None: ...

class RegressResponse(_message.Message):
    __slots__ = ("result",)
    RESULT_FIELD_NUMBER: _ClassVar[int]
    result: _records_pb2.CoarseResult
    def __init__(self, result: _Optional[_Union[_records_pb2.CoarseResult, _Mapping]] = ...) -> None: ...

class SegmentRequest(_message.Message):
    __slots__ = ("image", "face", "plugin")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    FACE_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_FIELD_NUMBER: _ClassVar[int]
    image: _records_pb2.Image
    face: _records_pb2.Face
    plugin: str
    def __init__(self, image: _Optional[_Union[_records_pb2.Image, _Mapping]] = ..., face: _Optional[_Union[_records_pb2.Face, _Mapping]] = ..., plugin: _Optional[str] = ...) -> None: ...

class SegmentResponse(_message.Message):
    __slots__ = ("segmentation",)
    SEGMENTATION_FIELD_NUMBER: _ClassVar[int]
    segmentation: _records_pb2.Segmentation
    def __init__(self, segmentation: _Optional[_Union[_records_pb2.Segmentation, _Mapping]] = ...) -> None: ...

class RefineRequest(_message.Message):
    __slots__ = ("image", "face", "mesh", "segmentation", "plugin", "known_layouts")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    FACE_FIELD_NUMBER: _ClassVar[int]
    MESH_FIELD_NUMBER: _ClassVar[int]
    SEGMENTATION_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_FIELD_NUMBER: _ClassVar[int]
    KNOWN_LAYOUTS_FIELD_NUMBER: _ClassVar[int]
    image: _records_pb2.Image
    face: _records_pb2.Face
    mesh: _records_pb2.Mesh
    segmentation: _records_pb2.Segmentation
    plugin: str
    known_layouts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, image: _Optional[_Union[_records_pb2.Image, _Mapping]] = ..., face: _Optional[_Union[_records_pb2.Face, _Mapping]] = ..., mesh: _Optional[_Union[_records_pb2.Mesh, _Mapping]] = ..., segmentation: _Optional[_Union[_records_pb2.Segmentation, _Mapping]] = ..., plugin: _Optional[str] = ..., known_layouts: _Optional[_Iterable[str]] = ...) -> None: ...

class RefineResponse(_message.Message):
    __slots__ = ("refinement",)
    REFINEMENT_FIELD_NUMBER: _ClassVar[int]
    refinement: _records_pb2.Refinement
    def __init__(self, refinement: _Optional[_Union[_records_pb2.Refinement, _Mapping]] = ...) -> None: ...
