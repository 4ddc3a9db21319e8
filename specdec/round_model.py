"""The round model behind adaptive k: what a round asking for k drafts is expected to yield
and cost, and the choices made from it. Pure functions over the estimates
(specdec.round_estimates); specdec.adaptive_k applies them each round.

One round asks the proposer for k drafts and gets m <= k back (a draft model always returns k;
prompt lookup returns fewer, or none, when the context has no match), while the verifier's
engine calls carry n rows (one per session in the call; with many sessions fewer than all of
them, as some are proposing meanwhile, see RoundEstimates.rows):

  tokens(k) = 1 + sum_{i=1..k} prod_{j<=i} s_j alpha_j
      (Leviathan et al.'s (1 - a^(k+1)) / (1 - a), per draft position: s_j = P(draft j is
      returned | draft j-1 was), alpha_j = P(d_j accepted | d_1..d_(j-1) accepted); the 1 is
      the target's token)
  time(k)   = [k > 0] * (h_k * propose_hit + (1 - h_k) * (propose_fixed + k * draft_step))
            + verify_fixed + E_m[verify_forward(n * (m + 1))]
      (the proposer call, skipped at k = 0: with pre-drafting a share h_k of the calls asking
      for k is answered from a branch drafted during the last verify, costing the call alone;
      the others cost the round trip and sync, then k draft forwards. The verifier call: round
      trip and queueing, then one engine call whose rows the n sessions share, so a window
      token costs n times as much of the verifier's time as at n = 1)

k = argmax tokens(k) / time(k) over 0..max_k; 0 when no draft pays for itself (a draft as slow
as the target, or a full verifier whose windows have become compute-bound). That is what
vLLM's num_speculative_tokens_per_batch_size and TensorRT-LLM's draft_len_schedule configure
by hand. Acceptance comes in runs, so `best_policy` picks k for the stretch after a hit and
after a miss at once.

Once the drafts are in hand their cost is spent, and the round verifies the prefix of them that
pays (`choose_window`). A prefix of a draft is a draft, so this is lossless. It matters because
a verify's cost is not linear in its window: on a CPU a compiled 5-token window can cost far
more than a 4-token one (`RoundCosts.measured`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


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
    # Pre-drafting: a proposer call answered from a pre-drafted branch (a hit), and the share
    # of calls asking for k that are, by k (none listed: no hits, as without pre-drafting).
    propose_hit_s: float = 0.0
    hit_rate: Sequence[float] = ()

    def propose(self, k: int) -> float:
        """The proposer call asking for k > 0 drafts: a hit, or k draft forwards."""
        h = self.hit_rate[k] if k < len(self.hit_rate) else 0.0
        return h * self.propose_hit_s + (1 - h) * (self.propose_fixed_s + k * self.draft_step_s)

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
    propose = costs.propose(k) if k > 0 else 0.0
    n = max(occupancy, 1)
    verify = sum(p * costs.forward(n * (m + 1))
                 for m, p in enumerate(draft_lengths(supply, k)) if p)
    return propose + costs.verify_fixed_s + verify


def chain(acceptance: Sequence[float], supply: Sequence[float] | None) -> list[float]:
    """Per position, the chance a draft is returned and accepted given the ones before were."""
    return list(acceptance) if supply is None else [a * s for a, s in zip(acceptance, supply)]


@dataclass(frozen=True)
class Policy:
    """The draft length for each kind of stretch, and the tokens per second it is expected to
    yield over the long run."""

    k_after_hit: int
    k_after_miss: int
    rate: float

    def k(self, after_hit: bool) -> int:
        return self.k_after_hit if after_hit else self.k_after_miss


Yields = tuple[Sequence[float], Sequence[float] | None]  # (acceptance, supply) per position


def best_policy(after_hit: Yields, after_miss: Yields, costs: RoundCosts,
                max_k: int, occupancy: int, now_after_hit: bool, common: bool = False,
                keep: Policy | None = None, margin: float = 0.0, least_k: int = 0) -> Policy:
    """The pair of draft lengths (after a round that accepted a draft, after one that did not)
    with the most expected tokens per second over the long run; each state's (acceptance,
    supply) per position. A round that asks for drafts finds out which stretch the generation
    is in (its first draft is returned and accepted, or not); a round at k = 0 does not, so
    the generation stays where it was. That is why k = 0 after a miss can lose to asking,
    even where it wins the round: it never notices that a run of hits has begun.

    Over the two-state chain: P(hit next) = s_1 alpha_1 of the state's yields (k > 0), the
    stationary share of hit states mu = to_hit / (1 - stay_hit + to_hit), and the rate is
    (mu T_hit + (1 - mu) T_miss) / (mu D_hit + (1 - mu) D_miss) for tokens T and seconds D of
    each state's round. common: one k for both states. keep: the policy in use, kept (at its
    rate now) unless another is expected to yield more than `margin` (a fraction) more.
    least_k: the smallest k either state may use (1: the best policy that always asks)."""
    def rounds(acceptance: Sequence[float],
               supply: Sequence[float] | None) -> list[tuple[float, float, float]]:
        rates = chain(acceptance, supply)
        return [(expected_tokens(rates, k), round_time(costs, k, occupancy, supply),
                 rates[0] if k else -1.0) for k in range(max_k + 1)]

    hit, miss = rounds(*after_hit), rounds(*after_miss)
    best, kept = Policy(0, 0, 0.0), None
    for kh, (t_h, d_h, p_h) in enumerate(hit):
        for km, (t_m, d_m, p_m) in enumerate(miss):
            if (common and km != kh) or min(kh, km) < least_k:
                continue
            stay_hit = p_h if kh else 1.0
            to_hit = p_m if km else 0.0
            left = 1 - stay_hit + to_hit
            # left <= 0: neither state is ever left, so the current one
            mu = (1.0 if now_after_hit else 0.0) if left <= 0 else to_hit / left
            time = mu * d_h + (1 - mu) * d_m
            rate = (mu * t_h + (1 - mu) * t_m) / time if time > 0 else float("inf")
            if rate > best.rate * (1 + 1e-9):
                best = Policy(kh, km, rate)
            if keep is not None and (kh, km) == (keep.k_after_hit, keep.k_after_miss):
                kept = Policy(kh, km, rate)
    return kept if kept is not None and best.rate <= kept.rate * (1 + margin) else best


def best_rate(acceptance: Sequence[float], costs: RoundCosts, max_k: int, occupancy: int,
              supply: Sequence[float] | None = None) -> tuple[int, float]:
    """(k, expected tokens per second): the k in 0..max_k with the most (the smaller on a tie),
    for one kind of stretch (a policy whose two states yield the same)."""
    policy = best_policy((acceptance, supply), (acceptance, supply), costs, max_k, occupancy,
                         True, common=True)
    return policy.k_after_hit, policy.rate


def choose_k(acceptance: Sequence[float], costs: RoundCosts, max_k: int, occupancy: int,
             supply: Sequence[float] | None = None) -> int:
    """The k in 0..max_k with the most expected tokens per second (the smaller on a tie)."""
    return best_rate(acceptance, costs, max_k, occupancy, supply)[0]


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
