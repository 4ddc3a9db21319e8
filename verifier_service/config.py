"""The verifier service's typed configuration, built once from flags and environment."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace

from specdec.admission import Admission
from specdec.config import EngineConfig, QaicOptions
from specdec.flags import values
from specdec.method import Method
from specdec.service_config import VerifierOptions, default_windows
from specdec_rpc.server import ServerConfig
from specdec_rpc.service_cli import add_service_args, held_configs, parse_with_env
from specdec_rpc.sessions import SessionPolicy


@dataclass(frozen=True, kw_only=True)
class VerifierServiceConfig(VerifierOptions):
    engine: EngineConfig
    server: ServerConfig
    admission: Admission
    sessions: SessionPolicy
    qaic: QaicOptions | None        # compile settings for --executor qaic, else None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="verifier_service", description=(
        "Speculative-decoding verifier: hosts the target model and verifies drafts. Every flag "
        "can also be set as SPECDEC_<FLAG> in the environment (e.g. SPECDEC_CTX_LEN)."))
    add_service_args(p, VerifierServiceConfig, num_cores=11)
    return p


def from_args(argv: list[str] | None = None) -> VerifierServiceConfig:
    p = parser()
    args = parse_with_env(p, argv)
    if args.model is None:
        p.error("--model (or SPECDEC_MODEL) is required")
    held = held_configs(args)
    turbo = args.speculative_model_type == Method.TURBO
    own = values(VerifierServiceConfig, args)
    own["window_sizes"] = args.window_sizes or default_windows(args.executor, args.max_k)
    return VerifierServiceConfig(**own, **{**held, "engine": replace(held["engine"], turbo=turbo)})
