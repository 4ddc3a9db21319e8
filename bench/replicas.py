"""Aggregate throughput with N verifier replicas behind one client, each on its own core.

    python -m bench.replicas --replicas 1,2 --sessions 16 --slots 8

For each N, starts N verifier processes, each on a core of its own (--device-group: every thread
of it, one torch thread) with --slots KV slots, and runs the sessions concurrently through one
client given the N addresses as a comma list (client.replicas spreads the sessions); sessions
beyond what the replicas' slots hold wait in their admission queues, as when load outgrows one
verifier. Decoding is target-only
(k = 0) unless --k is given with --proposer, so what is measured is the verifiers' capacity.
Reports aggregate tokens/s = all generated tokens / wall time, and the ratio to one replica.
Linux only (/proc CPU times); the client itself is not pinned and shares the cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

from bench.__main__ import BENCH_PROMPTS
from bench.concurrency import run_sessions
from client.cli_common import load_tokenizer
from client.launcher import start_service
from specdec.generation import GenerationConfig
from specdec.windows import parse_sizes
from specdec_rpc.server import COMPILED_PREFIX


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.replicas", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target-model", default="models/target")
    p.add_argument("--replicas", type=parse_sizes, default=(1, 2))
    p.add_argument("--sessions", type=int, default=16)
    p.add_argument("--slots", type=int, default=8,
                   help="--full-batch-size of each replica; sessions beyond N x slots queue (8)")
    p.add_argument("--k", type=int, default=0, help="speculative tokens (needs --proposer)")
    p.add_argument("--proposer", default=None, help="proposer address(es) for --k > 0")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--ctx-len", type=int, default=256)
    p.add_argument("--repeat", type=int, default=3, help="runs per N; the best is reported")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    cores = sorted(os.sched_getaffinity(0))
    if max(args.replicas) > len(cores):
        p.error(f"{max(args.replicas)} replicas need as many cores; this machine has {len(cores)}")

    tok = load_tokenizer(args.target_model)
    texts = BENCH_PROMPTS * (args.sessions // len(BENCH_PROMPTS) + 1)
    prompts = [tok(t)["input_ids"] for t in texts[:args.sessions]]
    config = GenerationConfig(args.k, args.max_new_tokens, ignore_eos=True)
    flags = ["--model", args.target_model, "--ctx-len", str(args.ctx_len),
             "--full-batch-size", str(args.slots), "--max-k", str(max(args.k, 1))]
    table: dict[int, float] = {}
    for n in args.replicas:
        services = [start_service(f"verifier-{i}", "verifier_service",
                                  [*flags, "--device-group", str(core)], wait_for=COMPILED_PREFIX)
                    for i, core in zip(range(n), cores)]
        try:
            target = ",".join(s.address for s in services)
            asyncio.run(run_sessions(target, args.proposer, prompts[:n], config))  # warm-up
            best = 0.0
            for _ in range(args.repeat):
                # CPU seconds used per wall second: what the client and the replicas each needed.
                c0, r0 = time.process_time(), [cpu_seconds(s.proc.pid) for s in services]
                tokens, wall = asyncio.run(run_sessions(target, args.proposer, prompts, config))
                client = (time.process_time() - c0) / wall
                busy = [(cpu_seconds(s.proc.pid) - r) / wall for s, r in zip(services, r0)]
                best = max(best, tokens / wall)
                print(f"replicas {n}: {tokens / wall:8.1f} tok/s ({tokens} tokens in {wall:.2f}s); "
                      f"cores busy: client {client:.2f}, replicas "
                      f"{', '.join(f'{b:.2f}' for b in busy)}", file=sys.stderr, flush=True)
            table[n] = best
        finally:
            for svc in services:
                svc.stop()
    base = table.get(1) or next(iter(table.values()))
    print(f"\n{'replicas':>8} | {'tok/s':>8} | vs 1 replica   ({args.sessions} sessions, "
          f"{args.slots} slots per replica, k={args.k})")
    for n, rate in table.items():
        print(f"{n:>8} | {rate:>8.1f} | {rate / base:5.2f}x")
    if args.json:
        args.json.write_text(json.dumps(table, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
