"""Building the domain objects a service hosts from typed config."""

from __future__ import annotations

from specdec.batching import Batcher
from specdec.config import EngineConfig
from specdec.engine import Engine
from specdec.proposers.draft_model import DraftModelProposer
from specdec.slots import Admission
from specdec.tokenizer_fingerprint import tokenizer_fingerprint
from specdec.verifier import TargetVerifier

EXECUTORS = ("torch",)


def build_engine(config: EngineConfig, executor: str = "torch") -> Engine:
    if executor == "torch":
        from specdec.engine.torch_engine import TorchEngine

        return TorchEngine(config)
    raise ValueError(f"executor {executor!r} is not available (available: {', '.join(EXECUTORS)})")


def build_verifier(config: EngineConfig, window_sizes: tuple[int, ...], executor: str = "torch",
                   batching: bool = True, admission: Admission = Admission()) -> TargetVerifier:
    """window_sizes: the k values verify windows run at; (0, 1, ..., max_k) = any draft length.
    A Turbo target (config.turbo) drafts with its H heads: its windows are 0..H."""
    engine = build_engine(config, executor)
    if engine.num_heads:
        window_sizes = tuple(range(engine.num_heads + 1))
    return TargetVerifier(Batcher(engine, batching), window_sizes,
                          tokenizer_fingerprint(engine.path, engine.vocab_size),
                          engine.eos_token_ids, admission)


def build_draft_proposer(config: EngineConfig, max_k: int, executor: str = "torch",
                         batching: bool = True, admission: Admission = Admission()) -> DraftModelProposer:
    engine = build_engine(config, executor)
    return DraftModelProposer(Batcher(engine, batching), max_k,
                              tokenizer_fingerprint(engine.path, engine.vocab_size), admission)
