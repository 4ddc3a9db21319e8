"""The client's generation loop, written against two links (to a verifier and to an optional
proposer) so the same loop runs over gRPC (client/) and in-process (specdec.inprocess, bench).

One round, as in DESIGN.md: sync the proposer and get d1..dk; verify them; append what the
verifier emitted. The client is the source of truth for the sequence; each link mirrors it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Protocol

from specdec.adaptive_k import AdaptiveK
from specdec.proposers.base import Proposal
from specdec.recovery import Busy, LinkLost, RecoveryPolicy, backoff_delays
from specdec.sampling import SamplingParams, Sparse
from specdec.sequence import common_prefix_len
from specdec.stopping import FinishReason, StopParams
from specdec.verifier import StepOutcome


class VerifierLink(Protocol):
    async def prefill(self, start: int, tokens: list[int], params: StopParams,
                      draft_fingerprint: str, sampling: SamplingParams) -> StepOutcome: ...

    async def verify(self, draft: list[int], draft_probs: list[Sparse] | None) -> StepOutcome: ...


class ProposerLink(Protocol):
    async def propose(self, start: int, tokens: list[int], k: int, sampling: SamplingParams,
                      top_m: int) -> Proposal: ...


@dataclass(frozen=True)
class GenerationConfig:
    num_speculative_tokens: int = 4   # k; 0 = target-only decoding
    max_new_tokens: int = 0           # 0 = until EOS or ctx_len
    ignore_eos: bool = False
    sampling: SamplingParams = SamplingParams()  # greedy by default
    # When sampling, a draft model samples its drafts from its top draft_top_m tokens and sends
    # those probabilities (the exact q); 0 = greedy drafts (deterministic, nothing sent).
    draft_top_m: int = 16
    # --num-speculative-tokens auto: each round picks its k in 0..num_speculative_tokens, the
    # one with the most expected tokens per second (specdec.adaptive_k).
    adaptive_k: bool = False


@dataclass
class GenerationRecord:
    """What one generation produced and where its time went (perf_counter seconds / ns)."""

    prompt_len: int
    tokens: list[int] = field(default_factory=list)
    finish: FinishReason = FinishReason.NONE
    t_start: float = 0.0
    t_first: float = 0.0               # first token emitted and the proposer prefilled
    t_end: float = 0.0
    verify_steps: int = 0              # target forwards after prefill
    step_tokens: int = 0               # tokens emitted by those steps
    drafted: int = 0
    accepted: int = 0
    accepted_at: list[int] = field(default_factory=list)  # [k] steps whose draft i was accepted
    drafted_at: list[int] = field(default_factory=list)   # [k] steps that verified a draft i
    proposer_ns: int = 0               # client-side wall time of proposer calls
    verifier_ns: int = 0               # client-side wall time of verifier calls
    server_ns: int = 0                 # time the services reported for those calls
    proposer_server_ns: int = 0        # ... of which the proposer reported
    recoveries: int = 0                # lost service sessions replaced mid-generation
    proposals: int = 0                 # proposer calls that returned a draft
    pre_draft_hits: int = 0            # ... answered from a branch pre-drafted during the verify
    k_histogram: list[int] = field(default_factory=list)  # [k] rounds that asked for k drafts


def _bump(histogram: list[int], k: int) -> None:
    histogram.extend([0] * (k + 1 - len(histogram)))
    histogram[k] += 1


def _count(at: list[int], n: int) -> None:
    at.extend([0] * (n - len(at)))
    for i in range(n):
        at[i] += 1


async def _timed(record: GenerationRecord, attr: str, call: Awaitable):
    t0 = time.perf_counter_ns()
    out = await call
    setattr(record, attr, getattr(record, attr) + time.perf_counter_ns() - t0)
    record.server_ns += out.timings.total_ns
    if attr == "proposer_ns":
        record.proposer_server_ns += out.timings.total_ns
    return out


Reopen = Callable[[], Awaitable]  # opens a new session on a service (a fresh link)


class _Generation:
    """One generation's state and the three moves of a round; recovery keeps them going."""

    def __init__(self, prompt: list[int], verifier: VerifierLink, proposer: ProposerLink | None,
                 config: GenerationConfig, ctx_len: int, draft_fingerprint: str,
                 reopen_verifier: Reopen | None, reopen_proposer: Reopen | None,
                 policy: RecoveryPolicy) -> None:
        self.rec = GenerationRecord(prompt_len=len(prompt), t_start=time.perf_counter())
        self.seq = list(prompt)           # prompt + everything emitted: the source of truth
        self.held: list[int] = []         # what the proposer session holds
        self.held_agrees = 0              # held[:held_agrees] == seq[:held_agrees], known
        self.guesses: list[int] = []      # Turbo: the verifier's own heads' next draft
        self.verifier, self.proposer = verifier, proposer
        self.config, self.ctx_len, self.fingerprint = config, ctx_len, draft_fingerprint
        self.reopen_verifier, self.reopen_proposer, self.policy = reopen_verifier, reopen_proposer, policy
        self.proposer_down_at: float | None = None
        self.propose_forward_ns = 0       # engine time the last proposal reported

    def _remaining(self) -> int:
        """StopParams.max_new_tokens for a (re-)prefill: what this generation may still emit."""
        return self.config.max_new_tokens - len(self.rec.tokens) if self.config.max_new_tokens else 0

    async def prefill(self) -> StepOutcome:
        """Prefill the verifier with the whole sequence (start = 0), retrying a lost verifier
        with backoff until the deadline."""
        params = StopParams(self._remaining(), self.config.ignore_eos)
        deadline = time.monotonic() + self.policy.deadline_s
        for delay in backoff_delays(self.policy):
            await asyncio.sleep(delay)
            try:
                if self.verifier is None:
                    self.verifier = await self.reopen_verifier()
                return await _timed(self.rec, "verifier_ns", self.verifier.prefill(
                    0, self.seq, params, self.fingerprint, self.config.sampling))
            except LinkLost:
                if self.reopen_verifier is None or time.monotonic() + delay > deadline:
                    raise
                self.verifier = None
                self.rec.recoveries += 1

    async def propose(self, k: int) -> tuple[list[int], list[Sparse] | None]:
        if self.proposer is None and self.reopen_proposer is not None and self.proposer_down_at \
                and time.monotonic() - self.proposer_down_at >= self.policy.proposer_retry_s:
            try:
                self.proposer, self.held, self.held_agrees = await self.reopen_proposer(), [], 0
                self.proposer_down_at = None
            except LinkLost:
                self.proposer_down_at = time.monotonic()
        if self.proposer is None:
            return self.guesses[:k], None   # Turbo guesses; empty = a target-only step
        # Only the tail since the last proposal can differ: the per-step scan stays O(k).
        start = common_prefix_len(self.held, self.seq, self.held_agrees)
        try:
            proposal = await _timed(self.rec, "proposer_ns", self.proposer.propose(
                start, self.seq[start:], k, self.config.sampling, self.config.draft_top_m))
        except (LinkLost, Busy):
            # Lossless either way: go on target-only and try a new session later (a full
            # proposer may have a free slot by then).
            self.proposer, self.proposer_down_at = None, time.monotonic()
            self.rec.recoveries += 1
            return [], None
        self.held = (self.seq + proposal.draft)[:proposal.held_len]
        self.propose_forward_ns = proposal.timings.forward_ns
        self.rec.proposals += bool(proposal.draft)
        self.rec.pre_draft_hits += proposal.pre_drafted
        self.held_agrees = min(len(self.seq), proposal.held_len)
        return proposal.draft, proposal.probs

    async def verify(self, draft: list[int], probs: list[Sparse] | None) -> StepOutcome:
        try:
            return await _timed(self.rec, "verifier_ns", self.verifier.verify(draft, probs))
        except LinkLost:
            if self.reopen_verifier is None:
                raise
            self.verifier = None
            self.rec.recoveries += 1
            return await self.prefill()  # emits the token the lost step would have ended with

    def commit(self, step: StepOutcome, on_tokens) -> None:
        self.seq += step.tokens
        self.rec.tokens += step.tokens
        self.rec.finish = step.finish
        self.guesses = step.next_draft
        if on_tokens:
            on_tokens(step.tokens)


