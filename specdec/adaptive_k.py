"""Adaptive k (`--num-speculative-tokens auto`): each round, the draft length that maximises
expected tokens per second, from running estimates of what a round yields and costs.

One round asks the proposer for k drafts and gets m <= k back (a draft model always returns k;
prompt lookup returns fewer, or none, when the context has no match), while n sessions share
the verifier:

  tokens(k) = 1 + sum_{i=1..k} prod_{j<=i} s_j alpha_j
      (Leviathan et al.'s (1 - a^(k+1)) / (1 - a), per draft position: s_j = P(draft j is
      returned | draft j-1 was), alpha_j = P(d_j accepted | d_1..d_(j-1) accepted); the 1 is
      the target's token)
  time(k)   = [k > 0] * (propose_fixed + k * draft_step)
            + verify_fixed + E_m[verify_forward(n * (m + 1))]
      (the proposer call: round trip and sync, then k draft forwards, skipped at k = 0; the
      verifier call: round trip and queueing, then one engine call whose rows the n sessions
      share, so a window token costs n times as much of the verifier's time as at n = 1)

k = argmax tokens(k) / time(k) over 0..max_k; 0 when no draft pays for itself (a draft as slow
as the target, or a full verifier whose windows have become compute-bound). That is what
vLLM's num_speculative_tokens_per_batch_size and TensorRT-LLM's draft_len_schedule configure
by hand.

Once the drafts are in hand their cost is spent, and the round verifies the prefix of them that
pays (`choose_window`): draft i is worth verifying when the tokens it is expected to add exceed
what its share of the verify time would earn at the expected rate. A prefix of a draft is a
draft, so this is lossless. It matters because a verify's cost is not linear in its window: on
a CPU a compiled 5-token window can cost far more than a 4-token one, so the engine time is
kept per window size where measured (`WindowCosts`), a line through those filling in the rest.

Acceptance comes in runs (prompt lookup matches a repeated passage for a few rounds, then
nothing), so the yields are kept apart after a round that accepted a draft and after one that
did not, and `best_policy` picks k for both states at once over the long run: a round at k = 0
never learns that a run has begun, which choosing per round would not count. In a batch the
sessions' rows are padded to the widest window, so there one k serves both states and drafts
are not trimmed (`AdaptiveK.batched`).

The estimates are running and come from each round's own observations (`AdaptiveK.observe`):
costs as the median of the recent calls (one slow call must not turn k off for a while),
acceptance exponentially decayed per position. Every `EXPLORE_EVERY` rounds one round tries a
neighbouring k, alternately above (verifying every draft it gets) and below, so the estimates
for lengths not in use (acceptance at the next position, the cost of each window) stay alive.
A `SpecDecClient` keeps the estimates (`RoundEstimates`) across its generations.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from specdec.proposers.pre_draft import AcceptanceStats

EXPLORE_EVERY = 24       # one round in this many tries a neighbouring k (each costs: a
#                          verify at another window size, and the switch between compiled windows)
START_K = 4              # k before anything has been measured (capped at max_k)
RECENT = 16              # calls each cost estimate keeps (its median is the estimate)
ACCEPTANCE_DECAY = 0.98  # weight of the past in acceptance estimates, per observation of a position
# Before the verifier's cost slope has been seen (all rounds at one window size), this share of
# a forward is assumed to grow with the window's tokens.
PRIOR_TOKEN_SHARE = 0.25


@dataclass(frozen=True)
class RoundCosts:
    """Seconds, as the client sees them."""

    propose_fixed_s: float   # a proposer call without its draft forwards (round trip, sync)
    draft_step_s: float      # one draft token
    verify_fixed_s: float    # a verifier call without its engine call (round trip, queueing)
    verify_forward_s: float  # the engine call at one session, window of one token (k = 0)
    verify_token_s: float    # each further window token per session sharing the engine call
    # The engine call by window tokens x sessions, where measured (else the line above).
    measured: Mapping[int, float] = field(default_factory=dict)

    def forward(self, tokens: int) -> float:
        """The verifier's engine call for `tokens` = window tokens x sessions sharing it."""
        if tokens in self.measured:
            return self.measured[tokens]
        return self.verify_forward_s + self.verify_token_s * (tokens - 1)


def expected_tokens(rates: Sequence[float], k: int) -> float:
    """Tokens one round emits on average with k drafts; rates[j]: the chance that draft j+1
    is there and accepted, given drafts 1..j were (alpha_(j+1), times s_(j+1) before the
    drafts are known)."""
    total, p = 1.0, 1.0
    for j in range(k):
        p *= rates[j]
        total += p
    return total


