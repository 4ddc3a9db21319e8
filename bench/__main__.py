"""Benchmark: the same models and prompts, decoded three ways, measured in one run.

  (a) target-only: k = 0 steps through the verifier service over gRPC
  (b) speculative over gRPC: proposer and verifier services, each its own process
  (c) speculative in-process: the same library and generation loop, no gRPC, one process

Prints tokens/s of each, the ratios b/a (what speculation buys) and b/c (what the split
costs), and mean accepted tokens per target step. All three must produce identical tokens.

    python -m bench --target-model models/target --draft-model models/draft --k 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from client.api import SpecDecClient
from client.cli_common import DEFAULT_PROMPTS, load_tokenizer
from client.launcher import start_service
from specdec.build import build_draft_proposer, build_verifier
from specdec.config import DTYPES, EngineConfig
from specdec.generation import GenerationConfig, GenerationRecord, generate
from specdec.inprocess import InProcessProposerLink, InProcessVerifierLink
from specdec.metrics import BatchMetrics, batch_metrics

BENCH_PROMPTS = DEFAULT_PROMPTS + [
    "class Stack:\n    def __init__(self):\n",
    "def read_config(path):\n    with open(path) as f:\n",
]


async def run_grpc(verifier: str, proposer: str | None, prompts: list[list[int]],
                   config: GenerationConfig) -> list[GenerationRecord]:
    async with SpecDecClient(verifier, proposer) as client:
        return [await client.generate(p, config) for p in prompts]


async def run_inprocess(verifier, proposer, prompts: list[list[int]],
                        config: GenerationConfig) -> list[GenerationRecord]:
    records = []
    for p in prompts:
        v, d = InProcessVerifierLink(verifier), InProcessProposerLink(proposer)
        try:
            records.append(await generate(p, v, d, config, verifier.engine.ctx_len, proposer.fingerprint))
        finally:
            await v.close()
            await d.close()
    return records


def measured(label: str, run) -> tuple[list[GenerationRecord], BatchMetrics]:
    run(warmup=True)
    records = run(warmup=False)
    m = batch_metrics(records)
    print(f"{label:<28} {m.e2e_throughput:8.2f} tok/s  decode {m.decode_throughput:8.2f} tok/s  "
          f"accepted/step {m.mean_accepted_tokens:5.2f}", file=sys.stderr, flush=True)
    return records, m


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target-model", default="models/target")
    p.add_argument("--draft-model", default="models/draft")
    p.add_argument("--k", type=int, default=4, help="speculative tokens per step (4)")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--ctx-len", type=int, default=256)
    p.add_argument("--prefill-seq-len", type=int, default=32)
    p.add_argument("--dtype", default="float32", choices=DTYPES)
    p.add_argument("--device", default="cpu")
    p.add_argument("--prompts", action="append", default=None)
    p.add_argument("--json", type=Path, default=None, help="write the figures as JSON")
    args = p.parse_args(argv)

    tok = load_tokenizer(args.target_model)
    prompts = [tok(t)["input_ids"] for t in (args.prompts or BENCH_PROMPTS)]
    config = GenerationConfig(args.k, args.max_new_tokens, ignore_eos=True)
    target_only = GenerationConfig(0, args.max_new_tokens, ignore_eos=True)
    warm = [prompts[0]]

    def engine(model: str) -> EngineConfig:
        return EngineConfig(model=model, device=args.device, dtype=args.dtype,
                            prefill_seq_len=args.prefill_seq_len, ctx_len=args.ctx_len,
                            full_batch_size=1)

    flags = ["--device", args.device, "--dtype", args.dtype, "--prefill-seq-len",
             str(args.prefill_seq_len), "--ctx-len", str(args.ctx_len), "--full-batch-size", "1",
             "--max-k", str(args.k)]
    print(f"bench: {len(prompts)} prompts x {args.max_new_tokens} tokens, k = {args.k}, "
          f"{args.device}/{args.dtype}", file=sys.stderr)
    services = [start_service("verifier", "verifier_service", ["--model", args.target_model, *flags]),
                start_service("proposer", "proposer_service",
                              ["--method", "draft", "--model", args.draft_model, *flags])]
    try:
        v_addr, p_addr = services[0].address, services[1].address
        rec_a, a = measured("(a) target-only, gRPC", lambda warmup: asyncio.run(
            run_grpc(v_addr, None, warm if warmup else prompts, target_only)))
        rec_b, b = measured("(b) speculative, gRPC", lambda warmup: asyncio.run(
            run_grpc(v_addr, p_addr, warm if warmup else prompts, config)))
    finally:
        for svc in services:
            svc.stop()
    verifier = build_verifier(engine(args.target_model), tuple(range(args.k + 1)))
    proposer = build_draft_proposer(engine(args.draft_model), args.k)
    rec_c, c = measured("(c) speculative, in-process", lambda warmup: asyncio.run(
        run_inprocess(verifier, proposer, warm if warmup else prompts, config)))

    same = [r.tokens for r in rec_a] == [r.tokens for r in rec_b] == [r.tokens for r in rec_c]
    figures = {
        "tokens_per_s": {"target_only_grpc": a.e2e_throughput, "speculative_grpc": b.e2e_throughput,
                         "speculative_inprocess": c.e2e_throughput},
        "speedup_b_over_a": b.e2e_throughput / a.e2e_throughput,
        "split_ratio_b_over_c": b.e2e_throughput / c.e2e_throughput,
        "mean_accepted_tokens": b.mean_accepted_tokens,
        "acceptance_rate": b.acceptance_rate,
        "identical_outputs": same,
        "setup": {"k": args.k, "prompts": len(prompts), "max_new_tokens": args.max_new_tokens,
                  "device": args.device, "dtype": args.dtype, "target": args.target_model,
                  "draft": args.draft_model},
    }
    print(f"\nspeedup b/a (speculative vs target-only, both gRPC): {figures['speedup_b_over_a']:.2f}x")
    print(f"split  b/c (gRPC services vs in-process):          {figures['split_ratio_b_over_c']:.2f}x")
    print(f"mean accepted tokens per target step: {b.mean_accepted_tokens:.2f} "
          f"(acceptance rate {b.acceptance_rate:.1%})")
    print(f"identical outputs across (a), (b), (c): {same}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
