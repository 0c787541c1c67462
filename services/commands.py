"""``facerecon serve``: host a stage plugin, or the whole pipeline, as a gRPC service.

    facerecon serve detector --plugin mediapipe                       # 127.0.0.1:50051
    facerecon serve regressor --plugin landmark-mesh --port 50052 -c facerecon.toml
    facerecon serve pipeline --port 50050 --remote detector=10.0.0.5:50051
    facerecon serve detector --plugin mediapipe --host 0.0.0.0 --tls-cert cert.pem --tls-key key.pem

Registered through the ``facerecon_register_commands`` hook; ``python -m facerecon.services serve ...`` runs
the same command without the ``facerecon`` entry point. See docs/services.md.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from facerecon.kernel import PipelineConfig, PluginHost, hookimpl
from facerecon.kernel.contract.errors import ConfigError, FaceReconError
from facerecon.kernel.contract.stages import STAGE_KINDS
from facerecon.kernel.host.commands import DefaultsHelpFormatter, Once
from facerecon.kernel.host.config import DEVICES

from . import MAX_IMAGE_PIXELS

log = logging.getLogger("facerecon.services")

KINDS = (*STAGE_KINDS, "pipeline")


def _number(kind: type[int] | type[float], text: str) -> float:
    try:
        value = kind(text)
    except ValueError:
        expected = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _positive(kind: type[int] | type[float]) -> Callable[[str], float]:
    """An argparse type: a number of ``kind`` above 0."""

    def positive(text: str) -> float:
        if not (value := _number(kind, text)) > 0:
            raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
        return value

    return positive


def _non_negative(text: str) -> float:
    """An argparse type: a number of seconds, 0 or more."""
    if not (value := _number(float, text)) >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def add_serve_parser(subcommands: Any, host: PluginHost | None = None) -> argparse.ArgumentParser:
    parser = subcommands.add_parser(
        "serve",
        help="serve a stage plugin or the whole pipeline over gRPC",
        description="Serve one stage plugin (detector, regressor, segmenter, refiner) or the whole pipeline as a "
        "gRPC service (protocol: protos/facerecon/v1, docs/services.md). Listens on loopback unless --host says "
        "otherwise; another interface needs TLS or --insecure. Stops gracefully on SIGTERM.",
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("kind", choices=KINDS, metavar="STAGE", help=f"what to serve: {', '.join(KINDS)}")
    parser.add_argument("--plugin", help="the stage plugin to serve (default: the config's, for detector/regressor)")
    parser.add_argument(
        "-c", "--config", type=Path, action=Once, help="TOML config: plugin options, and the pipeline's stages"
    )
    parser.add_argument("--device", choices=DEVICES, help="where models run (default: from config, else auto)")
    parser.add_argument(
        "--threads",
        type=int,
        help="BLAS and torch threads (default: from config, else 1 of each; 0: the libraries' own defaults)",
    )
    net = parser.add_argument_group("network")
    net.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 or :: for all)")
    net.add_argument("--port", type=int, default=50051, help="port (0: any free port, printed at start)")
    net.add_argument(
        "--max-concurrent", type=_positive(int), default=16, help="simultaneous calls; more: RESOURCE_EXHAUSTED"
    )
    net.add_argument("--workers", type=_positive(int), default=1, help="copies of the model serving calls in parallel")
    net.add_argument(
        "--max-message-mb", type=_positive(int), default=64, help="largest request received (replies are not bounded)"
    )
    net.add_argument(
        "--max-image-mp",
        type=_positive(float),
        default=MAX_IMAGE_PIXELS / 1e6,
        help="largest image in megapixels, checked before decoding (docs/services.md: memory per call)",
    )
    net.add_argument("--grace", type=_non_negative, default=10.0, help="seconds running calls get on SIGTERM")
    net.add_argument(
        "--max-connection-age",
        type=_non_negative,
        help="close connections after this many seconds so clients re-resolve (0: never)",
    )
    sec = parser.add_argument_group("security")
    sec.add_argument("--tls-cert", type=Path, help="PEM certificate chain: serve TLS only")
    sec.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    sec.add_argument("--tls-client-ca", type=Path, help="PEM roots: require client certificates signed by them")
    sec.add_argument("--insecure", action="store_true", help="allow plaintext on a non-loopback interface")
    sec.add_argument("--token-file", type=Path, help="file with a bearer token every call must carry")
    pipe = parser.add_argument_group("pipeline (serve pipeline)")
    pipe.add_argument("--detector", help="detector plugin")
    pipe.add_argument("--regressor", help="regressor plugin")
    pipe.add_argument("--segmenter", help="segmenter plugin, or 'none'")
    pipe.add_argument("--refiners", help="comma-separated refiner plugins, in order")
    pipe.add_argument("--all-faces", action="store_true", help="reconstruct every face by default")
    (host or PluginHost()).add_pipeline_flags(pipe)  # e.g. --remote, from the `remote` stage plugin
    parser.set_defaults(handler=cmd_serve)
    return parser


@hookimpl
def facerecon_register_commands(subcommands: argparse._SubParsersAction, host: PluginHost) -> None:
    add_serve_parser(subcommands, host)


def _config(args: argparse.Namespace) -> PipelineConfig:
    config = (PipelineConfig.load(args.config) if args.config else PipelineConfig()).with_stage_flags(args)
    return PluginHost(allow=config.allow_plugins, block=config.block_plugins).apply_pipeline_flags(config, args)


def cmd_serve(args: argparse.Namespace) -> int:
    from .server import Server, ServerSettings

    logging.getLogger("facerecon.services").setLevel(logging.INFO)  # start-up, ready, shutdown
    if args.kind != "pipeline" and (getattr(args, "remote", None) or args.detector or args.regressor or args.refiners):
        raise ConfigError("--detector/--regressor/--refiners/--remote only apply to `serve pipeline`")
    config = _config(args)
    if ("pipeline", "remote") in config.options:
        raise ConfigError("serve pipeline runs the stages itself: --remote pipeline=... is for reconstruct")
    token = None
    if args.token_file is not None:
        try:
            token = args.token_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read --token-file: {exc}") from None
        if not token:
            raise ConfigError(f"--token-file {args.token_file} is empty")
    settings = ServerSettings(
        host=args.host,
        port=args.port,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        insecure=args.insecure,
        token=token,
        max_concurrent=args.max_concurrent,
        workers=args.workers,
        max_message_bytes=args.max_message_mb * 1024 * 1024,
        max_image_pixels=int(args.max_image_mp * 1e6),
        grace_s=args.grace,
        max_connection_age_s=args.max_connection_age,
    )
    if settings.insecure and not settings.tls:
        log.warning("serving PLAINTEXT on %s (--insecure): anyone who can reach it can call it", settings.address)
    host = PluginHost(allow=config.allow_plugins, block=config.block_plugins)
    if args.kind == "pipeline":
        server = Server.for_pipeline(config, host=host, settings=settings)
    else:
        name = args.plugin or {"detector": config.detector, "regressor": config.regressor}.get(args.kind)
        if not name:
            raise ConfigError(f"serve {args.kind} needs --plugin NAME (known: {', '.join(host.names(args.kind))})")
        server = Server.for_stage(
            args.kind,
            name,
            host=host,
            options=dict(config.options_for(args.kind, host.auto(args.kind) if name == "auto" else name)),
            device=config.device,
            settings=settings,
            threads=(config.blas_threads, config.torch_threads),
        )
    server.start()
    # One line on stdout, so scripts (and tests) learn the port when --port 0 chose it.
    print(f"facerecon: serving {server.describe} on {server.endpoint}", flush=True)
    return server.serve_until_signal()


def cmd_health(args: argparse.Namespace) -> int:
    """Exit 0 when the server at ADDRESS reports SERVING (the probe of docker/compose.yaml), else 1."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with _health_channel(args) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as exc:
            print(f"{args.address}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(f"{args.address}: {status}")
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1


def _health_channel(args: argparse.Namespace) -> Any:
    """The probe's channel: plaintext, or TLS with ``--tls`` / ``--tls-ca`` (``--tls-cert`` and ``--tls-key``
    for a server that asks clients for a certificate)."""
    import grpc

    if not (args.tls or args.tls_ca or args.tls_cert or args.tls_key):
        return grpc.insecure_channel(args.address)
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ConfigError("--tls-cert and --tls-key go together")
    from .channels import tls_credentials

    credentials = tls_credentials(args.tls_ca, args.tls_cert, args.tls_key, "the health probe")
    options = [("grpc.ssl_target_name_override", args.tls_server_name)] if args.tls_server_name else []
    return grpc.secure_channel(args.address, credentials, options=options)


def main(argv: list[str] | None = None) -> int:
    """``python -m facerecon.services serve ...``: the serve command without the facerecon entry point;
    ``python -m facerecon.services health HOST:PORT [--tls-ca CA.pem]``: a health probe."""
    parser = argparse.ArgumentParser(prog="python -m facerecon.services")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_serve_parser(sub)
    health = sub.add_parser("health", help="exit 0 when a server reports SERVING")
    health.add_argument("address", help="HOST:PORT")
    health.add_argument("--service", default="", help="service name (default: the whole server)")
    health.add_argument("--timeout", type=float, default=5.0, help="seconds")
    health.add_argument("--tls", action="store_true", help="TLS against the system's CAs (else plaintext)")
    health.add_argument("--tls-ca", type=Path, help="TLS, the server's certificate checked against this CA (PEM)")
    health.add_argument("--tls-cert", type=Path, help="client certificate (PEM), for servers with --tls-client-ca")
    health.add_argument("--tls-key", type=Path, help="its private key (PEM)")
    health.add_argument("--tls-server-name", help="the name the server's certificate holds, if not the address's")
    health.set_defaults(handler=cmd_health)
    args = parser.parse_args(argv)
    logging.basicConfig(format="facerecon: %(levelname)s: %(message)s", level=logging.WARNING)
    try:
        return int(args.handler(args))
    except FaceReconError as exc:
        print(f"facerecon: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
