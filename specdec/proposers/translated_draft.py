"""A draft model with a tokenizer of its own, serving the target's token ids.

The wire and the verifier stay as they are (a draft is target ids); this proposer wraps a
DraftModelProposer that lives entirely in the draft's vocabulary, and translates at its edges
(specdec.proposers.translation): each request's target ids become the draft's context, whose
changed tail alone is synced to the draft model, and the draft's tokens come back as target ids.

Pre-drafting needs nothing of its own: the wrapped proposer pre-drafts its likeliest outcomes
in draft tokens after each reply, and the next request's context, re-encoded and synced from
the common prefix, names one of them whenever the verifier's outcome ends on a boundary both
vocabularies share (a word start, usually): then it is answered at once, as without
translation.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from specdec.admission import AdmissionPool
from specdec.engine import Engine
from specdec.errors import InvalidRequest, PreconditionFailed
from specdec.proposers.draft_model import DraftModelProposer, DraftSession
from specdec.proposers.translation import DraftContext, Translation
from specdec.sampling import SamplingParams
from specdec.sequence import common_prefix_len
from specdec.types import Proposal, StepTimings

# A target sequence is text the draft holds in its own context, so it cannot be longer than
# that context in any vocabulary finer than bytes; this bounds what a request may make us hold.
MAX_TARGET_PER_DRAFT_POSITION = 4


@dataclass
class TranslatedSession:
    inner: DraftSession
    target: list[int] = field(default_factory=list)   # the target ids synced: the client's sequence
    context: DraftContext = field(default_factory=DraftContext)   # the draft's tokens for them


class TranslatedDraftProposer:
    method = DraftModelProposer.method

    def __init__(self, inner: DraftModelProposer, translation: Translation, max_k: int,
                 target_fingerprint: str) -> None:
        """inner: the draft model in its own vocabulary, with max_k large enough for the draft
        tokens that k target tokens take (see draft_steps); max_k: in target tokens."""
        self.inner = inner
        self.translation = translation
        self.max_k = max_k
        self.fingerprint = target_fingerprint      # it speaks the target's ids
        self.draft_fingerprint = inner.fingerprint
        self.pool: AdmissionPool = inner.pool
        self.engine: Engine = inner.engine
        self.max_target_len = MAX_TARGET_PER_DRAFT_POSITION * inner.engine.ctx_len
        self.translations = 0   # drafts translated

    def close(self) -> None:
        self.inner.close()

    async def open_session(self) -> TranslatedSession:
        return TranslatedSession(await self.inner.open_session())

    async def close_session(self, session: TranslatedSession) -> None:
        await self.inner.close_session(session.inner)

    async def propose(self, session: TranslatedSession, start: int, tokens: list[int], k: int,
                      sampling: SamplingParams = SamplingParams(), top_m: int = 0) -> Proposal:
        """Greedy drafts in any case (sampling or not): a translated draft has no q in the
        target's vocabulary, and the verifier checks a draft without q as deterministic."""
        t0 = time.perf_counter_ns()
        if not 0 <= k <= self.max_k:
            raise InvalidRequest(f"k = {k} is outside 0..{self.max_k} (this proposer's max k)")
        self._sync(session, start, tokens)
        context = session.context.update(self.translation, session.target)
        steps = self.draft_steps(k, len(context), len(session.target))
        if not context or len(context) + steps > self.engine.ctx_len:
            # Nothing to draft from, or the text outgrew the draft's context: target-only rounds.
            return Proposal([], len(session.target), StepTimings(total_ns=time.perf_counter_ns() - t0))
        held = session.inner.seq.tokens
        synced = common_prefix_len(held, context)
        inner = await self.inner.propose(session.inner, synced, context[synced:], steps,
                                         take_shorter=True)
        draft: list[int] = []
        if inner.draft:
            self.translations += 1
            draft, m = self.translation.aligned_draft(session.target, context, inner.draft, k,
                                                      session.context.healed)
            self.inner.keep_drafts(session.inner, m)
        inner.timings.total_ns = time.perf_counter_ns() - t0
        # It holds the target's ids alone: the drafts it fed itself are draft tokens.
        return Proposal(draft, len(session.target), inner.timings, None, inner.pre_drafted and bool(draft))

    def _sync(self, session: TranslatedSession, start: int, tokens: list[int]) -> None:
        """The protocol's sync on the target ids (SlotSequence.sync's rules; the ids are
        checked by the verifier, and any id decodes to some text or none here)."""
        if start > len(session.target):
            raise PreconditionFailed(f"sync start {start} is beyond the {len(session.target)} tokens "
                                     "this session holds; resend from a lower start (0 is always valid)")
        if start + len(tokens) > self.max_target_len:
            raise InvalidRequest(f"sequence of {start + len(tokens)} tokens exceeds "
                                 f"{self.max_target_len} ({MAX_TARGET_PER_DRAFT_POSITION} per position "
                                 f"of the draft's ctx_len {self.engine.ctx_len})")
        if any(t < 0 for t in tokens):
            raise InvalidRequest(f"token id {min(tokens)} is negative")
        del session.target[start:]
        session.target.extend(tokens)

    def draft_steps(self, k: int, context_len: int, target_len: int) -> int:
        """Draft tokens to run for k target tokens and one more that shows the k-th ended: the
        draft's tokens per target token on this text so far, times k + 1."""
        if k == 0:
            return 0
        ratio = context_len / max(target_len, 1)
        return max(1, min(math.ceil((k + 1) * ratio), self.inner.max_k))

    async def after_reply(self, session: TranslatedSession) -> None:
        await self.inner.after_reply(session.inner)
