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
    """Coroutines on the service's (or the client's) event loop; engine work is awaited on the
    engine thread (specdec.batching), so a waiting session holds no thread."""

    method: str        # "draft", "ngram"
    fingerprint: str   # tokenizer fingerprint; "" = works with any tokenizer
    max_k: int

    async def open_session(self) -> Any:
        """Waits while all slots are taken (bounded, see specdec.slots.Admission)."""
        ...

    async def close_session(self, session: Any) -> None:
        """Frees the session's slot once no step or pre-draft of it is running."""
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