async def generate(
    prompt: list[int],
    verifier: VerifierLink,
    proposer: ProposerLink | None,
    config: GenerationConfig,
    ctx_len: int,
    draft_fingerprint: str = "",
    on_tokens: Callable[[list[int]], None] | None = None,
    reopen_verifier: Reopen | None = None,
    reopen_proposer: Reopen | None = None,
    policy: RecoveryPolicy = RecoveryPolicy(),
) -> GenerationRecord:
    """reopen_*: open a new session when a link is lost (LinkLost); None = fail instead."""
    g = _Generation(prompt, verifier, proposer, config, ctx_len, draft_fingerprint,
                    reopen_verifier, reopen_proposer, policy)
    rec, k_max = g.rec, config.num_speculative_tokens
    auto = AdaptiveK(k_max) if config.adaptive_k else None
    # Prefill the target and the draft concurrently: each owns its own device.
    calls = [g.prefill()]
    if k_max and proposer is not None:
        calls.append(g.propose(0))
    first, *_ = await asyncio.gather(*calls)
    rec.t_first = time.perf_counter()
    g.commit(first, on_tokens)
    while not rec.finish:
        k = min(auto.next_k() if auto else k_max, ctx_len - len(g.seq))
        if config.max_new_tokens:
            k = min(k, config.max_new_tokens - len(rec.tokens) - 1)
        k = max(k, 0)
        _bump(rec.k_histogram, k)
        proposer_ns, verifier_ns = rec.proposer_ns, rec.verifier_ns
        # A k = 0 round skips the proposer; the next sync (start = the common prefix of what
        # it holds and the sequence) then carries every token since, so it never falls behind.
        draft, probs = await g.propose(k) if k > 0 else ([], None)
        step = await g.verify(draft, probs)
        if auto:
            proposed = rec.proposer_ns - proposer_ns   # 0: no call (k = 0, Turbo, link lost)
            auto.observe(k, step.accepted, proposed / 1e9 if proposed else None,
                         g.propose_forward_ns / 1e9, (rec.verifier_ns - verifier_ns) / 1e9,
                         step.timings.forward_ns / 1e9, step.sessions_active)
        rec.verify_steps += 1
        rec.step_tokens += len(step.tokens)
        rec.drafted += step.drafted
        rec.accepted += step.accepted
        _count(rec.drafted_at, step.drafted)
        _count(rec.accepted_at, step.accepted)
        g.commit(step, on_tokens)
    rec.t_end = time.perf_counter()
    return rec
