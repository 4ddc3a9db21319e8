"""What every proposer offers the proposer service and the client's local mode."""

from __future__ import annotations

from typing import Any, Protocol

from specdec.proposers.draft_model import Proposal
from specdec.sampling import SamplingParams


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
