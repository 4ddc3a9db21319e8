"""The verifier service's typed configuration, built once from flags and environment."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace

from specdec.config import EngineConfig
from specdec.slots import Admission
from specdec.windows import parse_sizes
from specdec_rpc.server import ServerConfig
from specdec_rpc.service_cli import (add_service_args, admission, engine_config, parse_with_env,
                                     server_config, session_policy)
from specdec_rpc.sessions import SessionPolicy


@dataclass(frozen=True)
class VerifierServiceConfig:
    engine: EngineConfig
    server: ServerConfig
    admission: Admission
    sessions: SessionPolicy
    executor: str
    batching: bool
    window_sizes: tuple[int, ...]   # k values verify windows run at
    speculative_model_type: str     # "target" or "turbo"
    log_level: str


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="verifier_service", description=(
        "Speculative-decoding verifier: hosts the target model and verifies drafts. Every flag "
        "can also be set as SPECDEC_<FLAG> in the environment (e.g. SPECDEC_CTX_LEN)."))
    add_service_args(p, default_max_k=8)
    p.add_argument("--window-sizes", type=parse_sizes, default=None, metavar="K,K,...",
                   help="k values verify windows run at, like QEfficient's compiled "
                        "--num-speculative-tokens list: a draft of d tokens runs in the "
                        "smallest k >= d, padded with -1 (default: every k up to --max-k)")
    p.add_argument("--speculative-model-type", default="target", choices=["target", "turbo"],
                   help="turbo: also evaluate the multi-projection heads beside the checkpoint "
                        "(speculator_config.json); k is their number (target)")
    return p


def from_args(argv: list[str] | None = None) -> VerifierServiceConfig:
    p = parser()
    args = parse_with_env(p, argv)
    if args.model is None:
        p.error("--model (or SPECDEC_MODEL) is required")
    turbo = args.speculative_model_type == "turbo"
    return VerifierServiceConfig(
        engine=replace(engine_config(args), turbo=turbo), server=server_config(args),
        admission=admission(args), sessions=session_policy(args), executor=args.executor,
        batching=args.batching == "on",
        window_sizes=args.window_sizes or tuple(range(args.max_k + 1)),
        speculative_model_type=args.speculative_model_type, log_level=args.log_level)
