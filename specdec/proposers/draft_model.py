"""Draft-model proposer: k steps of a small model on its own engine, each the draft's argmax
or, when the session samples, a token drawn from the draft's warped q (returned with it).

After proposing d1..dk a session holds the synced sequence plus d1..d(k-1): dk is never fed, so
after full acceptance the next sync carries [dk, bonus] (QEfficient's bonus-token case). Its
PreDrafter (pre_draft.py) answers a request first, and decides which engine slot is a session's.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from specdec.admission import Admission
from specdec.batching import Batcher
from specdec.errors import InvalidRequest, PreconditionFailed
from specdec.method import Method
from specdec.proposers.pre_draft import LastDraft, PreDrafter, SessionPreDraft, sampled_pick
from specdec.sampling import DraftSampling, SamplingParams, Sparse
from specdec.sequence import SlotSequence
from specdec.types import Proposal, StepTimings


@dataclass
class DraftSession:
    seq: SlotSequence      # its slot: any engine slot (a hit adopts its branch's scratch slot)
    ticket: int            # its admission (AdmissionPool), returned at close
    pre: SessionPreDraft = field(default_factory=SessionPreDraft)   # the proposal being verified, its branches
    # Held by propose, by the pre-draft after it, and by close: one of them at a time (each
    # awaits engine rows in between), in the order they asked for it.
    busy: asyncio.Lock = field(default_factory=asyncio.Lock)


class DraftModelProposer:
    method = Method.DRAFT

    def __init__(self, batcher: Batcher, max_k: int, tokenizer_fingerprint: str,
                 admission: Admission = Admission(), pre_draft_branches: int = 0) -> None:
        """The engine's slots serve sessions and, pre-drafting, their branches: the PreDrafter
        says which is which, and so how many sessions are admitted (pool)."""
        self.batcher = batcher
        self.engine = batcher.engine
        self.max_k = max_k
        self.fingerprint = tokenizer_fingerprint
        self.pre_drafter = PreDrafter(batcher, pre_draft_branches, admission)
        self.pool = self.pre_drafter.pool

    def close(self) -> None:
        self.batcher.close()

    async def open_session(self) -> DraftSession:
        ticket = await self.pool.acquire()
        return DraftSession(SlotSequence(self.pre_drafter.open_slot()), ticket)

    async def close_session(self, session: DraftSession) -> None:
        async with session.busy:   # a pre-draft still running owns slots of this session
            self.pre_drafter.close(session.pre, session.seq)
            self.pool.release(session.ticket)

    async def propose(self, session: DraftSession, start: int, tokens: list[int], k: int,
                      sampling: SamplingParams = SamplingParams(), top_m: int = 0,
                      *, take_shorter: bool = False) -> Proposal:
        """Greedy drafts, or (sampling, top_m > 0) drafts sampled from the warped draft's top m,
        with their exact q. take_shorter: a pre-drafted hit shorter than k is answered as it is."""
        t0 = time.perf_counter_ns()
        session.pre.name((start, tuple(tokens)))   # stops a running pre-draft's other branches
        async with session.busy:   # after the last proposal's pre-draft, if it started first
            session.pre.named = None
            proposal = await self._propose(session, start, tokens, k, sampling, top_m, take_shorter)
            proposal.timings.total_ns = time.perf_counter_ns() - t0
            return proposal

    async def _propose(self, session: DraftSession, start: int, tokens: list[int], k: int,
                       sampling: SamplingParams, top_m: int, take_shorter: bool) -> Proposal:
        if not 0 <= k <= self.max_k:
            raise InvalidRequest(f"k = {k} is outside 0..{self.max_k} (this proposer's max k)")
        sampled = DraftSampling.of(sampling, top_m)
        if sampled:
            sampling.validate()
        seq = session.seq
        if hit := self.pre_drafter.take(session.pre, seq, start, tokens, k, sampled, take_shorter):
            return hit   # pre-drafted for the outcome this sync names
        timings = StepTimings()
        seq.sync(start, tokens, self.engine.ctx_len, self.engine.vocab_size)
        # Fed drafts d1..d(k-1) take positions len..len+k-2, which must exist.
        k = min(k, self.engine.ctx_len - len(seq.tokens) + 1)
        draft: list[int] = []
        probs: list[Sparse] = []
        if k > 0 and not seq.tokens:
            raise PreconditionFailed("nothing to draft from: sync the prompt first")
        if k == 0:
            if seq.cached < len(seq.tokens):  # sync only: prefill the new tokens now
                await seq.feed(self.batcher, timings)
        else:
            # The last token's logits are needed even if its KV is already in the slot.
            seq.cached = min(seq.cached, len(seq.tokens) - 1)
            # The k steps chain on the engine thread, sampled drafts drawn there by position.
            pick = sampled_pick(sampled, probs) if sampled else None
            logits_at, draft = await seq.feed_drafts(self.batcher, timings, k, pick)   # k x [V], [k]
        if draft:   # what the pre-draft after the reply starts from
            session.pre.last = LastDraft(len(seq.tokens) - len(draft) + 1, draft, logits_at, sampled)
        return Proposal(draft, len(seq.tokens), timings, probs if sampled else None)

    def keep_drafts(self, session: DraftSession, m: int) -> None:
        """The caller uses only the first m drafts just proposed (a translating caller's cut): the
        session holds prefix + d1..d(m-1), as if m had been asked, and pre-drafts the outcomes
        of those m as deep as the draft it made."""
        last = session.pre.last
        if last is None or not 1 <= m < len(last.draft):
            return
        held = last.prefix_len + m - 1
        del session.seq.tokens[held:]
        session.seq.cached = min(session.seq.cached, held)
        session.pre.last = LastDraft(last.prefix_len, last.draft[:m], last.logits_at[:m], last.sampled,
                                     depth=len(last.draft))

    async def after_reply(self, session: DraftSession) -> None:
        """Pre-draft the next round for the likeliest outcomes of the draft just answered;
        runs while the verifier verifies it (the service calls it after sending the reply)."""
        if self.pre_drafter.branches:
            async with session.busy:
                await self.pre_drafter.after_reply(session.pre, session.seq)
