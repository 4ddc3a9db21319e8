"""python -m proposer_service --method draft --model PATH | --method ngram | --method suffix [flags]
(flags also as SPECDEC_* variables)"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from proposer_service.config import ProposerServiceConfig, from_args
from proposer_service.servicer import ProposerServicer
from specdec.build import build_proposer
from specdec.method import Method
from specdec.proposers.base import Proposer
from specdec.proposers.translated_draft import TranslatedDraftProposer
from specdec.service_config import suffix_options
from specdec.warm_up import warm_up_proposer
from specdec_rpc.convert import model_info
from specdec_rpc.hosting import host_backend
from specdec_rpc.server import ServerConfig, run_service, setup_logging
from specdec_rpc.service_cli import describe, local_model
from specdec_rpc.sessions import SessionPolicy
from specdec_rpc.v1 import specdec_pb2 as pb
from specdec_rpc.v1 import specdec_pb2_grpc as pb_grpc

log = logging.getLogger("proposer_service")
SERVICE = pb.DESCRIPTOR.services_by_name["Proposer"].full_name


def build(cfg: ProposerServiceConfig) -> tuple[Proposer, pb.ModelInfo]:
    e = cfg.engine
    proposer = build_proposer(cfg.method, local_model(e) if cfg.method == Method.DRAFT else e, cfg.max_k,
                              cfg.max_ngram_size, cfg.executor, cfg.batching, cfg.admission, cfg.qaic,
                              pre_draft_branches=cfg.pre_draft_branches, suffix=suffix_options(cfg),
                              target_model=cfg.target_model_name)
    draft_fingerprint = proposer.draft_fingerprint if isinstance(proposer, TranslatedDraftProposer) else ""
    if draft_fingerprint:
        log.info("the draft's tokenizer (%s) is not the target's (%s): drafts are translated",
                 draft_fingerprint, proposer.fingerprint)
    asyncio.run(warm_up_proposer(proposer))  # on the load thread: a loop of its own
    executor = cfg.executor if proposer.engine else "none"
    return proposer, model_info(proposer.engine, e, proposer.fingerprint, cfg.max_k, cfg.method,
                                executor, draft_fingerprint)


async def run(cfg: ProposerServiceConfig) -> bool:
    return await host(cfg.server, lambda: build(cfg), cfg.sessions)


async def host(server: ServerConfig, build: Callable[[], tuple[Proposer, pb.ModelInfo]],
               sessions: SessionPolicy, **hosting: Any) -> bool:
    """The proposer service on a built (or building) backend; hosting: host_backend's stop,
    on_ready and metrics (the tests host theirs in-process through here)."""
    return await host_backend(server, "proposer", SERVICE, ProposerServicer,
                              pb_grpc.add_ProposerServicer_to_server, lambda m: m.observe_proposer_step,
                              build, sessions, **hosting)


def main(argv: list[str] | None = None) -> None:
    cfg = from_args(argv)
    setup_logging(cfg.log_level)
    log.info("config: %s", describe(cfg))
    run_service(lambda: run(cfg))


if __name__ == "__main__":
    main()
