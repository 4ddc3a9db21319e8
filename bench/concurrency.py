"""Aggregate throughput under concurrency, continuous batching on vs off.

    python -m bench.concurrency --sessions 1,2,4,8 --k 4

For each batching mode, starts a verifier and a draft proposer (--batching on|off, as many
slots as the largest session count), then for each N runs N concurrent speculative sessions
(different prompts) and reports aggregate tokens/s = all generated tokens / wall time.
"off" runs one engine call per session step: the baseline that batching must beat.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.__main__ import BENCH_PROMPTS
from client.api import SpecDecClient
from client.cli_common import load_tokenizer
from client.launcher import start_service
from specdec.generation import GenerationConfig, GenerationRecord
from specdec.method import Method
from specdec.windows import parse_sizes
from specdec_rpc.server import COMPILED_PREFIX


async def generate_concurrently(verifier: str, proposer: str | None, prompts: list[list[int]],
                                config: GenerationConfig) -> tuple[list[GenerationRecord], float]:
    """One session per prompt, all at once: (records, wall seconds)."""
    async with SpecDecClient(verifier, proposer) as client:
        t0 = time.perf_counter()
        records = await asyncio.gather(*(client.generate(p, config) for p in prompts))
        return list(records), time.perf_counter() - t0


async def run_sessions(verifier: str, proposer: str | None, prompts: list[list[int]],
                       config: GenerationConfig) -> tuple[int, float]:
    records, wall = await generate_concurrently(verifier, proposer, prompts, config)
    return sum(len(r.tokens) for r in records), wall


Outputs = dict[str, dict[int, list[list[int]]]]  # [batching mode][sessions] -> each session's tokens


def measure(target: str, draft: str, prompts: list[list[int]], config: GenerationConfig,
            sessions: tuple[int, ...], flags: list[str], verifier_flags: Sequence[str] = (),
            on_point: Callable[[], None] = lambda: None) -> tuple[dict[str, dict[int, float]], Outputs]:
    """Aggregate tokens/s [batching mode][N sessions] on prompts[:N], and their tokens. flags:
    the engine flags of both services (--full-batch-size and --batching are set here), then the
    verifier's own (e.g. --window-sizes)."""
    prompts = prompts * (max(sessions) // len(prompts) + 1)
    flags = [*flags, "--full-batch-size", str(max(sessions))]
    table: dict[str, dict[int, float]] = {}
    outputs: Outputs = {}
    for mode in ("on", "off"):
        services = [
            start_service("verifier", "verifier_service",
                          ["--model", target, "--batching", mode, *flags, *verifier_flags], wait=False,
                          wait_for=COMPILED_PREFIX),
            start_service("proposer", "proposer_service",
                          ["--method", Method.DRAFT, "--model", draft, "--batching", mode, *flags], wait=False,
                          wait_for=COMPILED_PREFIX),
        ]
        try:
            for svc in services:
                svc.wait_ready()
            v, d = services[0].address, services[1].address
            asyncio.run(run_sessions(v, d, prompts[:1], config))  # warm-up
            table[mode], outputs[mode] = {}, {}
            for n in sessions:
                records, wall = asyncio.run(generate_concurrently(v, d, prompts[:n], config))
                tokens = sum(len(r.tokens) for r in records)
                table[mode][n], outputs[mode][n] = tokens / wall, [r.tokens for r in records]
                print(f"batching {mode:<3} sessions {n}: {tokens / wall:8.1f} tok/s "
                      f"({tokens} tokens in {wall:.2f}s)", file=sys.stderr, flush=True)
                on_point()
        finally:
            for svc in services:
                svc.stop()
    return table, outputs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.concurrency", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target-model", default="models/target")
    p.add_argument("--draft-model", default="models/draft")
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--sessions", type=parse_sizes, default=(1, 2, 4, 8))
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--ctx-len", type=int, default=256)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    tok = load_tokenizer(args.target_model)
    prompts = [tok(t)["input_ids"] for t in BENCH_PROMPTS]
    config = GenerationConfig(args.k, args.max_new_tokens, ignore_eos=True)
    flags = ["--ctx-len", str(args.ctx_len), "--max-k", str(args.k)]
    table, _ = measure(args.target_model, args.draft_model, prompts, config, args.sessions, flags)
    print(f"\n{'sessions':>8} | {'batching on':>12} | {'batching off':>12} | on/off")
    for n in args.sessions:
        on, off = table["on"][n], table["off"][n]
        print(f"{n:>8} | {on:>8.1f} t/s | {off:>8.1f} t/s | {on / off:5.2f}x")
    if args.json:
        args.json.write_text(json.dumps(table, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
