"""The ``remote`` stage plugin: a detector, regressor, segmenter or refiner that runs on a stage server
(``facerecon serve KIND --plugin NAME``) somewhere else. The pipeline treats it exactly like a local stage:
it is registered under every kind with the name ``remote`` and implements the same protocol.

    [pipeline]
    detector = "remote"
    refiners = ["laplace", "remote@sfs"]        # NAME@INSTANCE: another instance of plugin NAME

    [options.detector.remote]
    address = "10.0.0.5:50051,10.0.0.6:50051"   # several replicas: round_robin between them
    plugin = "mediapipe"                        # optional: the plugin the server must run

    [options.refiner."remote@sfs"]
    address = "dns:///sfs.facerecon.svc.cluster.local:50051"

or on the command line ``--remote detector=HOST:PORT[,HOST:PORT...]`` (:func:`apply_remote`).

gRPC's own machinery does the work: one channel per address list, reused by every call and every stage
that names it; ``round_robin`` load balancing; a deadline per call; retries on UNAVAILABLE through the
channel's service config (a replica that dies or is still loading is skipped); message-size limits on both
sides. Errors come back as the kernel's: INVALID_ARGUMENT -> InputError (the batch records the input as
failed and goes on), NOT_FOUND -> ConfigError, anything else -> :class:`RemoteError`.
"""

from __future__ import annotations

import argparse
import importlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from facerecon.kernel.contract import Registrar, hookimpl
from facerecon.kernel.contract.errors import ConfigError, FaceReconError, InputError
from facerecon.kernel.contract.records import CoarseResult, Face, Mesh, Refinement, Segmentation
from facerecon.kernel.contract.stages import STAGE_KINDS, face_window
from facerecon.kernel.host.config import PipelineConfig

from .channels import CHANNELS, MAX_ATTEMPTS, grpc_target
from .layouts import MeshLayouts
from .remote_config import NAME, apply_remote, with_deadline


class _Deferred:
    """A module imported on its first attribute access. This plugin is discovered by every ``facerecon``
    command, and grpc with the protobuf modules costs ~0.15 s that commands and pipelines without a
    remote stage need not pay. (A plain object, not importlib's LazyLoader: pluggy's plugin scan reads
    every global's ``__class__``, which would load a lazy module.)"""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str) -> Any:
        return getattr(importlib.import_module(self._name), attribute)


if TYPE_CHECKING:
    import grpc

    from facerecon.v1 import stages_pb2

    from . import convert
else:
    grpc = _Deferred("grpc")
    stages_pb2 = _Deferred("facerecon.v1.stages_pb2")
    convert = _Deferred("facerecon.services.convert")


MAX_DEADLINE_S = 1e6
"""The longest finite deadline a remote call takes (about 11 days); ``inf``: none."""
DEADLINE_RANGE = f"(0, {MAX_DEADLINE_S:.0e}] seconds or inf (no deadline)"


def valid_deadline(seconds: float) -> bool:
    """Whether ``seconds`` is a deadline gRPC can take (its deadline is a 64-bit count of nanoseconds:
    1e10 s overflowed it, and every call failed), or ``inf`` for none."""
    return 0 < seconds <= MAX_DEADLINE_S or seconds == math.inf


