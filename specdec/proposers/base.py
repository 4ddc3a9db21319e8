"""What every proposer offers the proposer service and the client's local mode."""

from __future__ import annotations

from typing import Any, Protocol

from specdec.backend import Backend
from specdec.engine import Engine
from specdec.sampling import SamplingParams
from specdec.types import Proposal


class Proposer(Backend, Protocol):
    """Coroutines on the service's (or the client's) event loop; engine work is awaited on the
    engine thread (specdec.batching), so a waiting session holds no thread. Sessions, their
    pool and close() as every Backend."""

    fingerprint: str   # tokenizer fingerprint; "" = works with any tokenizer
    max_k: int

    @property
    def method(self) -> str:
        """Which proposer: a Method of PROPOSER_METHODS (specdec.method)."""
        ...

    @property
    def engine(self) -> Engine | None:
        """The draft model's engine; None for a proposer without a model (n-gram)."""
        ...

    async def propose(self, session: Any, start: int, tokens: list[int], k: int,
                      sampling: SamplingParams = SamplingParams(), top_m: int = 0) -> Proposal:
        """Sync (drop positions >= start, append tokens), then propose up to k tokens; a
        proposer that samples (sampling non-greedy, top_m > 0) returns the q of each draft."""
        ...

    async def after_reply(self, session: Any) -> None:
        """Work to do after the proposal was answered, while the verifier checks it (the draft
        model pre-drafts there); returns when done. May do nothing."""
        ...
