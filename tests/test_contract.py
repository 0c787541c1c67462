"""The contract's own rules, checked once for every caller: what a stage may return (``check_result``,
used by the pipeline and the gRPC servicers), option declarations the host parses (``Literal``,
``Range``), and the host hooks through which a plugin adds pipeline flags (``--remote``)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from typing import Annotated, Literal

import numpy as np
import pytest

from facerecon.kernel.contract import (
    STAGE_KINDS,
    CoarseResult,
    ConfigError,
    Face,
    Landmarks,
    Mesh,
    Range,
    Refinement,
    Segmentation,
    check_result,
    hookimpl,
)
from facerecon.kernel.host import PipelineConfig, PluginHost
from facerecon.kernel.host.options import parse_options


def _mesh() -> Mesh:
    return Mesh(vertices=np.zeros((3, 3)), triangles=np.array([[0, 1, 2]]), topology="t")


def _face() -> Face:
    return Face(box=np.array([0.0, 0.0, 10.0, 10.0]), score=1.0, landmarks=Landmarks("x", np.zeros((5, 3))))


def test_check_result_accepts_what_each_protocol_allows():
    mesh = _mesh()
    coarse = CoarseResult(mesh=mesh, rotation=np.eye(3), translation=np.zeros(3), scale=1.0)
    segmentation = Segmentation(labels=np.zeros((4, 4), np.uint8), label_names={0: "background"})
    good = {
        "detector": [[], [_face()]],
        "regressor": [coarse],
        "segmenter": [segmentation],
        "refiner": [mesh, Refinement(mesh)],
    }
    for kind in STAGE_KINDS:
        for value in good[kind]:
            assert check_result(kind, value) is None, (kind, value)


@pytest.mark.parametrize(
    ("kind", "value", "message"),
    [
        ("detector", (), "detect() must return a list of Face"),
        ("detector", [None], "detect() must return a list of Face"),
        ("regressor", None, "regress() must return a CoarseResult"),
        ("segmenter", np.zeros((4, 4)), "segment() must return a Segmentation"),
        ("refiner", "mesh", "refine() must return a Mesh or a Refinement"),
    ],
)
def test_check_result_names_the_broken_promise(kind, value, message):
    assert check_result(kind, value) == message


def test_check_result_refuses_an_unknown_kind():
    with pytest.raises(ValueError, match="unknown stage kind 'painter'"):
        check_result("painter", None)


@dataclass(frozen=True)
class _Options:
    mode: Literal["lobe", "per-pixel"] = "lobe"
    weight: Annotated[float, Range(0, 1)] = 0.5
    count: Annotated[int, Range(1, None)] = 3


def test_literal_and_range_options_are_checked_with_clear_messages():
    assert parse_options(_Options, {"mode": "per-pixel", "weight": 1, "count": 7}, where="x") == _Options(
        "per-pixel", 1.0, 7
    )
    for table, message in [
        ({"mode": "phong"}, r"x option 'mode' must be one of 'lobe', 'per-pixel', got 'phong'"),
        ({"mode": 1}, "must be one of"),
        ({"weight": 1.5}, r"x option 'weight' must be in 0..1, got 1.5"),
        ({"weight": "high"}, "must be float"),
        ({"count": 0}, r"x option 'count' must be in 1.., got 0"),
        ({"count": True}, "must be a number"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_options(_Options, table, where="x")


class _FlagPlugin:
    """A plugin adding ``--tag`` to every pipeline command; it renames the detector."""

    @hookimpl
    def facerecon_add_pipeline_flags(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--tag")

    @hookimpl
    def facerecon_apply_pipeline_flags(self, config: PipelineConfig, args: argparse.Namespace) -> PipelineConfig | None:
        return replace(config, detector=f"{config.detector}+{args.tag}") if args.tag else None


def test_pipeline_flags_come_from_plugins_through_the_host():
    host = PluginHost(load_entrypoints=False)
    host.register_plugin(_FlagPlugin(), name="flags")
    host.register_plugin(_FlagPlugin(), name="flags-again")  # each plugin sees the previous one's result
    parser = argparse.ArgumentParser()
    with pytest.raises(argparse.ArgumentError):  # two plugins may not claim one flag
        host.add_pipeline_flags(parser)
    host.unregister_plugin("flags-again")
    parser = argparse.ArgumentParser()
    host.add_pipeline_flags(parser)
    config = PipelineConfig(detector="dlib")
    assert host.apply_pipeline_flags(config, parser.parse_args(["--tag", "t"])).detector == "dlib+t"
    assert host.apply_pipeline_flags(config, parser.parse_args([])) is config


def test_remote_flag_is_the_remote_plugins_own():
    """``--remote`` reaches ``reconstruct`` through the hook of the ``remote`` stage plugin: blocked, the
    flag is gone; loaded, it configures the stage (the CLI itself never imports the plugin)."""
    parser = argparse.ArgumentParser()
    PluginHost().add_pipeline_flags(parser)
    args = parser.parse_args(["--remote", "detector=127.0.0.1:5"])
    config = PluginHost().apply_pipeline_flags(PipelineConfig(), args)
    assert config.detector == "remote" and config.options_for("detector", "remote") == {
        "address": "127.0.0.1:5",
        "plugin": PipelineConfig().detector,  # the server is asked for the detector configured locally
    }
    blocked = argparse.ArgumentParser()
    PluginHost(block=["remote"]).add_pipeline_flags(blocked)
    assert "--remote" not in blocked.format_help()
