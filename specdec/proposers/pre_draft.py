"""Pre-drafting: while the verifier checks round T's draft, the proposer drafts round T+1 for
the likeliest outcomes of that check, so a hit answers the next request at once.

An outcome is (a, y): the verifier accepted a of the k drafts and added token y, the correction
at position a (a < k) or the bonus after d_k (a = k). The next request's sync identifies it
exactly, given what the proposer holds (the synced prefix, L tokens, plus d1..d(k-1)):
  a < k:  start = L + a,      tokens = [y]
  a = k:  start = L + k - 1,  tokens = [d_k, y]
so a pre-drafted branch is keyed by that (start, tokens) and needs no extra message.

Outcomes are ranked by P(a) * q(y): P(a) from the acceptance each draft is expected to have
(a = k: all accepted; a < k: accepted up to a, rejected at a), q(y) the draft's own probability of
y at that position (a correction is never d_{a+1}, so it is excluded and q renormalised).

A draft's expected acceptance is read off its confidence, the probability the draft gave it, by
`ConfidenceBins`: the acceptance measured so far for drafts of that confidence, across the
proposer's sessions. The raw probability is no estimate: a small draft is under-confident (it
gives its draft ~0.4 where the target accepts ~0.7), and a rate per draft position ignores which
drafts were easy. Ranked by position, the shipped pair hit 52% of outcomes with 4 branches and
74% with 8; by binned confidence, 60% and 80% (232 rounds, bench and held-out prompts).
Pure functions, and the records of a pre-draft (LastDraft, Branch); the draft proposer runs
the branches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from specdec.batching import Pick
from specdec.sampling import DraftSampling, Sparse

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
        for i in range(min(accepted + 1, k)):
            self.count(i, i < accepted)

    def count(self, i: int, accepted: bool) -> None:
        """One draft counted under index i (a position, or a ConfidenceBins bin)."""
        for lst in (self.accepted, self.seen):
            lst.extend([0.0] * (i + 1 - len(lst)))
        self.seen[i] = self.seen[i] * self.decay + 1
        self.accepted[i] = self.accepted[i] * self.decay + accepted


CONFIDENCE_EDGES = (0.2, 0.4, 0.6, 0.8)   # bins of the draft's probability of its own draft
CONFIDENCE_DECAY = 0.999                  # a bin's past fades over ~1000 of its drafts


@dataclass
class ConfidenceBins:
    """Acceptance of a draft as a function of its confidence q_i(d_{i+1}): a running rate per
    confidence bin, shared by a proposer's sessions (the calibration belongs to the draft and
    target pair, not to one prompt; per session, the rates start cold every generation)."""

    edges: tuple[float, ...] = CONFIDENCE_EDGES
    stats: AcceptanceStats = field(default_factory=lambda: AcceptanceStats(decay=CONFIDENCE_DECAY))

    def rates(self, confidence: np.ndarray) -> np.ndarray:
        """[k] confidences -> [k] expected acceptance of each draft."""
        return np.array([self.stats.rate(int(b)) for b in np.searchsorted(self.edges, confidence)])

    def observe(self, confidence: np.ndarray, accepted: int) -> None:
        """The verifier accepted the first `accepted` of the drafts with these confidences [k]."""
        for i, b in enumerate(np.searchsorted(self.edges, confidence[:accepted + 1])):
            self.stats.count(int(b), i < accepted)


@dataclass(frozen=True)
class DraftDistributions:
    """The draft's distributions at n positions, e / z, left unnormalised: ranking scales each
    row by one factor anyway, and a confidence reads one entry per row. A pre-draft computes
    them once, on its critical path, where each pass over [n, V] and each temporary counts."""

    e: np.ndarray   # [n, V] float32 exp(logits - the row's max)
    z: np.ndarray   # [n] the row sums of e


def draft_distributions(logits_at: list[np.ndarray]) -> DraftDistributions:
    """[n] logits [V] -> their DraftDistributions. float32, in one array: [5, 4096] of float64
    is over malloc's mmap threshold (128 KiB), and fresh pages for every temporary cost more
    than the arithmetic."""
    e = np.stack(logits_at).astype(np.float32, copy=False)   # a new array: updated in place
    e -= e.max(axis=1, keepdims=True)
    np.exp(e, out=e)
    return DraftDistributions(e, e.sum(axis=1))


def draft_confidence(dist: DraftDistributions, draft: list[int]) -> np.ndarray:
    """[k] the draft's probability of each of its drafts (dist: at >= k positions)."""
    rows = np.arange(len(draft))
    return dist.e[rows, draft] / dist.z[rows]


OutcomeKey = tuple[int, tuple[int, ...]]   # a verification outcome's sync: (start, tokens)


def outcome_key(prefix_len: int, draft: list[int], accepted: int, token: int) -> OutcomeKey:
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


