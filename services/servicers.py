"""The servicers: one per stage kind (``facerecon serve KIND``) and the Pipeline servicer (``facerecon serve
pipeline``). Each decodes its request, runs the call on a stage object borrowed from the server's
:class:`~.loader.StageLoader`, checks what the stage returned against the stage contract
(:func:`~facerecon.kernel.contract.stages.check_result`, as the pipeline does) and encodes the response.
"""

from __future__ import annotations

import contextlib
import ipaddress
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar
from urllib.parse import unquote

import grpc

from facerecon import __version__
from facerecon.kernel import Face, Mesh, Pipeline, PipelineConfig, PluginHost
from facerecon.kernel.contract.errors import FaceReconError, InputError, RecordError
from facerecon.kernel.contract.records import Reconstruction
from facerecon.kernel.contract.stages import check_result
from facerecon.kernel.host.registry import StageSpec
from facerecon.outputs.meshes import mesh_formats
from facerecon.v1 import pipeline_pb2, pipeline_pb2_grpc, stages_pb2, stages_pb2_grpc

from . import convert
from .kinds import PIPELINE_SERVICE, STAGE_SERVICES
from .layouts import MeshLayouts, UnknownLayout
from .loader import StageLoader, check_call, check_deadline

T = TypeVar("T")


class PluginContractError(FaceReconError):
    """A served plugin returned something its protocol does not allow."""


FEATURES = ("image-window", "mesh-layouts")
"""Protocol features every server here understands (``StageInfo.features``): image windows, and meshes sent
as vertices with a layout digest (:mod:`.layouts`)."""


def stage_info(kind: str, spec: StageSpec, stage: Any, device: str, server_version: str = "") -> stages_pb2.StageInfo:
    """What ``Info`` says about stage object ``stage`` (None while none is loaded) of plugin ``spec``."""
    return stages_pb2.StageInfo(
        kind=kind,
        plugin=spec.name,
        version=spec.version,
        distribution=spec.distribution,
        stage=str(getattr(stage, "stage", STAGE_SERVICES[kind].default_stage)),
        device=device,
        server_version=server_version,
        reads=spec.reads,
        features=FEATURES,
    )


def _decode(context: grpc.ServicerContext, decode: Callable[[], T]) -> T:  # type: ignore[return]
    """Run a request decoder: every problem with the request is the caller's (INVALID_ARGUMENT), but a mesh
    layout this server does not hold (FAILED_PRECONDITION: the client sends the whole mesh again)."""
    try:
        return decode()
    except UnknownLayout as exc:
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
    except (RecordError, InputError) as exc:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))


