"""OpenMP's wait policy for the processes that run an engine.

Engine calls run on the engine thread and alternate with Python work on the event loop (gRPC,
the sessions' coroutines). OpenMP's default active wait keeps torch's idle worker threads
spinning between calls, starving the loop: measured on 2 cores, a 1-token step took 15-30 ms instead of
1.3 ms. OpenMP reads the policy once, when torch loads it, so each entry point (the two
services, the benchmarks) calls `prefer_passive_omp()` as its first statement, before
anything imports torch; importing this library changes no environment variable.
"""

from __future__ import annotations

import os
import sys

OMP_VARIABLE = "OMP_WAIT_POLICY"


def prefer_passive_omp() -> bool:
    """Set OMP_WAIT_POLICY=PASSIVE unless the user set it. Returns False when torch is already
    loaded, where the setting can no longer take effect (the caller should say so)."""
    os.environ.setdefault(OMP_VARIABLE, "PASSIVE")
    return "torch" not in sys.modules