def rank_outcomes(dist: DraftDistributions, draft: list[int], rates: np.ndarray,
                  budget: int) -> list[tuple[int, int, float]]:
    """The `budget` likeliest outcomes (accepted, token, probability), best first.

    dist [k+1, V]: row i the draft's distribution at draft position i (the one d_{i+1} was
    picked from), i = 0..k; row k the one after d_k (bonus guesses). rates [k]: each draft's
    expected acceptance (ConfidenceBins). All positions in one pass over [k+1, V]: this runs
    on the critical path of a pre-draft."""
    k = len(draft)
    rows = np.arange(k)
    # P(the check stops at a): drafts 0..a-1 accepted, then a rejected (a < k) or a = k.
    reach = np.concatenate([[1.0], np.cumprod(rates)])     # [k+1] P(drafts 0..a-1 accepted)
    p_stop = reach * np.append(1.0 - rates, 1.0)           # [k+1]
    # A correction is never the rejected draft, so its distribution renormalises without it:
    # q_a(y) = e[a, y] / (z[a] - e[a, d_{a+1}]), a < k; the bonus's is e[k, y] / z[k].
    total = dist.z.astype(np.float64)
    total[:k] -= dist.e[rows, draft]
    score = dist.e * (p_stop / np.maximum(total, 1e-30)).astype(np.float32)[:, None]  # [k+1, V]
    score[rows, draft] = 0.0                                # P(outcome (a, y))
    best = top_entries(score, budget)
    return [(int(a), int(y), float(score[a, y])) for a, y in zip(*np.unravel_index(best, score.shape))]


def top_entries(score: np.ndarray, n: int) -> np.ndarray:
    """Flat indices of the n largest entries of a [R, V] array, largest first.

    Not an argpartition over all R*V entries (~0.15 ms at 5 x 4096, on the pre-draft's critical
    path): the smallest of n entries known to be large (each row's largest, then its second
    largest, ...) bounds the n-th largest from below, and only the entries above it are sorted.
    The entries found are masked in score while looking for the next ones, then restored (no
    copy of score)."""
    score = np.ascontiguousarray(score)
    flat = score.reshape(-1)   # a view: the masking below is seen by argmax
    n = min(n, flat.size)
    rows, width = np.arange(score.shape[0]), score.shape[1]
    found: list[tuple[np.ndarray, np.ndarray]] = []   # (flat indices, their values)
    while len(found) * len(rows) < n:
        index = rows * width + score.argmax(axis=1)
        found.append((index, flat[index]))   # fancy indexing: a copy of the values
        flat[index] = -np.inf
    for index, values in found:
        flat[index] = values
    known = np.concatenate([values for _, values in found])
    bound = np.sort(known)[-n]
    above = np.flatnonzero(flat >= bound)
    return above[np.argsort(-flat[above], kind="stable")[:n]]


@dataclass
class Branch:
    """A pre-drafted next proposal for one verification outcome."""

    slot: int            # where its KV is: the session's own slot or a scratch slot
    tokens: list[int]    # what that slot then holds: prefix + outcome + e1..e(k-1)
    draft: list[int]     # e1..ek
    outcome: tuple[int, int]  # (accepted a, token y) of the verification it was drafted for
    logits_at: list[np.ndarray] = field(default_factory=list)  # [V] per depth, as LastDraft
    probs: list[Sparse] = field(default_factory=list)  # sampled: the q of each draft


@dataclass
class LastDraft:
    """The proposal now being verified, kept to pre-draft its outcomes."""

    prefix_len: int                 # synced tokens it was drafted after
    draft: list[int]                # d1..dk
    logits_at: list[np.ndarray]     # [V] the draft's logits at each draft position 0..k-1
    sampled: DraftSampling | None = None   # how its drafts were drawn; None: greedy
    pre_drafted: bool = False       # its outcomes are drafted already
    depth: int = 0                  # drafts per pre-drafted branch, if more than k
    _confidence: np.ndarray | None = None

    def confidence(self, dist: DraftDistributions | None = None) -> np.ndarray:
        """[k] the draft's probability of each draft (computed once: ranked, then observed);
        dist: its distributions(), where the caller has them already."""
        if self._confidence is None:
            self._confidence = draft_confidence(self.distributions() if dist is None else dist,
                                                self.draft)
        return self._confidence

    def distributions(self, after: list[np.ndarray] | None = None) -> DraftDistributions:
        """The draft's distributions at its positions, then at `after` ([V] logits each), as
        it drew from them: a sampled draft at its temperature (the outcomes' tokens are drawn
        at the target's, the same)."""
        logits = self.logits_at + (after or [])
        t = self.sampled.params.temperature if self.sampled else 1.0
        return draft_distributions(logits if t == 1.0 else [x / t for x in logits])


@dataclass
class PreDraftCounters:
    """Pre-draft figures of the whole proposer, for tests and debugging (Prometheus counts hits
    from the replies: specdec_pre_drafted over specdec_proposals)."""

    lookups: int = 0        # proposals that could have been answered from a branch
    hits: int = 0           # ... and were
    drafted_tokens: int = 0  # tokens pre-drafted
    wasted_tokens: int = 0   # ... in branches that missed


def sampled_pick(sampled: DraftSampling, probs: list[Sparse]) -> Pick:
    """A sampled branch's Chain.pick: draws each draft as a request drafting it would
    (draw_draft: by its position), on the engine thread, and keeps its q in probs."""
    def pick(logits: np.ndarray, position: int) -> int:   # logits [V]
        token, q = sampled.draw(logits, position)
        probs.append(q)
        return token
    return pick
