"""Per-step timings every service reply carries."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StepTimings:
    queue_ns: int = 0    # rows waiting for the engine (another batch was running)
    forward_ns: int = 0  # engine calls that carried this step's rows
    total_ns: int = 0    # whole step, set by the code that sees the request arrive
