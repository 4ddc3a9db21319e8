"""How far each engine step is above what the hardware needs: the floor probe.

A small-batch decode step must read every weight once (and the KV it attends to) from memory,
so its floor is bytes / memory bandwidth. This measures the bandwidth on the machine at hand,
counts the bytes per step of each model, times real engine steps (eager and compiled) and
prints step time / floor:

    python -m bench.floor [--full-batch-size 4] [--k 4] [--dtypes float32,bfloat16]

Bandwidth is measured by summing a tensor far larger than the caches, with the thread count the
steps run with (--threads, 1 by default: on a CPU each service owns its cores, one each on a
2-core machine). Times are medians of --steps calls, after warm-up. Per batch size, a last line
times the windows called in turn, each call after one at another window: compiled, that is
another graph (a round of k auto that explores or trims its window does it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from specdec.config import DTYPES, EngineConfig
from specdec.engine.torch_engine import TorchEngine

STREAM_BYTES = 512 * 2**20   # far above any L3 cache


def memory_bandwidth(device: str, repeats: int = 7) -> float:
    """Bytes/s reading memory: the best of several sums over a cache-busting tensor."""
    x = torch.ones(STREAM_BYTES // 4, dtype=torch.float32, device=device)
    x.sum()
    best = min(_timed(x.sum) for _ in range(repeats))
    return STREAM_BYTES / best


def _timed(fn) -> float:
    t0 = time.perf_counter()
    out = fn()
    if isinstance(out, torch.Tensor) and out.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def step_bytes(engine: TorchEngine, batch: int, window: int, kv_len: int) -> int:
    """Bytes a step must read: every weight once (the embedding table only for its rows) plus
    the keys and values of kv_len positions of each row, in every layer."""
    mc = engine.model_config
    item = torch.finfo(engine.dtype).bits // 8
    weights = sum(p.numel() for n, p in engine.model.named_parameters() if "embed_tokens" not in n)
    weights += batch * window * mc.hidden_size
    kv = mc.num_layers * 2 * mc.num_kv_heads * mc.head_dim * kv_len * batch
    return (weights + kv) * item


def step_call(batch: int, window: int, start: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """run()'s arguments for [batch, window] rows at positions start..start+window-1."""
    ids = np.full((batch, window), 5, dtype=np.int64)
    pos = np.tile(np.arange(start, start + window), (batch, 1))
    return ids, pos, np.arange(batch), window


def time_step(engine: TorchEngine, batch: int, window: int, start: int, steps: int) -> float:
    """Median seconds of run() on [batch, window] rows at positions start..start+window-1."""
    call = step_call(batch, window, start)
    for _ in range(3):
        engine.run(*call)
    return statistics.median(_timed(lambda: engine.run(*call)) for _ in range(steps))


def time_alternating(engine: TorchEngine, batch: int, windows: tuple[int, ...], start: int,
                     steps: int) -> dict[int, float]:
    """Median seconds of run() per window when calls take the windows in turn: each call
    follows one at another window (compiled, another graph; with its own weights it read them
    cold, see specdec.engine.shared_constants)."""
    calls = {window: step_call(batch, window, start) for window in windows}
    times: dict[int, list[float]] = {w: [] for w in windows}
    for i in range(3 * len(windows) + steps * len(windows)):
        w = windows[i % len(windows)]
        t = _timed(lambda call=calls[w]: engine.run(*call))
        if i >= 3 * len(windows):
            times[w].append(t)
    return {w: statistics.median(ts) for w, ts in times.items()}


def probe(model: str, dtype: str, args: argparse.Namespace, bandwidth: float) -> list[dict]:
    windows = (1, args.k + 1)
    batches = sorted({1, args.full_batch_size})
    rows = []
    for compiled in (["off", "on"] if args.compile == "both" else [args.compile]):
        engine = TorchEngine(EngineConfig(model=model, device=args.device, dtype=dtype, ctx_len=args.ctx_len,
                                          full_batch_size=args.full_batch_size, compile=compiled),
                             windows, keep_window_logits=True)
        engine.wait_compiled()   # on this thread where CUDA graphs must be (it times the steps)
        mode = "compiled" if engine.compiled else "eager"
        start = args.ctx_len // 2
        for batch in batches:
            for window in windows:
                # Eager attends as far as the furthest query; compiled steps the full ctx_len.
                kv_len = args.ctx_len if engine.compiled else start + window
                t = time_step(engine, batch, window, start, args.steps)
                floor = step_bytes(engine, batch, window, kv_len) / bandwidth
                rows.append({"model": model, "dtype": dtype, "mode": mode, "batch": batch,
                             "window": window, "step_ms": t * 1e3, "floor_ms": floor * 1e3,
                             "ratio": t / floor})
                print(f"{Path(model).name:<8} {dtype:<9} {mode:<9} batch {batch:<3} window {window:<3}"
                      f" step {t * 1e3:7.2f} ms  floor {floor * 1e3:6.2f} ms  step/floor "
                      f"{t / floor:5.2f}", flush=True)
            alternating = time_alternating(engine, batch, windows, start, args.steps)
            rows.append({"model": model, "dtype": dtype, "mode": mode, "batch": batch,
                         "alternating_ms": {w: t * 1e3 for w, t in alternating.items()}})
            print(f"{Path(model).name:<8} {dtype:<9} {mode:<9} batch {batch:<3} windows "
                  f"{' and '.join(map(str, windows))} in turn: step "
                  + "  ".join(f"{t * 1e3:.2f} ms" for t in alternating.values()), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.floor", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target-model", default="models/target")
    p.add_argument("--draft-model", default="models/draft")
    p.add_argument("--device", default="cpu", help="cpu or cuda:N (cpu)")
    p.add_argument("--full-batch-size", type=int, default=4)
    p.add_argument("--k", type=int, default=4, help="verify windows of k + 1 (4)")
    p.add_argument("--ctx-len", type=int, default=256)
    p.add_argument("--dtypes", default="float32", help="comma list of " + ", ".join(DTYPES))
    p.add_argument("--compile", default="both", choices=["on", "off", "both"])
    p.add_argument("--threads", type=int, default=1, help="torch threads for every step (1)")
    p.add_argument("--steps", type=int, default=30, help="timed calls per shape (30)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    bandwidth = memory_bandwidth(args.device)
    print(f"memory bandwidth: {bandwidth / 1e9:.1f} GB/s on {args.device} "
          f"({args.threads} CPU thread(s))", flush=True)
    rows = [row for model in (args.target_model, args.draft_model)
            for dtype in args.dtypes.split(",") for row in probe(model, dtype, args, bandwidth)]
    if args.json:
        args.json.write_text(json.dumps({"bandwidth_gb_s": bandwidth / 1e9, "steps": rows}, indent=2))
    print("step/floor, target, batch 1, window 1: " + ", ".join(
        f"{r['mode']} {r['dtype']} {r['ratio']:.2f}" for r in rows
        if r["model"] == args.target_model and r["batch"] == 1 and r.get("window") == 1), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
