"""A process that starts the way a service does, for the launcher's tests
(tests/test_cli.py): it takes `--host`/`--port`, takes SLOW_START_S seconds to start, printing
a log line to stderr every SLOW_START_EVERY_S seconds meanwhile (0: none, a silent start-up),
then prints the ready line and waits to be stopped (or, with SLOW_START_CRASH=N, logs a last
line and exits with code N, a service crashing mid-run). It stands in for a service compiling
many step specializations, which takes minutes on a real model."""

from __future__ import annotations

import argparse
import os
import sys
import time


def main() -> None:
    # A first line before the imports: on a loaded machine importing grpc alone can outlast
    # the tests' half-second deadline, which is about the silence that follows.
    print("starting", file=sys.stderr, flush=True)
    from specdec_rpc.server import READY_PREFIX

    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args()
    start_s, every_s = float(os.environ["SLOW_START_S"]), float(os.environ["SLOW_START_EVERY_S"])
    end = time.monotonic() + start_s
    while time.monotonic() < end:
        time.sleep(every_s or start_s)
        if every_s:
            print("compiled a step", file=sys.stderr, flush=True)
    print(f"{READY_PREFIX} {args.host}:{args.port or 1}", flush=True)
    if crash := int(os.environ.get("SLOW_START_CRASH", "0")):
        time.sleep(0.2)
        print("RuntimeError: the last words", file=sys.stderr, flush=True)
        sys.exit(crash)
    time.sleep(60)


if __name__ == "__main__":
    main()