def is_loopback(host: str) -> bool:
    """Whether a host name or address (IPv6 with or without brackets) is this machine's loopback."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def peer_is_local(peer: str) -> bool:
    """Whether a call's peer (``context.peer()``: ``ipv4:127.0.0.1:5000``, ``ipv6:%5B::1%5D:5000``,
    ``unix:/path``) is on this machine."""
    scheme, _, rest = unquote(peer).partition(":")
    return scheme in ("unix", "unix-abstract") or is_loopback(rest.rsplit(":", 1)[0])


def _warm_stage(stage: Any) -> None:
    warm = getattr(stage, "warm_up", None)
    if callable(warm):
        warm()


def _warm_detector(detector: Any) -> None:
    """One detection on a blank image, so the first real call does not pay for lazy initialisation."""
    import numpy as np

    _warm_stage(detector)
    with contextlib.suppress(InputError):  # a detector may refuse so small a photo, as the contract allows
        detector.detect(np.zeros((128, 128, 3), np.uint8))


def _warm_pipeline(pipe: Pipeline) -> None:
    import numpy as np

    with contextlib.suppress(InputError):  # (Server.for_pipeline's build ran pipe.warm_up())
        pipe(np.zeros((128, 128, 3), np.uint8))


# -- the stage servicers ---------------------------------------------------------------------------


class _StageServicer:
    kind: ClassVar[str] = ""

    @classmethod
    def warmer(cls) -> Callable[[Any], None] | None:
        """What runs once on each freshly built stage object before the server says SERVING: the stage's own
        optional ``warm_up()`` (see :mod:`facerecon.kernel.contract.stages`)."""
        return _warm_stage

    def __init__(self, host: PluginHost, name: str, loader: StageLoader, device: str, max_image_pixels: int) -> None:
        self.spec = host.spec(self.kind, name)
        self.loader = loader
        self.device = device
        self.max_image_pixels = max_image_pixels
        self.layouts = MeshLayouts(size=8)
        """Mesh layouts clients sent or were sent (a client then sends and gets vertices only)."""

    def Info(self, request: stages_pb2.InfoRequest, context: grpc.ServicerContext) -> stages_pb2.StageInfo:
        if not self.loader.ready.is_set():
            context.abort(grpc.StatusCode.UNAVAILABLE, "the model is still loading")
        return self.info()

    def info(self) -> stages_pb2.StageInfo:
        stage = self.loader.objects[0] if self.loader.objects else None
        return stage_info(self.kind, self.spec, stage, self.device, server_version=__version__)

    def _begin(self, request: Any, context: grpc.ServicerContext) -> None:
        """Checks common to every call, before it decodes the request or waits for a model. A replica still
        loading answers UNAVAILABLE before anything else: an answer from reading the request (a mesh layout
        it does not hold yet: FAILED_PRECONDITION) would not be retried on another replica."""
        if request.plugin and request.plugin != self.spec.name:
            context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"this server runs {self.kind} {self.spec.name!r}, not {request.plugin!r}",
            )
        self.loader.check_ready(context)
        check_deadline(context)

    def _image(self, request: Any, context: grpc.ServicerContext) -> Any:
        """The request's image, decoded. Called while holding a model, so at most ``workers`` decoded
        images exist at once, however many calls wait."""
        return _decode(context, lambda: convert.image_from_proto(request.image, max_pixels=self.max_image_pixels))

    def _face(self, request: Any, context: grpc.ServicerContext) -> Face:
        if not request.HasField("face"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the request carries no face")
        return _decode(context, lambda: convert.face_from_proto(request.face))

    def _run(self, context: grpc.ServicerContext, call: Callable[[Any], Any]) -> Any:
        """``call(stage)`` on a borrowed stage object; its result, or PluginContractError when the result
        breaks the stage contract."""
        result = self.loader.run(context, call)
        problem = check_result(self.kind, result)
        if problem is not None:
            raise PluginContractError(f"{self.kind} {self.spec.name!r} broke the stage contract: {problem}")
        return result


class DetectorServicer(_StageServicer, stages_pb2_grpc.DetectorServicer):
    kind = "detector"

    @classmethod
    def warmer(cls) -> Callable[[Any], None] | None:
        return _warm_detector

    def Detect(self, request: stages_pb2.DetectRequest, context: grpc.ServicerContext) -> stages_pb2.DetectResponse:
        self._begin(request, context)
        faces = self._run(context, lambda stage: stage.detect(self._image(request, context)))
        response = stages_pb2.DetectResponse()
        for face in faces:
            convert.face_to_proto(face, response.faces.add())
        return response


class RegressorServicer(_StageServicer, stages_pb2_grpc.RegressorServicer):
    kind = "regressor"

    def Regress(self, request: stages_pb2.RegressRequest, context: grpc.ServicerContext) -> stages_pb2.RegressResponse:
        self._begin(request, context)
        face = self._face(request, context)
        result = self._run(context, lambda stage: stage.regress(self._image(request, context), face))
        response = stages_pb2.RegressResponse()
        convert.coarse_to_proto(
            result, response.result, layout_digest=self.layouts.sent_as(result.mesh, request.known_layouts)
        )
        return response


class SegmenterServicer(_StageServicer, stages_pb2_grpc.SegmenterServicer):
    kind = "segmenter"

    def Segment(self, request: stages_pb2.SegmentRequest, context: grpc.ServicerContext) -> stages_pb2.SegmentResponse:
        self._begin(request, context)
        face = self._face(request, context)
        seg = self._run(context, lambda stage: stage.segment(self._image(request, context), face))
        if not peer_is_local(context.peer()):
            # A label map compresses ~70x in under 2 ms: it pays on any network, though not on loopback
            # (benchmarks/bench_compression.py).
            context.set_compression(grpc.Compression.Gzip)
        response = stages_pb2.SegmentResponse()
        convert.segmentation_to_proto(seg, response.segmentation)
        return response


class RefinerServicer(_StageServicer, stages_pb2_grpc.RefinerServicer):
    kind = "refiner"

    def Refine(self, request: stages_pb2.RefineRequest, context: grpc.ServicerContext) -> stages_pb2.RefineResponse:
        self._begin(request, context)
        face = self._face(request, context)
        if not request.HasField("mesh"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the request carries no mesh")
        mesh = _decode(context, lambda: convert.mesh_from_proto(request.mesh, layouts=self.layouts))
        segmentation = (
            _decode(context, lambda: convert.segmentation_from_proto(request.segmentation))
            if request.HasField("segmentation")
            else None
        )
        refined = self._run(
            context, lambda stage: stage.refine(self._image(request, context), face, mesh, segmentation)
        )
        response = stages_pb2.RefineResponse()
        out = refined if isinstance(refined, Mesh) else refined.mesh
        convert.refinement_to_proto(
            refined, response.refinement, layout_digest=self.layouts.sent_as(out, request.known_layouts)
        )
        return response


STAGE_SERVICERS: dict[str, type[_StageServicer]] = {
    servicer.kind: servicer for servicer in (DetectorServicer, RegressorServicer, SegmenterServicer, RefinerServicer)
}
"""The servicer of each stage kind (its gRPC service: :data:`~.kinds.STAGE_SERVICES`)."""


# -- the pipeline servicer -------------------------------------------------------------------------


NO_NAME = "the request's image"
"""What a Reconstruct request's image is called in errors when the request names no ``source``."""


