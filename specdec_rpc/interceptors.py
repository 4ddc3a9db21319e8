"""Server interceptors: the shared-token check, per-RPC metrics (count by status code, latency)
and undecodable requests. All wrap unary and bidirectional-streaming handlers, the two kinds we
serve."""

from __future__ import annotations

import asyncio
import time

import grpc
from google.protobuf.message import DecodeError

from specdec.errors import InvalidRequest
from specdec_rpc.metrics import ServiceMetrics
from specdec_rpc.security import OPEN_SERVICES, token_matches
from specdec_rpc.status import abort_with


def _wrap(handler: grpc.RpcMethodHandler, unary, stream,
          deserializer=None) -> grpc.RpcMethodHandler:
    deserializer = deserializer or handler.request_deserializer
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), deserializer,
                                                   handler.response_serializer)
    if handler.stream_stream:
        return grpc.stream_stream_rpc_method_handler(stream(handler.stream_stream), deserializer,
                                                     handler.response_serializer)
    return handler  # unary-stream / stream-unary: not served here (reflection is stream-stream)


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
        method = details.method.rsplit("/", 1)[-1] if not details.method.startswith(OPEN_SERVICES) \
            else details.method
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
                m.sessions_open.inc()
                try:
                    async for reply in behavior(requests, context):
                        yield reply
                except BaseException as exc:
                    outcome = _outcome(exc)
                    raise
                finally:
                    m.sessions_open.dec()
                    record(context, start, outcome)
            return run

        return _wrap(handler, unary, stream)


class _Undecodable:
    """Stands in for request bytes that do not parse as the method's message."""

    def __init__(self, error: DecodeError) -> None:
        self.error = error

    def check(self) -> None:
        raise InvalidRequest(f"request does not parse ({self.error}): e.g. invalid UTF-8 in a "
                             "string field, or a message of another type")


def _checked(request):
    if isinstance(request, _Undecodable):
        request.check()
    return request


class DecodeInterceptor(grpc.aio.ServerInterceptor):
    """Bytes that are not a valid message (invalid UTF-8 in a string field, a truncated
    message) are the caller's error, INVALID_ARGUMENT; grpc itself would answer UNKNOWN."""

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        parse = handler.request_deserializer

        def lenient(raw: bytes):
            try:
                return parse(raw)
            except DecodeError as exc:
                return _Undecodable(exc)

        def unary(behavior):
            async def run(request, context):
                try:
                    _checked(request)
                except InvalidRequest as exc:
                    await abort_with(context, exc)
                return await behavior(request, context)
            return run

        def stream(behavior):
            async def run(requests, context):
                # The session runner maps what the stream raises (InvalidRequest) to a status.
                async def checked():
                    async for request in requests:
                        yield _checked(request)
                async for reply in behavior(checked(), context):
                    yield reply
            return run

        return _wrap(handler, unary, stream, lenient)
