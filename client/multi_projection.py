"""Multi-projection ("Turbo") speculative decoding, with the flags of QEfficient's
multi_projection.py. The heads run inside the verifier's forward: every verify reply carries
the next round's drafts, so a round costs one target forward and no proposer call.

    python -m client.multi_projection --pretrained-model-name-or-path models/target
"""

from __future__ import annotations

import argparse

from client.cli_common import ServiceSpec, add_common_args, engine_args, run_cli, sampling_params
from specdec.engine.hub import resolve_model_path
from specdec.engine.turbo import read_turbo_config
from specdec.errors import START_ERRORS, exit_with
from specdec.flags import add_flag, to_argv
from specdec.generation import GenerationConfig
from specdec_rpc.service_cli import ServiceOptions
from verifier_service.config import VerifierServiceConfig


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="client.multi_projection", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrained-model-name-or-path", default="models/target",
                   help="base checkpoint directory with speculator_config.json and "
                        "speculator.safetensors beside it")
    add_flag(p, ServiceOptions, "device_group", prefix="verifier: ")
    add_common_args(p, prefill_seq_len=32, ctx_len=128)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model = args.pretrained_model_name_or_path
    try:   # k comes from the speculator config
        heads = read_turbo_config(resolve_model_path(model, weights=False)).num_heads
    except START_ERRORS as exc:   # no such model, or not a Turbo model
        exit_with(exc)
    services = {"verifier": ServiceSpec(
        "verifier", "verifier_service",
        [*engine_args(args, model, args.device_group, heads),
         *to_argv(VerifierServiceConfig, "speculative_model_type", "turbo")])}
    config = GenerationConfig(heads, args.max_new_tokens, args.ignore_eos_token, sampling_params(args))
    return run_cli(args, model, services, {"verifier": args.verifier}, config)


if __name__ == "__main__":
    raise SystemExit(main())
