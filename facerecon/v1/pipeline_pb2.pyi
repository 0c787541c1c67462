from facerecon.v1 import records_pb2 as _records_pb2
from facerecon.v1 import stages_pb2 as _stages_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReconstructRequest(_message.Message):
    __slots__ = ("image", "all_faces", "formats", "source", "known_layouts", "records_only")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    ALL_FACES_FIELD_NUMBER: _ClassVar[int]
    FORMATS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    KNOWN_LAYOUTS_FIELD_NUMBER: _ClassVar[int]
    RECORDS_ONLY_FIELD_NUMBER: _ClassVar[int]
    image: _records_pb2.Image
    all_faces: bool
    formats: _containers.RepeatedScalarFieldContainer[str]
    source: str
    known_layouts: _containers.RepeatedScalarFieldContainer[str]
    records_only: bool
    def __init__(self, image: _Optional[_Union[_records_pb2.Image, _Mapping]] = ..., all_faces: _Optional[bool] = ..., formats: _Optional[_Iterable[str]] = ..., source: _Optional[str] = ..., known_layouts: _Optional[_Iterable[str]] = ..., records_only: _Optional[bool] = ...) -> None: ...

class OutputFile(_message.Message):
    __slots__ = ("name", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    data: bytes
    def __init__(self, name: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class ReconstructResponse(_message.Message):
    __slots__ = ("reconstruction", "result_json", "files")
    RECONSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    reconstruction: _records_pb2.Reconstruction
    result_json: str
    files: _containers.RepeatedCompositeFieldContainer[OutputFile]
    def __init__(self, reconstruction: _Optional[_Union[_records_pb2.Reconstruction, _Mapping]] = ..., result_json: _Optional[str] = ..., files: _Optional[_Iterable[_Union[OutputFile, _Mapping]]] = ...) -> None: ...
