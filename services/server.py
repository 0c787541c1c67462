"""gRPC servers: one stage plugin (``facerecon serve KIND --plugin NAME``) or the whole pipeline
(``facerecon serve pipeline``).

What every server does (docs/services.md has the user's view):

* binds loopback unless told otherwise; another interface needs TLS or an explicit ``insecure``;
* loads the model in the background: Health says NOT_SERVING and calls get UNAVAILABLE until the stage is
  built and warmed, then SERVING;
* serves reflection (grpcurl works) and the standard health service;
* refuses oversize messages (``grpc.max_receive_message_length``) and oversize images before decoding;
* answers more than ``max_concurrent`` simultaneous calls with RESOURCE_EXHAUSTED
  (``maximum_concurrent_rpcs``), checks the deadline before heavy work, and maps every exception of a
  call to a status code in one interceptor, so a bad request never takes the server down;
* optional bearer token (an interceptor; UNAUTHENTICATED), the health service exempt so probes work;
* on SIGTERM/SIGINT: Health -> NOT_SERVING, no new calls, running calls get ``grace_s`` to finish.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import logging
import os
import queue
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from facerecon import __version__
from facerecon.kernel import Face, Pipeline, PipelineConfig, PluginHost
from facerecon.kernel.contract.errors import (
    ConfigError,
    FaceReconError,
    InputError,
    ModelFileError,
    NoFaceError,
    RecordError,
)
from facerecon.kernel.contract.records import (
    CoarseResult,
    Mesh,
    Reconstruction,
    Refinement,
    Segmentation,
)
from facerecon.outputs.meshes import WRITERS
from facerecon.v1 import pipeline_pb2, pipeline_pb2_grpc, stages_pb2, stages_pb2_grpc

from . import MAX_IMAGE_PIXELS, convert

log = logging.getLogger("facerecon.services")
T = TypeVar("T")

DEFAULT_PORT = 50051
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

HEALTH_PREFIX = "/grpc.health.v1.Health/"
SERVICE_NAMES = {
    "detector": "facerecon.v1.Detector",
    "regressor": "facerecon.v1.Regressor",
    "segmenter": "facerecon.v1.Segmenter",
    "refiner": "facerecon.v1.Refiner",
    "pipeline": "facerecon.v1.Pipeline",
}


class ServeError(ConfigError):
    """A server that cannot start: bad address, missing TLS files, unsafe binding, model that fails to load."""


@dataclass(frozen=True)
class ServerSettings:
    """How a server listens and protects itself.

    host, port: where to listen (port 0: any free port; :attr:`Server.port` tells which).
    tls_cert, tls_key: PEM files; with them the port is TLS-only.
    tls_client_ca: PEM roots; clients must then present a certificate signed by them (mutual TLS).
    insecure: allow plaintext on a non-loopback interface (warns).
    token: bearer token every call except health checks must carry (``authorization: Bearer <token>``).
    max_concurrent: simultaneous calls; more get RESOURCE_EXHAUSTED.
    workers: copies of the stage (or pipeline) serving calls in parallel; each loads its own model.
    max_message_bytes: largest message received or sent.
    max_image_pixels: larger images are refused before decoding.
    grace_s: on shutdown, how long running calls may take to finish.
    max_connection_age_s: close connections after this long (with ``grace_s``), so clients re-resolve a
        ``dns:///`` name and find new replicas (Kubernetes headless services). None: never.
    """

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    insecure: bool = False
    token: str | None = None
    max_concurrent: int = 16
    workers: int = 1
    max_message_bytes: int = MAX_MESSAGE_BYTES
    max_image_pixels: int = MAX_IMAGE_PIXELS
    grace_s: float = 10.0
    max_connection_age_s: float | None = None

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ServeError("TLS needs both a certificate and a key (--tls-cert and --tls-key)")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ServeError("client-certificate verification (--tls-client-ca) needs TLS (--tls-cert/--tls-key)")
        if not 0 <= self.port <= 65535:
            raise ServeError(f"port must be in 0..65535, got {self.port}")
        if self.max_concurrent < 1 or self.workers < 1:
            raise ServeError("max_concurrent and workers must be at least 1")
        if not self.tls and not is_loopback(self.host) and not self.insecure:
            raise ServeError(
                f"refusing to serve plaintext on {self.host}: that interface is reachable from other machines. "
                "Use TLS (--tls-cert/--tls-key) or say --insecure (e.g. inside a private network or a pod)"
            )

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"{host}:{self.port}"


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- the stage, built in the background and lent to one call at a time --------------------------


class StageLoader:
    """Builds ``copies`` stage objects in a background thread and lends them to calls.

    Stage objects are not thread-safe (see Pipeline); each call borrows one for its duration.
    """

    def __init__(self, build: Callable[[], Any], copies: int = 1, warm: Callable[[Any], None] | None = None) -> None:
        self._build = build
        self._warm = warm
        self._copies = copies
        self._pool: queue.Queue[Any] = queue.Queue()
        self.objects: list[Any] = []
        self.ready = threading.Event()
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.borrowed = 0
        """Stage objects lent to calls now."""
        self._threads: dict[int, futures.ThreadPoolExecutor] = {}
        self._lock = threading.Lock()
        self._closing = False
        self._thread = threading.Thread(target=self._load, name="facerecon-loader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _load(self) -> None:
        try:
            for _ in range(self._copies):
                obj = self._build()
                self._threads[id(obj)] = futures.ThreadPoolExecutor(1, thread_name_prefix="facerecon-model")
                if self._warm is not None:
                    self._threads[id(obj)].submit(self._warm, obj).result()
                self.objects.append(obj)
                self._pool.put(obj)
            self.ready.set()
        except BaseException as exc:  # reported by the server, which then stops
            self.error = exc
            log.error("the model failed to load: %s: %s", type(exc).__name__, exc)
        finally:
            self.done.set()

    @contextlib.contextmanager
    def borrow(self, context: grpc.ServicerContext) -> Iterator[Any]:
        if not self.ready.is_set():
            reason = "failed to load" if self.error is not None else "is still loading"
            context.abort(grpc.StatusCode.UNAVAILABLE, f"the model {reason}; retry later")
        remaining = context.time_remaining()
        try:
            obj = self._pool.get(timeout=None if remaining is None else max(remaining, 0.0))
        except queue.Empty:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed while waiting for a free model")
        with self._lock:
            self.borrowed += 1
        try:
            check_deadline(context)
            yield obj
        finally:
            with self._lock:
                self.borrowed -= 1
                closing = self._closing
            if closing:  # the server stopped while this call ran past its grace: close what it held
                _close(obj)
            else:
                self._pool.put(obj)

    def run(self, context: grpc.ServicerContext, work: Callable[[Any], T]) -> T:
        """``work(stage)`` with a borrowed stage object, on that object's own thread. All heavy work (decoding,
        the model, writing outputs) thus happens on ``copies`` threads, not on the RPC threads: freed memory
        is reused by the next call instead of piling up in one malloc arena per RPC thread."""
        with self.borrow(context) as obj:
            return self._threads[id(obj)].submit(work, obj).result()

    def close(self) -> None:
        """Close the models no call holds now; those still lent (a call abandoned after the grace period)
        close when their call returns them, never under it."""
        with self._lock:
            self._closing = True
        while True:
            try:
                obj = self._pool.get_nowait()
            except queue.Empty:
                break
            _close(obj)
        for thread in self._threads.values():
            thread.shutdown(wait=False)


def _close(stage: Any) -> None:
    close = getattr(stage, "close", None)
    if callable(close):
        close()


def check_deadline(context: grpc.ServicerContext) -> None:
    """Abort with DEADLINE_EXCEEDED when the caller's deadline has passed (checked before heavy work)."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed before the work could start")


