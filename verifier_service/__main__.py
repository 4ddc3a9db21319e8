"""python -m verifier_service --model PATH [flags]   (flags also as SPECDEC_* variables)"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from specdec.build import build_verifier
from specdec.verifier import TargetVerifier
from specdec.warm_up import warm_up_verifier
from specdec_rpc.convert import model_info
from specdec_rpc.hosting import host_backend
from specdec_rpc.server import ServerConfig, run_service, setup_logging
from specdec_rpc.service_cli import describe, local_model
from specdec_rpc.sessions import SessionPolicy
from specdec_rpc.v1 import specdec_pb2 as pb
from specdec_rpc.v1 import specdec_pb2_grpc as pb_grpc
from verifier_service.config import VerifierServiceConfig, from_args
from verifier_service.servicer import VerifierServicer

log = logging.getLogger("verifier_service")
SERVICE = pb.DESCRIPTOR.services_by_name["Verifier"].full_name


def build(cfg: VerifierServiceConfig) -> tuple[TargetVerifier, pb.ModelInfo]:
    verifier = build_verifier(local_model(cfg.engine), cfg.window_sizes, cfg.executor, cfg.batching,
                              cfg.admission, cfg.qaic)
    asyncio.run(warm_up_verifier(verifier))  # on the load thread: a loop of its own, until done
    return verifier, model_info(verifier.engine, cfg.engine, verifier.fingerprint, verifier.max_k,
                                cfg.speculative_model_type, cfg.executor)


async def run(cfg: VerifierServiceConfig) -> bool:
    return await host(cfg.server, lambda: build(cfg), cfg.sessions)


async def host(server: ServerConfig, build: Callable[[], tuple[TargetVerifier, pb.ModelInfo]],
               sessions: SessionPolicy, **hosting: Any) -> bool:
    """The verifier service on a built (or building) backend; hosting: host_backend's stop,
    on_ready and metrics (the tests host theirs in-process through here)."""
    return await host_backend(server, "verifier", SERVICE, VerifierServicer,
                              pb_grpc.add_VerifierServicer_to_server, lambda m: m.observe_verifier_step,
                              build, sessions, **hosting)


def main(argv: list[str] | None = None) -> None:
    cfg = from_args(argv)
    setup_logging(cfg.log_level)
    log.info("config: %s", describe(cfg))
    run_service(lambda: run(cfg))


if __name__ == "__main__":
    main()
