"""The client's generation loop, written against two links (to a verifier and to an optional
proposer) so the same loop runs over gRPC (client/) and in-process (specdec.inprocess, bench).

One round (docs/architecture.md): sync the proposer and get d1..dk; verify them; append what the
verifier emitted. The client is the source of truth for the sequence; each link mirrors it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from specdec.adaptive_k import AdaptiveK
from specdec.flags import flag
from specdec.recovery import Busy, LinkLost, RecoveryPolicy, backoff_delays
from specdec.round_estimates import RoundEstimates, RoundReport
from specdec.sampling import SamplingParams, Sparse
from specdec.sequence import common_prefix_len
from specdec.stopping import FinishReason, StopParams
from specdec.types import Proposal, StepOutcome


class VerifierLink(Protocol):
    async def prefill(self, start: int, tokens: list[int], params: StopParams,
                      draft_fingerprint: str, sampling: SamplingParams) -> StepOutcome: ...

    async def verify(self, draft: list[int], draft_probs: list[Sparse] | None) -> StepOutcome: ...


class ProposerLink(Protocol):
    async def propose(self, start: int, tokens: list[int], k: int, sampling: SamplingParams,
                      top_m: int, return_branches: bool = False) -> Proposal: ...


@dataclass(frozen=True)
class GenerationConfig:
    num_speculative_tokens: int = 4   # k; 0 = target-only decoding
    max_new_tokens: int = flag(0, help="tokens to generate per prompt; 0 = until EOS or ctx_len")
    ignore_eos: bool = flag(False, name="--ignore-eos-token", help="do not stop at EOS")
    sampling: SamplingParams = SamplingParams()  # greedy by default
    draft_top_m: int = flag(16, help="when sampling, the draft samples from its top m tokens and "
                                     "sends their probabilities (the exact q); 0 = greedy drafts")
    # --num-speculative-tokens auto: each round picks its k in 0..num_speculative_tokens, the
    # one with the most expected tokens per second (specdec.adaptive_k).
    adaptive_k: bool = False
    # Greedy, with a proposer that pre-drafts (--pre-draft-branches F > 0): ask for each
    # proposal's branches; when the verify outcome is among them, verify that branch's draft at
    # once and send the proposer the sync for it in the same moment, so the proposer drafts the
    # next branches while the verifier verifies. A proposer that does not pre-draft returns
    # none, and every round is the plain sequential one. Off (the default): each round asks for
    # its draft, and a pre-drafted hit is answered at once. That gives the pre-draft the whole
    # round (both hops and the verify) instead of the verify alone: on the shipped models
    # (CPU, 8 branches) 1.29-1.33x of sequential drafting against 1.06-1.23x with branches,
    # which win only while a pre-draft is shorter than a verify (4 branches: 1.26x).
    use_branches: bool = False


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
    pre_draft_overlapped: int = 0      # rounds whose draft was a branch the client held, verified
                                       # while the proposer drafted the next branches
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
        self.verifier: VerifierLink | None = verifier  # None: lost, reopened at the next step
        self.proposer: ProposerLink | None = proposer
        self.config, self.ctx_len, self.fingerprint = config, ctx_len, draft_fingerprint
        self.reopen_verifier, self.reopen_proposer, self.policy = reopen_verifier, reopen_proposer, policy
        self.proposer_down_at: float | None = None
        self.propose_forward_ns = 0       # engine time the last proposal reported
        self.pre_drafted = False          # ... and whether it was a pre-drafted branch (a hit)
        self.synced = 0                   # tokens the last proposal's sync carried
        self.branches: dict[tuple[int, int], list[int]] = {}  # (accepted, token) -> next draft
        self.ahead: list[int] = []        # the branch draft for the outcome just committed
        self.fetch = config.use_branches and config.sampling.greedy  # ask for branches

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
                    assert self.reopen_verifier is not None  # only set to None when it exists
                    self.verifier = await self.reopen_verifier()
                return await _timed(self.rec, "verifier_ns", self.verifier.prefill(
                    0, self.seq, params, self.fingerprint, self.config.sampling))
            except LinkLost:
                if self.reopen_verifier is None or time.monotonic() + delay > deadline:
                    raise
                self.verifier = None
                self.rec.recoveries += 1
        raise AssertionError("backoff_delays is endless: the deadline ends the retries")

    async def propose(self, k: int, return_branches: bool = False,
                      expect: list[int] | None = None) -> tuple[list[int], list[Sparse] | None]:
        """expect: the draft already taken from a branch, verified meanwhile; the branches that
        come back are kept only if the proposer drafted them for that same draft."""
        self.branches, self.pre_drafted = {}, False
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
        self.synced = len(self.seq) - start
        proposal = await self._ask_proposer(start, self.seq[start:], k, self.config.draft_top_m,
                                            return_branches)
        if proposal is None:
            return [], None
        self.held = (self.seq + proposal.draft)[:proposal.held_len]
        self.propose_forward_ns = proposal.timings.forward_ns
        self.pre_drafted = proposal.pre_drafted
        self.rec.proposals += bool(proposal.draft)
        self.rec.pre_draft_hits += proposal.pre_drafted
        self.held_agrees = min(len(self.seq), proposal.held_len)
        self._keep_branches(proposal, expect)
        return proposal.draft, proposal.probs

    async def fetch_branches(self, draft: list[int]) -> None:
        """The branches of the proposal just made (draft), which the proposer pre-drafts after
        replying: asked for while the verifier verifies it. A proposer that returns none does
        not pre-draft, and is not asked again in this generation."""
        proposal = await self._ask_proposer(len(self.held), [], 0, 0, True)
        if proposal is not None:
            self._keep_branches(proposal, draft)
            self.fetch = bool(proposal.branches)

    async def _ask_proposer(self, start: int, tokens: list[int], k: int, top_m: int,
                            return_branches: bool) -> Proposal | None:
        """One proposer call; None when the proposer is lost or full. Lossless either way: the
        generation goes on target-only and tries a new session later (a full proposer may have
        a free slot by then)."""
        if self.proposer is None:
            return None
        try:
            return await _timed(self.rec, "proposer_ns", self.proposer.propose(
                start, tokens, k, self.config.sampling, top_m, return_branches))
        except (LinkLost, Busy):
            self.proposer, self.proposer_down_at = None, time.monotonic()
            self.rec.recoveries += 1
            return None

    def _keep_branches(self, proposal: Proposal, draft: list[int] | None) -> None:
        """The proposal's branches, kept only if drafted for `draft` (None: its own draft)."""
        if draft is None or proposal.draft == draft:
            self.branches = {(b.accepted, b.token): b.draft for b in proposal.branches}

    async def verify(self, draft: list[int], probs: list[Sparse] | None) -> StepOutcome:
        assert self.verifier is not None  # prefill() reopens a lost one before it returns
        try:
            return await _timed(self.rec, "verifier_ns", self.verifier.verify(draft, probs))
        except LinkLost:
            if self.reopen_verifier is None:
                raise
            self.verifier = None
            self.rec.recoveries += 1
            return await self.prefill()  # emits the token the lost step would have ended with

    def commit(self, step: StepOutcome, on_tokens) -> None:
        # The branch drafted for this outcome, if any: the next round's draft, known already.
        unstopped = len(step.tokens) == step.accepted + 1 and not step.finish
        self.ahead = self.branches.get((step.accepted, step.tokens[-1]), []) if unstopped else []
        self.branches = {}
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
    k_estimates: RoundEstimates | None = None,
) -> GenerationRecord:
    """reopen_*: open a new session when a link is lost (LinkLost); None = fail instead.
    k_estimates: with adaptive k, the running estimates to start from and update, shared with
    the caller's other generations on the same services (None: this generation's own)."""
    g = _Generation(prompt, verifier, proposer, config, ctx_len, draft_fingerprint,
                    reopen_verifier, reopen_proposer, policy)
    rec, k_max = g.rec, config.num_speculative_tokens
    auto = AdaptiveK(k_max, k_estimates or RoundEstimates()) if config.adaptive_k else None
    # Prefill the target and the draft concurrently: each owns its own device.
    calls: list[Awaitable] = [g.prefill()]
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
        ahead, g.ahead = g.ahead[:k], []
        if auto and ahead:   # the window that pays, of the drafts in hand
            ahead = ahead[:auto.window(len(ahead))]
        k = len(ahead) or k   # a branch drafted for a larger k serves its first k
        _bump(rec.k_histogram, k)
        proposer_ns, verifier_ns = rec.proposer_ns, rec.verifier_ns
        propose_ns = 0   # proposer time on the round's critical path; 0: no call (k = 0, Turbo,
        #                  link lost, or a call alongside the verify, which costs no time)
        if ahead:
            rec.pre_draft_overlapped += 1
            # A branch answered this round already: verify it, and at the same time send the
            # proposer the sync that names it, for the branches of the round after.
            returned = len(ahead)
            step, _ = await asyncio.gather(g.verify(ahead, None),
                                           g.propose(k, True, expect=ahead))
        else:
            # A k = 0 round skips the proposer; the next sync (start = the common prefix of
            # what it holds and the sequence) then carries every token since, so it never
            # falls behind.
            draft, probs = await g.propose(k) if k > 0 else ([], None)
            propose_ns = rec.proposer_ns - proposer_ns
            returned = len(draft)
            # Verify the prefix that pays (a prefix of a draft is a draft; its branches are
            # still the whole draft's).
            m = auto.window(returned) if auto else returned
            window, window_probs = draft[:m], probs[:m] if probs is not None else None
            if draft and g.fetch:   # its branches, pre-drafted while the verifier works
                step, _ = await asyncio.gather(g.verify(window, window_probs),
                                               g.fetch_branches(draft))
            else:
                step = await g.verify(window, window_probs)
        if auto:
            auto.observe(RoundReport(
                k, returned, step.drafted, step.accepted, propose_ns / 1e9 if propose_ns else None,
                g.propose_forward_ns / 1e9, (rec.verifier_ns - verifier_ns) / 1e9,
                step.timings.forward_ns / 1e9, step.sessions_active, g.synced,
                step.timings.batch_rows, step.timings.batch_window, g.pre_drafted))
        rec.verify_steps += 1
        rec.step_tokens += len(step.tokens)
        rec.drafted += step.drafted
        rec.accepted += step.accepted
        _count(rec.drafted_at, step.drafted)
        _count(rec.accepted_at, step.accepted)
        g.commit(step, on_tokens)
    rec.t_end = time.perf_counter()
    return rec
