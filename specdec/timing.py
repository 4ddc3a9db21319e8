"""Serialised engine access with the timings every step reports."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator


@dataclass
class StepTimings:
    queue_ns: int = 0    # waiting for the engine (another session's step was running)
    forward_ns: int = 0  # inside engine calls
    total_ns: int = 0    # whole step, set by the caller that sees the request arrive


class EngineGate:
    """One engine call at a time: the torch KV cache is updated in place and a QPC runs one
    program at a time. Batching steps of several sessions into one call is a later layer."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    @contextmanager
    def hold(self, timings: StepTimings) -> Iterator[None]:
        t0 = time.perf_counter_ns()
        with self._lock:
            t1 = time.perf_counter_ns()
            timings.queue_ns += t1 - t0
            try:
                yield
            finally:
                timings.forward_ns += time.perf_counter_ns() - t1
