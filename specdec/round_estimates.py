"""Running estimates of what rounds yield and cost against one pair of services: the inputs
of the round model (specdec.round_model), updated from each round's own observations.

Costs are the median of the recent calls (one slow call, a collection or a first call at a new
shape, must not turn k off for a while); the verify's engine time is kept per window size, a
line through those filling in the rest. Acceptance and supply are exponentially decayed per
draft position, apart after a hit and after a miss. A `SpecDecClient` keeps one
`RoundEstimates` across its generations.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field

from specdec.proposers.pre_draft import AcceptanceStats
from specdec.round_model import Policy, RoundCosts

RECENT = 16              # calls each cost estimate keeps (its median is the estimate)
ACCEPTANCE_DECAY = 0.98  # weight of the past in acceptance estimates, per observation of a position
# Before the verifier's cost slope has been seen (all rounds at one window size), this share of
# a forward is assumed to grow with the window's tokens.
PRIOR_TOKEN_SHARE = 0.25


class RecentMedian:
    """The median of the last RECENT observations: a cost estimate that a stray slow call (a
    garbage collection, the first call at a new shape) does not move, and that follows a
    lasting change within RECENT rounds."""

    def __init__(self) -> None:
        self.values: deque[float] = deque(maxlen=RECENT)

    def observe(self, y: float) -> None:
        self.values.append(y)

    def __len__(self) -> int:
        return len(self.values)

    def value(self, default: float = 0.0) -> float:
        return statistics.median(self.values) if self.values else default


@dataclass
class WindowCosts:
    """The verifier's engine call by x = window tokens x sessions sharing it: the recent
    median at each x seen, and for the others a line through those medians, weighted by how
    many calls each has (from a single x, a slope of PRIOR_TOKEN_SHARE of it per token)."""

    sizes: dict[int, RecentMedian] = field(default_factory=dict)

    def observe(self, x: int, y: float) -> None:
        self.sizes.setdefault(x, RecentMedian()).observe(y)

    def measured(self) -> dict[int, float]:
        return {x: m.value() for x, m in self.sizes.items()}

    def line(self) -> tuple[float, float]:
        """(a, b), y ~ a + b x with a, b >= 0; (0, 0) before any call."""
        points = [(x, m.value(), len(m)) for x, m in self.sizes.items()]
        w = sum(n for _, _, n in points)
        if not w:
            return 0.0, 0.0
        mx = sum(x * n for x, _, n in points) / w
        my = sum(y * n for _, y, n in points) / w
        sxx = sum(n * (x - mx) ** 2 for x, _, n in points)
        b = sum(n * (x - mx) * (y - my) for x, y, n in points) / sxx if sxx \
            else PRIOR_TOKEN_SHARE * my / max(mx, 1.0)
        b = max(b, 0.0)
        a = my - b * mx
        if a < 0:  # all of y is per token
            a, b = 0.0, my / mx
        return a, b


@dataclass(frozen=True)
class RoundReport:
    """What one round did and cost, as the client saw it (seconds)."""

    asked: int                 # drafts asked for (k); 0: no proposer call
    returned: int              # drafts the proposer returned (<= asked)
    verified: int              # drafts verified (<= returned: the window chosen)
    accepted: int              # ... of which the verifier accepted
    propose_s: float | None    # the proposer call on the round's critical path; None: no call
                               # (k = 0, Turbo, or a call alongside the verify, costing no time)
    propose_forward_s: float   # the engine time the proposer reported for it
    verify_s: float            # the verifier call
    verify_forward_s: float    # the engine time the verifier reported for it
    occupancy: int             # sessions sharing the verifier (StepOutcome.sessions_active)
    # Tokens the proposal's sync carried: a longer sync than a round's own (1, or 2 after a
    # full acceptance) catches up after k = 0 rounds, and its feed would be mistaken for draft
    # cost, so such a round leaves the proposer's costs alone.
    synced: int = 1
    # The verifier's engine call (StepTimings.batch_*): its rows, from every session it batched,
    # and its window, padded to the widest row; 0 = not reported (an older verifier).
    batch_rows: int = 0
    batch_window: int = 0
    # The proposal was a branch the proposer pre-drafted during the last verify (a hit): the
    # call cost no draft forwards, which says nothing of what drafting costs.
    pre_drafted: bool = False


@dataclass
class DraftYield:
    """What drafts yield, per position: whether the proposer returns them, and whether the
    verifier accepts them."""

    # P(d_i accepted | d_1..d_(i-1) accepted), over drafts verified
    acceptance: AcceptanceStats = field(default_factory=lambda: AcceptanceStats(decay=ACCEPTANCE_DECAY))
    # P(the proposer returns draft i | it returned i - 1, asked for i or more)
    supply: AcceptanceStats = field(
        default_factory=lambda: AcceptanceStats(decay=ACCEPTANCE_DECAY, prior=1.0))

    def rates(self, max_k: int, prior: DraftYield | None = None) -> tuple[list[float], list[float]]:
        """(acceptance, supply) per draft position 1..max_k; prior: a broader yield whose
        rates stand in for this one's until it has observations of its own."""
        if prior is None:
            return ([self.acceptance.rate(i) for i in range(max_k)],
                    [self.supply.rate(i) for i in range(max_k)])
        acceptance, supply = prior.rates(max_k)
        return ([self.acceptance.rate(i, acceptance[i]) for i in range(max_k)],
                [self.supply.rate(i, supply[i]) for i in range(max_k)])

    def observe(self, r: RoundReport) -> None:
        if r.asked > 0:
            self.supply.observe(r.returned, r.asked)
        if r.verified > 0:
            self.acceptance.observe(r.accepted, r.verified)


