"""One source of truth for the per-kind gRPC facts (services/kinds.py), the servicers' contract check
(the kernel's check_result, as the pipeline uses) and the one function building StageInfo."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from services_support import toy_host

from facerecon import __version__
from facerecon.kernel import ConfigError
from facerecon.kernel.contract.stages import STAGE_KINDS
from facerecon.services.kinds import PIPELINE_SERVICE, STAGE_SERVICES, service_for
from facerecon.services.remote import REMOTE_STAGES
from facerecon.services.servicers import STAGE_SERVICERS, PipelineServicer, PluginContractError, stage_info
from facerecon.v1 import pipeline_pb2, pipeline_pb2_grpc, stages_pb2, stages_pb2_grpc


def test_each_kind_names_its_service_in_the_protos():
    assert tuple(STAGE_SERVICES) == STAGE_KINDS
    for kind, service in STAGE_SERVICES.items():
        assert service.kind == kind
        proto = stages_pb2.DESCRIPTOR.services_by_name[kind.capitalize()]
        assert service.service == proto.full_name
        assert service.stub is getattr(stages_pb2_grpc, f"{proto.name}Stub")
        assert service.add_to_server is getattr(stages_pb2_grpc, f"add_{proto.name}Servicer_to_server")
    assert PIPELINE_SERVICE.service == pipeline_pb2.DESCRIPTOR.services_by_name["Pipeline"].full_name
    assert PIPELINE_SERVICE.stub is pipeline_pb2_grpc.PipelineStub
    assert service_for("pipeline") is PIPELINE_SERVICE
    assert service_for("refiner") is STAGE_SERVICES["refiner"]
    with pytest.raises(ConfigError, match="unknown stage kind 'nothing'"):
        service_for("nothing")


def test_servicers_and_remote_stages_exist_for_every_kind():
    assert tuple(STAGE_SERVICERS) == tuple(REMOTE_STAGES) == STAGE_KINDS
    for kind in STAGE_KINDS:
        generated = getattr(stages_pb2_grpc, f"{kind.capitalize()}Servicer")
        assert issubclass(STAGE_SERVICERS[kind], generated)
        assert STAGE_SERVICERS[kind].kind == REMOTE_STAGES[kind].kind == kind
    assert PipelineServicer.kind == "pipeline"


class _Returns:
    """A stand-in StageLoader whose every call returns ``value``."""

    def __init__(self, value: Any) -> None:
        self.value = value
        self.objects: list[Any] = []

    def run(self, context: Any, work: Any) -> Any:
        return self.value


@pytest.mark.parametrize(
    ("kind", "name", "returned", "message"),
    [
        ("refiner", "broken", "not a mesh", "refine() must return a Mesh"),
        ("segmenter", "toy-seg", None, "segment() must return a Segmentation"),
    ],
)
def test_a_servicer_checks_the_stage_contract_as_the_pipeline_does(kind, name, returned, message):
    servicer = STAGE_SERVICERS[kind](toy_host(), name, _Returns(returned), "cpu", 1000)
    with pytest.raises(PluginContractError, match=f"{kind} '{name}' broke the stage contract") as err:
        servicer._run(None, lambda stage: stage)
    assert message in str(err.value)


def test_stage_info_is_built_in_one_place():
    spec = toy_host().spec("refiner", "toy-smooth")
    info = stage_info("refiner", spec, SimpleNamespace(stage="medium"), "cpu", server_version=__version__)
    assert (info.kind, info.plugin, info.stage, info.device, info.server_version) == (
        "refiner",
        "toy-smooth",
        "medium",
        "cpu",
        __version__,
    )
    assert (info.version, info.distribution) == (spec.version, spec.distribution)
    assert stage_info("regressor", spec, None, "cpu").stage == "coarse"  # a regressor that names no stage
    assert stage_info("refiner", spec, None, "cpu").stage == ""
