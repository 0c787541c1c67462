"""The gRPC facts of each thing a server can serve, in one place: a :class:`ServiceKind` per stage kind
(:data:`STAGE_SERVICES`) and one for the pipeline (:data:`PIPELINE_SERVICE`).

The server (:mod:`.server`, :mod:`.servicers`) and the ``remote`` stage plugin (:mod:`.remote`) look up
here which service a kind is, how a client stub is made and how a servicer is added to a server.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from facerecon.kernel.contract.errors import ConfigError
from facerecon.v1 import pipeline_pb2_grpc, stages_pb2_grpc


@dataclass(frozen=True)
class ServiceKind:
    """One gRPC service of ``protos/facerecon/v1``.

    kind: the stage kind (``detector``, ``regressor``, ``segmenter``, ``refiner``) or ``pipeline``.
    service: the full gRPC service name, as health checks, reflection and retry policies name it.
    stub: ``stub(channel)``, the generated client stub.
    add_to_server: ``add_to_server(servicer, server)``, the generated registration function.
    default_stage: the ``StageInfo.stage`` a server reports when its stage object names none.
    """

    kind: str
    service: str
    stub: Callable[[grpc.Channel], Any]
    add_to_server: Callable[[Any, grpc.Server], None]
    default_stage: str = ""


STAGE_SERVICES: dict[str, ServiceKind] = {
    service.kind: service
    for service in (
        ServiceKind(
            "detector",
            "facerecon.v1.Detector",
            stages_pb2_grpc.DetectorStub,
            stages_pb2_grpc.add_DetectorServicer_to_server,
        ),
        ServiceKind(
            "regressor",
            "facerecon.v1.Regressor",
            stages_pb2_grpc.RegressorStub,
            stages_pb2_grpc.add_RegressorServicer_to_server,
            default_stage="coarse",
        ),
        ServiceKind(
            "segmenter",
            "facerecon.v1.Segmenter",
            stages_pb2_grpc.SegmenterStub,
            stages_pb2_grpc.add_SegmenterServicer_to_server,
        ),
        ServiceKind(
            "refiner",
            "facerecon.v1.Refiner",
            stages_pb2_grpc.RefinerStub,
            stages_pb2_grpc.add_RefinerServicer_to_server,
        ),
    )
}
"""The service of each stage kind, in the order of :data:`~facerecon.kernel.contract.stages.STAGE_KINDS`."""

PIPELINE_SERVICE = ServiceKind(
    "pipeline",
    "facerecon.v1.Pipeline",
    pipeline_pb2_grpc.PipelineStub,
    pipeline_pb2_grpc.add_PipelineServicer_to_server,
)


def service_for(kind: str) -> ServiceKind:
    """The service of ``kind`` (a stage kind or ``pipeline``); ConfigError for anything else."""
    if kind == PIPELINE_SERVICE.kind:
        return PIPELINE_SERVICE
    try:
        return STAGE_SERVICES[kind]
    except KeyError:
        raise ConfigError(f"unknown stage kind {kind!r} (known: {', '.join(STAGE_SERVICES)}, pipeline)") from None
