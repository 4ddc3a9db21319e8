"""Multi-projection ("Turbo") speculative decoding, with the flags of QEfficient's
multi_projection.py. The heads run inside the verifier's forward: every verify reply carries
the next round's drafts, so a round costs one target forward and no proposer call.

    python -m client.multi_projection --pretrained-model-name-or-path models/target
"""

from __future__ import annotations

import argparse

from client.cli_common import AUTO, add_common_args, engine_args, generation_config, k_or_auto, run_cli
from specdec.engine.hub import resolve_model_path
from specdec.engine.turbo import read_turbo_config
from specdec.errors import START_ERRORS, exit_with
from specdec.flags import add_flag, to_argv
from specdec.method import Method
from specdec.service_config import ServiceOptions, VerifierOptions


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="client.multi_projection", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrained-model-name-or-path", default="models/target",
                   help="base checkpoint directory with speculator_config.json and "
                        "speculator.safetensors beside it")
    p.add_argument("--num-speculative-tokens", type=k_or_auto(int), default=None, metavar="K|auto",
                   help="k, the heads' guesses verified per step (at most the heads); auto = "
                        "each step picks the k in 0..heads with the most expected tokens per "
                        "second, so weak guesses cost little (default: every head)")
    add_flag(p, ServiceOptions, "device_group", prefix="verifier: ")
    add_common_args(p, prefill_seq_len=32, ctx_len=128)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = parser()
    args = p.parse_args(argv)
    k = args.num_speculative_tokens
    if k is not None and k != AUTO and k < 0:
        p.error("--num-speculative-tokens must be >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model = args.pretrained_model_name_or_path
    try:   # k comes from the speculator config
        heads = read_turbo_config(resolve_model_path(model, weights=False)).num_heads
    except START_ERRORS as exc:   # no such model, or not a Turbo model
        exit_with(exc)
    services = {"verifier": [*engine_args(args, model, args.device_group, heads),
                             *to_argv(VerifierOptions, "speculative_model_type", Method.TURBO)]}
    auto = args.num_speculative_tokens == AUTO
    k = heads if auto or args.num_speculative_tokens is None else min(args.num_speculative_tokens, heads)
    return run_cli(args, model, services, {"verifier": args.verifier}, generation_config(args, k, auto),
                   method=Method.TURBO)


if __name__ == "__main__":
    raise SystemExit(main())
