"""The services' own flags, declared once (specdec.flags) for the services that parse them and
the client command lines that pass them on; each `*_service/config.py` extends these options."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from specdec.config import EXECUTORS
from specdec.flags import flag
from specdec.method import PROPOSER_METHODS, Method, method_arg
from specdec.proposers.suffix import DEFAULT_CACHE_REQUESTS, SuffixOptions
from specdec.proposers.suffix_trie import SpecParams
from specdec.windows import parse_sizes

LOG_LEVELS = ("debug", "info", "warning", "error")
# Fewer branches hit less often; more take longer to draft than a cheap verify leaves them, so
# the request waits for its branch (`python -m bench.branches`: F against sequential drafting).
# Each session holds 1 + F KV slots of the draft.
DEFAULT_PRE_DRAFT_BRANCHES = 4
PROPOSER_FLAG_METHODS = (*PROPOSER_METHODS, Method.TURBO)   # turbo: says where the heads run
TARGET = "target"   # QEfficient's speculative_model_type of a plain target (Turbo: Method.TURBO)


@dataclass(frozen=True, kw_only=True)
class ServiceOptions:
    """What both services' configs share beyond the engine: each service config extends it."""

    executor: str = flag("torch", choices=EXECUTORS,
                         help="`torch` (CPU/CUDA) or `qaic` (Cloud AI 100 through QEfficient)")
    device_group: str | None = flag(
        None, shown="cuda 0 / every core / card 0",
        help="device ids: torch uses `cuda:<first>` where CUDA exists, else the CPU, with the "
             "service's threads pinned to these cores (affinity, one torch thread per core); "
             "qaic the whole card group")
    max_k: int = flag(8, help="largest draft per step")
    batching: bool = flag(True, on_off=True,
                          help="coalesce the ready steps of all sessions into one engine call; "
                               "`off` = one call per step")
    log_level: str = flag("info", choices=LOG_LEVELS, help="log level (to stderr)")


@dataclass(frozen=True, kw_only=True)
class ProposerOptions(ServiceOptions):
    method: Method = flag(Method.DRAFT, choices=PROPOSER_FLAG_METHODS,
                          parse=method_arg(PROPOSER_FLAG_METHODS),
                          help="`draft` (a small draft model), `ngram` (prompt lookup) or `suffix` "
                               "(suffix decoding: this session's and finished sessions' sequences); "
                               "`turbo` explains that the heads run in the verifier")
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


SUFFIX_FLAGS = ("suffix_cache_requests", "max_spec_factor", "min_token_prob")


def check_suffix_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The suffix flags' ranges (the service's and the prompt-lookup client's)."""
    if args.suffix_cache_requests < 0:
        p.error("--suffix-cache-requests must be >= 0")
    if args.max_spec_factor <= 0:
        p.error("--max-spec-factor must be > 0")
    if not 0 <= args.min_token_prob <= 1:
        p.error("--min-token-prob must be in 0..1")


def suffix_options(cfg: ProposerOptions | argparse.Namespace) -> SuffixOptions:
    """From the service's config, or a client's parsed flags of the same names."""
    return SuffixOptions(cfg.suffix_cache_requests, SpecParams(cfg.max_spec_factor, cfg.min_token_prob))


@dataclass(frozen=True, kw_only=True)
class VerifierOptions(ServiceOptions):
    window_sizes: tuple[int, ...] = flag(
        parse=parse_sizes, cli_default=None, metavar="K,K,...", shown="torch: 0..max-k; qaic: 0,max-k",
        help="verify window sizes (QEfficient's compiled `num_speculative_tokens` list); a draft "
             "of d tokens runs in the smallest k >= d, padded with -1")
    speculative_model_type: str = flag(
        TARGET, choices=(TARGET, Method.TURBO),
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


def default_windows(executor: str, max_k: int) -> tuple[int, ...]:
    # Each size is a compiled specialization on Cloud AI 100: keep two there (a cheap 1-token
    # window and the full one); torch runs any size as it is.
    return tuple(sorted({0, max_k})) if executor == "qaic" else tuple(range(max_k + 1))
