"""Draft-model proposer: k steps of a small model on its own engine, each the draft's argmax
or, when the session samples, a token drawn from the draft's warped q (returned with it).

Sync follows the protocol (drop positions >= start, append tokens). After proposing d1..dk the
session holds the synced sequence plus d1..d(k-1), the drafts it fed to itself; dk is never
fed. When the verifier accepts all k drafts, the client's next sync therefore carries two
tokens, [dk, bonus] (QEfficient's bonus-token case), and the proposer runs both in one call.

With pre-drafting (pre_draft_branches F > 0), `pre_draft` runs after each proposal has
been answered, while the verifier checks it: the next draft for the F likeliest verification
outcomes (see pre_draft.py), batched across branches, one engine call per depth (the depths
chained on the engine thread, Batcher.run_greedy, as a greedy proposal's steps are; a sampled
proposal's branches draw each draft there, Chain.pick, by its position as a request drafting it
would, sampling.draw_draft). The best
all-accepted branch extends the session's own slot (stale positions are masked and overwritten,
so a miss costs nothing there); the others start from a copy of it in scratch slots, where the
engine can copy a slot: only the positions a scratch slot lacks (the proposer remembers what
each slot no session owns holds, and after a hit that is all of the prefix but the last round's
few positions). The next `propose` answers a branch whose (start, tokens) its sync matches,
and drops the rest; a hit in a scratch slot makes that slot the session's (no copy back on the
hit's critical path), and the session's old slot becomes scratch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from specdec.batching import DECODE, Batcher, Chain
from specdec.errors import InvalidRequest, PreconditionFailed
from specdec.proposers.pre_draft import (
    Branch,
    ConfidenceBins,
    LastDraft,
    OutcomeKey,
    PreDraftCounters,
    observed_outcome,
    outcome_key,
    rank_outcomes,
    sampled_pick,
)
from specdec.sampling import DraftSampling, SamplingParams, Sparse
from specdec.sequence import SlotSequence, common_prefix_len
from specdec.slots import Admission, SlotPool
from specdec.types import Proposal, StepTimings


@dataclass
class DraftSession:
    seq: SlotSequence      # its slot: any engine slot (a hit adopts its branch's scratch slot)
    ticket: int            # its admission (SlotPool), returned at close
    last: LastDraft | None = None
    branches: dict[OutcomeKey, Branch] = field(default_factory=dict)
    scratch: list[int] = field(default_factory=list)   # scratch slots this session's branches hold
    # The outcome the next request names, (start, tokens), once it has arrived (it waits for
    # the pre-draft running meanwhile), and that pre-draft's chains by outcome: the request
    # stops every chain but its own (all of them on a miss), so it waits for its own only.
    named: OutcomeKey | None = None
    drafting: dict[OutcomeKey, Chain] = field(default_factory=dict)
    # Held by propose, by the pre-draft after it, and by close: one of them at a time (each
    # awaits engine rows in between), in the order they asked for it.
    busy: asyncio.Lock = field(default_factory=asyncio.Lock)


class DraftModelProposer:
    method = "draft"

    def __init__(self, batcher: Batcher, max_k: int, tokenizer_fingerprint: str,
                 admission: Admission = Admission(), pre_draft_branches: int = 0) -> None:
        """The engine has sessions * (1 + pre_draft_branches) slots: one per session, the rest
        scratch for pre-drafted branches. Which is which changes: a hit on a scratch branch
        makes that slot the session's and frees its old one, instead of copying the KV back."""
        self.batcher = batcher
        self.engine = batcher.engine
        self.max_k = max_k
        self.fingerprint = tokenizer_fingerprint
        self.pre_draft_branches = pre_draft_branches
        # An executor that cannot copy a slot (a QPC's retained KV) pre-drafts only the branch
        # that extends the session's own slot, and has no scratch slots.
        self.copy_slot: Callable[[int, list[int], int, int], None] | None = \
            getattr(self.engine, "copy_slot", None)
        sessions = self.engine.slots // (1 + pre_draft_branches) if self.copy_slot is not None \
            else self.engine.slots
        self.pool = SlotPool(sessions, admission)
        # Engine slots no session holds, its own or a branch's. Taken and returned on the event
        # loop, between awaits: no lock needed. A session holds at most 1 + F, so an admitted
        # session always finds one.
        self._spare = list(range(self.engine.slots - 1, -1, -1))   # pop() hands out slot 0 first
        # The tokens whose KV a slot no session owns holds, at positions 0..len-1 (no entry:
        # nothing known). A pre-draft copies a scratch slot only the positions it lacks. A
        # session's own slot is described by its SlotSequence instead.
        self._held: dict[int, list[int]] = {}
        self.counters = PreDraftCounters()
        # Expected acceptance by draft confidence, learned from every session's outcomes:
        # greedy drafts, and sampled ones.
        self.calibration = ConfidenceBins()
        self.sampled_calibration = ConfidenceBins()

    def close(self) -> None:
        self.batcher.close()

    async def open_session(self) -> DraftSession:
        ticket = await self.pool.acquire()
        slot = self._spare.pop()
        self._held.pop(slot, None)
        return DraftSession(SlotSequence(slot), ticket)

    async def close_session(self, session: DraftSession) -> None:
        async with session.busy:   # a pre-draft still running owns slots of this session
            session.last = None  # and one not started yet must not start on a freed slot
            self._drop_branches(session)
            self._leave(session.seq)
            self._spare.append(session.seq.slot)
            self.pool.release(session.ticket)

    def _leave(self, seq: SlotSequence) -> None:
        """The session gives up its slot (closed, or a hit moved it): remember what it holds."""
        self._held[seq.slot] = seq.tokens[:seq.cached]

    def _drop_branches(self, session: DraftSession) -> None:
        self.counters.wasted_tokens += sum(len(b.draft) for b in session.branches.values())
        session.branches.clear()
        self._spare += session.scratch
        session.scratch = []

    async def _take_branch(self, session: DraftSession, start: int, tokens: list[int], k: int,
                     sampled: DraftSampling | None, timings: StepTimings,
                     take_shorter: bool = False) -> Proposal | None:
        """Answer from a pre-drafted branch when the sync names one, drafted as this request
        drafts (greedy, or sampled alike) and at least k long (take_shorter: any length)."""
        last, session.last = session.last, None
        if last is None or not self.pre_draft_branches:
            return None
        accepted = observed_outcome(last.prefix_len, last.draft, start, tokens)
        if accepted is not None:
            self._calibration(last.sampled).observe(last.confidence(), accepted)
        self.counters.lookups += 1
        branch = session.branches.pop((start, tuple(tokens)), None)
        if take_shorter:
            k = min(k, len(branch.draft)) if branch is not None else k
        if branch is None or last.sampled != sampled or not 1 <= k <= len(branch.draft):
            self._drop_branches(session)
            return None
        self.counters.hits += 1
        seq = session.seq
        if branch.slot != seq.slot:   # adopt the branch's slot; the old one goes with the rest
            session.scratch[session.scratch.index(branch.slot)] = seq.slot
            self._leave(seq)
            self._held.pop(branch.slot, None)   # the session's now: seq describes it
            seq.slot = branch.slot
        # A smaller k (adaptive k) takes the branch's first k drafts; the session then holds
        # prefix + e1..e(k-1), and the KV of the rest is stale, masked and overwritten later.
        held = len(branch.tokens) - (len(branch.draft) - k)
        seq.tokens, seq.cached = branch.tokens[:held], held
        self._drop_branches(session)
        session.last = LastDraft(held - k + 1, branch.draft[:k], branch.logits_at[:k], sampled)
        return Proposal(branch.draft[:k], held, timings, branch.probs[:k] if sampled else None,
                        pre_drafted=True)

    def _calibration(self, sampled: DraftSampling | None) -> ConfidenceBins:
        """Sampled drafts are kept at another rate than greedy ones of the same confidence."""
        return self.calibration if sampled is None else self.sampled_calibration

    async def propose(self, session: DraftSession, start: int, tokens: list[int], k: int,
                      sampling: SamplingParams = SamplingParams(), top_m: int = 0,
                      *, take_shorter: bool = False) -> Proposal:
        """Greedy drafts, or with sampling.temperature > 0 and top_m > 0 drafts sampled from the
        top m tokens of the warped draft distribution (returned as the exact proposal q).
        take_shorter: a pre-drafted hit shorter than k is answered with its drafts rather than
        drafted again.
        """
        t0 = time.perf_counter_ns()
        self._name_outcome(session, (start, tuple(tokens)))
        async with session.busy:   # after the last proposal's pre-draft, if it started first
            session.named = None
            proposal = await self._propose(session, start, tokens, k, sampling, top_m, t0,
                                            take_shorter)
            proposal.timings.total_ns = time.perf_counter_ns() - t0
            return proposal

    @staticmethod
    def _name_outcome(session: DraftSession, key: OutcomeKey) -> None:
        """A request names the outcome of the proposal being verified: a pre-draft still
        running for it stops every branch but that outcome's, now (all of them on a miss),
        instead of finishing branches nobody will take while the request waits."""
        session.named = key
        for other, chain in session.drafting.items():
            if other != key:
                chain.stop = True


    async def _propose(self, session: DraftSession, start: int, tokens: list[int], k: int,
                 sampling: SamplingParams, top_m: int, t0: int, take_shorter: bool = False) -> Proposal:
        if not 0 <= k <= self.max_k:
            raise InvalidRequest(f"k = {k} is outside 0..{self.max_k} (this proposer's max k)")
        sampled = DraftSampling.of(sampling, top_m)
        if sampled:
            sampling.validate()
        seq = session.seq
        timings = StepTimings()
        if hit := await self._take_branch(session, start, tokens, k, sampled, timings, take_shorter):
            hit.timings.total_ns = time.perf_counter_ns() - t0
            return hit
        self._drop_branches(session)
        seq.sync(start, tokens, self.engine.ctx_len, self.engine.vocab_size)
        # Fed drafts d1..d(k-1) take positions len..len+k-2, which must exist.
        k = min(k, self.engine.ctx_len - len(seq.tokens) + 1)
        draft: list[int] = []
        logits_at: list[np.ndarray] = []
        probs: list[Sparse] = []
        if k > 0 and not seq.tokens:
            raise PreconditionFailed("nothing to draft from: sync the prompt first")
        if k == 0:
            if seq.cached < len(seq.tokens):  # sync only: prefill the new tokens now
                await seq.feed(self.batcher, timings)
        else:
            # The last token's logits are needed even if its KV is already in the slot.
            seq.cached = min(seq.cached, len(seq.tokens) - 1)
            if not sampled:   # the k steps chain on the engine thread
                logits_at, draft = await seq.feed_greedy(self.batcher, timings, k)   # k x [V], [k]
            else:
                logits = await seq.feed(self.batcher, timings)             # [V]
                while True:   # on the loop: each draft drawn for its position (draw_draft)
                    logits_at.append(logits)
                    token, q = sampled.draw(logits, len(seq.tokens))
                    draft.append(token)
                    probs.append(q)
                    if len(draft) == k:
                        break
                    seq.tokens.append(draft[-1])
                    logits = await seq.feed(self.batcher, timings)
        if draft:
            session.last = LastDraft(len(seq.tokens) - len(draft) + 1, draft, logits_at, sampled)
        timings.total_ns = time.perf_counter_ns() - t0
        return Proposal(draft, len(seq.tokens), timings, probs if sampled else None)

    def keep_drafts(self, session: DraftSession, m: int) -> None:
        """The caller uses only the first m drafts of the proposal just made: the session then
        holds prefix + d1..d(m-1), as if m had been asked, and pre-drafts the outcomes of those
        m, as deep as the draft it made (a translating caller cuts the draft where the two
        vocabularies' texts meet, and needs the next one as long as this one was)."""
        last = session.last
        if last is None or not 1 <= m < len(last.draft):
            return
        held = last.prefix_len + m - 1
        del session.seq.tokens[held:]
        session.seq.cached = min(session.seq.cached, held)
        session.last = LastDraft(last.prefix_len, last.draft[:m], last.logits_at[:m], last.sampled,
                                 depth=len(last.draft))

    async def after_reply(self, session: DraftSession) -> None:
        """Pre-draft the next round for the likeliest outcomes of the draft just answered;
        runs while the verifier verifies it (the service calls it after sending the reply)."""
        if not self.pre_draft_branches:
            return
        async with session.busy:   # nothing when closed, or done by an earlier call
            last = session.last
            if last is not None and not last.pre_drafted:
                last.pre_drafted = True
                self._drop_branches(session)
                await self._pre_draft(session, last)

    async def _pre_draft(self, session: DraftSession, last: LastDraft) -> None:
        seq, k, timings = session.seq, len(last.draft), StepTimings()
        depth = max(k, last.depth)   # drafts per branch
        if len(seq.tokens) + 2 + depth > self.engine.ctx_len:
            return  # no room to draft a whole next round
        # d_k into the session's own slot: its logits rank the bonus guesses, and every
        # branch then starts from slot contents 0..L+k-1 = prefix + d1..dk.
        end = len(seq.tokens)                               # = L + k - 1
        after_dk = (await self.batcher.run_row([last.draft[-1]], [end], seq.slot, 1, DECODE, timings))[-1]
        dist = last.distributions([after_dk])                            # [k+1, V]
        outcomes = rank_outcomes(dist, last.draft,
                                 self._calibration(last.sampled).rates(last.confidence(dist)),
                                 self.branch_budget())
        base = seq.tokens + [last.draft[-1]]               # prefix + d1..dk
        branches: list[tuple[OutcomeKey, Branch]] = []
        copies: list[int] = []                             # scratch slots to copy the slot to
        own_taken = False
        for accepted, token, _ in outcomes:
            key = outcome_key(last.prefix_len, last.draft, accepted, token)
            if session.named is not None and key != session.named:
                continue   # the next request has arrived, and named another outcome
            if accepted == k and not own_taken:
                slot, own_taken = seq.slot, True           # extends the session's own slot
            else:
                scratch = self._scratch_slot(session)
                if scratch is None:
                    continue
                slot = scratch
                copies.append(scratch)
            tokens = base[:last.prefix_len + accepted] + [token]
            branches.append((key, Branch(slot, tokens, [], (accepted, token))))
        if not branches:
            return   # the next request named an outcome none of them was
        # The copies run on the engine thread before the first depth's rows (jobs go first),
        # so they cost no extra round trip to the loop.
        copied = None
        if copies:
            assert self.copy_slot is not None  # no scratch slots where slots don't copy
            # Positions every scratch slot holds already are not copied again: after a hit,
            # each shares the prefix up to the last round's outcomes (their entries go now:
            # the copy and the rows overwrite them, and a failure leaves them unknown).
            start = min(common_prefix_len(self._held.pop(s, []), base) for s in copies)
            copied = self.batcher.start(self.copy_slot, seq.slot, copies, start, len(base))
        # One engine call per depth, every branch a row; the depths chain on the engine thread.
        # A branch the next request rules out while they run stops early, with 1..k drafts.
        rows = [([b.tokens[-1]], [len(b.tokens) - 1], b.slot) for _, b in branches]
        session.drafting = {
            key: Chain(depth, pick=sampled_pick(last.sampled, b.probs) if last.sampled else None)
            for key, b in branches}
        try:
            drafted = await self.batcher.run_greedy(rows, depth, DECODE, timings,
                                                    list(session.drafting.values()))
        finally:
            session.drafting = {}
        for (_, b), (logits, drafts) in zip(branches, drafted):
            b.draft, b.logits_at = drafts, logits
            b.tokens += drafts[:-1]
        if copied is not None:
            await copied   # done before the first rows ran; raises if the copy failed
        for _, b in branches:
            if b.slot != seq.slot:
                self._held[b.slot] = b.tokens
        session.branches = dict(branches)
        self.counters.drafted_tokens += sum(len(b.draft) for _, b in branches)

    def branch_budget(self) -> int:
        """Branches per pre-draft: F shared by the open sessions, at least one each. A lone
        session's pre-draft runs while the proposer would idle; under load the proposer is
        busy with the other sessions' rounds and every branch row is taken from them, so its
        pre-draft work must not grow with the sessions (8 sessions at k = 4 on the development
        machine: 8-14% more tokens/s with one branch each than with eight)."""
        return max(1, self.pre_draft_branches // max(self.pool.in_use, 1))

    def _scratch_slot(self, session: DraftSession) -> int | None:
        if self.copy_slot is None or not self._spare:
            return None
        slot = self._spare.pop()
        session.scratch.append(slot)
        return slot
