"""The verifier service's typed configuration, built once from flags and environment."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace

from specdec.config import EngineConfig
from specdec.slots import Admission
from specdec.windows import parse_sizes
from specdec_rpc.server import ServerConfig
from specdec_rpc.service_cli import (
    add_service_args,
    admission,
    engine_config,
    parse_with_env,
    qaic_options,
    server_config,
    session_policy,
)
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
    qaic: object                    # QaicOptions for --executor qaic, else None
    log_level: str


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="verifier_service", description=(
        "Speculative-decoding verifier: hosts the target model and verifies drafts. Every flag "
        "can also be set as SPECDEC_<FLAG> in the environment (e.g. SPECDEC_CTX_LEN)."))
    add_service_args(p, default_max_k=8, default_num_cores=11)
    p.add_argument("--window-sizes", type=parse_sizes, default=None, metavar="K,K,...",
                   help="k values verify windows run at, like QEfficient's compiled "
                        "--num-speculative-tokens list: a draft of d tokens runs in the "
                        "smallest k >= d, padded with -1 (default: torch every k up to "
                        "--max-k; qaic 0 and --max-k)")
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
        window_sizes=args.window_sizes or default_windows(args.executor, args.max_k),
        speculative_model_type=args.speculative_model_type, qaic=qaic_options(args),
        log_level=args.log_level)


def default_windows(executor: str, max_k: int) -> tuple[int, ...]:
    # Each size is a compiled specialization on Cloud AI 100: keep two there (a cheap 1-token
    # window and the full one); torch runs any size as it is.
    return tuple(sorted({0, max_k})) if executor == "qaic" else tuple(range(max_k + 1))
