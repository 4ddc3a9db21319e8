"""Pre-drafting: while the verifier checks round T's draft, the proposer drafts round T+1 for
the likeliest outcomes of that check (docs/architecture.md, "Pre-drafting and adaptive k").

An outcome is (a, y): a of the k drafts accepted and y added, the correction at a (a < k) or
the bonus after d_k (a = k). The next request's sync names it exactly, given what the proposer
holds (L synced tokens plus d1..d(k-1)), so a branch is keyed by that sync, with no message:
  a < k:  start = L + a,      tokens = [y]
  a = k:  start = L + k - 1,  tokens = [d_k, y]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from specdec.admission import Admission, AdmissionPool
from specdec.batching import DECODE, Batcher, Chain, Pick
from specdec.sampling import DraftSampling, Sparse
from specdec.sequence import SlotSequence, common_prefix_len
from specdec.types import Proposal, StepTimings

PRIOR_ACCEPTANCE = 0.6   # acceptance assumed for a bin before anything is observed
PRIOR_WEIGHT = 4.0       # the prior counts as this many observations per bin
CONFIDENCE_EDGES = (0.2, 0.4, 0.6, 0.8)   # bins of the draft's probability of its own draft
CONFIDENCE_DECAY = 0.999                  # a bin's past fades over ~1000 of its drafts


class ConfidenceBins:
    """Acceptance of a draft by its confidence q_i(d_{i+1}): a running rate per confidence bin,
    smoothed by a prior, shared by a proposer's sessions (the calibration belongs to the model
    pair, not to one prompt; per session, the rates would start cold every generation)."""

    def __init__(self, edges: tuple[float, ...] = CONFIDENCE_EDGES) -> None:
        self.edges = edges
        self.accepted = np.zeros(len(edges) + 1)   # [bins] drafts accepted, the past fading
        self.seen = np.zeros(len(edges) + 1)       # [bins] drafts verified, alike

    def rates(self, confidence: np.ndarray) -> np.ndarray:
        """[k] confidences -> [k] expected acceptance of each draft."""
        bins = np.searchsorted(self.edges, confidence)
        return (self.accepted[bins] + PRIOR_ACCEPTANCE * PRIOR_WEIGHT) / (self.seen[bins] + PRIOR_WEIGHT)

    def observe(self, confidence: np.ndarray, accepted: int) -> None:
        """The verifier accepted the first `accepted` of the drafts with these confidences [k]."""
        for i, b in enumerate(np.searchsorted(self.edges, confidence[:accepted + 1])):
            self.seen[b] = self.seen[b] * CONFIDENCE_DECAY + 1
            self.accepted[b] = self.accepted[b] * CONFIDENCE_DECAY + (i < accepted)


@dataclass(frozen=True)
class DraftDistributions:
    """The draft's distributions at n positions, e / z, left unnormalised (ranking scales a row
    by one factor anyway): computed once, on the pre-draft's critical path."""

    e: np.ndarray   # [n, V] float32 exp(logits - the row's max)
    z: np.ndarray   # [n] the row sums of e


def draft_distributions(logits_at: list[np.ndarray]) -> DraftDistributions:
    """[n] logits [V] -> their DraftDistributions. float32, in one array: [5, 4096] of float64
    is over malloc's mmap threshold, and fresh pages per temporary cost more than the math."""
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
    """The `budget` likeliest outcomes (accepted, token, probability), best first, in one pass.

    dist [k+1, V]: row i the draft's distribution d_{i+1} was picked from; row k the one after
    d_k (bonus guesses). rates [k]: each draft's expected acceptance (ConfidenceBins)."""
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
    """Flat indices of the n largest entries of a [R, V] array, largest first. Cheaper than an
    argpartition of all R*V on the pre-draft's critical path: the smallest of n entries known to
    be large (each row's largest, then second largest, ...; masked in score meanwhile) bounds
    the n-th from below, and only the entries above it are sorted."""
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
            self._confidence = draft_confidence(self.distributions() if dist is None else dist, self.draft)
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
    """The proposer's pre-draft figures, for tests (Prometheus: specdec_pre_drafted of specdec_proposals)."""

    hits: int = 0            # proposals answered from a branch
    drafted_tokens: int = 0  # tokens pre-drafted


def sampled_pick(sampled: DraftSampling, probs: list[Sparse]) -> Pick:
    """A sampled draft's Chain.pick (a request's, or a branch's drafted as that request would
    be): draws each draft by its position (draw_draft), on the engine thread, and keeps its q
    in probs."""
    def pick(logits: np.ndarray, position: int) -> int:   # logits [V]
        token, q = sampled.draw(logits, position)
        probs.append(q)
        return token
    return pick


