"""What every proposer offers the proposer service and the client's local mode."""

from __future__ import annotations

from typing import Any, Protocol

from specdec.proposers.draft_model import Proposal


class Proposer(Protocol):
    method: str        # "draft", "ngram"
    fingerprint: str   # tokenizer fingerprint; "" = works with any tokenizer
    max_k: int

    def open_session(self) -> Any: ...

    def close_session(self, session: Any) -> None: ...

    def propose(self, session: Any, start: int, tokens: list[int], k: int) -> Proposal:
        """Sync (drop positions >= start, append tokens), then propose up to k tokens."""
        ...
