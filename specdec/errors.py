"""Domain errors. The gRPC layer maps each class to one status code, in one place
(`specdec_rpc.status`); everything else that escapes is a bug and becomes INTERNAL. A process
that cannot start as asked maps its error to one exit code and one line, here (exit_with)."""

from __future__ import annotations

import sys
from typing import NoReturn

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


class AdmissionRefused(SpecDecError):
    """Every place of the admission pool is taken and the queue is full, or the wait timed out
    (specdec.admission). RESOURCE_EXHAUSTED."""


class NotReady(SpecDecError):
    """The service is loading or draining. UNAVAILABLE."""


class SessionIdle(SpecDecError):
    """A session sent nothing for longer than the idle timeout; it was closed. DEADLINE_EXCEEDED."""


# A service or client CLI that cannot start as asked (no such model, a bad flag value, an
# unavailable executor) ends with one line "error: ..." on stderr and this exit code, never a
# traceback; 2, as argparse exits on a bad command line.
EXIT_START_ERROR = 2
START_ERRORS: tuple[type[Exception], ...] = (ValueError, OSError, RuntimeError)
ERROR_PREFIX = "error: "   # how that line starts: a launcher picks a service's reason out by it


def error_line(problem: BaseException | str) -> str:
    """The one line a process ends with: a message over several lines (the hub's,
    transformers') is joined, so whoever reads the line (a launcher, a log search) has all of it."""
    return ERROR_PREFIX + " ".join(part.strip() for part in str(problem).splitlines() if part.strip())


def exit_with(problem: BaseException | str) -> NoReturn:
    print(error_line(problem), file=sys.stderr, flush=True)
    raise SystemExit(EXIT_START_ERROR)
