"""python -m proposer_service --method draft --model PATH [engine and server flags]"""

from __future__ import annotations

import argparse
import asyncio
import logging

from specdec.build import build_draft_proposer
from specdec_rpc.convert import model_info
from specdec_rpc.server import serve, setup_logging
from specdec_rpc.service_cli import add_service_args, engine_config, server_config
from specdec_rpc.v1 import specdec_pb2_grpc as pb_grpc
from proposer_service.servicer import ProposerServicer

log = logging.getLogger("proposer_service")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="proposer_service", description=(
        "Speculative-decoding proposer: guesses the next k tokens for the verifier to check."))
    parser.add_argument("--method", default="draft", choices=["draft"],
                        help="proposer kind: draft = a small draft model (default)")
    add_service_args(parser, default_max_k=8)
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    cfg = engine_config(args)
    log.info("config: %s, method=%s, executor=%s, max_k=%d", cfg, args.method, args.executor,
             args.max_k)
    proposer = build_draft_proposer(cfg, args.max_k, args.executor)
    info = model_info(proposer.engine, cfg, proposer.fingerprint, args.max_k, args.method, args.executor)
    servicer = ProposerServicer(proposer, info)
    asyncio.run(serve(server_config(args),
                      lambda s: pb_grpc.add_ProposerServicer_to_server(servicer, s), "proposer"))


if __name__ == "__main__":
    main()
