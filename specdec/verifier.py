"""The verifier: hosts the target engine, keeps each session's committed sequence, and decides
which drafted tokens to keep: greedy acceptance (specdec.acceptance) or, with sampling,
speculative rejection sampling (specdec.sampling), and the one token the target adds."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from specdec.acceptance import greedy_accept
from specdec.admission import Admission, AdmissionPool
from specdec.batching import DECODE, Batcher
from specdec.engine import HeadsOnDemand
from specdec.errors import InvalidRequest, PreconditionFailed, bounded
from specdec.sampling import (
    TARGET_STREAM,
    SamplingParams,
    Sparse,
    check_proposals,
    rejection_sample,
    sample,
    seeded_rng,
    warp,
)
from specdec.sequence import SlotSequence, check_token_ids
from specdec.stopping import FinishReason, StopParams, cut_at_stop
from specdec.types import StepOutcome, StepTimings
from specdec.windows import select_window


@dataclass
class VerifierSession:
    seq: SlotSequence
    params: StopParams | None = None  # None until the first prefill
    emitted: int = 0                  # tokens emitted since the last prefill
    finish: FinishReason = FinishReason.NONE
    sampling: SamplingParams = SamplingParams()
    rng: np.random.Generator | None = None  # acceptance draws and samples; seeded at prefill


class TargetVerifier:
    def __init__(self, batcher: Batcher, window_sizes: tuple[int, ...], tokenizer_fingerprint: str,
                 eos_token_ids: tuple[int, ...], admission: Admission = Admission()) -> None:
        self.batcher = batcher
        self.engine = batcher.engine
        self.window_sizes = window_sizes  # k values verify windows run at (see specdec.windows)
        self.max_k = window_sizes[-1]
        self.fingerprint = tokenizer_fingerprint
        self.eos_token_ids = eos_token_ids
        self.pool = AdmissionPool(self.engine.slots, admission)  # a session's ticket is its KV slot
        # Turbo heads evaluated at the drafting position only, where the executor can.
        self.heads: HeadsOnDemand | None = (
            self.engine if self.engine.num_heads and isinstance(self.engine, HeadsOnDemand) else None)

    def close(self) -> None:
        self.batcher.close()

    async def open_session(self) -> VerifierSession:
        """Waits while every KV slot is taken (bounded, see Admission)."""
        return VerifierSession(SlotSequence(await self.pool.acquire()))

    async def close_session(self, session: VerifierSession) -> None:
        self.pool.release(session.seq.slot)

    async def prefill(self, session: VerifierSession, start: int, tokens: list[int], params: StopParams,
                draft_fingerprint: str = "",
                sampling: SamplingParams = SamplingParams()) -> StepOutcome:
        """Sync the sequence, run its new tokens through the target, emit the next token."""
        t0 = time.perf_counter_ns()
        sampling.validate()
        if draft_fingerprint and draft_fingerprint != self.fingerprint:
            raise PreconditionFailed(
                f"the proposer's tokenizer (fingerprint {bounded(draft_fingerprint)}) differs from the "
                f"target's ({self.fingerprint}): its token ids would mean other text")
        total = start + len(tokens)
        if total == 0:
            raise InvalidRequest("prefill needs at least one token")
        if total >= self.engine.ctx_len:
            raise InvalidRequest(f"prompt of {total} tokens leaves no room to generate within "
                                 f"ctx_len {self.engine.ctx_len}")
        session.seq.sync(start, tokens, self.engine.ctx_len, self.engine.vocab_size)
        timings = StepTimings()
        logits = await session.seq.feed(self.batcher, timings)               # [V] or Turbo [H+1, V]
        logits, guesses = self._split_heads(logits[None])
        logits = logits[0]
        session.params, session.emitted = params, 0
        session.sampling = sampling
        session.rng = seeded_rng(sampling.seed, TARGET_STREAM, total)
        first = (int(np.argmax(logits)) if sampling.greedy
                 else sample(warp(logits, sampling), session.rng))
        out = self._commit(session, [first], accepted=0, drafted=0, timings=timings)
        out.next_draft = await self._heads_at(session, total - 1, timings) or guesses[0]
        out.timings.total_ns = time.perf_counter_ns() - t0
        return out

    async def verify(self, session: VerifierSession, draft: list[int],
               draft_probs: list[Sparse] | None = None) -> StepOutcome:
        """One target forward over [t, d1..dk]; keep the accepted prefix plus one target token.
        draft_probs: per draft, the q it was sampled from; None = deterministic drafts."""
        t0 = time.perf_counter_ns()
        # The request's own faults first: a malformed Verify gets INVALID_ARGUMENT whatever the
        # session's state (a sampled prefill may have drawn EOS).
        if len(draft) > self.max_k:
            raise InvalidRequest(f"draft of {len(draft)} tokens exceeds this verifier's max k "
                                 f"{self.max_k}")
        check_token_ids(draft, self.engine.vocab_size)
        if draft_probs is not None:
            check_proposals(draft, draft_probs, self.engine.vocab_size)
        if session.params is None:
            raise PreconditionFailed("verify before prefill: the first request of a session "
                                     "must be a Prefill")
        if session.finish:
            raise PreconditionFailed(f"session already finished ({session.finish.name})")
        seq = session.seq
        n_seq = len(seq.tokens)
        # Drafts past ctx_len or past the remaining budget could never be emitted.
        fit = self.engine.ctx_len - n_seq
        if session.params.max_new_tokens:
            fit = min(fit, session.params.max_new_tokens - session.emitted - 1)
        draft = draft[:max(fit, 0)]
        if draft_probs is not None:
            draft_probs = draft_probs[:len(draft)]
        window = seq.tokens[seq.cached:] + draft                       # [t, d1..dk]
        assert len(window) == len(draft) + 1, "verifier invariant: exactly t is uncached"
        # Pad to the smallest window size that holds the draft; -1 positions write nothing.
        pad = select_window(len(draft), self.window_sizes) - len(draft)
        ids = window + [-1] * pad                                                    # [K+1]
        pos = list(range(seq.cached, seq.cached + len(window))) + [-1] * pad         # [K+1]
        timings = StepTimings()
        logits = await self.batcher.run_row(ids, pos, seq.slot, len(ids), DECODE, timings)  # [K+1, V]
        logits, guesses = self._split_heads(logits[:len(window)])                    # [k+1, V]
        if session.sampling.greedy:
            target = logits.argmax(-1)                                               # [k+1]
            accepted = greedy_accept(np.array(draft, dtype=np.int64), target)
            candidates = target[:accepted + 1].tolist()
        else:
            p = np.stack([warp(row, session.sampling) for row in logits])            # [k+1, V]
            assert session.rng is not None  # seeded at prefill
            accepted, nxt = rejection_sample(draft, draft_probs, p, session.rng)
            candidates = draft[:accepted] + [nxt]
        last = seq.cached + accepted  # position of the last accepted token
        seq.cached += 1 + accepted  # t and the accepted drafts were written at the right place
        out = self._commit(session, candidates, accepted, len(draft), timings)
        # Turbo: the heads at the last accepted position guess the tokens after the one emitted.
        out.next_draft = await self._heads_at(session, last, timings) or guesses[accepted]
        out.sessions_active = self.pool.in_use
        out.timings.total_ns = time.perf_counter_ns() - t0
        return out

    async def _heads_at(self, session: VerifierSession, position: int,
                        timings: StepTimings) -> list[int]:
        """HeadsOnDemand: the heads' top-1 guesses [H] at one position of the session's last
        step, as the step evaluated them (greedy) or computed again on the engine thread from the
        kept hidden state; [] otherwise (a QPC returns every head with the window)."""
        if self.heads is None or session.finish:
            return []
        # Greedy: the engine evaluated them at this position within the verify call itself.
        ready = self.heads.guesses_at(session.seq.slot, position)
        if ready is not None:
            return ready
        t0 = time.perf_counter_ns()
        logits = await self.batcher.start(self.heads.head_logits, np.array([session.seq.slot]),
                                         np.array([position]))
        timings.forward_ns += time.perf_counter_ns() - t0
        return logits[0].argmax(-1).tolist()                                   # [H]

    def _split_heads(self, logits: np.ndarray) -> tuple[np.ndarray, list[list[int]]]:
        """[n, V] -> ([n, V], n empty guesses); Turbo [n, H+1, V] -> (base [n, V], per position
        the heads' top-1 guesses [H]): single path, top-1 per head, as QEfficient."""
        if logits.ndim == 2:
            return logits, [[] for _ in range(logits.shape[0])]
        return logits[:, 0], logits[:, 1:].argmax(-1).tolist()

    def _commit(self, session: VerifierSession, candidates: list[int], accepted: int,
                drafted: int, timings: StepTimings) -> StepOutcome:
        seq = session.seq
        assert session.params is not None
        kept, finish = cut_at_stop(candidates, session.emitted, len(seq.tokens), session.params,
                                   self.eos_token_ids, self.engine.ctx_len)
        seq.tokens.extend(kept)
        seq.cached = min(seq.cached, len(seq.tokens))
        session.emitted += len(kept)
        session.finish = finish
        return StepOutcome(kept, accepted, drafted, finish, len(seq.tokens), timings)
