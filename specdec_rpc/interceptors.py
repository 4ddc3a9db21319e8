"""Server interceptors: the shared-token check, per-RPC metrics (count by status code,
latency) and requests that do not parse. All wrap unary, server-streaming (Generate) and
bidirectional-streaming handlers, the kinds we serve."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from specdec_rpc.metrics import ServiceMetrics
from specdec_rpc.parsing import RateLimitedLog, Unparseable, lenient
from specdec_rpc.security import OPEN_SERVICES, token_matches
from specdec_rpc.status import abort_with


def _wrap(handler: grpc.RpcMethodHandler, unary, stream,
          request_deserializer=None, server_stream=None) -> grpc.RpcMethodHandler:
    """server_stream: the wrapper of a unary-stream handler, where it differs from `stream`'s
    (which passes the request through as it is, whatever it is)."""
    deserializer = request_deserializer or handler.request_deserializer
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), deserializer,
                                                   handler.response_serializer)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler((server_stream or stream)(handler.unary_stream),
                                                    deserializer, handler.response_serializer)
    if handler.stream_stream:
        return grpc.stream_stream_rpc_method_handler(stream(handler.stream_stream), deserializer,
                                                     handler.response_serializer)
    return handler  # stream-unary: not served here (reflection is stream-stream)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: str) -> None:
        self.token = token

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_SERVICES) \
                or token_matches(details.invocation_metadata, self.token):
            return handler
        message = "missing or wrong token: send metadata 'authorization: Bearer <token>'"

        def unary(_behavior):
            async def deny(request, context):
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
            return deny

        def stream(_behavior):
            async def deny(requests, context):
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
                yield  # pragma: no cover - makes this an async generator
            return deny

        return _wrap(handler, unary, stream)


def _code(context: grpc.aio.ServicerContext, default: str) -> str:
    """The status an abort set, else the outcome the wrapper saw."""
    code = context.code()
    return code.name if isinstance(code, grpc.StatusCode) else default


def _outcome(exc: BaseException) -> str:
    """What an RPC that raised ended as, when no abort set a status."""
    return "CANCELLED" if isinstance(exc, asyncio.CancelledError) else "UNKNOWN"


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: ServiceMetrics) -> None:
        self.metrics = metrics

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None:
            return None
        session = not details.method.startswith(OPEN_SERVICES)  # reflection streams are no session
        method = details.method.rsplit("/", 1)[-1] if session else details.method
        m = self.metrics

        def record(context, start: float, default: str) -> None:
            m.rpc_total.labels(method, _code(context, default)).inc()
            m.rpc_seconds.labels(method).observe(time.perf_counter() - start)

        def unary(behavior):
            async def run(request, context):
                start, outcome = time.perf_counter(), "OK"
                try:
                    return await behavior(request, context)
                except BaseException as exc:
                    outcome = _outcome(exc)
                    raise
                finally:
                    record(context, start, outcome)
            return run

        def stream(behavior):
            async def run(requests, context):
                start, outcome = time.perf_counter(), "OK"
                if session:
                    m.sessions_open.inc()
                try:
                    async for reply in behavior(requests, context):
                        yield reply
                except BaseException as exc:
                    outcome = _outcome(exc)
                    raise
                finally:
                    if session:
                        m.sessions_open.dec()
                    record(context, start, outcome)
            return run

        return _wrap(handler, unary, stream)


class _CheckedRequests:
    """A request stream that raises InvalidRequest at a request that did not parse. A plain
    class, not an async generator: a read cancelled by the session runner's timeout must not
    close it."""

    def __init__(self, requests: AsyncIterator[Any]) -> None:
        self.requests = requests

    def __aiter__(self) -> _CheckedRequests:
        return self

    async def __anext__(self) -> Any:
        request = await self.requests.__anext__()
        if isinstance(request, Unparseable):
            raise request.invalid()
        return request


class ParseInterceptor(grpc.aio.ServerInterceptor):
    """Garbage request bytes -> INVALID_ARGUMENT and one rate-limited log line (not grpc's
    INTERNAL and a traceback per stream). Innermost, so the others see its deserializer."""

    def __init__(self, log_interval_s: float = 10.0) -> None:
        self.log = RateLimitedLog(logging.getLogger(__name__), log_interval_s)

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_SERVICES):
            return handler

        def unary(behavior):
            async def run(request, context):
                if isinstance(request, Unparseable):
                    await abort_with(context, request.invalid())
                return await behavior(request, context)
            return run

        def stream(behavior):
            async def run(requests, context):
                async for reply in behavior(_CheckedRequests(requests), context):
                    yield reply
            return run

        def server_stream(behavior):
            async def run(request, context):
                if isinstance(request, Unparseable):
                    await abort_with(context, request.invalid())
                async for reply in behavior(request, context):
                    yield reply
            return run

        return _wrap(handler, unary, stream,
                     lenient(handler.request_deserializer, details.method, self.log), server_stream)
