"""python -m verifier_service --model PATH [flags]   (flags also as SPECDEC_* variables)"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from client.api import RemoteProposer
from specdec.build import build_verifier
from specdec.verifier import TargetVerifier
from specdec.warm_up import warm_up_verifier
from specdec_rpc.convert import model_info
from specdec_rpc.hosting import host_backend
from specdec_rpc.server import ServerConfig, run_service, setup_logging
from specdec_rpc.service_cli import describe, local_model
from specdec_rpc.sessions import SessionPolicy, SessionRunner
from specdec_rpc.v1 import specdec_pb2 as pb
from specdec_rpc.v1 import specdec_pb2_grpc as pb_grpc
from verifier_service.config import VerifierServiceConfig, from_args
from verifier_service.openai_http import OpenAIServer
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
    return await host(cfg.server, lambda: build(cfg), cfg.sessions, proposer=cfg.proposer,
                      http_port=cfg.http_port)


async def host(server: ServerConfig, build: Callable[[], tuple[TargetVerifier, pb.ModelInfo]],
               sessions: SessionPolicy, proposer: str | None = None, http_port: int = 0,
               **hosting: Any) -> bool:
    """The verifier service on a built (or building) backend; proposer: --proposer, the proposer
    service Generate's method `draft` uses; http_port: --http-port, the OpenAI API (0 = off);
    hosting: host_backend's stop, on_ready and metrics (the tests host theirs in-process
    through here)."""
    # The proposer service is called as one service of the deployment calls another: this one's
    # token, and with mutual TLS its certificate and CA (ServerSecurity.as_client).
    remote = RemoteProposer(proposer, server.security.as_client()) if proposer else None
    http = OpenAIServer(server.host, http_port, server.security, server.grace_s) if http_port else None

    def servicer(runner: SessionRunner) -> VerifierServicer:
        made = VerifierServicer(runner, remote)
        if http is not None:
            http.servicer = made   # requests get 503 until it is ready (and from the drain on)
            runner.lifecycle.on_drain(lambda: http.drain_started())
        return made

    try:
        if http is not None:
            await http.start()
        return await host_backend(server, "verifier", SERVICE, servicer,
                                  pb_grpc.add_VerifierServicer_to_server,
                                  lambda m: m.observe_verifier_step, build, sessions, **hosting)
    finally:
        if http is not None:
            await http.stop()
        if remote is not None:
            await remote.close()


def main(argv: list[str] | None = None) -> None:
    cfg = from_args(argv)
    setup_logging(cfg.log_level)
    log.info("config: %s", describe(cfg))
    run_service(lambda: run(cfg))


if __name__ == "__main__":
    main()
