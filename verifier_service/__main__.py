"""python -m verifier_service --model PATH [engine and server flags]"""

from __future__ import annotations

import argparse
import asyncio
import logging
from dataclasses import replace

from specdec.build import build_verifier
from specdec.windows import parse_sizes
from specdec_rpc.convert import model_info
from specdec_rpc.server import serve, setup_logging
from specdec_rpc.service_cli import (add_service_args, admission, engine_config, server_config,
                                     session_runner)
from specdec_rpc.v1 import specdec_pb2_grpc as pb_grpc
from verifier_service.servicer import VerifierServicer

log = logging.getLogger("verifier_service")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="verifier_service", description=(
        "Speculative-decoding verifier: hosts the target model and verifies drafts."))
    add_service_args(parser, default_max_k=8)
    parser.add_argument("--window-sizes", type=parse_sizes, default=None, metavar="K,K,...",
                        help="k values verify windows run at, like QEfficient's compiled "
                             "--num-speculative-tokens list: a draft of d tokens runs in the "
                             "smallest k >= d, padded with -1 (default: every k up to --max-k)")
    parser.add_argument("--speculative-model-type", default="target", choices=["target", "turbo"],
                        help="turbo: also evaluate the multi-projection heads beside the checkpoint "
                             "(speculator_config.json); k is their number (target)")
    args = parser.parse_args(argv)
    if args.model is None:
        parser.error("--model is required")
    setup_logging(args.log_level)
    cfg = replace(engine_config(args), turbo=args.speculative_model_type == "turbo")
    sizes = args.window_sizes or tuple(range(args.max_k + 1))
    log.info("config: %s, executor=%s, window sizes=%s", cfg, args.executor, sizes)
    verifier = build_verifier(cfg, sizes, args.executor, args.batching == "on", admission(args))
    info = model_info(verifier.engine, cfg, verifier.fingerprint, verifier.max_k,
                      args.speculative_model_type, args.executor)
    servicer = VerifierServicer(verifier, info, session_runner(args))
    asyncio.run(serve(server_config(args),
                      lambda s: pb_grpc.add_VerifierServicer_to_server(servicer, s), "verifier"))


if __name__ == "__main__":
    main()
