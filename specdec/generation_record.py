"""What one generation produced and where its time went: the round loop's statistics, each
kept by one method of the record (specdec.generation calls them; specdec.metrics reads them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from specdec.stopping import FinishReason
from specdec.types import Proposal, StepOutcome

Service = Literal["proposer", "verifier"]


@dataclass(frozen=True)
class CallTime:
    """Client-side wall time of the calls to each service (ns): a generation's totals, or,
    as the difference of two, one round's (what k auto prices rounds by)."""

    proposer_ns: int = 0
    verifier_ns: int = 0

    def __sub__(self, other: CallTime) -> CallTime:
        return CallTime(self.proposer_ns - other.proposer_ns, self.verifier_ns - other.verifier_ns)


@dataclass
class GenerationRecord:
    """perf_counter seconds / ns."""

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

    def emitted(self, step: StepOutcome) -> None:
        """A prefill's or a round's tokens, committed."""
        self.tokens += step.tokens
        self.finish = step.finish

    def round(self, step: StepOutcome, k: int) -> None:
        """A round that asked for k drafts verified step.drafted of them."""
        _bump(self.k_histogram, k)
        self.verify_steps += 1
        self.step_tokens += len(step.tokens)
        self.drafted += step.drafted
        self.accepted += step.accepted
        _count(self.drafted_at, step.drafted)
        _count(self.accepted_at, step.accepted)

    def proposal(self, proposal: Proposal) -> None:
        self.proposals += bool(proposal.draft)
        self.pre_draft_hits += proposal.pre_drafted

    def call(self, service: Service, elapsed_ns: int, reported_ns: int) -> None:
        """A call took elapsed_ns here; the service reported reported_ns of it."""
        if service == "proposer":
            self.proposer_ns += elapsed_ns
            self.proposer_server_ns += reported_ns
        else:
            self.verifier_ns += elapsed_ns
        self.server_ns += reported_ns

    def call_time(self) -> CallTime:
        return CallTime(self.proposer_ns, self.verifier_ns)

    def remaining(self, max_new_tokens: int) -> int:
        """What this generation may still emit (0 = no limit): a (re-)prefill's StopParams."""
        return max_new_tokens - len(self.tokens) if max_new_tokens else 0

    def room(self, ctx_len: int, max_new_tokens: int) -> int:
        """The most drafts a round may ask for: the window must fit ctx_len, and its tokens
        (the drafts and the target's one) max_new_tokens."""
        room = ctx_len - self.prompt_len - len(self.tokens)
        if max_new_tokens:
            room = min(room, max_new_tokens - len(self.tokens) - 1)
        return max(room, 0)


def _bump(histogram: list[int], k: int) -> None:
    histogram.extend([0] * (k + 1 - len(histogram)))
    histogram[k] += 1


def _count(at: list[int], n: int) -> None:
    at.extend([0] * (n - len(at)))
    for i in range(n):
        at[i] += 1