class PipelineServicer(pipeline_pb2_grpc.PipelineServicer):
    """The whole pipeline; its stages may themselves be remote (a pipeline across machines)."""

    kind: ClassVar[str] = PIPELINE_SERVICE.kind

    @classmethod
    def warmer(cls) -> Callable[[Pipeline], None]:
        return _warm_pipeline

    def __init__(self, loader: StageLoader, config: PipelineConfig, max_image_pixels: int) -> None:
        self.loader = loader
        self.config = config
        self.max_image_pixels = max_image_pixels
        self.layouts = MeshLayouts(size=8)
        """Digests of the layouts of meshes sent (a client holding one gets vertices only)."""

    def Info(self, request: stages_pb2.InfoRequest, context: grpc.ServicerContext) -> stages_pb2.StageInfo:
        if not self.loader.ready.is_set():
            context.abort(grpc.StatusCode.UNAVAILABLE, "the pipeline is still loading")
        pipe: Pipeline = self.loader.objects[0]
        kinds = [("detector", pipe.config.detector), ("segmenter", pipe.config.segmenter)]
        kinds += [("regressor", pipe.config.regressor)] + [("refiner", name) for name in pipe.config.refiners]
        stages = [
            stage_info(kind, pipe.host.spec(kind, name), pipe.stage(kind, name), pipe.device)
            for kind, name in kinds
            if name is not None
        ]
        return stages_pb2.StageInfo(
            kind=self.kind,
            plugin="pipeline",
            version=__version__,
            device=pipe.device,
            server_version=__version__,
            stages=stages,
            features=FEATURES,
        )

    def Reconstruct(
        self, request: pipeline_pb2.ReconstructRequest, context: grpc.ServicerContext
    ) -> pipeline_pb2.ReconstructResponse:
        self.loader.check_ready(context)
        check_deadline(context)
        formats, unknown = mesh_formats(request.formats)
        if unknown:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown mesh format(s) {', '.join(unknown)}")
        all_faces = request.all_faces if request.HasField("all_faces") else self.config.all_faces
        from facerecon.outputs.folder import write_outputs
        from facerecon.outputs.result import dumps, result_dict

        source = request.source or "<request>"
        response = pipeline_pb2.ReconstructResponse()

        # The whole call's working set (decoded photo, records, output files) exists only while it holds a
        # pipeline, on that pipeline's thread: at most `workers` of them at once (docs/services.md).
        def work(pipe: Pipeline) -> dict[str, Any] | None:
            image = _decode(
                context,
                lambda: convert.image_from_proto(
                    request.image, max_pixels=self.max_image_pixels, name=request.source or NO_NAME
                ),
            )
            rec = run_pipeline(pipe, image, all_faces, context)
            check_call(context)  # nobody waits for the outputs any more
            plugins = pipe.plugin_ids()
            convert.reconstruction_to_proto(
                rec, response.reconstruction, layout_of=lambda mesh: self.layouts.sent_as(mesh, request.known_layouts)
            )
            if not (formats and rec.reconstructions):
                return None if request.records_only else result_dict(rec, source, {}, plugins)
            with tempfile.TemporaryDirectory(prefix="facerecon-serve-") as tmp:
                out = Path(tmp) / "out"
                result = write_outputs(rec, image, out, source=source, formats=formats, plugins=plugins)
                response.files.extend(
                    pipeline_pb2.OutputFile(name=p.name, data=p.read_bytes()) for p in sorted(out.iterdir())
                )
            return result

        result = self.loader.run(context, work)
        if result is not None and not request.records_only:
            response.result_json = dumps(result)
        return response


def run_pipeline(pipe: Pipeline, image: Any, all_faces: bool, context: grpc.ServicerContext) -> Reconstruction:
    """The pipeline on one image; it stops before its next stage once the call has ended (cancelled by the
    client or past its deadline: :func:`~.loader.check_call`)."""
    return pipe(image, all_faces=all_faces, before_stage=lambda: check_call(context))
