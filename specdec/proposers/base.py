"""What every proposer offers the proposer service and the client's local mode."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from specdec.sampling import SamplingParams, Sparse
from specdec.timing import StepTimings


@dataclass
class Proposal:
    draft: list[int]   # d1..dk (may be shorter than asked, or empty: no guess)
    held_len: int      # tokens the session holds now: synced + drafts it fed to itself
    timings: StepTimings = field(default_factory=StepTimings)
    probs: list[Sparse] | None = None  # per draft, the q it was sampled from; None = deterministic
    pre_drafted: bool = False          # answered from a branch drafted while the last was verified


class Proposer(Protocol):
    method: str        # "draft", "ngram"
    fingerprint: str   # tokenizer fingerprint; "" = works with any tokenizer
    max_k: int

    def open_session(self) -> Any: ...

    def close_session(self, session: Any) -> None: ...

    def propose(self, session: Any, start: int, tokens: list[int], k: int,
                sampling: SamplingParams = SamplingParams(), top_m: int = 0) -> Proposal:
        """Sync (drop positions >= start, append tokens), then propose up to k tokens; a
        proposer that samples (sampling non-greedy, top_m > 0) returns the q of each draft."""
        ...

    def after_reply(self, session: Any) -> None:
        """Work to do after the proposal was answered, while the verifier checks it (the draft
        model pre-drafts there); returns when done. May do nothing."""
        ...
