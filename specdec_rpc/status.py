"""Domain errors -> gRPC status codes, and the HTTP statuses of the OpenAI API, in one place."""

from __future__ import annotations

import logging

import grpc

from specdec.errors import AdmissionRefused, InvalidRequest, NotReady, PreconditionFailed, SessionIdle, bounded

log = logging.getLogger(__name__)
# Status details travel in a header: a longer message would be replaced by a metadata error.
MAX_DETAILS = 1024

STATUS_OF = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    PreconditionFailed: grpc.StatusCode.FAILED_PRECONDITION,
    AdmissionRefused: grpc.StatusCode.RESOURCE_EXHAUSTED,
    NotReady: grpc.StatusCode.UNAVAILABLE,
    SessionIdle: grpc.StatusCode.DEADLINE_EXCEEDED,
}


# The OpenAI API (verifier_service.openai_http): HTTP status and OpenAI's error `type` per code.
HTTP_OF = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (408, "timeout"),
    grpc.StatusCode.INTERNAL: (500, "server_error"),
}


def http_status_for(exc: BaseException) -> tuple[int, str, str]:
    """(HTTP status, OpenAI error type, message) of an error, as status_for decides its code."""
    code, message = status_for(exc)
    status, kind = HTTP_OF[code]
    return status, kind, message


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    for cls, code in STATUS_OF.items():
        if isinstance(exc, cls):
            return code, bounded(exc, MAX_DETAILS)
    # Anything else is a bug: log it with its traceback, tell the client nothing internal.
    log.exception("internal error", exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); see the service log"


async def abort_with(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    code, message = status_for(exc)
    await context.abort(code, message)