@dataclass
class SessionPreDraft:
    """A session's pre-drafting: the proposal being verified, the branches for its outcomes."""

    last: LastDraft | None = None
    branches: dict[OutcomeKey, Branch] = field(default_factory=dict)
    scratch: list[int] = field(default_factory=list)   # scratch slots its branches hold
    named: OutcomeKey | None = None   # the outcome the next request names, once it arrived
    drafting: dict[OutcomeKey, Chain] = field(default_factory=dict)   # the running pre-draft's

    def name(self, key: OutcomeKey) -> None:
        """A request names the outcome: a pre-draft still running stops every branch but that
        outcome's now (all on a miss), so the request waits for no branch nobody will take."""
        self.named = key
        for other, chain in self.drafting.items():
            if other != key:
                chain.stop = True


class PreDrafter:
    """A draft proposer's pre-drafting, and so which of its engine's slots holds what: one per
    session, the rest scratch for branches. Which is which changes: a hit on a scratch branch
    makes that slot the session's and frees its old one, instead of copying the KV back."""

    def __init__(self, batcher: Batcher, branches: int, admission: Admission) -> None:
        self.batcher = batcher
        self.engine = batcher.engine
        self.branches = branches   # F: per pre-draft, shared by the open sessions
        # An executor that cannot copy a slot (a QPC's retained KV) has no scratch slots.
        self.copy_slot: Callable[[int, list[int], int, int], None] | None = getattr(self.engine, "copy_slot", None)
        sessions = self.engine.slots // (1 + branches) if self.copy_slot is not None else self.engine.slots
        self.pool = AdmissionPool(sessions, admission)
        # Engine slots no session holds, its own or a branch's, taken and returned on the loop
        # between awaits (no lock). A session holds at most 1 + F: an admitted one finds one.
        self._spare = list(range(self.engine.slots - 1, -1, -1))   # pop() hands out slot 0 first
        # The tokens whose KV a slot no session owns holds at 0..len-1 (none: nothing known), so
        # a pre-draft copies a scratch slot only the positions it lacks. A session's: its seq.
        self._held: dict[int, list[int]] = {}
        self.counters = PreDraftCounters()
        # Expected acceptance by draft confidence, from every session's outcomes: greedy drafts
        # [0], sampled ones [1] (a sampled draft is kept at another rate than an equally sure one).
        self.calibration = (ConfidenceBins(), ConfidenceBins())

    def open_slot(self) -> int:
        """The slot of a session just admitted."""
        slot = self._spare.pop()
        self._held.pop(slot, None)
        return slot

    def close(self, pre: SessionPreDraft, seq: SlotSequence) -> None:
        """The session's slots go back, and a pre-draft not started yet will not start."""
        pre.last = None
        self._drop(pre)
        self._held[seq.slot] = seq.tokens[:seq.cached]   # no session's now: remember what it holds
        self._spare.append(seq.slot)

    def _drop(self, pre: SessionPreDraft) -> None:
        pre.branches.clear()
        self._spare += pre.scratch
        pre.scratch = []

    def take(self, pre: SessionPreDraft, seq: SlotSequence, start: int, tokens: list[int], k: int,
             sampled: DraftSampling | None, take_shorter: bool) -> Proposal | None:
        """The proposal of the branch this sync names, drafted as this request drafts (greedy,
        or sampled alike), at least k long (take_shorter: any); else None, every branch dropped."""
        last, pre.last = pre.last, None
        branch = None
        if last is not None and self.branches:
            accepted = observed_outcome(last.prefix_len, last.draft, start, tokens)
            if accepted is not None:
                self.calibration[last.sampled is not None].observe(last.confidence(), accepted)
            branch = pre.branches.pop((start, tuple(tokens)), None)
        if take_shorter and branch is not None:
            k = min(k, len(branch.draft))
        if last is None or branch is None or last.sampled != sampled or not 1 <= k <= len(branch.draft):
            self._drop(pre)
            return None
        self.counters.hits += 1
        if branch.slot != seq.slot:   # adopt the branch's slot; the old one goes with the rest
            pre.scratch[pre.scratch.index(branch.slot)] = seq.slot
            self._held[seq.slot] = seq.tokens[:seq.cached]
            self._held.pop(branch.slot, None)   # the session's now: seq describes it
            seq.slot = branch.slot
        # A smaller k (adaptive k) takes the branch's first k drafts; the session then holds
        # prefix + e1..e(k-1), and the KV of the rest is stale, masked and overwritten later.
        held = len(branch.tokens) - (len(branch.draft) - k)
        seq.tokens, seq.cached = branch.tokens[:held], held
        self._drop(pre)
        pre.last = LastDraft(held - k + 1, branch.draft[:k], branch.logits_at[:k], sampled)
        return Proposal(branch.draft[:k], held, StepTimings(), branch.probs[:k] if sampled else None, pre_drafted=True)

    def branch_budget(self) -> int:
        """Branches per pre-draft: F shared by the open sessions, at least one each. Under load
        every branch row is taken from the other sessions' rounds, so the pre-draft work must
        not grow with the sessions (`python -m bench.auto_k --method draft --sessions 8`)."""
        return max(1, self.branches // max(self.pool.in_use, 1))

    async def after_reply(self, pre: SessionPreDraft, seq: SlotSequence) -> None:
        """Pre-draft the outcomes of the proposal being verified, once (nothing once closed)."""
        last = pre.last
        if last is None or last.pre_drafted:
            return
        last.pre_drafted = True
        self._drop(pre)
        depth = max(len(last.draft), last.depth)   # drafts per branch
        if len(seq.tokens) + 2 + depth > self.engine.ctx_len:
            return  # no room to draft a whole next round
        # d_k into the session's own slot: its logits rank the bonus guesses, and every
        # branch then starts from slot contents 0..L+k-1 = prefix + d1..dk.
        timings = StepTimings()
        after_dk = (await self.batcher.run_row([last.draft[-1]], [len(seq.tokens)], seq.slot, 1, DECODE,
                                               timings))[-1]                # [V]
        dist = last.distributions([after_dk])                                # [k+1, V]
        rates = self.calibration[last.sampled is not None].rates(last.confidence(dist))   # [k]
        outcomes = rank_outcomes(dist, last.draft, rates, self.branch_budget())
        base = seq.tokens + [last.draft[-1]]               # prefix + d1..dk
        branches = self._branches(pre, seq.slot, last, outcomes, base)
        if not branches:
            return   # the next request named an outcome none of them was
        # The copies run on the engine thread before the first depth's rows (jobs go first),
        # so they cost no extra round trip to the loop.
        copies = [b.slot for _, b in branches if b.slot != seq.slot]
        copied = None
        if copies:
            assert self.copy_slot is not None  # no scratch slots where slots don't copy
            # Positions every scratch slot holds already are not copied again: after a hit,
            # each shares the prefix up to the last round's outcomes (their entries go now:
            # the copy and the rows overwrite them, and a failure leaves them unknown).
            start = min(common_prefix_len(self._held.pop(s, []), base) for s in copies)
            copied = self.batcher.start(self.copy_slot, seq.slot, copies, start, len(base))
        # One engine call per depth, every branch a row; the depths chain on the engine thread.
        # A branch the next request rules out while they run stops early, with 1..k drafts.
        rows = [([b.tokens[-1]], [len(b.tokens) - 1], b.slot) for _, b in branches]
        pre.drafting = {key: Chain(depth, pick=sampled_pick(last.sampled, b.probs) if last.sampled else None)
                        for key, b in branches}
        try:
            drafted = await self.batcher.run_greedy(rows, depth, DECODE, timings, list(pre.drafting.values()))
        finally:
            pre.drafting = {}
        for (_, b), (logits, drafts) in zip(branches, drafted):
            b.draft, b.logits_at = drafts, logits
            b.tokens += drafts[:-1]
        if copied is not None:
            await copied   # done before the first rows ran; raises if the copy failed
        self._held.update((b.slot, b.tokens) for _, b in branches if b.slot != seq.slot)
        pre.branches = dict(branches)
        self.counters.drafted_tokens += sum(len(b.draft) for _, b in branches)

    def _branches(self, pre: SessionPreDraft, own: int, last: LastDraft,
                  outcomes: list[tuple[int, int, float]], base: list[int]) -> list[tuple[OutcomeKey, Branch]]:
        """A branch per outcome in its slot: the best all-accepted one in the session's own, the
        others in scratch slots while there are any; none for one the next request ruled out."""
        branches: list[tuple[OutcomeKey, Branch]] = []
        for accepted, token, _ in outcomes:
            key = outcome_key(last.prefix_len, last.draft, accepted, token)
            if pre.named is not None and key != pre.named:
                continue   # the next request has arrived, and named another outcome
            if accepted == len(last.draft) and all(b.slot != own for _, b in branches):
                slot = own
            elif self.copy_slot is not None and self._spare:
                slot = self._spare.pop()
                pre.scratch.append(slot)
            else:
                continue
            branches.append((key, Branch(slot, base[:last.prefix_len + accepted] + [token], [], (accepted, token))))
        return branches
