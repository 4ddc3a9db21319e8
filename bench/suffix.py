"""Suffix decoding against prompt lookup, on a repeated, agent-like workload and on the general
bench prompts, measured in one run:

  (a) target-only: k = 0 through the verifier service over gRPC
  (n) prompt lookup (--method ngram) over gRPC, k = --ngram-k
  (s) suffix decoding (--method suffix) over gRPC, k = --suffix-k at most: each measured pass
      starts a proposer service of its own, so its cache holds only what that pass served
      (a pass over the workload is a service meeting those requests for the first time)
  (t) transformers' prompt lookup on the same target, k = --ngram-k

The workload (bench/prompts/agent.json, see bench/workload.py) runs in order, as a service
would meet it: the same task asked again with small changes, edits that copy their input, and
conversations whose turns carry the earlier answers. Each row must produce identical tokens.

    python -m bench.suffix
    python -m bench.suffix --json out/suffix.json

Goals (issue 37): on the workload, suffix >= 1.5x prompt lookup's tokens per target step and
>= 1.3x its tokens/s; on the general prompts, >= 0.95x its tokens/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench.__main__ import BENCH_PROMPTS, service_flags, start_proposer, start_verifier
from bench.measure import measured_in_turn
from bench.peers import hf_prompt_lookup, load_hf
from bench.workload import WORKLOAD, Request, load
from client.api import SpecDecClient
from client.cli_common import load_tokenizer
from client.prompt_lookup import DEFAULT_K
from specdec.config import DTYPES
from specdec.generation import GenerationConfig, GenerationRecord
from specdec.method import Method
from specdec.metrics import BatchMetrics


def next_prompt(ids: list[int], follow_up: bool, previous: list[int], answer: list[int]) -> list[int]:
    """A request's prompt: its own ids, or for a follow-up the previous prompt and its answer
    before them (a conversation's next turn)."""
    return previous + answer + ids if follow_up else ids


def in_order(requests: list[tuple[list[int], bool]],
             generate_one: Callable[[list[int]], list[int]]) -> list[list[int]]:
    """Each request's output, generated in order (a follow-up needs the answer before it)."""
    outputs: list[list[int]] = []
    prompt: list[int] = []
    for ids, follow_up in requests:
        prompt = next_prompt(ids, follow_up, prompt, outputs[-1] if outputs else [])
        outputs.append(generate_one(prompt))
    return outputs


async def run_grpc(verifier: str, proposer: str | None, requests: list[tuple[list[int], bool]],
                   config: GenerationConfig) -> list[GenerationRecord]:
    records: list[GenerationRecord] = []
    prompt: list[int] = []
    async with SpecDecClient(verifier, proposer) as client:
        for ids, follow_up in requests:
            prompt = next_prompt(ids, follow_up, prompt, records[-1].tokens if records else [])
            records.append(await client.generate(prompt, config))
    return records


def transformers_row(hf, requests: list[tuple[list[int], bool]], new: int, k: int,
                     ngram: int) -> tuple[list[list[int]], float, float]:
    """(t): transformers' prompt lookup over the requests in order, after a warm-up: (outputs,
    tokens/s, tokens per target step)."""
    forwards: list[int] = []

    def one(prompt: list[int]) -> list[int]:
        ids, n = hf_prompt_lookup(hf, prompt, new, k, ngram)
        forwards.append(n)
        return ids

    one(requests[0][0])
    forwards.clear()
    t0 = time.perf_counter()
    outputs = in_order(requests, one)
    wall = time.perf_counter() - t0
    tokens = sum(map(len, outputs))
    per_step = (tokens - len(outputs)) / max(1, sum(forwards) - len(forwards))
    print(f"{'(t) transformers prompt lookup':<32} {tokens / wall:8.2f} tok/s{'':>41}"
          f"accepted/step {per_step:5.2f}", file=sys.stderr, flush=True)
    return outputs, tokens / wall, per_step


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.suffix", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target-model", default="models/target")
    p.add_argument("--workload", type=Path, default=WORKLOAD,
                   help="the repeated workload: a JSON list of {kind, text, follow_up}")
    p.add_argument("--ngram-k", type=int, default=DEFAULT_K[Method.NGRAM],
                   help=f"prompt lookup's k ({DEFAULT_K[Method.NGRAM]}, the client's default)")
    p.add_argument("--suffix-k", type=int, default=DEFAULT_K[Method.SUFFIX],
                   help="suffix decoding's k, an upper bound: its drafts are sized from the "
                        f"match ({DEFAULT_K[Method.SUFFIX]}, the client's default)")
    p.add_argument("--max-ngram-size", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--ctx-len", type=int, default=512)
    p.add_argument("--prefill-seq-len", type=int, default=64)
    p.add_argument("--dtype", default="float32", choices=DTYPES)
    p.add_argument("--device", default="cpu")
    p.add_argument("--compile", default=os.environ.get("SPECDEC_COMPILE", "on"), choices=["on", "off"])
    p.add_argument("--repeats", type=int, default=3,
                   help="passes of each gRPC row, the rows in turn; each reports its median (3)")
    p.add_argument("--limit", type=int, default=0,
                   help="only the first N requests of the workload and of the prompts (0 = all)")
    p.add_argument("--json", type=Path, default=None, help="write the figures as JSON")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tok = load_tokenizer(args.target_model)
    cut = slice(None, args.limit or None)
    workload: list[Request] = load(args.workload)[cut]
    sets = {"workload": [(tok(r.text)["input_ids"], r.follow_up) for r in workload],
            "general": [(tok(t)["input_ids"], False) for t in BENCH_PROMPTS][cut]}
    new = args.max_new_tokens
    target_only = GenerationConfig(0, new, ignore_eos=True)
    ngram = GenerationConfig(args.ngram_k, new, ignore_eos=True)
    suffix = GenerationConfig(args.suffix_k, new, ignore_eos=True)
    max_k = max(args.ngram_k, args.suffix_k)
    # Every draft length up to max k is a verify window: suffix drafts are as long as the match.
    _, v_flags, p_flags = service_flags(args, max_k, list(range(max_k + 1)))
    print(f"bench.suffix: {len(workload)} workload requests, {len(sets['general'])} general "
          f"prompts, x {new} tokens; prompt lookup k = {args.ngram_k}, suffix k <= {args.suffix_k}",
          file=sys.stderr)

    services = [start_verifier(args, v_flags), start_proposer(args, p_flags, Method.NGRAM)]
    verifier, ngram_addr = services[0].address, services[1].address

    def fresh_suffix(requests: list[tuple[list[int], bool]]) -> list[GenerationRecord]:
        proposer = start_proposer(args, p_flags, Method.SUFFIX)
        try:
            return asyncio.run(run_grpc(verifier, proposer.address, requests, suffix))
        finally:
            proposer.stop()

    results: dict[str, dict[str, tuple[list[GenerationRecord], BatchMetrics]]] = {}
    try:
        for name, requests in sets.items():
            print(f"\n{name}:", file=sys.stderr)

            def row(run: Callable[[list[tuple[list[int], bool]]], list[GenerationRecord]],
                    reqs: list[tuple[list[int], bool]] = requests):
                return lambda warmup: run(reqs[:1] if warmup else reqs)
            rows = [("(a) target-only, gRPC", row(lambda r: asyncio.run(run_grpc(verifier, None, r, target_only)))),
                    ("(n) prompt lookup, gRPC", row(lambda r: asyncio.run(run_grpc(verifier, ngram_addr, r, ngram)))),
                    ("(s) suffix decoding, gRPC", row(fresh_suffix))]
            measured = measured_in_turn(rows, args.repeats)
            results[name] = dict(zip(("target_only", "prompt_lookup", "suffix"), measured))
    finally:
        for svc in services:
            svc.stop()

    hf = load_hf(args.target_model)
    figures: dict = {"setup": {"workload": str(args.workload), "requests": len(workload),
                               "max_new_tokens": new, "ngram_k": args.ngram_k,
                               "suffix_k": args.suffix_k, "device": args.device,
                               "dtype": args.dtype, "compile": args.compile,
                               "repeats": args.repeats}}
    same = True
    for name, requests in sets.items():
        hf_out, tps, per_step = transformers_row(hf, requests, new, args.ngram_k, args.max_ngram_size)
        r = results[name]
        (a, ma), (n, mn), (s, ms) = r["target_only"], r["prompt_lookup"], r["suffix"]
        outputs = [[x.tokens for x in rec] for rec in (a, n, s)] + [hf_out]
        ok = all(o == outputs[0] for o in outputs)
        same = same and ok
        figures[name] = {
            "tokens_per_s": {"target_only": ma.e2e_throughput, "prompt_lookup": mn.e2e_throughput,
                             "suffix": ms.e2e_throughput, "transformers_prompt_lookup": tps},
            "tokens_per_step": {"prompt_lookup": mn.mean_accepted_tokens,
                                "suffix": ms.mean_accepted_tokens,
                                "transformers_prompt_lookup": per_step},
            "suffix_vs_prompt_lookup_tokens_per_step": ms.mean_accepted_tokens / mn.mean_accepted_tokens,
            "suffix_vs_prompt_lookup_tokens_per_s": ms.e2e_throughput / mn.e2e_throughput,
            "suffix_vs_target_only_tokens_per_s": ms.e2e_throughput / ma.e2e_throughput,
            "suffix_vs_transformers_prompt_lookup_tokens_per_s": ms.e2e_throughput / tps,
            "identical_outputs": ok,
        }
    for name in sets:
        f = figures[name]
        print(f"\n{name}: suffix / prompt lookup: tokens per step "
              f"{f['suffix_vs_prompt_lookup_tokens_per_step']:.2f}x "
              f"({f['tokens_per_step']['suffix']:.2f} vs {f['tokens_per_step']['prompt_lookup']:.2f}), "
              f"tokens/s {f['suffix_vs_prompt_lookup_tokens_per_s']:.2f}x; suffix / target-only "
              f"{f['suffix_vs_target_only_tokens_per_s']:.2f}x; suffix / transformers prompt lookup "
              f"{f['suffix_vs_transformers_prompt_lookup_tokens_per_s']:.2f}x")
    print(f"identical outputs across every row: {same}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
