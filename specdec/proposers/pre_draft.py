"""Pre-drafting: while the verifier checks round T's draft, the proposer drafts round T+1 for
the likeliest outcomes of that check, so a hit answers the next request at once.

An outcome is (a, y): the verifier accepted a of the k drafts and added token y, the correction
at position a (a < k) or the bonus after d_k (a = k). The next request's sync identifies it
exactly, given what the proposer holds (the synced prefix, L tokens, plus d1..d(k-1)):
  a < k:  start = L + a,      tokens = [y]
  a = k:  start = L + k - 1,  tokens = [d_k, y]
so a pre-drafted branch is keyed by that (start, tokens) and needs no extra message.

Outcomes are ranked by P(a) * q(y): P(a) from running estimates of acceptance per draft position
(a = k: all accepted; a < k: accepted up to a, rejected at a), q(y) the draft's own probability of
y at that position (a correction is never d_{a+1}, so it is excluded and q renormalised).
Pure functions; the draft proposer runs the branches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

PRIOR_ACCEPTANCE = 0.6   # per-position acceptance assumed before anything is observed
PRIOR_WEIGHT = 4.0       # the prior counts as this many observations per position


@dataclass
class AcceptanceStats:
    """Running acceptance per draft position: accepted[i] / seen[i], smoothed by a prior."""

    accepted: list[float] = field(default_factory=list)
    seen: list[float] = field(default_factory=list)
    decay: float = 1.0   # < 1: a running estimate, the past of a position fading per observation
    prior: float = PRIOR_ACCEPTANCE  # the rate assumed before a position is observed

    def rate(self, i: int, prior: float | None = None) -> float:
        """prior: instead of self.prior (e.g. a broader estimate this one refines)."""
        acc = self.accepted[i] if i < len(self.accepted) else 0.0
        seen = self.seen[i] if i < len(self.seen) else 0.0
        p = self.prior if prior is None else prior
        return (acc + p * PRIOR_WEIGHT) / (seen + PRIOR_WEIGHT)

    def observe(self, accepted: int, k: int) -> None:
        """Drafts 0..accepted-1 were accepted; draft `accepted` (if < k) was rejected."""
        need = min(accepted + 1, k)
        for lst in (self.accepted, self.seen):
            lst.extend([0.0] * (need - len(lst)))
        for i in range(need):
            self.seen[i] = self.seen[i] * self.decay + 1
            self.accepted[i] *= self.decay
            self.accepted[i] += i < accepted


def outcome_key(prefix_len: int, draft: list[int], accepted: int, token: int) -> tuple[int, tuple[int, ...]]:
    """The (start, tokens) sync that reports outcome (accepted, token) of a k-token draft made
    after prefix_len synced tokens."""
    k = len(draft)
    if accepted == k:
        return prefix_len + k - 1, (draft[-1], token)
    return prefix_len + accepted, (token,)


def observed_outcome(prefix_len: int, draft: list[int], start: int, tokens: list[int]) -> int | None:
    """How many drafts the verifier accepted, read off the next sync; None if the sync is not
    one of the outcomes (a recovery, another client's resend)."""
    k = len(draft)
    if k == 0 or not tokens:
        return None
    if start == prefix_len + k - 1 and len(tokens) == 2 and tokens[0] == draft[-1]:
        return k
    if prefix_len <= start < prefix_len + k and len(tokens) == 1 and tokens[0] != draft[start - prefix_len]:
        return start - prefix_len
    return None


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max())
    return z / z.sum()


def rank_outcomes(logits_at: list[np.ndarray], draft: list[int], stats: AcceptanceStats,
                  budget: int) -> list[tuple[int, int, float]]:
    """The `budget` likeliest outcomes (accepted, token, probability), best first.

    logits_at[i]: the draft's logits [V] at draft position i (the distribution d_{i+1} was
    picked from), i = 0..k; logits_at[k] is the one after d_k (bonus guesses)."""
    k = len(draft)
    candidates: list[tuple[int, int, float]] = []
    reach = 1.0                                   # P(drafts 0..a-1 all accepted)
    for a in range(k + 1):
        q = softmax(logits_at[a])
        if a < k:
            p_stop = reach * (1 - stats.rate(a))
            q = q.copy()
            q[draft[a]] = 0.0                     # the correction is never the rejected draft
            q /= max(q.sum(), 1e-12)
        else:
            p_stop = reach
        # The budget best guesses of y at this a (argpartition: no full sort of V entries).
        top = np.argpartition(q, -budget)[-budget:] if budget < q.shape[0] else np.arange(q.shape[0])
        for y in top:
            candidates.append((a, int(y), float(p_stop * q[y])))
        if a < k:
            reach *= stats.rate(a)
    candidates.sort(key=lambda c: -c[2])
    return candidates[:budget]
