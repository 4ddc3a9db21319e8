"""Prompt-lookup proposer sessions: a token history per session, synced by start + tokens, and
n-gram proposals from it. It feeds nothing to itself, so after a reply it holds exactly the
synced sequence."""

from __future__ import annotations

import time

import numpy as np

from specdec.errors import InvalidRequest, PreconditionFailed
from specdec.proposers.base import Proposal
from specdec.proposers.ngram import propose_ngram
from specdec.sampling import SamplingParams
from specdec.slots import Admission, SlotPool
from specdec.timing import StepTimings


class TokenHistory:
    """Tokens of one session in a preallocated buffer: [ctx_len] int64."""

    def __init__(self, ctx_len: int, slot: int) -> None:
        self.slot = slot  # the session's place in the pool, as a KV slot is for a model
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


class PromptLookupProposer:
    method = "ngram"
    fingerprint = ""  # proposals are ids taken from the sequence itself: any tokenizer fits

    def __init__(self, max_k: int, max_ngram_size: int, ctx_len: int, sessions: int,
                 admission: Admission = Admission()) -> None:
        if max_ngram_size < 1:
            raise ValueError("max_ngram_size must be >= 1")
        self.max_k = max_k
        self.max_ngram_size = max_ngram_size
        self.ctx_len = ctx_len
        self.pool = SlotPool(sessions, admission)  # bounds memory: one history per open session

    async def open_session(self) -> TokenHistory:
        return TokenHistory(self.ctx_len, await self.pool.acquire())

    async def close_session(self, history: TokenHistory) -> None:
        self.pool.release(history.slot)

    async def after_reply(self, history: TokenHistory) -> None:
        """Nothing to pre-draft: a lookup costs microseconds."""

    async def propose(self, history: TokenHistory, start: int, tokens: list[int], k: int,
                sampling: SamplingParams = SamplingParams(), top_m: int = 0) -> Proposal:
        """Deterministic drafts whatever the sampling: the point-mass case of the rejection rule.
        A coroutine like every proposer's, though it never waits: microseconds on the loop."""
        t0 = time.perf_counter_ns()
        if not 0 <= k <= self.max_k:
            raise InvalidRequest(f"k = {k} is outside 0..{self.max_k} (this proposer's max k)")
        history.sync(start, tokens)
        draft = propose_ngram(history.view(), self.max_ngram_size, k).tolist()
        elapsed = time.perf_counter_ns() - t0
        return Proposal(draft, history.length, StepTimings(forward_ns=elapsed, total_ns=elapsed))
