"""The proposer service's typed configuration, built once from flags and environment."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from specdec.build import PROPOSER_METHODS
from specdec.config import EngineConfig, QaicOptions
from specdec.engine.turbo import METHOD as TURBO
from specdec.flags import flag, values
from specdec.proposers.draft_model import DraftModelProposer
from specdec.proposers.suffix import DEFAULT_CACHE_REQUESTS, SuffixOptions
from specdec.proposers.suffix_trie import SpecParams
from specdec.slots import Admission
from specdec_rpc.server import ServerConfig
from specdec_rpc.service_cli import ServiceOptions, add_service_args, held_configs, parse_with_env
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


# Measured on the shipped models with compiled steps (CPU, batch 1, k = 4, `python -m bench`,
# the client asking for each draft): 8 branches ran at 1.29-1.33x of sequential drafting in
# three runs (hit rate 76%), 12 at 1.32x (86%, but no faster), 6 at 1.36x and 4 at 1.22-1.25x
# in earlier runs. 6 and 8 rows take the same batch bucket of the draft's compiled steps, so 8
# costs no more per depth. Each session then holds 1 + 8 KV slots of the draft.
DEFAULT_PRE_DRAFT_BRANCHES = 8


@dataclass(frozen=True, kw_only=True)
class ProposerServiceConfig(ServiceOptions):
    method: str = flag(DraftModelProposer.method, choices=(*PROPOSER_METHODS, TURBO),
                       help="`draft` (a small draft model), `ngram` (prompt lookup) or `suffix` "
                            "(suffix decoding: this session's and finished sessions' sequences); "
                            "`turbo` explains that the heads run in the verifier")
    engine: EngineConfig            # draft: the draft model; ngram: only ctx_len and sessions
    server: ServerConfig
    admission: Admission
    sessions: SessionPolicy
    max_ngram_size: int = flag(3, help="`ngram`: longest n-gram matched")
    suffix_cache_requests: int = flag(
        DEFAULT_CACHE_REQUESTS, help="`suffix`: finished sessions whose sequences the global cache "
                                     "keeps (the least recently used leave first: finished, or drafted "
                                     "from); `0` = none")
    max_spec_factor: float = flag(SpecParams.max_spec_factor,
                                  help="`suffix`: draft at most this many tokens per matched token")
    min_token_prob: float = flag(SpecParams.min_token_prob,
                                 help="`suffix`: stop a draft where its estimated probability "
                                      "(from the counts) falls below this")
    pre_draft_branches: int = flag(
        DEFAULT_PRE_DRAFT_BRANCHES, help="`draft`: after answering, draft the next round for this many likely "
                "verification outcomes while the verifier works, shared by the open sessions "
                "(at least one each; see \"Pre-drafting\"); a matching next request is "
                "answered at once; `0` = sequential")
    target_model_name: str | None = flag(
        None, help="`draft`: the target checkpoint (a directory or hub id; only its tokenizer files are "
                   "read); when its tokenizer is not the draft's, the draft model drafts in its own "
                   "tokens and the proposer translates them to the target's (see \"Drafts with "
                   "their own tokenizer\"); unset = the draft must share the target's tokenizer")
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
    if args.method == TURBO:
        p.exit(2, TURBO_HELP)
    if args.method == "draft" and args.model is None:
        p.error("--method draft needs --model (or SPECDEC_MODEL)")
    if args.max_ngram_size < 1:
        p.error("--max-ngram-size must be >= 1")
    if args.pre_draft_branches < 0:
        p.error("--pre-draft-branches must be >= 0")
    check_suffix_args(p, args)
    return ProposerServiceConfig(**values(ProposerServiceConfig, args), **held_configs(args))


def check_suffix_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The suffix flags' ranges (the service's and the prompt-lookup client's)."""
    if args.suffix_cache_requests < 0:
        p.error("--suffix-cache-requests must be >= 0")
    if args.max_spec_factor <= 0:
        p.error("--max-spec-factor must be > 0")
    if not 0 <= args.min_token_prob <= 1:
        p.error("--min-token-prob must be in 0..1")


def suffix_options(cfg: ProposerServiceConfig | argparse.Namespace) -> SuffixOptions:
    """From the service's config, or a client's parsed flags of the same names."""
    return SuffixOptions(cfg.suffix_cache_requests, SpecParams(cfg.max_spec_factor, cfg.min_token_prob))
