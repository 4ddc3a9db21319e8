"""Adaptive k (`--num-speculative-tokens auto`): each round, the draft length that maximises
expected tokens per second, from running estimates of what a round yields and costs.

One round with k drafts, while n sessions share the verifier:

  tokens(k) = 1 + sum_{i=1..k} prod_{j<=i} alpha_j
      (Leviathan et al.'s (1 - a^(k+1)) / (1 - a), with an acceptance alpha_j per draft
      position: alpha_j = P(d_j accepted | d_1..d_(j-1) accepted); the 1 is the target's token)
  time(k)   = [k > 0] * (propose_fixed + k * draft_step)
            + verify_fixed + verify_forward(n * (k + 1))
      (the proposer call: round trip and sync, then k draft forwards, skipped at k = 0; the
      verifier call: round trip and queueing, then one engine call whose rows the n sessions
      share, so a window token costs n times as much of the verifier's time as at n = 1)

k = argmax tokens(k) / time(k) over 0..max_k; 0 when no draft pays for itself (a draft as slow
as the target, or a full verifier whose windows have become compute-bound). That is what
vLLM's num_speculative_tokens_per_batch_size and TensorRT-LLM's draft_len_schedule configure
by hand.

The estimates are running (exponentially decayed) and come from each round's own observations
(`AdaptiveK.observe`); every `EXPLORE_EVERY` rounds one round tries a neighbouring k, so the
estimates for lengths not in use (acceptance at the next position, the cost slope) stay alive.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from specdec.proposers.pre_draft import AcceptanceStats

EXPLORE_EVERY = 8        # one round in this many tries a neighbouring k
START_K = 4              # k before anything has been measured (capped at max_k)
COST_DECAY = 0.95        # weight of the past in the cost estimates, per round (~20 rounds)
ACCEPTANCE_DECAY = 0.98  # ... in the acceptance estimates, per observation of a position
# Before the verifier's cost slope has been seen (all rounds at one window size), this share of
# a forward is assumed to grow with the window's tokens; measured slopes soon outweigh it.
PRIOR_TOKEN_SHARE = 0.25
PRIOR_WEIGHT = 1.0       # the prior slope counts as this much spread of x (window tokens^2)


@dataclass(frozen=True)
class RoundCosts:
    """Seconds, as the client sees them."""

    propose_fixed_s: float   # a proposer call without its draft forwards (round trip, sync)
    draft_step_s: float      # one draft token
    verify_fixed_s: float    # a verifier call without its engine call (round trip, queueing)
    verify_forward_s: float  # the engine call at one session, window of one token (k = 0)
    verify_token_s: float    # each further window token per session sharing the engine call


def expected_tokens(acceptance: Sequence[float], k: int) -> float:
    """Tokens one round emits on average with k drafts; acceptance[j] = alpha_(j+1)."""
    total, p = 1.0, 1.0
    for j in range(k):
        p *= acceptance[j]
        total += p
    return total


def round_time(costs: RoundCosts, k: int, occupancy: int) -> float:
    """Seconds one round takes with k drafts while `occupancy` sessions share the verifier."""
    propose = costs.propose_fixed_s + k * costs.draft_step_s if k > 0 else 0.0
    verify = (costs.verify_fixed_s + costs.verify_forward_s
              + costs.verify_token_s * (max(occupancy, 1) * (k + 1) - 1))
    return propose + verify


def choose_k(acceptance: Sequence[float], costs: RoundCosts, max_k: int, occupancy: int) -> int:
    """The k in 0..max_k with the most expected tokens per second (the smaller on a tie)."""
    best_k, best_rate = 0, 0.0
    for k in range(max_k + 1):
        t = round_time(costs, k, occupancy)
        rate = expected_tokens(acceptance, k) / t if t > 0 else float("inf")
        if rate > best_rate * (1 + 1e-9):
            best_k, best_rate = k, rate
    return best_k


@dataclass
class RunningMean:
    """Exponentially weighted mean; None until observed."""

    decay: float = COST_DECAY
    w: float = 0.0
    s: float = 0.0

    def observe(self, y: float) -> None:
        self.w = self.w * self.decay + 1.0
        self.s = self.s * self.decay + y

    def value(self, default: float = 0.0) -> float:
        return self.s / self.w if self.w else default


@dataclass
class LinearFit:
    """y ~ a + b x, exponentially weighted least squares with b shrunk towards a prior slope
    (ridge), so that a fit from a single x is still defined; a, b >= 0."""

    decay: float = COST_DECAY
    prior_slope: float | None = None  # set from the first observation unless given
    w: float = 0.0
    sx: float = 0.0
    sy: float = 0.0
    sxx: float = 0.0
    sxy: float = 0.0

    def observe(self, x: float, y: float) -> None:
        if self.prior_slope is None:
            self.prior_slope = PRIOR_TOKEN_SHARE * y / max(x, 1.0)
        d = self.decay
        self.w, self.sx, self.sy = self.w * d + 1, self.sx * d + x, self.sy * d + y
        self.sxx, self.sxy = self.sxx * d + x * x, self.sxy * d + x * y

    def coefficients(self) -> tuple[float, float]:
        if not self.w:
            return 0.0, 0.0
        cxx = self.sxx - self.sx * self.sx / self.w
        cxy = self.sxy - self.sx * self.sy / self.w
        b = max((cxy + PRIOR_WEIGHT * (self.prior_slope or 0.0)) / (cxx + PRIOR_WEIGHT), 0.0)
        a = (self.sy - b * self.sx) / self.w
        if a < 0:  # all of y is per token
            a, b = 0.0, self.sy / self.sx if self.sx else 0.0
        return a, b


@dataclass
class AdaptiveK:
    """The per-generation state of `--num-speculative-tokens auto`: running estimates, updated
    from each round, and the k each round should use."""

    max_k: int
    acceptance: AcceptanceStats = field(default_factory=lambda: AcceptanceStats(decay=ACCEPTANCE_DECAY))
    propose_fixed: RunningMean = field(default_factory=RunningMean)
    draft_step: RunningMean = field(default_factory=RunningMean)
    verify_fixed: RunningMean = field(default_factory=RunningMean)
    verify_forward: LinearFit = field(default_factory=LinearFit)  # x: window tokens x sessions
    occupancy: int = 1
    rounds: int = 0

    def costs(self) -> RoundCosts:
        a, b = self.verify_forward.coefficients()
        return RoundCosts(self.propose_fixed.value(), self.draft_step.value(),
                          self.verify_fixed.value(), a + b, b)

    def best_k(self) -> int:
        rates = [self.acceptance.rate(i) for i in range(self.max_k)]
        return choose_k(rates, self.costs(), self.max_k, self.occupancy)

    def next_k(self) -> int:
        """This round's k: the best, or every EXPLORE_EVERY rounds a neighbour of it."""
        self.rounds += 1
        if not self.verify_fixed.w or (self.draft_step.w == 0 and self.max_k > 0):
            return min(START_K, self.max_k)  # nothing measured yet
        k = self.best_k()
        if self.rounds % EXPLORE_EVERY == 0:
            k = k + 1 if k < self.max_k else max(k - 1, 0)
        return k

    def observe(self, k: int, accepted: int, propose_s: float | None, propose_forward_s: float,
                verify_s: float, verify_forward_s: float, occupancy: int,
                synced: int = 1) -> None:
        """One round: k drafts asked for (a shorter draft counts its missing positions as
        rejected: they yielded nothing), `accepted` kept; the proposer call (None: no call was
        made) and the verifier call, client-side, with the engine time each service reported.
        synced: tokens the proposal's sync carried; a longer sync than a round's own (1, or 2
        after a full acceptance) catches up after k = 0 rounds, and its feed would be mistaken
        for draft cost, so such a round leaves the proposer's costs alone."""
        self.occupancy = max(occupancy, 1)
        if k > 0:
            self.acceptance.observe(accepted, k)
        if k > 0 and (propose_s is None or synced <= 2):
            # No proposer call at k > 0: Turbo's drafts come with the verify, free
            self.draft_step.observe(propose_forward_s / k if propose_s is not None else 0.0)
            self.propose_fixed.observe(max(propose_s - propose_forward_s, 0.0)
                                       if propose_s is not None else 0.0)
        self.verify_fixed.observe(max(verify_s - verify_forward_s, 0.0))
        self.verify_forward.observe(self.occupancy * (k + 1), verify_forward_s)
