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
    many calls each has (from a single x, a slope of PRIOR_TOKEN_SHARE of it per token).

    Where the verifier reports its calls timed back to back at start-up (`reference`), a window
    costs its reference times how the recent calls compare with theirs (`scale`: the machine's
    load, the context's length). A window rarely used is not timed by its own calls then: on a
    CPU a call after calls of another shape runs colder (the development machine: 4.4-5.1 ms
    for a 3-token window called once among 5-token ones, 2.8-3.4 ms in use), and k auto kept
    the window it used, which its own calls had timed in use (bench.auto_k, compile on)."""

    sizes: dict[int, RecentMedian] = field(default_factory=dict)
    reference: dict[tuple[int, int], float] = field(default_factory=dict)  # (rows, window) -> s
    scale: RecentMedian = field(default_factory=RecentMedian)  # recent calls / their reference

    def observe(self, rows: int, window: int, y: float) -> None:
        self.sizes.setdefault(rows * window, RecentMedian()).observe(y)
        if ref := self.reference_at(rows, window):
            self.scale.observe(y / ref)

    def reference_at(self, rows: int, window: int) -> float:
        """The reference of a call of `rows` rows: that of the smallest batch bucket that holds
        them (the engine pads a call to it); 0: none for this window."""
        buckets = sorted(r for r, w in self.reference if w == window)
        if not buckets:
            return 0.0
        return self.reference[(next((b for b in buckets if b >= rows), buckets[-1]), window)]

    def measured(self, rows: int = 1) -> dict[int, float]:
        """Seconds by x: the recent medians, and where there is a reference, each window's at
        `rows` rows (x = rows x window) scaled."""
        out = {x: m.value() for x, m in self.sizes.items()}
        if len(self.scale):
            scale = self.scale.value()
            for window in {w for _, w in self.reference}:
                out[rows * window] = self.reference_at(rows, window) * scale
        return out

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
    # The proposer's own time on the call (StepTimings.total_ns); on a hit, mostly the wait for
    # the rest of its branch's pre-draft. 0 = not reported.
    propose_service_s: float = 0.0


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
    # Pre-drafting. A hit's proposer call is the round trip (`hit_trip`: the call less the
    # proposer's own time) and the wait for the rest of its branch's pre-draft (the proposer's
    # time), which is longer at a larger k: `hit_wait` by k. The share of calls that hit, by
    # k, starts from the share over all of them. Both depend on the branches the last
    # proposal left, drafted at its k, so a k's own are counted in steady rounds only, where
    # the last proposal asked the same k (a round that changes k measures the last k's
    # branches). Without pre-drafting all stay at none.
    hit_trip: RecentMedian = field(default_factory=RecentMedian)
    hit_wait: dict[int, RecentMedian] = field(default_factory=dict)
    hit_wait_pooled: RecentMedian = field(default_factory=RecentMedian)
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

    def costs(self, max_k: int, rows: int = 1) -> RoundCosts:
        """The costs of rounds asking for 0..max_k drafts, verified in calls of `rows` rows."""
        a, b = self.verify_forward.line()
        pooled = self.hits_pooled.rate(0)
        return RoundCosts(self.propose_fixed.value(), self.draft_step.value(),
                          self.verify_fixed.value(), a + b, b, self.verify_forward.measured(rows),
                          [self.hit_cost(k) for k in range(max_k + 1)],
                          [self.hits.rate(k, pooled) for k in range(max_k + 1)])

    def hit_cost(self, k: int) -> float:
        """A hit's proposer call at k: the round trip, and the wait measured at k, else at the
        nearest k measured, one draft step less per depth fewer (more per depth more): a
        pre-draft runs depth by depth (else over all hits)."""
        if k in self.hit_wait:
            wait = self.hit_wait[k].value()
        elif self.hit_wait:
            near = min(self.hit_wait, key=lambda j: (abs(j - k), j))
            wait = max(self.hit_wait[near].value() + (k - near) * self.draft_step.value(), 0.0)
        else:
            wait = self.hit_wait_pooled.value()
        return self.hit_trip.value() + wait

    def pre_drafting(self) -> bool:
        """A proposal has been answered from a pre-drafted branch."""
        return bool(len(self.hit_trip))

    def rows(self, occupancy: int) -> int:
        """Rows a verify call carries: the recent median where the verifier reports it, else
        every session holding a slot (`occupancy`). With many sessions it is fewer than them:
        some are proposing while the others verify."""
        return max(round(self.verify_rows.value(occupancy)), 1)

    def rates(self, after_hit: bool, max_k: int) -> tuple[list[float], list[float]]:
        """(acceptance, supply) per draft position after a hit or a miss."""
        return (self.after_hit if after_hit else self.after_miss).rates(max_k, self.pooled)

    def observe(self, r: RoundReport, occupancy: int, after_hit: bool, asked_last: int = 0) -> None:
        """asked_last: the k the session's last proposal asked for (its branches' length)."""
        (self.after_hit if after_hit else self.after_miss).observe(r)
        self.pooled.observe(r)
        steady = r.asked == asked_last
        if 0 < r.asked <= asked_last and r.propose_s is not None:   # a branch could answer it
            if steady:
                self.hits.count(r.asked, r.pre_drafted)
            self.hits_pooled.count(0, r.pre_drafted)
        if r.pre_drafted and r.propose_s is not None:
            wait = min(r.propose_service_s, r.propose_s)
            self.hit_trip.observe(r.propose_s - wait)
            if steady:
                self.hit_wait.setdefault(r.asked, RecentMedian()).observe(wait)
            self.hit_wait_pooled.observe(wait)
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
            self.verify_forward.observe(r.batch_rows, r.batch_window, r.verify_forward_s)
        else:
            self.verify_forward.observe(occupancy, r.verified + 1, r.verify_forward_s)