@dataclass
class RoundEstimates:
    """Running estimates of what rounds yield and cost against one pair of services. A client
    keeps one across its generations (SpecDecClient), so a new generation starts from what the
    last ones measured instead of from priors: the costs are the services', and acceptance is
    the model pair's before it is the prompt's."""

    # Yields after a round that accepted a draft, and after one that did not. Acceptance comes
    # in runs (prompt lookup matches a repeated passage for several rounds, then nothing at
    # all), so the last round says which kind of stretch a generation is in.
    # Each refines `pooled`, the yield over all rounds, which stands in for a state not yet
    # seen (a generation that has never had a hit does not expect much of one).
    after_hit: DraftYield = field(default_factory=DraftYield)
    after_miss: DraftYield = field(default_factory=DraftYield)
    pooled: DraftYield = field(default_factory=DraftYield)
    propose_fixed: RecentMedian = field(default_factory=RecentMedian)
    draft_step: RecentMedian = field(default_factory=RecentMedian)
    verify_fixed: RecentMedian = field(default_factory=RecentMedian)
    verify_forward: WindowCosts = field(default_factory=WindowCosts)
    verify_rows: RecentMedian = field(default_factory=RecentMedian)  # rows per verify call
    # Pre-drafting: a hit's proposer call, and the share of calls that hit, by the k asked
    # (counted where a hit was possible: the last proposal drafted at least k), each k's rate
    # starting from the rate over all of them. Without pre-drafting both stay at none.
    propose_hit: RecentMedian = field(default_factory=RecentMedian)
    hits: AcceptanceStats = field(
        default_factory=lambda: AcceptanceStats(decay=ACCEPTANCE_DECAY, prior=0.0))
    hits_pooled: AcceptanceStats = field(
        default_factory=lambda: AcceptanceStats(decay=ACCEPTANCE_DECAY, prior=0.0))
    # The policy the sessions on these estimates chose last: in a batch they keep it together
    # until another clearly pays more (adaptive_k.SWITCH_MARGIN).
    policy_in_use: Policy | None = None
    policy_at: int = 0   # `rounds` when it was chosen
    rounds: int = 0   # rounds chosen on these estimates, by every session: when to explore

    def measured(self) -> bool:
        """Both calls have been timed (the proposer's only matters when there is one)."""
        return bool(len(self.verify_fixed) and len(self.draft_step))

    def costs(self, max_k: int) -> RoundCosts:
        """The costs of rounds asking for 0..max_k drafts."""
        a, b = self.verify_forward.line()
        pooled = self.hits_pooled.rate(0)
        return RoundCosts(self.propose_fixed.value(), self.draft_step.value(),
                          self.verify_fixed.value(), a + b, b, self.verify_forward.measured(),
                          self.propose_hit.value(),
                          [self.hits.rate(k, pooled) for k in range(max_k + 1)])

    def rows(self, occupancy: int) -> int:
        """Rows a verify call carries: the recent median where the verifier reports it, else
        every session holding a slot (`occupancy`). With many sessions it is fewer than them:
        some are proposing while the others verify."""
        return max(round(self.verify_rows.value(occupancy)), 1)

    def rates(self, after_hit: bool, max_k: int) -> tuple[list[float], list[float]]:
        """(acceptance, supply) per draft position after a hit or a miss."""
        return (self.after_hit if after_hit else self.after_miss).rates(max_k, self.pooled)

    def observe(self, r: RoundReport, occupancy: int, after_hit: bool, hit_possible: bool = False) -> None:
        """hit_possible: the session's last proposal drafted at least r.asked (a pre-drafted
        branch of it could have answered this one)."""
        (self.after_hit if after_hit else self.after_miss).observe(r)
        self.pooled.observe(r)
        if hit_possible and r.propose_s is not None:
            self.hits.count(r.asked, r.pre_drafted)
            self.hits_pooled.count(0, r.pre_drafted)
        if r.pre_drafted and r.propose_s is not None:
            self.propose_hit.observe(r.propose_s)
        elif r.asked > 0 and (r.propose_s is None or r.synced <= 2):
            # No proposer call at k > 0: Turbo's drafts come with the verify, free
            self.draft_step.observe(r.propose_forward_s / r.asked if r.propose_s is not None else 0.0)
            self.propose_fixed.observe(max(r.propose_s - r.propose_forward_s, 0.0)
                                       if r.propose_s is not None else 0.0)
        self.verify_fixed.observe(max(r.verify_s - r.verify_forward_s, 0.0))
        if r.batch_rows:
            # What the call ran, other sessions' rows and padding included: in a batch, one
            # session's narrower window saves nothing while another's is wider.
            self.verify_rows.observe(r.batch_rows)
            self.verify_forward.observe(r.batch_rows * r.batch_window, r.verify_forward_s)
        else:
            self.verify_forward.observe(occupancy * (r.verified + 1), r.verify_forward_s)
