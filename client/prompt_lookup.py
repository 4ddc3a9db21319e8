"""Prompt-lookup (n-gram) speculative decoding, with the flags of QEfficient's prompt_lookup.py.

    python -m client.prompt_lookup --target-model-name models/target --num-speculative-tokens 0,3

The n-gram search runs in a proposer service (`--method ngram`), or inside the client with
--local-proposer (no proposer round trip). `--method suffix` looks up suffix decoding's tries
instead: this session's sequence and those of the sessions the proposer finished before.
--num-speculative-tokens takes a comma list, as QEfficient's multi-K does: the verify window
sizes (compiled specializations on Cloud AI 100, any size on torch); each step uses the
smallest that holds its draft, and the largest is k.
`--num-speculative-tokens auto` picks k each step (the verifier's default window sizes).
With --server-side the verifier runs the loop, with its own prompt lookup (no proposer service).
"""

from __future__ import annotations

import argparse

from client.cli_common import (
    AUTO,
    AUTO_MAX_K,
    add_common_args,
    concurrency,
    engine_args,
    generation_config,
    k_or_auto,
    run_cli,
)
from specdec.build import build_proposer
from specdec.config import EngineConfig
from specdec.flags import add_flag, to_argv
from specdec.method import Method, method_arg
from specdec.service_config import (
    SUFFIX_FLAGS,
    ProposerOptions,
    ServiceOptions,
    VerifierOptions,
    check_suffix_args,
    suffix_options,
)
from specdec.windows import parse_sizes

# k by method: prompt lookup drafts k tokens whenever an n-gram matches, so a small k; suffix
# decoding drafts as far as its match supports, so k only caps it (python -m bench.suffix).
DEFAULT_K = {Method.NGRAM: 3, Method.SUFFIX: 8}
LOOKUPS = tuple(DEFAULT_K)

REPEATED_PATTERN_PROMPTS = [
    "x = 1\ny = 2\nz = 3\nprint(x)\nprint(y)\nprint(z)\nx = 1\ny = 2\n",
    "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n\n\ndef mul(a, b):\n",
]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="client.prompt_lookup", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target-model-name", default="models/target",
                   help="target checkpoint directory (its tokenizer encodes the prompts)")
    p.add_argument("--num-speculative-tokens", type=k_or_auto(parse_sizes), default=None,
                   metavar="K[,K...]|auto",
                   help="verify window sizes, e.g. 0,3; the largest is k; auto = each step picks "
                        f"the k in 0..max k with the most expected tokens per second (max k "
                        f"{AUTO_MAX_K} in services started here) (default: {DEFAULT_K[Method.NGRAM]}; "
                        f"{DEFAULT_K[Method.SUFFIX]} with --method suffix, whose drafts "
                        "are sized from the match, k the most)")
    p.add_argument("--method", choices=LOOKUPS, type=method_arg(LOOKUPS), default=Method.NGRAM,
                   help="the lookup: `ngram` (prompt lookup) or `suffix` (suffix decoding) "
                        "(default: ngram)")
    for field in ("max_ngram_size", *SUFFIX_FLAGS):
        add_flag(p, ProposerOptions, field)
    add_flag(p, ServiceOptions, "device_group", prefix="verifier: ")
    p.add_argument("--local-proposer", action="store_true",
                   help="run the lookup (--method) inside the client, without a proposer service")
    add_common_args(p, prefill_seq_len=256, ctx_len=1024)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = parser()
    args = p.parse_args(argv)
    if args.num_speculative_tokens is None:
        args.num_speculative_tokens = (DEFAULT_K[args.method],)
    if args.max_ngram_size < 1:
        p.error("--max-ngram-size must be >= 1")
    check_suffix_args(p, args)
    if args.server_side and (args.local_proposer or args.method != Method.NGRAM
                             or args.max_ngram_size != ProposerOptions.max_ngram_size):
        p.error("--server-side runs the verifier's own prompt lookup (method ngram, max n-gram size "
                f"{ProposerOptions.max_ngram_size}): no --local-proposer, --method suffix or "
                "--max-ngram-size")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    auto = args.num_speculative_tokens == AUTO
    sizes: tuple[int, ...] = () if auto else args.num_speculative_tokens
    k = AUTO_MAX_K if auto else sizes[-1]
    window = to_argv(VerifierOptions, "window_sizes", sizes) if sizes else []
    services = {"verifier": [*engine_args(args, args.target_model_name, args.device_group, k), *window]}
    local = None
    if k and args.local_proposer:
        sessions = EngineConfig(args.target_model_name, ctx_len=args.ctx_len,
                                full_batch_size=concurrency(args))
        local = build_proposer(args.method, sessions, k, args.max_ngram_size,
                               suffix=suffix_options(args))
    elif k and not args.server_side:
        services["proposer"] = [
            *(a for field in ("method", "max_ngram_size", *SUFFIX_FLAGS)
              for a in to_argv(ProposerOptions, field, getattr(args, field))),
            *to_argv(ProposerOptions, "max_k", k), *to_argv(EngineConfig, "ctx_len", args.ctx_len),
            *to_argv(EngineConfig, "full_batch_size", concurrency(args))]
    return run_cli(args, args.target_model_name, services,
                   {"verifier": args.verifier, "proposer": args.proposer}, generation_config(args, k, auto),
                   REPEATED_PATTERN_PROMPTS, local, Method.NGRAM)


if __name__ == "__main__":
    raise SystemExit(main())
