"""gRPC channels of remote stages: the target of an address option (replicas as an address list), the
service config (round_robin, retries on UNAVAILABLE), channel options and TLS credentials, and one shared
channel per (target, service, options) for every stage and call naming the same servers.

grpc is imported by the functions that need it: this module is loaded with the ``remote`` plugin, which
every ``facerecon`` command discovers.
"""

from __future__ import annotations

import ipaddress
import json
import threading
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facerecon.kernel.contract.errors import ConfigError

if TYPE_CHECKING:
    import grpc

    from .remote import RemoteOptions

MAX_ATTEMPTS = 5
"""gRPC caps a retry policy at 5 attempts (the first call and 4 retries)."""


GRPC_SCHEMES = ("dns:", "unix:", "unix-abstract:", "ipv4:", "ipv6:", "vsock:", "xds:", "google-c2p:")
"""The target schemes gRPC resolves (``dns:///name:port``, ``unix:/path``...): such an address is passed on as is."""


def check_address(address: str) -> None:
    """Raise :class:`ConfigError` unless ``address`` is ``HOST:PORT`` (port 1..65535), a comma-separated
    list of them, or one target with a gRPC scheme: a typo (``host:5OO52``, ``:50052``) is said at once, not
    after the connect timeout. Nothing is resolved here."""
    items = [item.strip() for item in address.split(",") if item.strip()]
    if not items:
        raise ConfigError("a remote stage needs an address (HOST:PORT)")
    if "," not in address and items[0].startswith(GRPC_SCHEMES):
        return
    for item in items:
        host, _, port = item.rpartition(":")
        port_ok = port.isascii() and port.isdigit() and 0 < int(port) < 65536
        if not host.strip("[]") or not port_ok or "://" in item:
            raise ConfigError(f"address {item!r} must be HOST:PORT (a port in 1..65535) or a gRPC target (dns:///...)")


def grpc_target(address: str) -> str:
    """A gRPC target for an address option: one ``host:port`` as is; a comma-separated list of replicas as
    an ``ipv4:``/``ipv6:`` address list (host names resolved now); a target with a scheme unchanged."""
    check_address(address)
    address = address.strip()
    if "," not in address:
        return address
    import socket

    v4: list[str] = []
    v6: list[str] = []
    for item in (a.strip() for a in address.split(",") if a.strip()):
        host, _, port = item.rpartition(":")
        host = host.strip("[]")
        try:
            ips = [ipaddress.ip_address(host)]
        except ValueError:
            try:
                infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
            except OSError as exc:
                raise ConfigError(f"cannot resolve replica {item!r}: {exc}") from None
            ips = list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))
        for ip in ips:
            (v4 if ip.version == 4 else v6).append(f"{ip}:{port}" if ip.version == 4 else f"[{ip}]:{port}")
    if v4 and v6:
        v6 = []  # gRPC address lists are one family; prefer IPv4 when a name has both
    return f"ipv4:{','.join(v4)}" if v4 else f"ipv6:{','.join(v6)}"


def service_config(service: str, retries: int) -> dict[str, Any]:
    """round_robin over every address, and a retry policy for UNAVAILABLE (server down or loading)."""
    config: dict[str, Any] = {"loadBalancingConfig": [{"round_robin": {}}]}
    if retries:
        config["methodConfig"] = [
            {
                "name": [{"service": service}],
                "retryPolicy": {
                    "maxAttempts": retries + 1,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    return config


def channel_options(service: str, options: RemoteOptions) -> list[tuple[str, Any]]:
    limit = options.max_message_mb * 1024 * 1024
    result: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", -1),  # replies are not bounded (the server's, services/server.py)
        ("grpc.service_config", json.dumps(service_config(service, options.retries))),
        ("grpc.enable_retries", 1 if options.retries else 0),
        # A call is only retried while its request is still buffered: images are bigger than the
        # 256 KiB default, so buffer whole messages.
        ("grpc.per_rpc_retry_buffer_size", limit),
        ("grpc.retry_buffer_size", 4 * limit),
    ]
    if options.tls_server_name:
        result.append(("grpc.ssl_target_name_override", options.tls_server_name))
    return result


def _credentials(options: RemoteOptions) -> grpc.ChannelCredentials | None:
    if not options.secure:
        return None
    return tls_credentials(options.tls_ca, options.tls_cert, options.tls_key, "a remote stage")


def tls_credentials(ca: Path | None, cert: Path | None, key: Path | None, whose: str) -> grpc.ChannelCredentials:
    """A client's TLS credentials from PEM files (None: the system's CAs, no client certificate); a file
    that cannot be read is a ConfigError naming ``whose`` it is."""
    import grpc

    try:
        return grpc.ssl_channel_credentials(
            root_certificates=ca.read_bytes() if ca else None,
            private_key=key.read_bytes() if key else None,
            certificate_chain=cert.read_bytes() if cert else None,
        )
    except OSError as exc:
        raise ConfigError(f"cannot read a TLS file of {whose}: {exc}") from None


class _ChannelCache:
    """One channel per (target, service, options): every stage and call naming the same servers shares it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._channels: dict[tuple[Any, ...], list[Any]] = {}

    def acquire(self, target: str, service: str, options: RemoteOptions) -> tuple[tuple[Any, ...], grpc.Channel]:
        import grpc

        key = (target, service, replace(options, plugin=None, deadline_s=1.0, connect_timeout_s=0.0))
        with self._lock:
            entry = self._channels.get(key)
            if entry is None:
                creds = _credentials(options)
                opts = channel_options(service, options)
                channel = (
                    grpc.secure_channel(target, creds, opts)
                    if creds is not None
                    else grpc.insecure_channel(target, opts)
                )
                entry = self._channels[key] = [channel, 0]
            entry[1] += 1
            return key, entry[0]

    def release(self, key: tuple[Any, ...]) -> None:
        with self._lock:
            entry = self._channels.get(key)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] <= 0:
                del self._channels[key]
                entry[0].close()


CHANNELS = _ChannelCache()