def draft_lengths(supply: Sequence[float] | None, k: int) -> list[float]:
    """P(the proposer returns m drafts), m in 0..k, asked for k; supply[j] = P(draft j+1 is
    returned | draft j was). None: always all k (a draft model)."""
    if supply is None:
        return [0.0] * k + [1.0]
    probs, p = [], 1.0
    for j in range(k):
        probs.append(p * (1 - supply[j]))
        p *= supply[j]
    return probs + [p]


def round_time(costs: RoundCosts, k: int, occupancy: int,
               supply: Sequence[float] | None = None) -> float:
    """Seconds one round takes asking for k drafts while `occupancy` sessions share the
    verifier; the verify window is the drafts returned, plus one."""
    propose = costs.propose_fixed_s + k * costs.draft_step_s if k > 0 else 0.0
    n = max(occupancy, 1)
    verify = sum(p * costs.forward(n * (m + 1))
                 for m, p in enumerate(draft_lengths(supply, k)) if p)
    return propose + costs.verify_fixed_s + verify


def chain(acceptance: Sequence[float], supply: Sequence[float] | None) -> list[float]:
    """Per position, the chance a draft is returned and accepted given the ones before were."""
    return list(acceptance) if supply is None else [a * s for a, s in zip(acceptance, supply)]


def best_rate(acceptance: Sequence[float], costs: RoundCosts, max_k: int, occupancy: int,
              supply: Sequence[float] | None = None) -> tuple[int, float]:
    """(k, expected tokens per second): the k in 0..max_k with the most (the smaller on a tie)."""
    rates = chain(acceptance, supply)
    best_k, best = 0, 0.0
    for k in range(max_k + 1):
        t = round_time(costs, k, occupancy, supply)
        rate = expected_tokens(rates, k) / t if t > 0 else float("inf")
        if rate > best * (1 + 1e-9):
            best_k, best = k, rate
    return best_k, best


def choose_k(acceptance: Sequence[float], costs: RoundCosts, max_k: int, occupancy: int,
             supply: Sequence[float] | None = None) -> int:
    """The k in 0..max_k with the most expected tokens per second (the smaller on a tie)."""
    return best_rate(acceptance, costs, max_k, occupancy, supply)[0]


@dataclass(frozen=True)
class Policy:
    """The draft length for each kind of stretch, and the tokens per second it is expected to
    yield over the long run."""

    k_after_hit: int
    k_after_miss: int
    rate: float

    def k(self, after_hit: bool) -> int:
        return self.k_after_hit if after_hit else self.k_after_miss


def best_policy(after_hit: tuple[Sequence[float], Sequence[float]],
                after_miss: tuple[Sequence[float], Sequence[float]], costs: RoundCosts,
                max_k: int, occupancy: int, now_after_hit: bool, common: bool = False) -> Policy:
    """The pair of draft lengths (after a round that accepted a draft, after one that did not)
    with the most expected tokens per second over the long run; each state's (acceptance,
    supply) per position. A round that asks for drafts finds out which stretch the generation
    is in (its first draft is returned and accepted, or not); a round at k = 0 does not, so
    the generation stays where it was. That is why k = 0 after a miss can lose to asking,
    even where it wins the round: it never notices that a run of hits has begun.

    Over the two-state chain: P(hit next) = s_1 alpha_1 of the state's yields (k > 0), the
    stationary share of hit states mu = to_hit / (1 - stay_hit + to_hit), and the rate is
    (mu T_hit + (1 - mu) T_miss) / (mu D_hit + (1 - mu) D_miss) for tokens T and seconds D of
    each state's round. common: one k for both states."""
    def rounds(acceptance: Sequence[float], supply: Sequence[float]) -> list[tuple[float, float, float]]:
        rates = chain(acceptance, supply)
        return [(expected_tokens(rates, k), round_time(costs, k, occupancy, supply),
                 rates[0] if k else -1.0) for k in range(max_k + 1)]

    hit, miss = rounds(*after_hit), rounds(*after_miss)
    best = Policy(0, 0, 0.0)
    for kh, (t_h, d_h, p_h) in enumerate(hit):
        for km, (t_m, d_m, p_m) in enumerate(miss):
            if common and km != kh:
                continue
            stay_hit = p_h if kh else 1.0
            to_hit = p_m if km else 0.0
            if 1 - stay_hit + to_hit <= 0:   # neither state is ever left: the current one
                mu = 1.0 if now_after_hit else 0.0
            else:
                mu = to_hit / (1 - stay_hit + to_hit)
            time = mu * d_h + (1 - mu) * d_m
            rate = (mu * t_h + (1 - mu) * t_m) / time if time > 0 else float("inf")
            if rate > best.rate * (1 + 1e-9):
                best = Policy(kh, km, rate)
    return best


