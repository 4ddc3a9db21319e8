"""OpenMP's wait policy for the processes that run an engine.

OpenMP's default active wait keeps torch's idle worker threads spinning between engine calls,
starving the event loop that alternates with them (`OMP_WAIT_POLICY=ACTIVE python -m
bench.overhead` shows the cost). OpenMP reads the policy once, when torch loads, so each entry
point calls `prefer_passive_omp()` first, before anything imports torch; importing this library
changes no environment variable.
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
