"""What the client does when a service goes away mid-generation, so that no work is lost
(docs/architecture.md, "Recovery"): without a proposer the generation goes on target-only and
reopens one every `proposer_retry_s`; a lost verifier is retried with backoff until
`deadline_s`, then prefilled with the whole sequence from start = 0, which is idempotent (a
verify step is never re-sent). `RecoveringLinks` applies these rules to a generation's links.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from specdec.flags import flag
from specdec.links import ProposerLink, Reopen, Timed, VerifierLink
from specdec.sampling import Sparse
from specdec.sequence import common_prefix_len
from specdec.stopping import StopParams
from specdec.types import Proposal, StepOutcome

if TYPE_CHECKING:   # the config's module imports this one's policy
    from specdec.generation import GenerationConfig
    from specdec.generation_record import GenerationRecord


class LinkLost(Exception):
    """A link's service is gone for now (process died, restarting, draining, session closed
    as idle, step deadline missed); opening a new session may succeed later."""


class Busy(Exception):
    """A service refused a session for lack of capacity (its admission pool full). Final for the
    verifier; the proposer is optional, so the generation goes on target-only and retries it
    every `proposer_retry_s`, as when it is lost."""


@dataclass(frozen=True)
class RecoveryPolicy:
    deadline_s: float = flag(60.0, name="--recovery-deadline",
                             help="seconds to keep reconnecting to a lost verifier")
    backoff_s: float = 0.2        # first delay between verifier attempts, doubled each time
    backoff_max_s: float = 3.0
    proposer_retry_s: float = 2.0  # while the proposer is down, try a new session this often


def backoff_delays(policy: RecoveryPolicy) -> Iterator[float]:
    """0, b, 2b, 4b, ... capped at backoff_max_s."""
    yield 0.0
    delay = policy.backoff_s
    while True:
        yield delay
        delay = min(delay * 2, policy.backoff_max_s)


class RecoveringLinks:
    """A generation's sessions on the verifier and the proposer (each call timed into its
    record), kept going when a service goes away; a proposal sends only the tail the proposer
    lacks. reopen_*: open a new session when a link is lost (LinkLost); None = fail instead."""

    def __init__(self, record: GenerationRecord, seq: list[int], config: GenerationConfig,
                 fingerprint: str, verifier: VerifierLink, proposer: ProposerLink | None,
                 reopen_verifier: Reopen | None, reopen_proposer: Reopen | None,
                 policy: RecoveryPolicy) -> None:
        self.record, self.seq, self.config, self.fingerprint = record, seq, config, fingerprint
        self.verifier: VerifierLink | None = Timed(verifier, record, "verifier")  # None: lost
        self.proposer: ProposerLink | None = \
            Timed(proposer, record, "proposer") if proposer is not None else None
        self.reopen_verifier, self.reopen_proposer, self.policy = reopen_verifier, reopen_proposer, policy
        self.proposer_down_at: float | None = None
        self.held: list[int] = []     # what the proposer session holds
        self.held_agrees = 0          # held[:held_agrees] == seq[:held_agrees], known

    async def prefill(self) -> StepOutcome:
        """The whole sequence on the verifier (start = 0), retrying a lost verifier with
        backoff until the deadline."""
        params = StopParams(self.record.remaining(self.config.max_new_tokens), self.config.ignore_eos)
        deadline = time.monotonic() + self.policy.deadline_s
        for delay in backoff_delays(self.policy):
            await asyncio.sleep(delay)
            try:
                if self.verifier is None:
                    assert self.reopen_verifier is not None  # only set to None when it exists
                    self.verifier = Timed(await self.reopen_verifier(), self.record, "verifier")
                return await self.verifier.prefill(0, self.seq, params, self.fingerprint,
                                                   self.config.sampling)
            except LinkLost:
                if self.reopen_verifier is None or time.monotonic() + delay > deadline:
                    raise
                self.verifier = None
                self.record.recoveries += 1
        raise AssertionError("backoff_delays is endless: the deadline ends the retries")

    async def verify(self, draft: list[int], probs: list[Sparse] | None) -> StepOutcome:
        assert self.verifier is not None  # prefill() reopens a lost one before it returns
        try:
            return await self.verifier.verify(draft, probs)
        except LinkLost:
            if self.reopen_verifier is None:
                raise
            self.verifier = None
            self.record.recoveries += 1
            return await self.prefill()  # emits the token the lost step would have ended with

    async def propose(self, k: int) -> Proposal | None:
        """None: no proposer now (none, or lost or full: the generation goes on target-only,
        losslessly, and tries a new session every proposer_retry_s)."""
        if self.proposer is None and self.reopen_proposer is not None and self.proposer_down_at \
                and time.monotonic() - self.proposer_down_at >= self.policy.proposer_retry_s:
            try:
                proposer = await self.reopen_proposer()
                self.proposer, self.held, self.held_agrees = Timed(proposer, self.record, "proposer"), [], 0
                self.proposer_down_at = None
            except LinkLost:
                self.proposer_down_at = time.monotonic()
        if self.proposer is None:
            return None
        # Only the tail since the last proposal can differ: the per-step scan stays O(k).
        start = common_prefix_len(self.held, self.seq, self.held_agrees)
        try:
            proposal = await self.proposer.propose(start, self.seq[start:], k, self.config.sampling,
                                                   self.config.draft_top_m)
        except (LinkLost, Busy):
            self.proposer, self.proposer_down_at = None, time.monotonic()
            self.record.recoveries += 1
            return None
        self.held = (self.seq + proposal.draft)[:proposal.held_len]
        self.held_agrees = min(len(self.seq), proposal.held_len)
        self.record.proposal(proposal)
        return proposal
