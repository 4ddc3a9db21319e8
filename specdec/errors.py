"""Domain errors. The gRPC layer maps each class to one status code, in one place
(`specdec_rpc.status`); everything else that escapes is a bug and becomes INTERNAL."""

from __future__ import annotations

ECHO_LIMIT = 64  # characters of a client-sent value that an error message may repeat


def bounded(value: object, limit: int = ECHO_LIMIT) -> str:
    """A client-sent value as it may appear in an error message: status details travel in
    headers with a size limit, and an echoed 20 KB field would replace the real status."""
    text = str(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class SpecDecError(Exception):
    """Base of the errors a request can cause without anything being broken."""


class InvalidRequest(SpecDecError):
    """Malformed request: bad token ids, k out of range, prompt over ctx_len. INVALID_ARGUMENT."""


class PreconditionFailed(SpecDecError):
    """Request that is valid in itself but not in this state: a step before prefill,
    mismatched tokenizers, a sync start beyond what is held. FAILED_PRECONDITION."""


class OutOfSlots(SpecDecError):
    """Every KV slot is taken. RESOURCE_EXHAUSTED."""


class NotReady(SpecDecError):
    """The service is loading or draining. UNAVAILABLE."""


class SessionIdle(SpecDecError):
    """A session sent nothing for longer than the idle timeout; it was closed. DEADLINE_EXCEEDED."""
