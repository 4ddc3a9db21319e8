"""Pre-drafting's branch budget F against sequential drafting, in one run.

    python -m bench.branches                      # F = 0 (sequential), 2, 4, 6, 8, 12
    python -m bench.branches --branches 0,4,8 --repeats 7

Starts one verifier and a draft proposer per F (`--pre-draft-branches F`), all on the
proposer's cores, and decodes the bench prompts through each in turn (`--repeats` times,
bench.measure.measured_in_turn): tokens/s, over F = the first, and the share of drafts answered
from a pre-drafted branch. Every row must give the same tokens (greedy: lossless).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from bench.__main__ import BENCH_PROMPTS, run_grpc, service_flags, start_proposer, start_verifier
from bench.__main__ import parse_args as bench_args
from bench.measure import measured_in_turn
from client.cli_common import load_tokenizer
from specdec.generation import GenerationConfig
from specdec.method import Method
from specdec.windows import parse_sizes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.branches", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--branches", type=parse_sizes, default=(0, 2, 4, 6, 8, 12),
                   help="the F of each row, the first the baseline (0,2,4,6,8,12)")
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--compile", default="on", choices=["on", "off"])
    args = p.parse_args(argv)
    bench = bench_args(["--k", str(args.k), "--compile", args.compile])
    prompts = [load_tokenizer(bench.target_model)(t)["input_ids"] for t in BENCH_PROMPTS]
    _, v_flags, p_flags = service_flags(bench, args.k, [0, args.k])
    services = [start_verifier(bench, v_flags, wait=False),
                *(start_proposer(bench, p_flags, Method.DRAFT, f, wait=False) for f in args.branches)]
    config = GenerationConfig(args.k, bench.max_new_tokens, ignore_eos=True)
    try:
        for s in services:
            s.wait_ready()
        verifier = services[0].address

        def row(f: int, proposer: str):
            return f"F={f}", lambda warmup: asyncio.run(
                run_grpc(verifier, proposer, prompts[:1] if warmup else prompts, config))
        results = measured_in_turn([row(f, s.address) for f, s in zip(args.branches, services[1:])],
                                   args.repeats)
    finally:
        for s in services:
            s.stop()
    base = results[0][1].e2e_throughput
    for f, (_, m) in zip(args.branches, results):
        print(f"F = {f:2d}: {m.e2e_throughput:6.1f} tok/s  {m.e2e_throughput / base:.2f}x of F = "
              f"{args.branches[0]}  pre-drafted {m.pre_draft_hit_rate:.0%}")
    same = all([r.tokens for r in records] == [r.tokens for r in results[0][0]] for records, _ in results)
    print(f"same tokens in every row: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
