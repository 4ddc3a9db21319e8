"""Draft-model speculative decoding over gRPC, with the flags of QEfficient's draft_based.py.

    python -m client.draft_based --target-model-name models/target --draft-model-name models/draft
"""

from __future__ import annotations

import argparse

from client.cli_common import (
    AUTO,
    AUTO_MAX_K,
    add_common_args,
    engine_args,
    generation_config,
    k_or_auto,
    run_cli,
    service_device_groups,
)
from specdec.flags import add_flag, to_argv
from specdec.generation import GenerationConfig
from specdec.method import Method
from specdec.service_config import ProposerOptions, ServiceOptions, VerifierOptions


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="client.draft_based", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--draft-model-name", default="models/draft", help="draft checkpoint directory")
    p.add_argument("--target-model-name", default="models/target",
                   help="target checkpoint directory (its tokenizer encodes the prompts)")
    p.add_argument("--num-speculative-tokens", type=k_or_auto(int), default=4, metavar="K|auto",
                   help="k, drafts per step; auto = each step picks the k in 0..max k with the most "
                        f"expected tokens per second (max k: the services', {AUTO_MAX_K} if started here) "
                        "(default: 4)")
    add_flag(p, ServiceOptions, "device_group", name="--target-device-group", prefix="verifier: ",
             shown="cuda 0, or on a CPU the first half of the cores")
    add_flag(p, ServiceOptions, "device_group", name="--draft-device-group", prefix="proposer: ",
             shown="cuda 0, or on a CPU the other half")
    add_flag(p, GenerationConfig, "draft_top_m")
    add_common_args(p)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = parser()
    args = p.parse_args(argv)
    if args.num_speculative_tokens != AUTO and args.num_speculative_tokens < 0:
        p.error("--num-speculative-tokens must be >= 0")
    if args.server_side and args.draft_top_m != GenerationConfig.draft_top_m:
        p.error(f"--server-side: the verifier's loop samples drafts from the top "
                f"{GenerationConfig.draft_top_m}; drop --draft-top-m")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    auto = args.num_speculative_tokens == AUTO
    k = AUTO_MAX_K if auto else args.num_speculative_tokens
    target_group, draft_group = service_device_groups(args, args.target_device_group,
                                                      args.draft_device_group)
    # A draft model proposes k tokens each round: windows of k (and 0, target-only steps); with
    # auto, any k (the verifier's default windows).
    services = {"verifier": [*engine_args(args, args.target_model_name, target_group, k),
                             *([] if auto else to_argv(VerifierOptions, "window_sizes", (0, k)))]}
    if k:
        services["proposer"] = [*to_argv(ProposerOptions, "method", Method.DRAFT),
                                *to_argv(ProposerOptions, "target_model_name", args.target_model_name),
                                *engine_args(args, args.draft_model_name, draft_group, k, draft=True)]
    config = generation_config(args, k, auto, draft_top_m=args.draft_top_m)
    return run_cli(args, args.target_model_name, services,
                   {"verifier": args.verifier, "proposer": args.proposer}, config)


if __name__ == "__main__":
    raise SystemExit(main())
