"""Draft-model proposer: k greedy steps of a small model on its own engine.

Sync follows the protocol (drop positions >= start, append tokens). After proposing d1..dk the
session holds the synced sequence plus d1..d(k-1), the drafts it fed to itself; dk is never
fed. When the verifier accepts all k drafts, the client's next sync therefore carries two
tokens, [dk, bonus] (QEfficient's bonus-token case), and the proposer runs both in one call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from specdec.batching import Batcher
from specdec.errors import InvalidRequest, PreconditionFailed
from specdec.proposers.base import Proposal
from specdec.sampling import (
    DRAFT_STREAM,
    SamplingParams,
    Sparse,
    sample_sparse,
    seeded_rng,
    truncate_top_m,
    warp,
)
from specdec.sequence import SlotSequence
from specdec.slots import Admission, SlotPool
from specdec.timing import StepTimings


@dataclass
class DraftSession:
    seq: SlotSequence
    rng: np.random.Generator | None = None  # created by the first sampled proposal


class DraftModelProposer:
    method = "draft"

    def __init__(self, batcher: Batcher, max_k: int, tokenizer_fingerprint: str,
                 admission: Admission = Admission()) -> None:
        self.batcher = batcher
        self.engine = batcher.engine
        self.max_k = max_k
        self.fingerprint = tokenizer_fingerprint
        self.pool = SlotPool(self.engine.slots, admission)

    def open_session(self) -> DraftSession:
        return DraftSession(SlotSequence(self.pool.acquire()))

    def close_session(self, session: DraftSession) -> None:
        self.pool.release(session.seq.slot)

    def propose(self, session: DraftSession, start: int, tokens: list[int], k: int,
                sampling: SamplingParams = SamplingParams(), top_m: int = 0) -> Proposal:
        """Greedy drafts, or with sampling.temperature > 0 and top_m > 0 drafts sampled from the
        top m tokens of the warped draft distribution (returned as the exact proposal q)."""
        t0 = time.perf_counter_ns()
        if not 0 <= k <= self.max_k:
            raise InvalidRequest(f"k = {k} is outside 0..{self.max_k} (this proposer's max k)")
        sampled = not sampling.greedy and top_m > 0
        if sampled:
            sampling.validate()
            if session.rng is None:
                session.rng = seeded_rng(sampling.seed, DRAFT_STREAM)
        seq = session.seq
        seq.sync(start, tokens, self.engine.ctx_len, self.engine.vocab_size)
        # Fed drafts d1..d(k-1) take positions len..len+k-2, which must exist.
        k = min(k, self.engine.ctx_len - len(seq.tokens) + 1)
        timings = StepTimings()
        draft: list[int] = []
        probs: list[Sparse] = []
        if k > 0 and not seq.tokens:
            raise PreconditionFailed("nothing to draft from: sync the prompt first")
        if k == 0:
            if seq.cached < len(seq.tokens):  # sync only: prefill the new tokens now
                seq.feed(self.batcher, timings)
        else:
            # The last token's logits are needed even if its KV is already in the slot.
            seq.cached = min(seq.cached, len(seq.tokens) - 1)
            logits = seq.feed(self.batcher, timings)                   # [V]
            while True:
                if sampled:
                    q = truncate_top_m(warp(logits, sampling), top_m)
                    probs.append(q)
                    draft.append(sample_sparse(q, session.rng))
                else:
                    draft.append(int(np.argmax(logits)))
                if len(draft) == k:
                    break
                seq.tokens.append(draft[-1])
                logits = seq.feed(self.batcher, timings)
        timings.total_ns = time.perf_counter_ns() - t0
        return Proposal(draft, len(seq.tokens), timings, probs if sampled else None)
