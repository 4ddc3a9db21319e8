"""python -m proposer_service --method draft --model PATH | --method ngram [flags]"""

from __future__ import annotations

import argparse
import asyncio
import logging

from specdec.build import build_draft_proposer
from specdec.proposers.prompt_lookup import PromptLookupProposer
from specdec_rpc.convert import model_info
from specdec_rpc.server import serve, setup_logging
from specdec_rpc.service_cli import (add_service_args, admission, engine_config, server_config,
                                     session_runner)
from specdec_rpc.v1 import specdec_pb2 as pb
from specdec_rpc.v1 import specdec_pb2_grpc as pb_grpc
from proposer_service.servicer import ProposerServicer

log = logging.getLogger("proposer_service")

TURBO_HELP = """proposer_service: Turbo (multi-projection) heads need the target's hidden states, so they run
inside the verifier's forward pass, not in a proposer service: each verify reply carries the
next round's drafts, and a Turbo round costs one target forward and no proposer call.
Start the verifier with the heads instead:

    python -m verifier_service --model PATH --speculative-model-type turbo

(PATH holds the base checkpoint plus speculator_config.json and speculator.safetensors), and
generate with `python -m client.multi_projection --verifier HOST:PORT`, or let
`python -m client.multi_projection --pretrained-model-name-or-path PATH` start it for you.
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="proposer_service", description=(
        "Speculative-decoding proposer: guesses the next k tokens for the verifier to check."))
    parser.add_argument("--method", default="draft", choices=["draft", "ngram", "turbo"],
                        help="draft = a small draft model (default); ngram = prompt lookup; "
                             "turbo runs in the verifier, not here")
    parser.add_argument("--max-ngram-size", type=int, default=3,
                        help="ngram: longest n-gram matched (3)")
    add_service_args(parser, default_max_k=8)
    args = parser.parse_args(argv)
    if args.method == "turbo":
        parser.exit(2, TURBO_HELP)
    setup_logging(args.log_level)
    cfg = engine_config(args)
    if args.method == "ngram":
        proposer = PromptLookupProposer(args.max_k, args.max_ngram_size, cfg.ctx_len,
                                        cfg.full_batch_size, admission(args))
        info = pb.ModelInfo(model_id="ngram", ctx_len=cfg.ctx_len, max_k=args.max_k,
                            full_batch_size=cfg.full_batch_size, method="ngram", executor="none",
                            device="cpu")
    else:
        if args.model is None:
            parser.error("--method draft needs --model")
        proposer = build_draft_proposer(cfg, args.max_k, args.executor, args.batching == "on",
                                        admission(args))
        info = model_info(proposer.engine, cfg, proposer.fingerprint, args.max_k, "draft",
                          args.executor)
    log.info("config: %s, method=%s, max_k=%d", cfg, args.method, args.max_k)
    servicer = ProposerServicer(proposer, info, session_runner(args))
    asyncio.run(serve(server_config(args),
                      lambda s: pb_grpc.add_ProposerServicer_to_server(servicer, s), "proposer"))


if __name__ == "__main__":
    main()
