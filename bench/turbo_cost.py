"""Where a Turbo round's time goes: the target's engine step per verify window, with and
without the Turbo heads, on the services' shapes, compiled, in one process.

    python -m bench.turbo_cost
    python -m bench.turbo_cost --threads 2 --json out/turbo_cost.json

A Turbo round at k verifies a window of k + 1 tokens and evaluates the heads at the accepted
position (min(H, k + 1) heads, see torch_engine.heads_for_window); a target-only round is a
window of 1 on the plain target. The ratio of the two is what the heads' tokens per step must
beat for Turbo to pay.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from specdec.build import build_verifier
from specdec.config import DTYPES, EngineConfig
from specdec.engine.torch_engine import TorchEngine


def step_ms(engine: TorchEngine, window: int, position: int, calls: int) -> float:
    """Milliseconds of one engine step over `window` tokens at `position`, one slot."""
    ids = np.full((1, window), 7)
    pos = (np.arange(window) + position)[None]
    for _ in range(max(5, calls // 10)):
        engine.run(ids, pos, np.array([0]), window)
    t0 = time.perf_counter()
    for _ in range(calls):
        engine.run(ids, pos, np.array([0]), window)
    return (time.perf_counter() - t0) / calls * 1e3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.turbo_cost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target-model", default="models/target")
    p.add_argument("--ctx-len", type=int, default=256)
    p.add_argument("--prefill-seq-len", type=int, default=32)
    p.add_argument("--dtype", default="float32", choices=DTYPES)
    p.add_argument("--device", default="cpu")
    p.add_argument("--compile", default=os.environ.get("SPECDEC_COMPILE", "on"), choices=["on", "off"])
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: a verifier's core when a proposer has the other)")
    p.add_argument("--calls", type=int, default=200, help="timed steps per window")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows: dict[str, list[float]] = {}
    windows: list[int] = []
    for turbo in (False, True):
        cfg = EngineConfig(model=args.target_model, device=args.device, dtype=args.dtype,
                           prefill_seq_len=args.prefill_seq_len, ctx_len=args.ctx_len,
                           full_batch_size=1, compile=args.compile, turbo=turbo)
        verifier = build_verifier(cfg, (0, 1, 2, 3, 4))
        engine = verifier.engine
        assert isinstance(engine, TorchEngine)
        engine.wait_compiled()
        windows = [k + 1 for k in verifier.window_sizes]
        label = "turbo" if turbo else "plain"
        rows[label] = [step_ms(engine, w, args.ctx_len // 2, args.calls) for w in windows]
        print(f"{label:<6} " + "  ".join(f"window {w}: {ms:6.2f} ms" for w, ms in zip(windows, rows[label])),
              file=sys.stderr, flush=True)
        verifier.close()
    base = rows["plain"][0]
    relative = {label: [ms / base for ms in r] for label, r in rows.items()}
    print("\nrelative to a target-only step (plain, window 1):")
    for label, r in relative.items():
        print(f"{label:<6} " + "  ".join(f"k={w - 1}: {x:.2f}x" for w, x in zip(windows, r)))
    if args.json:
        args.json.write_text(json.dumps({"windows": windows, "ms": rows, "relative": relative,
                                         "setup": vars(args) | {"json": str(args.json)}}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