class RemoteError(FaceReconError):
    """A remote stage failed: unreachable, overloaded, past its deadline, or failing on its side."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


COMPRESSION = {"none": "NoCompression", "gzip": "Gzip"}
"""RemoteOptions.compression -> the name of gRPC's per-call compression of requests (``grpc.Compression``;
grpc itself is imported by the first remote stage)."""


@dataclass(frozen=True)
class RemoteOptions:
    """Options of a ``remote`` stage (``[options.<kind>.remote]``; ``--remote KIND=ADDRESS``).

    address: where the stage server is: ``host:port``; several replicas as ``host:port,host:port``
        (round_robin; host names are resolved once, when the stage is built); or any gRPC target such as
        ``dns:///name:port`` (every address the name resolves to, re-resolved when connections close) or
        ``unix:/path``.
    plugin: the plugin the server must run (checked when the stage is built and sent with every call,
        NOT_FOUND otherwise); default: whatever it runs.
    deadline_s: the deadline of each call.
    connect_timeout_s: how long building the stage waits for a server to be up and its model loaded.
    retries: extra attempts of a call that fails with UNAVAILABLE (0..4), with exponential backoff.
    tls_ca: PEM root certificates: use TLS and trust these (``tls = true`` trusts the system's roots).
    tls_cert, tls_key: a client certificate for servers that verify clients (mutual TLS).
    tls_server_name: the name the server's certificate must carry, when it differs from the address.
    token_file: a file holding a bearer token sent with every call.
    max_message_mb: largest request sent (replies are not bounded: a group photo's fine reconstructions
        pass 100 MB).
    compact: send only what the served stage reads (its ``reads``: no pixel, the face's window) and meshes
        whose layout both ends hold as vertices only, where the server understands it (issue 19); false:
        whole images and meshes, as before.
    compression: "none" or "gzip": requests compressed by gRPC. It pays for photos on links slower than
        ~100 Mbit/s (a photo compresses to ~0.6 of its size in ~20-30 ms), never on loopback
        (``benchmarks/bench_compression.py``). Servers compress the segmenter's label maps for callers on
        other machines themselves.
    """

    address: str = ""
    plugin: str | None = None
    deadline_s: float = 30.0
    connect_timeout_s: float = 60.0
    retries: int = 4
    tls: bool = False
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_server_name: str | None = None
    token_file: Path | None = None
    max_message_mb: int = 64
    compact: bool = True
    compression: str = "none"

    def __post_init__(self) -> None:
        if not 0 <= self.retries <= MAX_ATTEMPTS - 1:
            raise ValueError(f"retries must be in 0..{MAX_ATTEMPTS - 1}, got {self.retries}")
        if not valid_deadline(self.deadline_s) or self.connect_timeout_s < 0:
            raise ValueError(f"deadline_s must be in {DEADLINE_RANGE}, got {self.deadline_s}; connect_timeout_s >= 0")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("a client certificate needs both tls_cert and tls_key")
        if self.max_message_mb < 1:
            raise ValueError("max_message_mb must be >= 1")
        if self.compression not in COMPRESSION:
            raise ValueError(f"compression must be one of {', '.join(COMPRESSION)}, got {self.compression!r}")

    @property
    def secure(self) -> bool:
        return self.tls or self.tls_ca is not None or self.tls_cert is not None


# -- the stages ------------------------------------------------------------------------------------


class RemoteStage:
    """What every remote stage shares: the channel, the stub, calls with deadline and error mapping."""

    kind = ""
    runs_elsewhere = True
    """The pipeline overlaps this stage's wait with an independent stage (:mod:`facerecon.kernel.contract.stages`)."""

    def __init__(self, options: RemoteOptions | None, device: str = "cpu") -> None:
        options = options or RemoteOptions()
        if not options.address:
            raise ConfigError(
                f"the remote {self.kind} needs an address: --remote {self.kind}=HOST:PORT or "
                f'[options.{self.kind}.remote] address = "HOST:PORT"'
            )
        self.options = options
        self.target = grpc_target(options.address)
        token = options.token_file.read_text().strip() if options.token_file else None
        if options.token_file and not token:  # else every call would go without one: UNAUTHENTICATED
            raise ConfigError(f"the remote {self.kind}'s token_file {options.token_file} is empty")
        from .kinds import service_for  # the generated gRPC stubs: loaded by the first remote stage

        service = service_for(self.kind)
        self._key, self.channel = CHANNELS.acquire(self.target, service.service, options)
        self._closed = False
        self.stub: Any = service.stub(self.channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        try:
            self.info = self._wait_for_info()
        except BaseException:
            self.close()
            raise
        if options.plugin and self.info.plugin != options.plugin:
            self.close()
            raise ConfigError(
                f"the {self.kind} server at {options.address} runs {self.info.plugin!r}, not {options.plugin!r}"
            )
        # Send only what the served stage reads, and meshes as vertices where both ends hold the layout
        # (issue 19) — with servers that say they understand it (older ones get whole images and meshes).
        features = set(self.info.features) if options.compact else set()
        self.reads = (self.info.reads or "image") if "image-window" in features else "image"
        self.layouts = MeshLayouts(size=8) if "mesh-layouts" in features else None
        self._sent_layouts: set[str] = set()

    def _window(self, image: np.ndarray, face: Face) -> tuple[int, int, int, int] | None:
        """The pixels of ``image`` the served stage reads (None: all of them)."""
        if self.reads == "landmarks":
            return 0, 0, 0, 0
        if self.reads == "face-crop":
            return face_window(face, *image.shape[:2])
        return None

    def _known_layouts(self) -> list[str]:
        return [] if self.layouts is None else self.layouts.digests()

    def _wait_for_info(self) -> stages_pb2.StageInfo:
        """Info from the server, waiting up to connect_timeout_s for it to start and load its model."""
        deadline = time.monotonic() + self.options.connect_timeout_s
        while True:
            remaining = max(deadline - time.monotonic(), 0.05)
            try:
                return self.stub.Info(
                    stages_pb2.InfoRequest(), timeout=remaining, wait_for_ready=True, metadata=self._metadata
                )
            except grpc.RpcError as exc:
                code = exc.code()
                if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    if time.monotonic() < deadline:
                        time.sleep(0.1)
                        continue
                    raise RemoteError(
                        f"remote {self.kind} at {self.options.address} not ready after "
                        f"{self.options.connect_timeout_s:g} s: {exc.details()}",
                        code,
                    ) from None
                raise self._error(exc) from None

    def _error(self, exc: grpc.RpcError) -> FaceReconError:
        code, details = exc.code(), exc.details()
        where = f"remote {self.kind} at {self.options.address}"
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return InputError(f"{where}: {details}")
        if code == grpc.StatusCode.NOT_FOUND:
            return ConfigError(f"{where}: {details}")
        return RemoteError(f"{where}: {code.name}: {details}", code)

    def _call(self, method: Callable[..., Any], request: Any) -> Any:
        try:
            return method(
                request,
                timeout=None if self.options.deadline_s == math.inf else self.options.deadline_s,
                metadata=self._metadata,
                compression=getattr(grpc.Compression, COMPRESSION[self.options.compression]),
            )
        except grpc.RpcError as exc:
            raise self._error(exc) from None

    @property
    def plugin(self) -> str:
        """The plugin the server runs."""
        return self.info.plugin

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            CHANNELS.release(self._key)

    def __del__(self) -> None:  # pragma: no cover - a safety net; pipelines call close()
        if not getattr(self, "_closed", True):
            self.close()


class RemoteDetector(RemoteStage):
    kind = "detector"

    def detect(self, image: np.ndarray) -> list[Face]:
        request = stages_pb2.DetectRequest(plugin=self.options.plugin or "")
        convert.image_to_proto(image, request.image)
        response = self._call(self.stub.Detect, request)
        return [convert.face_from_proto(f, f"faces[{i}]") for i, f in enumerate(response.faces)]


class RemoteRegressor(RemoteStage):
    kind = "regressor"

    def regress(self, image: np.ndarray, face: Face) -> CoarseResult:
        request = stages_pb2.RegressRequest(plugin=self.options.plugin or "", known_layouts=self._known_layouts())
        convert.image_to_proto(image, request.image, self._window(image, face))
        convert.face_to_proto(face, request.face)
        return convert.coarse_from_proto(self._call(self.stub.Regress, request).result, layouts=self.layouts)


class RemoteSegmenter(RemoteStage):
    kind = "segmenter"

    def segment(self, image: np.ndarray, face: Face) -> Segmentation:
        request = stages_pb2.SegmentRequest(plugin=self.options.plugin or "")
        convert.image_to_proto(image, request.image, self._window(image, face))
        convert.face_to_proto(face, request.face)
        return convert.segmentation_from_proto(self._call(self.stub.Segment, request).segmentation)


class RemoteRefiner(RemoteStage):
    kind = "refiner"

    def __init__(self, options: RemoteOptions | None, device: str = "cpu") -> None:
        super().__init__(options, device)
        self.stage = self.info.stage or "refined"

    def refine(self, image: np.ndarray, face: Face, mesh: Mesh, segmentation: Segmentation | None) -> Mesh | Refinement:
        request = stages_pb2.RefineRequest(plugin=self.options.plugin or "", known_layouts=self._known_layouts())
        convert.image_to_proto(image, request.image, self._window(image, face))
        convert.face_to_proto(face, request.face)
        if segmentation is not None:
            convert.segmentation_to_proto(segmentation, request.segmentation)
        digest = None if self.layouts is None else self.layouts.remember(mesh)
        short = digest in self._sent_layouts  # the server was sent this layout before: vertices only
        convert.mesh_to_proto(mesh, request.mesh, layout_digest=digest if short else None)
        try:
            response = self._call(self.stub.Refine, request)
        except RemoteError as exc:
            if not (short and exc.code == grpc.StatusCode.FAILED_PRECONDITION):
                raise
            self._sent_layouts.discard(str(digest))  # evicted there, or another replica: the whole mesh
            request.mesh.Clear()
            convert.mesh_to_proto(mesh, request.mesh)
            response = self._call(self.stub.Refine, request)
        if digest is not None:
            self._sent_layouts.add(digest)
        refinement = convert.refinement_from_proto(response.refinement, layouts=self.layouts)
        return refinement if refinement.maps is not None or refinement.phases else refinement.mesh


REMOTE_STAGES: dict[str, type[RemoteStage]] = {
    stage.kind: stage for stage in (RemoteDetector, RemoteRegressor, RemoteSegmenter, RemoteRefiner)
}
"""The remote stage of each kind (its gRPC service: :data:`~.kinds.STAGE_SERVICES`)."""


@hookimpl
def facerecon_register_stages(registry: Registrar) -> None:
    for kind in STAGE_KINDS:
        registry.register(
            kind,
            NAME,
            REMOTE_STAGES[kind],
            options=RemoteOptions,
            summary=f"a {kind} served by `facerecon serve {kind}` on another machine (gRPC)",
            priority=-100,
            available=lambda: False,  # never chosen by "auto": it needs an address
        )


# -- configuration ---------------------------------------------------------------------------------


@hookimpl
def facerecon_add_pipeline_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--remote",
        action="append",
        default=[],
        metavar="STAGE=ADDRESS[,ADDRESS...]",
        help="run that stage (detector, regressor, segmenter or a refiner's name) on `facerecon serve` servers "
        "(repeatable); pipeline=ADDRESS sends whole photos to `facerecon serve pipeline`",
    )
    parser.add_argument(
        "--deadline",
        type=float,
        metavar="SECONDS",
        help=f"deadline of each call to a remote stage (default: the config's deadline_s, else "
        f"{RemoteOptions.deadline_s:g}); the server stops the call's work when it passes",
    )


@hookimpl
def facerecon_apply_pipeline_flags(config: PipelineConfig, args: argparse.Namespace) -> PipelineConfig | None:
    entries = getattr(args, "remote", None)
    deadline = getattr(args, "deadline", None)
    if not entries and deadline is None:
        return None
    config = apply_remote(config, entries or ())
    return config if deadline is None else with_deadline(config, deadline)


@hookimpl
def facerecon_make_pipeline(config: PipelineConfig) -> Any | None:
    """The remote pipeline of ``--remote pipeline=ADDRESS`` (``[options.pipeline.remote]``), else None."""
    if ("pipeline", NAME) not in config.options:
        return None
    from .remote_pipeline import RemotePipeline

    return RemotePipeline(config)
