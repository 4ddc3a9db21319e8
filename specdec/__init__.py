"""Core library of speculative decoding: engines, proposers, acceptance, sessions, metrics.

Nothing in this package knows about gRPC; the services and the client are thin layers over it.
"""

import os

# Engine calls run on a batcher thread and alternate with Python work on others (gRPC, session
# threads). OpenMP's default active wait keeps torch's idle worker threads spinning between
# calls, starving those threads: measured on 2 cores, a 1-token step took 15-30 ms instead of
# 1.3 ms. Must be set before torch loads OpenMP; an explicit user setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
