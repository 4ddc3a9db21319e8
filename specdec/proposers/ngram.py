"""The n-gram proposer (QEfficient's "prompt lookup"): propose the tokens that followed an
earlier occurrence of the sequence's last n tokens. No model; a session's token history is a
preallocated buffer synced by start + tokens, and the proposer feeds nothing to itself.

Which match wins: n from max_ngram_size down to 1 (longer is more specific), the self-match
excluded; among the first n's occurrences, the **most recent one with all k tokens after it**
(recent context predicts best: the current loop iteration, the current block of a pattern),
else the one with the longest continuation (a partial proposal). QEfficient's
`find_candidate_pred_tokens` (and HF's prompt lookup) keep the earliest match instead;
`test_most_recent_full_match_wins` in tests/test_ngram.py shows where they differ.
"""

from __future__ import annotations

import time
from typing import Generic, TypeVar

import numpy as np

from specdec.admission import Admission, AdmissionPool
from specdec.errors import InvalidRequest, PreconditionFailed
from specdec.method import Method
from specdec.sampling import SamplingParams
from specdec.types import Proposal, StepTimings


def propose_ngram(history: np.ndarray, max_ngram_size: int, k: int,
                  min_ngram_size: int = 1) -> np.ndarray:
    """history: [T] int64 token ids (prompt + generated). Returns [m] int64, 0 <= m <= k.

    Example: history = [1 2 3 4 2 3], max_ngram_size = 2, k = 3. The suffix [2 3] occurred at
    position 1; it was followed by [4 2 3], so the proposal is [4 2 3].
    """
    t = history.shape[0]
    if k <= 0:
        return history[:0]
    for n in range(min(max_ngram_size, t - 1), min_ngram_size - 1, -1):
        suffix = history[t - n:]
        # windows[i] = history[i:i+n]; an occurrence at i < t - n is not the suffix itself.
        windows = np.lib.stride_tricks.sliding_window_view(history[:t - 1], n)
        starts = np.flatnonzero((windows == suffix).all(axis=1))
        starts = starts[starts < t - n]
        if starts.size == 0:
            continue
        follow = starts + n                       # where each continuation begins
        full = follow[t - follow >= k]
        begin = int(full[-1]) if full.size else int(follow[0])
        return history[begin:begin + k]
    return history[:0]


class TokenHistory:
    """Tokens of one session in a preallocated buffer: [ctx_len] int64."""

    def __init__(self, ctx_len: int, ticket: int) -> None:
        self.ticket = ticket  # the session's place in the admission pool
        self.buf = np.zeros(ctx_len, dtype=np.int64)
        self.length = 0

    def sync(self, start: int, tokens: list[int]) -> None:
        if start > self.length:
            raise PreconditionFailed(f"sync start {start} is beyond the {self.length} tokens this "
                                     "session holds; resend from a lower start (0 is always valid)")
        if start + len(tokens) > self.buf.shape[0]:
            raise InvalidRequest(f"sequence of {start + len(tokens)} tokens exceeds ctx_len "
                                 f"{self.buf.shape[0]}")
        self.buf[start:start + len(tokens)] = tokens
        self.length = start + len(tokens)

    def view(self) -> np.ndarray:
        return self.buf[:self.length]


H = TypeVar("H", bound=TokenHistory)


class LookupProposer(Generic[H]):
    """A proposer without a model (n-gram, suffix): its drafts are looked up in token histories
    of sessions of type H. Deterministic drafts whatever the sampling (the rejection rule's
    point-mass case); coroutines like every proposer's, though they never wait."""

    # Proposals are ids taken from the sequence itself, or from sequences of this same service:
    # any tokenizer fits.
    fingerprint = ""
    engine = None     # no model

    def __init__(self, max_k: int, ctx_len: int, sessions: int, admission: Admission) -> None:
        self.max_k = max_k
        self.ctx_len = ctx_len
        self.pool = AdmissionPool(sessions, admission)  # bounds memory: one history per open session

    def lookup(self, session: H, k: int) -> list[int]:
        """Up to k > 0 drafts for the synced session."""
        raise NotImplementedError

    async def close_session(self, session: H) -> None:
        self.pool.release(session.ticket)

    def close(self) -> None:
        """No engine to free."""

    async def after_reply(self, session: H) -> None:
        """Nothing to pre-draft: a lookup costs microseconds."""

    async def propose(self, session: H, start: int, tokens: list[int], k: int,
                      sampling: SamplingParams = SamplingParams(), top_m: int = 0) -> Proposal:
        t0 = time.perf_counter_ns()
        if not 0 <= k <= self.max_k:
            raise InvalidRequest(f"k = {k} is outside 0..{self.max_k} (this proposer's max k)")
        session.sync(start, tokens)
        draft = self.lookup(session, k) if k else []
        elapsed = time.perf_counter_ns() - t0
        return Proposal(draft, session.length, StepTimings(forward_ns=elapsed, total_ns=elapsed))


class NgramProposer(LookupProposer[TokenHistory]):
    method = Method.NGRAM

    def __init__(self, max_k: int, max_ngram_size: int, ctx_len: int, sessions: int,
                 admission: Admission = Admission()) -> None:
        if max_ngram_size < 1:
            raise ValueError("max_ngram_size must be >= 1")
        super().__init__(max_k, ctx_len, sessions, admission)
        self.max_ngram_size = max_ngram_size

    async def open_session(self) -> TokenHistory:
        return TokenHistory(self.ctx_len, await self.pool.acquire())

    def lookup(self, session: TokenHistory, k: int) -> list[int]:
        return propose_ngram(session.view(), self.max_ngram_size, k).tolist()
