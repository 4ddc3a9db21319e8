"""Requests whose bytes do not parse: INVALID_ARGUMENT, logged as one rate-limited line.

grpc's own handling of a deserializer failure answers INTERNAL and logs a traceback per stream,
so a client sending garbage could fill the log and would be told of a bug it did not find.
Here the deserializer never raises: it hands the servicer an `Unparseable` marker, which the
parse interceptor turns into InvalidRequest (so the one status mapping still decides the code).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from specdec.errors import InvalidRequest, bounded


class RateLimitedLog:
    """At most one line per `interval_s`; the lines in between are counted and the count is
    reported with the next line, so a flood costs a line per interval, not one per request."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger, self.interval_s, self.clock = logger, interval_s, clock
        self._last: float | None = None
        self._suppressed = 0
        self._lock = threading.Lock()  # deserializers may run on any thread

    def warning(self, message: str) -> bool:
        """Log `message` unless one was logged within the interval; True when logged."""
        with self._lock:
            now = self.clock()
            if self._last is not None and now - self._last < self.interval_s:
                self._suppressed += 1
                return False
            suppressed, self._suppressed, self._last = self._suppressed, 0, now
        more = f" (and {suppressed} more like it in the last {self.interval_s:g}s)" if suppressed else ""
        self.logger.warning("%s%s", message, more)
        return True


class Unparseable:
    """Stands in for a request whose bytes did not parse."""

    def __init__(self, method: str, size: int, error: BaseException) -> None:
        self.method, self.size, self.error = method, size, error

    def invalid(self) -> InvalidRequest:
        return InvalidRequest(f"request to {self.method} ({self.size} bytes) is not a valid "
                              f"protobuf message of its type: {bounded(str(self.error))}")


def lenient(deserializer: Callable[[bytes], Any] | None, method: str,
            log: RateLimitedLog) -> Callable[[bytes], Any]:
    """A deserializer that returns Unparseable instead of raising (and logs it, rate-limited)."""
    def parse(raw: bytes) -> Any:
        if deserializer is None:
            return raw
        try:
            return deserializer(raw)
        except Exception as exc:  # DecodeError, or anything a broken message makes it raise
            bad = Unparseable(method, len(raw), exc)
            log.warning(f"unparseable request to {method}: {len(raw)} bytes "
                        f"({type(exc).__name__}); answered INVALID_ARGUMENT")
            return bad
    return parse