def _decode(context: grpc.ServicerContext, decode: Callable[[], Any]) -> Any:
    """Run a request decoder: every problem with the request is the caller's (INVALID_ARGUMENT)."""
    try:
        return decode()
    except (RecordError, InputError) as exc:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))


# -- servicers -----------------------------------------------------------------------------------


class _StageServicer:
    kind = ""

    def __init__(self, host: PluginHost, name: str, loader: StageLoader, device: str, max_image_pixels: int) -> None:
        self.spec = host.spec(self.kind, name)
        self.loader = loader
        self.device = device
        self.max_image_pixels = max_image_pixels

    def Info(self, request: stages_pb2.InfoRequest, context: grpc.ServicerContext) -> stages_pb2.StageInfo:
        if not self.loader.ready.is_set():
            context.abort(grpc.StatusCode.UNAVAILABLE, "the model is still loading")
        return self.info()

    def info(self) -> stages_pb2.StageInfo:
        stage = self.loader.objects[0] if self.loader.objects else None
        return stages_pb2.StageInfo(
            kind=self.kind,
            plugin=self.spec.name,
            version=self.spec.version,
            distribution=self.spec.distribution,
            stage=str(getattr(stage, "stage", "coarse" if self.kind == "regressor" else "")),
            device=self.device,
            server_version=__version__,
        )

    def _begin(self, request: Any, context: grpc.ServicerContext) -> None:
        """Checks common to every call, before it waits for a model."""
        if request.plugin and request.plugin != self.spec.name:
            context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"this server runs {self.kind} {self.spec.name!r}, not {request.plugin!r}",
            )
        check_deadline(context)

    def _image(self, request: Any, context: grpc.ServicerContext) -> Any:
        """The request's image, decoded. Called while holding a model, so at most ``workers`` decoded
        images exist at once, however many calls wait."""
        return _decode(context, lambda: convert.image_from_proto(request.image, max_pixels=self.max_image_pixels))

    def _face(self, request: Any, context: grpc.ServicerContext) -> Face:
        if not request.HasField("face"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the request carries no face")
        return _decode(context, lambda: convert.face_from_proto(request.face))

    def _returned(self, value: Any, expected: type | tuple[type, ...], what: str) -> Any:
        if not isinstance(value, expected):
            raise PluginContractError(f"{self.kind} {self.spec.name!r} broke the stage contract: {what}")
        return value


class PluginContractError(FaceReconError):
    """A served plugin returned something its protocol does not allow."""


class DetectorServicer(_StageServicer, stages_pb2_grpc.DetectorServicer):
    kind = "detector"

    def Detect(self, request: stages_pb2.DetectRequest, context: grpc.ServicerContext) -> stages_pb2.DetectResponse:
        self._begin(request, context)
        faces = self.loader.run(context, lambda stage: stage.detect(self._image(request, context)))
        if not isinstance(faces, list) or not all(isinstance(f, Face) for f in faces):
            raise PluginContractError(f"detector {self.spec.name!r}: detect() must return a list of Face")
        response = stages_pb2.DetectResponse()
        for face in faces:
            convert.face_to_proto(face, response.faces.add())
        return response


class RegressorServicer(_StageServicer, stages_pb2_grpc.RegressorServicer):
    kind = "regressor"

    def Regress(self, request: stages_pb2.RegressRequest, context: grpc.ServicerContext) -> stages_pb2.RegressResponse:
        self._begin(request, context)
        face = self._face(request, context)
        result = self._returned(
            self.loader.run(context, lambda stage: stage.regress(self._image(request, context), face)),
            CoarseResult,
            "regress() must return a CoarseResult",
        )
        response = stages_pb2.RegressResponse()
        convert.coarse_to_proto(result, response.result)
        return response


class SegmenterServicer(_StageServicer, stages_pb2_grpc.SegmenterServicer):
    kind = "segmenter"

    def Segment(self, request: stages_pb2.SegmentRequest, context: grpc.ServicerContext) -> stages_pb2.SegmentResponse:
        self._begin(request, context)
        face = self._face(request, context)
        seg = self._returned(
            self.loader.run(context, lambda stage: stage.segment(self._image(request, context), face)),
            Segmentation,
            "segment() must return a Segmentation",
        )
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
        mesh = _decode(context, lambda: convert.mesh_from_proto(request.mesh))
        segmentation = (
            _decode(context, lambda: convert.segmentation_from_proto(request.segmentation))
            if request.HasField("segmentation")
            else None
        )
        refined = self._returned(
            self.loader.run(
                context, lambda stage: stage.refine(self._image(request, context), face, mesh, segmentation)
            ),
            (Mesh, Refinement),
            "refine() must return a Mesh",
        )
        response = stages_pb2.RefineResponse()
        convert.refinement_to_proto(refined, response.refinement)
        return response


STAGE_SERVICERS: dict[str, tuple[type[_StageServicer], Callable[[Any, grpc.Server], None]]] = {
    "detector": (DetectorServicer, stages_pb2_grpc.add_DetectorServicer_to_server),
    "regressor": (RegressorServicer, stages_pb2_grpc.add_RegressorServicer_to_server),
    "segmenter": (SegmenterServicer, stages_pb2_grpc.add_SegmenterServicer_to_server),
    "refiner": (RefinerServicer, stages_pb2_grpc.add_RefinerServicer_to_server),
}


class PipelineServicer(pipeline_pb2_grpc.PipelineServicer):
    """The whole pipeline; its stages may themselves be remote (a pipeline across machines)."""

    def __init__(self, loader: StageLoader, config: PipelineConfig, max_image_pixels: int) -> None:
        self.loader = loader
        self.config = config
        self.max_image_pixels = max_image_pixels

    def Info(self, request: stages_pb2.InfoRequest, context: grpc.ServicerContext) -> stages_pb2.StageInfo:
        if not self.loader.ready.is_set():
            context.abort(grpc.StatusCode.UNAVAILABLE, "the pipeline is still loading")
        pipe: Pipeline = self.loader.objects[0]
        stages = []
        kinds = [("detector", pipe.config.detector), ("segmenter", pipe.config.segmenter)]
        kinds += [("regressor", pipe.config.regressor)] + [("refiner", name) for name in pipe.config.refiners]
        for kind, name in kinds:
            if name is None:
                continue
            spec = pipe.host.spec(kind, name)
            stage = pipe.stage(kind, name)
            stages.append(
                stages_pb2.StageInfo(
                    kind=kind,
                    plugin=spec.name,
                    version=spec.version,
                    distribution=spec.distribution,
                    stage=str(getattr(stage, "stage", "coarse" if kind == "regressor" else "")),
                    device=pipe.device,
                )
            )
        return stages_pb2.StageInfo(
            kind="pipeline",
            plugin="pipeline",
            version=__version__,
            device=pipe.device,
            server_version=__version__,
            stages=stages,
        )

    def Reconstruct(
        self, request: pipeline_pb2.ReconstructRequest, context: grpc.ServicerContext
    ) -> pipeline_pb2.ReconstructResponse:
        check_deadline(context)
        formats = [f.strip().lower().lstrip(".") for f in request.formats if f.strip()]
        unknown = [f for f in formats if f".{f}" not in WRITERS]
        if unknown:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown mesh format(s) {', '.join(unknown)}")
        all_faces = request.all_faces if request.HasField("all_faces") else self.config.all_faces
        from facerecon.outputs.folder import write_outputs
        from facerecon.outputs.result import dumps, result_dict

        source = request.source or "<request>"
        response = pipeline_pb2.ReconstructResponse()

        # The whole call's working set (decoded photo, records, output files) exists only while it holds a
        # pipeline, on that pipeline's thread: at most `workers` of them at once (docs/services.md).
        def work(pipe: Pipeline) -> dict[str, Any]:
            image = _decode(context, lambda: convert.image_from_proto(request.image, max_pixels=self.max_image_pixels))
            rec = run_pipeline(pipe, image, all_faces, context)
            plugins = pipe.plugin_ids()
            convert.reconstruction_to_proto(rec, response.reconstruction)
            if not (formats and rec.reconstructions):
                return result_dict(rec, source, {}, plugins)
            with tempfile.TemporaryDirectory(prefix="facerecon-serve-") as tmp:
                out = Path(tmp) / "out"
                result = write_outputs(rec, image, out, source=source, formats=formats, plugins=plugins)
                response.files.extend(
                    pipeline_pb2.OutputFile(name=p.name, data=p.read_bytes()) for p in sorted(out.iterdir())
                )
            return result

        result = self.loader.run(context, work)
        response.result_json = dumps(result)
        return response


def run_pipeline(pipe: Pipeline, image: Any, all_faces: bool, context: grpc.ServicerContext) -> Reconstruction:
    """The pipeline on one image, checking the call's deadline before each face."""
    return pipe(image, all_faces=all_faces, before_face=lambda: check_deadline(context))


# -- interceptors --------------------------------------------------------------------------------


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code a call answers with when it raises ``exc``."""
    if isinstance(exc, (InputError, NoFaceError)):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, (ConfigError, ModelFileError)):
        return grpc.StatusCode.FAILED_PRECONDITION, str(exc)
    return grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}"


def _rewrap(handler: grpc.RpcMethodHandler, behaviour: Callable[..., Any]) -> grpc.RpcMethodHandler:
    """``handler`` with its behaviour replaced (same streaming kind and (de)serialisers)."""
    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(handler.request_streaming, handler.response_streaming)]
    return make(
        behaviour,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class ErrorInterceptor(grpc.ServerInterceptor):
    """Maps any exception escaping a unary call to a status code (see :func:`status_for`); the server
    stays up. Statuses set with ``context.abort`` pass through unchanged."""

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.response_streaming:
            return handler
        behaviour = handler.unary_unary
        method = handler_call_details.method

        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                return behaviour(request, context)
            except Exception as exc:
                code = context.code() if hasattr(context, "code") else None
                if code is not None and code != grpc.StatusCode.OK:
                    raise  # context.abort() already chose the status
                status, message = status_for(exc)
                if status == grpc.StatusCode.INTERNAL:
                    log.exception("%s failed", method)
                else:
                    log.info("%s: %s: %s", method, status.name, message)
                context.abort(status, message)

        return _rewrap(handler, guarded)


class TokenInterceptor(grpc.ServerInterceptor):
    """Every call must carry ``authorization: Bearer <token>``, else UNAUTHENTICATED. Health checks are
    exempt (Kubernetes and compose probes send no metadata; they reveal only SERVING/NOT_SERVING)."""

    def __init__(self, token: str) -> None:
        self._expected = token.encode()

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(HEALTH_PREFIX):
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        scheme, _, given = str(metadata.get("authorization", "")).strip().partition(" ")
        # RFC 6750 / RFC 7235: the scheme name is case-insensitive; the token is compared exactly.
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self._expected):
            return handler

        def refuse(request: Any, context: grpc.ServicerContext) -> Any:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

        return _rewrap(handler, refuse)


# -- the server ----------------------------------------------------------------------------------


class Server:
    """A started gRPC server with health and reflection, serving one stage kind or the pipeline.

    Build it with :meth:`for_stage` or :meth:`for_pipeline`, then :meth:`start` (returns the port),
    :meth:`wait_ready`, and :meth:`stop` (graceful).
    """

    def __init__(
        self,
        kind: str,
        loader: StageLoader,
        add: Callable[[grpc.Server], None],
        settings: ServerSettings,
        describe: str,
    ) -> None:
        self.kind = kind
        self.loader = loader
        self.settings = settings
        self.describe = describe
        self.health = health.HealthServicer(experimental_non_blocking=True)
        interceptors: list[grpc.ServerInterceptor] = []
        if settings.token:
            interceptors.append(TokenInterceptor(settings.token))
        interceptors.append(ErrorInterceptor())
        options = [
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        if settings.max_connection_age_s:
            options += [
                ("grpc.max_connection_age_ms", int(settings.max_connection_age_s * 1000)),
                ("grpc.max_connection_age_grace_ms", int(settings.grace_s * 1000)),
            ]
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=settings.max_concurrent, thread_name_prefix="facerecon-rpc"),
            interceptors=interceptors,
            options=options,
            maximum_concurrent_rpcs=settings.max_concurrent,
        )
        add(self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        self.service_name = SERVICE_NAMES[kind]
        for name in ("", self.service_name):
            self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        reflection.enable_server_reflection(
            (self.service_name, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        self.port: int | None = None
        self._stopped = threading.Event()

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def for_stage(
        cls,
        kind: str,
        name: str,
        *,
        host: PluginHost | None = None,
        options: dict[str, Any] | None = None,
        device: str = "auto",
        settings: ServerSettings | None = None,
    ) -> Server:
        """A server for stage plugin ``name`` of ``kind`` (ConfigError for an unknown kind or plugin)."""
        from facerecon.kernel.host.devices import resolve_device

        settings = settings or ServerSettings()
        if kind not in STAGE_SERVICERS:
            raise ConfigError(f"unknown stage kind {kind!r} (known: {', '.join(STAGE_SERVICERS)}, pipeline)")
        host = host or PluginHost()
        if name == "auto":
            name = host.auto(kind)
        spec = host.spec(kind, name)
        spec.make_options(options)  # refuse bad options now, before binding a port
        resolved = resolve_device(device)
        loader = StageLoader(
            lambda: host.create(kind, name, options, resolved),
            copies=settings.workers,
            warm=_warm_detector if kind == "detector" else None,
        )
        servicer_type, add_to_server = STAGE_SERVICERS[kind]
        servicer = servicer_type(host, name, loader, resolved, settings.max_image_pixels)
        return cls(kind, loader, lambda server: add_to_server(servicer, server), settings, f"{kind} {name!r}")

    @classmethod
    def for_pipeline(
        cls,
        config: PipelineConfig | None = None,
        *,
        host: PluginHost | None = None,
        settings: ServerSettings | None = None,
    ) -> Server:
        """A server for the whole pipeline as ``config`` describes it (its stages may be ``remote``)."""
        config = config or PipelineConfig()
        settings = settings or ServerSettings()
        Pipeline(config, host)  # unknown plugin names fail here, before binding a port

        def build() -> Pipeline:
            pipe = Pipeline(config, host)
            pipe.warm_up()
            return pipe

        loader = StageLoader(build, copies=settings.workers, warm=_warm_pipeline)
        servicer = PipelineServicer(loader, config, settings.max_image_pixels)
        return cls(
            "pipeline",
            loader,
            lambda server: pipeline_pb2_grpc.add_PipelineServicer_to_server(servicer, server),
            settings,
            "pipeline",
        )

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> int:
        """Bind and start serving (Health NOT_SERVING until the model is loaded); returns the port."""
        settings = self.settings
        try:
            if settings.tls:
                assert settings.tls_cert is not None and settings.tls_key is not None
                client_ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca else None
                credentials = grpc.ssl_server_credentials(
                    [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())],
                    root_certificates=client_ca,
                    require_client_auth=client_ca is not None,
                )
                port = self._server.add_secure_port(settings.address, credentials)
            else:
                port = self._server.add_insecure_port(settings.address)
        except OSError as exc:
            raise ServeError(f"cannot read TLS files: {exc}") from None
        except RuntimeError as exc:
            raise ServeError(f"cannot listen on {settings.address}: {exc}") from None
        if not port:
            raise ServeError(f"cannot listen on {settings.address}")
        self.port = port
        self._server.start()
        self.loader.start()
        threading.Thread(target=self._when_loaded, name="facerecon-ready", daemon=True).start()
        return port

    def _when_loaded(self) -> None:
        self.loader.done.wait()
        if self.loader.ready.is_set() and not self._stopped.is_set():
            for name in ("", self.service_name):
                self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
            log.info("%s ready on %s (health: SERVING)", self.describe, self.endpoint)

    @property
    def endpoint(self) -> str:
        host = self.settings.host
        host = f"[{host}]" if ":" in host and not host.startswith("[") else host
        return f"{host}:{self.port}"

    def wait_ready(self, timeout: float | None = None) -> bool:
        """True once the model is loaded and Health says SERVING; raises ServeError if loading failed."""
        if not self.loader.done.wait(timeout):
            return False
        if self.loader.error is not None:
            raise ServeError(f"{self.describe} failed to load: {self.loader.error}") from self.loader.error
        return True

    def stop(self, grace: float | None = None) -> None:
        """Health -> NOT_SERVING, refuse new calls, give running ones ``grace`` seconds, close the models."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        self._server.stop(self.settings.grace_s if grace is None else grace).wait()
        self.loader.close()

    def serve_until_signal(self) -> int:
        """Block until SIGTERM/SIGINT (graceful stop, exit 0) or a model that fails to load (exit 1).

        This is a server process's main loop: calls still running when the grace period ends are cancelled
        for their clients, but Python cannot stop their threads and interpreter exit would wait for them, so
        the process then ends at once (``os._exit``) with their models left open, never closed under them.
        """
        stop = threading.Event()
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            while not stop.is_set():
                if self.loader.done.is_set() and self.loader.error is not None:
                    self.stop(0)
                    return 1
                stop.wait(0.2)
            log.info("shutting down %s (health: NOT_SERVING, grace %g s)", self.describe, self.settings.grace_s)
            self.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if self.loader.borrowed:
            log.warning("%d call(s) still running after the grace period abandoned; exiting", self.loader.borrowed)
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        return 0


def _warm_detector(detector: Any) -> None:
    """One detection on a blank image, so the first real call does not pay for lazy initialisation."""
    import numpy as np

    detector.detect(np.zeros((128, 128, 3), np.uint8))


def _warm_pipeline(pipe: Pipeline) -> None:
    import numpy as np

    pipe(np.zeros((128, 128, 3), np.uint8))
