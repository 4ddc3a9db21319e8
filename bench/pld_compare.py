"""Prompt lookup here vs transformers' own (`generate(prompt_lookup_num_tokens=k)`): same model,
prompts, k and n-gram size; mean accepted tokens per target step of each, and both outputs
checked against plain greedy decoding.

    python -m bench.pld_compare --k 3

Tokens per step = (generated - 1) / (target forwards - 1): the first token comes from the
prefill in both. transformers' forwards are counted with a forward hook on its model.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from bench.__main__ import BENCH_PROMPTS
from bench.peers import hf_generate, hf_prompt_lookup, load_hf
from client.cli_common import load_tokenizer
from client.prompt_lookup import REPEATED_PATTERN_PROMPTS
from specdec.build import build_proposer, build_verifier
from specdec.config import EngineConfig
from specdec.generation import GenerationConfig, generate
from specdec.inprocess import InProcessProposerLink, InProcessVerifierLink
from specdec.method import Method


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.pld_compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target-model", default="models/target")
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--max-ngram-size", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    tok = load_tokenizer(args.target_model)
    texts = REPEATED_PATTERN_PROMPTS + BENCH_PROMPTS
    prompts = [tok(t)["input_ids"] for t in texts]
    model = load_hf(args.target_model)
    ctx = max(map(len, prompts)) + args.max_new_tokens + 1
    config = EngineConfig(model=args.target_model, ctx_len=ctx, prefill_seq_len=32, full_batch_size=1)
    verifier = build_verifier(config, tuple(range(args.k + 1)))
    ours_tokens = ours_steps = hf_tokens = hf_steps = 0
    rows = []
    for text, ids in zip(texts, prompts):
        ref, _ = hf_generate(model, ids, args.max_new_tokens)
        hf_out, hf_calls = hf_prompt_lookup(model, ids, args.max_new_tokens, args.k, args.max_ngram_size)

        async def ours(ids: list[int] = ids):
            v = InProcessVerifierLink(verifier)
            d = InProcessProposerLink(build_proposer(Method.NGRAM, config, args.k, args.max_ngram_size))
            rec = await generate(ids, v, d, GenerationConfig(args.k, args.max_new_tokens, True), ctx)
            await v.close()
            return rec

        rec = asyncio.run(ours())
        ours_tokens += len(rec.tokens) - 1
        ours_steps += rec.verify_steps
        hf_tokens += len(hf_out) - 1
        hf_steps += hf_calls - 1
        rows.append({"prompt": text[:30], "ours_per_step": (len(rec.tokens) - 1) / rec.verify_steps,
                     "hf_per_step": (len(hf_out) - 1) / (hf_calls - 1),
                     "ours_equals_greedy": rec.tokens == ref, "hf_equals_greedy": hf_out == ref})
        print(f"{text[:30]!r:<34} ours {rows[-1]['ours_per_step']:.2f}  transformers "
              f"{rows[-1]['hf_per_step']:.2f}  greedy-equal ours {rows[-1]['ours_equals_greedy']} "
              f"hf {rows[-1]['hf_equals_greedy']}")
    total = {"ours_mean_tokens_per_step": ours_tokens / ours_steps,
             "transformers_mean_tokens_per_step": hf_tokens / hf_steps,
             "k": args.k, "max_ngram_size": args.max_ngram_size, "prompts": rows}
    print(f"\nmean tokens per target step, k = {args.k}, n-gram <= {args.max_ngram_size}: "
          f"ours {total['ours_mean_tokens_per_step']:.2f}, transformers "
          f"{total['transformers_mean_tokens_per_step']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(total, indent=2))
    return 0 if all(r["ours_equals_greedy"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
