"""Building the domain objects a service hosts from typed config."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from specdec.admission import Admission
from specdec.batching import Batcher
from specdec.config import EXECUTORS, EngineConfig
from specdec.engine import Engine
from specdec.engine.hub import resolve_model_path
from specdec.method import PROPOSER_METHODS, Method
from specdec.proposers.base import Proposer
from specdec.proposers.draft_model import DraftModelProposer
from specdec.proposers.ngram import NgramProposer
from specdec.proposers.suffix import SuffixOptions, SuffixProposer
from specdec.proposers.translated_draft import TranslatedDraftProposer
from specdec.proposers.translation import Translation
from specdec.tokenizer_fingerprint import load_tokenizer, tokenizer_fingerprint
from specdec.verifier import TargetVerifier

# A translating proposer's draft model may take this many of its tokens per target token (its
# max k, in its own tokens: (max k + 1) x this); a finer vocabulary drafts less far ahead.
TRANSLATED_DRAFT_STEPS = 3
# A translating proposer's syncs carry the re-encoded text of a round, a few draft tokens (a
# same-vocabulary sync carries one or two): compiled windows of 4 and 8 (k + 1 for k = 3, 7)
# hold them, where the prefill chunk would pad them to prefill_seq_len.
TRANSLATED_SYNC_KS = (0, 3, 7)


def build_engine(config: EngineConfig, executor: str = "torch", tlm: bool = False,
                 decode_ks: tuple[int, ...] = (0,), qaic: Any = None,
                 qaic_backend: Any = None) -> Engine:
    """tlm / decode_ks matter to compiled executors only: a target QPC keeps the logits of
    every window position and is compiled for those window sizes; torch runs any shape.
    qaic: QaicOptions; qaic_backend: compile/session backend (default: QEfficient)."""
    if executor == "torch":
        from specdec.engine.torch_engine import TorchEngine

        # Compiled decode shapes: k + 1 positions per verify window; a draft steps one token,
        # and two when a sync after a full acceptance carries [dk, bonus].
        windows = {k + 1 for k in decode_ks} | ({1} if tlm else {1, 2})
        return TorchEngine(config, tuple(sorted(windows)), keep_window_logits=tlm)
    if executor == "qaic":
        from specdec.engine.qaic_engine import QaicEngine, QaicOptions

        return QaicEngine(config, qaic or QaicOptions(), tlm, decode_ks, qaic_backend)
    raise ValueError(f"executor {executor!r} is not available (available: {', '.join(EXECUTORS)})")


def build_verifier(config: EngineConfig, window_sizes: tuple[int, ...], executor: str = "torch",
                   batching: bool = True, admission: Admission = Admission(), qaic: Any = None,
                   qaic_backend: Any = None) -> TargetVerifier:
    """window_sizes: the k values verify windows run at; (0, 1, ..., max_k) = any draft length.
    A Turbo target (config.turbo) drafts with its H heads: its windows are 0..H."""
    if config.turbo and executor == "torch":
        # Compile every verify window the heads draft, before the engine is built.
        from specdec.engine.turbo import read_turbo_config

        heads = read_turbo_config(resolve_model_path(config.model)).num_heads
        window_sizes = tuple(range(heads + 1))
    engine = build_engine(config, executor, True, window_sizes, qaic, qaic_backend)
    if engine.num_heads:
        window_sizes = (engine.num_heads,) if executor == "qaic" else tuple(range(engine.num_heads + 1))
    return TargetVerifier(Batcher(engine, batching), window_sizes,
                          tokenizer_fingerprint(engine.path, engine.vocab_size),
                          engine.eos_token_ids, admission)


def build_draft_proposer(config: EngineConfig, max_k: int, executor: str = "torch",
                         batching: bool = True, admission: Admission = Admission(), qaic: Any = None,
                         qaic_backend: Any = None, pre_draft_branches: int = 0,
                         target_model: str | None = None) -> Proposer:
    """config.full_batch_size sessions; pre_draft_branches scratch slots per session for the
    branches drafted while the verifier works (0 = sequential drafting). target_model: the
    target checkpoint (its tokenizer files are all that is read); when its tokenizer is not
    the draft's, the proposer drafts in the draft's tokens and translates (translated_draft.py)."""
    translation = _translation(target_model, config.model) if target_model else None
    inner_k = TRANSLATED_DRAFT_STEPS * (max_k + 1) if translation else max_k
    # Only the torch executor copies slots; a QPC pre-drafts in the session's own slot only.
    slots = config.full_batch_size * (1 + (pre_draft_branches if executor == "torch" else 0))
    engine = build_engine(replace(config, full_batch_size=slots), executor, False,
                          TRANSLATED_SYNC_KS if translation else (0,), qaic, qaic_backend)
    proposer = DraftModelProposer(Batcher(engine, batching), inner_k,
                                  tokenizer_fingerprint(engine.path, engine.vocab_size), admission,
                                  pre_draft_branches)
    if translation is None:
        return proposer
    return TranslatedDraftProposer(proposer, translation[0], max_k, translation[1])


def _translation(target_model: str, draft_model: str) -> tuple[Translation, str] | None:
    """(the translation, the target's fingerprint) when both checkpoints ship tokenizers that
    differ; None when they are the same (or one has none: the pair is then checked by
    fingerprint, as without a target)."""
    target_dir = resolve_model_path(target_model, weights=False)
    draft_dir = resolve_model_path(draft_model, weights=False)
    target, draft = load_tokenizer(target_dir), load_tokenizer(draft_dir)
    if target is None or draft is None:
        return None
    fingerprint = tokenizer_fingerprint(target_dir, len(target))
    if fingerprint == tokenizer_fingerprint(draft_dir, len(draft)):
        return None
    return Translation.of(target, draft), fingerprint


def build_proposer(method: Method, config: EngineConfig, max_k: int, max_ngram_size: int = 3,
                   executor: str = "torch", batching: bool = True,
                   admission: Admission = Admission(), qaic: Any = None, qaic_backend: Any = None,
                   pre_draft_branches: int = 0,
                   suffix: SuffixOptions = SuffixOptions(),
                   target_model: str | None = None) -> Proposer:
    """The proposer a service, a client's local mode or a benchmark hosts. draft: a model from
    config.model; ngram, suffix: no model, config gives only ctx_len and full_batch_size
    (sessions); target_model: see build_draft_proposer."""
    if method == Method.NGRAM:
        return NgramProposer(max_k, max_ngram_size, config.ctx_len, config.full_batch_size,
                             admission)
    if method == Method.SUFFIX:
        return SuffixProposer(max_k, config.ctx_len, config.full_batch_size, suffix, admission)
    if method == Method.DRAFT:
        return build_draft_proposer(config, max_k, executor, batching, admission, qaic,
                                    qaic_backend, pre_draft_branches, target_model)
    raise ValueError(f"proposer method {method!r} is not available "
                     f"(available: {', '.join(PROPOSER_METHODS)})")
