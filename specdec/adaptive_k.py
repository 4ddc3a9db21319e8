"""k auto (`--num-speculative-tokens auto`): each round asks for the k in 0..max_k with the most
expected tokens per second (Leviathan et al.), from running estimates of what rounds yield and
cost on these services; a_j is the chance draft j is returned and accepted given 1..j-1 were:

  tokens(k) = 1 + sum_{i=1..k} prod_{j<=i} a_j    (the 1: the target's own token)
  time(k)   = propose(k) + verify(k)               (propose(0) = 0: no proposer call)
  k         = argmax_k tokens(k) / time(k)

What each round files, the sessions' shared clock and the explore rule: docs/architecture.md,
"Pre-drafting and adaptive k". Against every fixed k: `python -m bench.auto_k`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from specdec.generation_record import CallTime
from specdec.types import Proposal, StepOutcome

RECENT = 48                    # ticks of calls per k a cost estimate keeps
ACCEPTANCE_DECAY = 0.99        # weight of the past, per tick
PRIOR, PRIOR_WEIGHT = 0.6, 1.0  # weight: as many rounds
SWITCH_MARGIN = 0.02   # noisy estimates, and a branch pre-drafted for a smaller k can't answer a larger
# At k = 0 no round brings news of acceptance, which comes in runs (prompt lookup matches a
# repeated passage, then nothing): k = 0 must beat every k > 0 by ZERO_MARGIN, so a near tie
# keeps drafting, and once at 0 every EXPLORE_AT_ZERO ticks one round drafts.
ZERO_MARGIN = 0.10
EXPLORE_EVERY, EXPLORE_ROUNDS, EXPLORE_AT_ZERO = 48, 2, 12
SETTLE = 2                     # ticks: a batch's prefills delay the first rounds


@dataclass
class Acceptance:
    """a_j per draft position j = 0..: accepted / seen, fading every round."""

    accepted: list[float] = field(default_factory=list)
    seen: list[float] = field(default_factory=list)

    def observe(self, accepted: int, asked: int, sessions: int = 1) -> None:
        """A round of one of `sessions` asked for `asked` drafts; the first `accepted` were
        returned and kept."""
        pad, fading, decay = [0.0] * (asked - len(self.seen)), max(asked, 1), ACCEPTANCE_DECAY ** (1 / sessions)
        self.seen = [x * decay ** (j < fading) for j, x in enumerate(self.seen + pad)]
        self.accepted = [x * decay ** (j < fading) for j, x in enumerate(self.accepted + pad)]
        for j in range(min(accepted + 1, asked)):
            self.seen[j] += 1
            self.accepted[j] += j < accepted

    def rates(self, k: int) -> list[float]:
        """a_j, j = 0..k-1."""
        rates, prior = [], PRIOR
        for j in range(k):
            acc, seen = (self.accepted[j], self.seen[j]) if j < len(self.seen) else (0.0, 0.0)
            prior = (acc + prior * PRIOR_WEIGHT) / (seen + PRIOR_WEIGHT)
            rates.append(prior)
        return rates


@dataclass
class KEstimates:
    """What rounds yield and cost on one pair of services, shared by a caller's generations
    (a SpecDecClient's; the verifier's Generate keeps one per method)."""

    acceptance: Acceptance = field(default_factory=Acceptance)
    propose: dict[int, deque[float]] = field(default_factory=dict)   # k -> recent calls, s
    verify: dict[int, deque[float]] = field(default_factory=dict)
    k_in_use: int | None = None
    sessions: int = 0    # on the verifier at the last round (0: no round yet)
    clock: float = 0.0   # ticks: each round adds 1 / sessions

    def rates(self, max_k: int) -> list[float]:
        """Expected tokens per second of a round asking for k, k = 0..max_k."""
        acceptance = self.acceptance.rates(max_k)
        propose = {k: typical(c) for k, c in self.propose.items()}
        verify = {k: typical(c) for k, c in self.verify.items()}
        return [expected_tokens(acceptance, k)
                / max((priced(propose, k) if k else 0.0) + priced(verify, k), 1e-9)
                for k in range(max_k + 1)]


def expected_tokens(acceptance: Sequence[float], k: int) -> float:
    """1 + sum_{i<=k} prod_{j<=i} a_j."""
    total = reach = 1.0
    for a in acceptance[:k]:
        reach *= a
        total += reach
    return total


def typical(calls: Sequence[float]) -> float:
    """Their mean without the slowest (a stray collection)."""
    return (sum(calls) - max(calls)) / (len(calls) - 1) if len(calls) > 2 else sum(calls) / len(calls)


def priced(measured: Mapping[int, float], k: int) -> float:
    """The cost at k: measured, else at the nearest measured k (the smaller on a tie); 0 with none."""
    if k in measured or not measured:
        return measured.get(k, 0.0)
    return measured[min(measured, key=lambda x: (abs(x - k), x))]


def choose(rates: Sequence[float], in_use: int | None, margin: float) -> int:
    """The best k, unless the one in use is within `margin` of it (k = 0: ZERO_MARGIN)."""
    best = max(range(len(rates)), key=lambda k: rates[k] / (1 + ZERO_MARGIN) if k == 0 else rates[k])
    if in_use is not None and in_use < len(rates) and rates[best] <= rates[in_use] * (1 + margin):
        return in_use
    return best


class AutoK:
    """One generation's k auto (a KPolicy) on estimates it shares."""

    def __init__(self, max_k: int, estimates: KEstimates) -> None:
        self.max_k, self.estimates = max_k, estimates
        self.last_k = 0      # drafts the last round asked for

    def next_k(self) -> int:
        e = self.estimates
        if not e.sessions:
            return self.max_k
        tick = int(e.clock)
        e.clock += 1 / e.sessions
        if tick < SETTLE + self.max_k:   # downwards: every round but the first can hit a branch
            return self.max_k - max(tick - SETTLE + 1, 0)
        k = e.k_in_use if e.k_in_use is not None else self.max_k
        if k == 0 and self.max_k and tick % EXPLORE_AT_ZERO == 0:
            rates = e.rates(self.max_k)
            return max(range(1, self.max_k + 1), key=rates.__getitem__)
        if k and tick % EXPLORE_EVERY < EXPLORE_ROUNDS:
            up = (tick // EXPLORE_EVERY) % 2 == 1
            return k + 1 if up and k < self.max_k else k - 1
        e.k_in_use = choose(e.rates(self.max_k), e.k_in_use, SWITCH_MARGIN)
        return e.k_in_use

    def observe(self, k: int, proposal: Proposal | None, step: StepOutcome, time: CallTime) -> None:
        e = self.estimates
        asked = k if proposal is not None else step.drafted   # Turbo: the heads' guesses
        e.sessions = n = max(step.sessions_active, 1)
        e.acceptance.observe(step.accepted, asked, n)
        if proposal is not None and k <= self.last_k:
            e.propose.setdefault(k, deque(maxlen=RECENT * n)).append(time.proposer_ns / 1e9)
        window = max(asked, step.timings.batch_window - 1)
        e.verify.setdefault(window, deque(maxlen=RECENT * n)).append(time.verifier_ns / 1e9)
        self.last_k = asked
