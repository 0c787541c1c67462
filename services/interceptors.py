"""The server's interceptors: the bearer token (:class:`TokenInterceptor`) and the one place every
exception of a call becomes a status code (:class:`ErrorInterceptor`, :func:`status_for`)."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from typing import Any

import grpc

from facerecon.kernel.contract.errors import ConfigError, InputError, ModelFileError, NoFaceError

from .loader import CallEnded

log = logging.getLogger("facerecon.services")

HEALTH_PREFIX = "/grpc.health.v1.Health/"


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code a call answers with when it raises ``exc``."""
    if isinstance(exc, CallEnded):
        return grpc.StatusCode.CANCELLED, str(exc)
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

        method = handler_call_details.method

        def refuse(request: Any, context: grpc.ServicerContext) -> Any:
            reason = "wrong bearer token" if "authorization" in metadata else "no bearer token"
            log.warning("%s from %s: UNAUTHENTICATED: %s", method, context.peer(), reason)  # never the token
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

        return _rewrap(handler, refuse)
