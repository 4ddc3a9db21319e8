"""Domain errors -> gRPC status codes, in one place."""

from __future__ import annotations

import logging

import grpc

from specdec.errors import InvalidRequest, NotReady, OutOfSlots, PreconditionFailed, SessionIdle, bounded

log = logging.getLogger(__name__)
# Status details travel in a header: a longer message would be replaced by a metadata error.
MAX_DETAILS = 1024

STATUS_OF = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    PreconditionFailed: grpc.StatusCode.FAILED_PRECONDITION,
    OutOfSlots: grpc.StatusCode.RESOURCE_EXHAUSTED,
    NotReady: grpc.StatusCode.UNAVAILABLE,
    SessionIdle: grpc.StatusCode.DEADLINE_EXCEEDED,
}


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
