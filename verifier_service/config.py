"""The verifier service's typed configuration, built once from flags and environment."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace

from specdec.config import EngineConfig, QaicOptions
from specdec.flags import flag, values
from specdec.slots import Admission
from specdec.windows import parse_sizes
from specdec_rpc.server import ServerConfig
from specdec_rpc.service_cli import ServiceOptions, add_service_args, held_configs, parse_with_env
from specdec_rpc.sessions import SessionPolicy


@dataclass(frozen=True, kw_only=True)
class VerifierServiceConfig(ServiceOptions):
    engine: EngineConfig
    server: ServerConfig
    admission: Admission
    sessions: SessionPolicy
    window_sizes: tuple[int, ...] = flag(
        parse=parse_sizes, cli_default=None, metavar="K,K,...", shown="torch: 0..max-k; qaic: 0,max-k",
        help="verify window sizes (QEfficient's compiled `num_speculative_tokens` list); a draft "
             "of d tokens runs in the smallest k >= d, padded with -1")
    speculative_model_type: str = flag(
        "target", choices=("target", "turbo"),
        help="`turbo` evaluates the multi-projection heads beside the checkpoint "
             "(speculator_config.json); k is their number")
    proposer: str | None = flag(
        None, metavar="ADDR", shown="off",
        help="the proposer service (address, replica list or dns:///name:port) the Generate RPC "
             "drafts with for method `draft`, called with this service's --auth-token and, with "
             "--tls-client-ca (mutual TLS), over TLS with this service's certificate, trusting "
             "that CA")
    http_port: int = flag(
        0, shown="off",
        help="serve the OpenAI API (/v1/completions, /v1/chat/completions, /v1/models) over HTTP "
             "on this port, with this service's --host, token and TLS; 0 = off")
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
    turbo = args.speculative_model_type == "turbo"
    own = values(VerifierServiceConfig, args)
    own["window_sizes"] = args.window_sizes or default_windows(args.executor, args.max_k)
    return VerifierServiceConfig(**own, **{**held, "engine": replace(held["engine"], turbo=turbo)})


def default_windows(executor: str, max_k: int) -> tuple[int, ...]:
    # Each size is a compiled specialization on Cloud AI 100: keep two there (a cheap 1-token
    # window and the full one); torch runs any size as it is.
    return tuple(sorted({0, max_k})) if executor == "qaic" else tuple(range(max_k + 1))