def choose_window(acceptance: Sequence[float], costs: RoundCosts, drafted: int, occupancy: int,
                  rate: float) -> int:
    """How many of the `drafted` drafts in hand to verify, their cost spent: the m that adds
    the most expected tokens beyond what its verify time would earn at `rate` (tokens per
    second, what rounds are expected to yield), so draft m pays when it is expected to add
    more than its share of the window earns elsewhere (the smaller m on a tie)."""
    n = max(occupancy, 1)
    best_m, best = 0, float("-inf")
    for m in range(drafted + 1):
        score = expected_tokens(acceptance, m) - rate * costs.forward(n * (m + 1))
        if score > best + 1e-12:
            best_m, best = m, score
    return best_m


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

    def measured(self) -> bool:
        """Both calls have been timed (the proposer's only matters when there is one)."""
        return bool(len(self.verify_fixed) and len(self.draft_step))

    def costs(self) -> RoundCosts:
        a, b = self.verify_forward.line()
        return RoundCosts(self.propose_fixed.value(), self.draft_step.value(),
                          self.verify_fixed.value(), a + b, b, self.verify_forward.measured())

    def rates(self, after_hit: bool, max_k: int) -> tuple[list[float], list[float]]:
        """(acceptance, supply) per draft position after a hit or a miss."""
        return (self.after_hit if after_hit else self.after_miss).rates(max_k, self.pooled)

    def observe(self, r: RoundReport, occupancy: int, after_hit: bool) -> None:
        (self.after_hit if after_hit else self.after_miss).observe(r)
        self.pooled.observe(r)
        if r.asked > 0 and (r.propose_s is None or r.synced <= 2):
            # No proposer call at k > 0: Turbo's drafts come with the verify, free
            self.draft_step.observe(r.propose_forward_s / r.asked if r.propose_s is not None else 0.0)
            self.propose_fixed.observe(max(r.propose_s - r.propose_forward_s, 0.0)
                                       if r.propose_s is not None else 0.0)
        self.verify_fixed.observe(max(r.verify_s - r.verify_forward_s, 0.0))
        self.verify_forward.observe(occupancy * (r.verified + 1), r.verify_forward_s)


@dataclass
class AdaptiveK:
    """One generation under `--num-speculative-tokens auto`: the k each round should use and
    how much of its draft to verify, from the estimates it shares with the client's other
    generations (a fresh set when it has none)."""

    max_k: int
    estimates: RoundEstimates = field(default_factory=RoundEstimates)
    occupancy: int = 1
    rounds: int = 0
    explore_up: bool = False   # this round tries a larger k and verifies all of its drafts
    after_hit: bool = True     # the last round that asked for drafts accepted one
    chosen: Policy | None = None  # this round's policy (next_k): one evaluation per round

    @property
    def batched(self) -> bool:
        """Other sessions share the verifier's engine calls. Their rows are padded to the
        widest window, so one session's smaller window saves nothing while another's is
        wider: sessions then use one k (the best for both states, as every session on the
        same estimates picks the same), verify every draft they get, and explore n times
        less often (a wider exploring window costs every row of the batch)."""
        return self.occupancy > 1

    def policy(self) -> Policy:
        return best_policy(self.estimates.rates(True, self.max_k),
                           self.estimates.rates(False, self.max_k), self.estimates.costs(),
                           self.max_k, self.occupancy, self.after_hit, common=self.batched)

    def best_k(self) -> int:
        self.chosen = self.policy()
        return self.chosen.k(self.after_hit)

    def next_k(self) -> int:
        """This round's k: the best, or every EXPLORE_EVERY rounds a neighbour of it."""
        self.rounds += 1
        self.explore_up, self.chosen = False, None
        if self.max_k > 0 and not self.estimates.measured():
            return min(START_K, self.max_k)  # nothing measured yet
        k = self.best_k()
        # In a batch each session explores n times less often: the batch as a whole then
        # explores as often as a lone session does.
        every = EXPLORE_EVERY * self.occupancy
        if self.rounds % every == 0:
            self.explore_up = (self.rounds // every) % 2 == 1 or k == 0
            k = min(k + 1, self.max_k) if self.explore_up else k - 1
        return k

    def window(self, drafted: int) -> int:
        """How many of this round's `drafted` drafts to verify (choose_window); all of them
        before anything is measured, when exploring upwards, and in a batch."""
        if self.explore_up or self.batched or not self.estimates.measured() or drafted == 0:
            return drafted
        acceptance, _ = self.estimates.rates(self.after_hit, self.max_k)
        rate = (self.chosen or self.policy()).rate   # this round's, from next_k
        return choose_window(acceptance, self.estimates.costs(), drafted, self.occupancy, rate)

    def observe(self, r: RoundReport) -> None:
        self.occupancy = max(r.occupancy, 1)
        self.estimates.observe(r, self.occupancy, self.after_hit)
        if r.asked > 0:
            self.after_hit = r.accepted > 0
