"""The proposer service's typed configuration, built once from flags and environment."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from specdec.admission import Admission
from specdec.config import EngineConfig, QaicOptions
from specdec.flags import values
from specdec.method import Method
from specdec.service_config import ProposerOptions, check_suffix_args
from specdec_rpc.server import ServerConfig
from specdec_rpc.service_cli import add_service_args, held_configs, parse_with_env
from specdec_rpc.sessions import SessionPolicy

TURBO_HELP = """proposer_service: Turbo (multi-projection) heads need the target's hidden states, so they run
inside the verifier's forward pass, not in a proposer service: each verify reply carries the
next round's drafts, and a Turbo round costs one target forward and no proposer call.
Start the verifier with the heads instead:

    python -m verifier_service --model PATH --speculative-model-type turbo

(PATH holds the base checkpoint plus speculator_config.json and speculator.safetensors), and
generate with `python -m client.multi_projection --verifier HOST:PORT`, or let
`python -m client.multi_projection --pretrained-model-name-or-path PATH` start it for you.
"""


@dataclass(frozen=True, kw_only=True)
class ProposerServiceConfig(ProposerOptions):
    engine: EngineConfig            # draft: the draft model; ngram: only ctx_len and sessions
    server: ServerConfig
    admission: Admission
    sessions: SessionPolicy
    qaic: QaicOptions | None        # compile settings for --executor qaic, else None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="proposer_service", description=(
        "Speculative-decoding proposer: guesses the next k tokens for the verifier to check. "
        "Every flag can also be set as SPECDEC_<FLAG> in the environment."))
    add_service_args(p, ProposerServiceConfig, num_cores=5)
    return p


def from_args(argv: list[str] | None = None) -> ProposerServiceConfig:
    p = parser()
    args = parse_with_env(p, argv)
    if args.method == Method.TURBO:
        p.exit(2, TURBO_HELP)
    if args.method == Method.DRAFT and args.model is None:
        p.error("--method draft needs --model (or SPECDEC_MODEL)")
    if args.max_ngram_size < 1:
        p.error("--max-ngram-size must be >= 1")
    if args.pre_draft_branches < 0:
        p.error("--pre-draft-branches must be >= 0")
    check_suffix_args(p, args)
    return ProposerServiceConfig(**values(ProposerServiceConfig, args), **held_configs(args))
