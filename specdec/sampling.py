"""Lossless sampling: warping the target's logits, and speculative rejection sampling (Leviathan
et al. 2023 / Chen et al. 2023; vLLM's RejectionSampler). Draft d_i, drawn from q_i (a point
mass for deterministic proposers), is kept with probability min(1, p_i(d_i) / q_i(d_i)); the
first rejection draws the correction from norm(max(0, p_i - q_i)), full acceptance the bonus
from p_(k+1), so each emitted token is distributed exactly as the target's own sampling would.
Pure functions over float64 numpy arrays and an explicit numpy Generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from specdec.errors import InvalidRequest
from specdec.flags import flag


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = flag(0.0, help="sampling temperature; 0 = greedy (argmax, no randomness)")
    top_k: int = flag(0, help="sample from the k most likely tokens; 0 = all")
    top_p: float = flag(1.0, help="nucleus sampling: the smallest set with probability >= top-p")
    # Same seed + models + k = same tokens.
    seed: int | None = flag(None, shown="fresh entropy",
                            help="sampling seed; prompt i uses seed + i")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def validate(self) -> None:
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise InvalidRequest(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise InvalidRequest(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not (0.0 < self.top_p <= 1.0):
            raise InvalidRequest(f"top_p must be in (0, 1], got {self.top_p}")


# Independent random streams of one seed: the verifier's acceptance draws must not be correlated
# with the draft model's sampling, or the rejection rule would no longer be exact.
TARGET_STREAM, DRAFT_STREAM = 0, 1


def seeded_rng(seed: int | None, stream: int, position: int = 0) -> np.random.Generator:
    """A generator for one stream of a seed, starting at a sequence position: a session
    re-prefilled after a recovery draws fresh numbers instead of replaying the first ones."""
    words = None if seed is None else [seed, stream, position]
    return np.random.default_rng(np.random.SeedSequence(words))


# A sparse distribution: (token ids [m], probabilities [m]); what a draft model sampled from.
Sparse = tuple[np.ndarray, np.ndarray]


def warp(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """logits [V] -> probabilities [V] float64 after temperature, top-k, then top-p
    (the order transformers applies them)."""
    z = logits.astype(np.float64) / params.temperature
    if params.top_k and params.top_k < z.shape[0]:
        kth = np.partition(z, -params.top_k)[-params.top_k]
        z = np.where(z < kth, -np.inf, z)
    probs = np.exp(z - z.max())
    probs /= probs.sum()
    if params.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cum = np.cumsum(probs[order])
        # Keep every token whose preceding mass is < top_p: the one crossing top_p stays.
        drop = order[(cum - probs[order]) >= params.top_p]
        probs[drop] = 0.0
        probs /= probs.sum()
    return probs


def truncate_top_m(probs: np.ndarray, m: int) -> Sparse:
    """The m most likely tokens, renormalised: a proposal a draft model can send in full.
    Sampling from it (not from probs) keeps the rejection rule exact."""
    m = min(m, int((probs > 0).sum()))
    ids = np.argpartition(-probs, m - 1)[:m]
    p = probs[ids]
    return ids.astype(np.int64), p / p.sum()


def sample(probs: np.ndarray, rng: np.random.Generator) -> int:
    return int(rng.choice(probs.shape[0], p=probs))


def sample_sparse(q: Sparse, rng: np.random.Generator) -> int:
    ids, p = q
    return int(ids[rng.choice(ids.shape[0], p=p)])


def draw_draft(q: Sparse, seed: int | None, position: int) -> int:
    """A draft token drawn from q with the draft stream's numbers at its sequence position, not
    a generator's next ones: a pre-drafted branch draws what a request drafting there would.
    Still independent of the target's stream: a verify sees a position's numbers only once
    every draft before it was kept, and the position is then never drafted again."""
    return sample_sparse(q, seeded_rng(seed, DRAFT_STREAM, position))


@dataclass(frozen=True)
class DraftSampling:
    """How a draft model samples its drafts: from the top m tokens of its warped distribution
    (truncate_top_m), with draw_draft's numbers."""

    params: SamplingParams
    top_m: int

    @staticmethod
    def of(params: SamplingParams, top_m: int) -> DraftSampling | None:
        """How a request's drafts are drawn: None = greedy drafts (the argmax; a greedy
        session, or top_m = 0)."""
        return DraftSampling(params, top_m) if not params.greedy and top_m > 0 else None

    def draw(self, logits: np.ndarray, position: int) -> tuple[int, Sparse]:
        """logits [V] -> (the draft for that sequence position, the q it was drawn from)."""
        q = truncate_top_m(warp(logits, self.params), self.top_m)
        return draw_draft(q, self.params.seed, position), q


def dense(q: Sparse | None, token: int, vocab: int) -> np.ndarray:
    """A proposal as a [V] vector; None is the deterministic draft: a point mass on token."""
    out = np.zeros(vocab, dtype=np.float64)
    if q is None:
        out[token] = 1.0
    else:
        out[q[0]] = q[1]
    return out


def acceptance_probability(p_d: float, q_d: float) -> float:
    """min(1, p(d)/q(d)). q(d) > 0 when d was really drawn from q; should a q(d) of 0 or a
    non-finite value get here anyway, p/q would be NaN or inf and min(1, NaN) is 1 (always
    accept, even a token p gives probability 0), so anything but a finite ratio rejects."""
    if not (q_d > 0.0 and math.isfinite(q_d) and math.isfinite(p_d)):
        return 0.0
    return min(1.0, max(0.0, p_d / q_d))


def residual(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """norm(max(0, p - q)): what a rejected position samples from."""
    r = np.maximum(p - q, 0.0)
    total = r.sum()
    # Only reachable when p <= q everywhere, i.e. p == q, where rejection has probability 0;
    # float rounding can still get here, and p is then the right distribution.
    return r / total if total > 0 else p


def rejection_sample(draft: list[int], proposals: list[Sparse] | None, target: np.ndarray,
                     rng: np.random.Generator) -> tuple[int, int]:
    """Verify k drafts against the target.

    draft:     [k] d1..dk
    proposals: per draft, the sparse q it was drawn from; None = deterministic drafts
    target:    [k+1, V] warped target probabilities; row i is p at the position of d(i+1)
    Returns (accepted, next token): emit draft[:accepted] + [next token], which is the
    correction (after a rejection) or the bonus (after k acceptances).
    """
    vocab = target.shape[1]
    for i, d in enumerate(draft):
        q = dense(proposals[i] if proposals else None, d, vocab)
        if rng.random() < acceptance_probability(target[i, d], q[d]):
            continue
        return i, sample(residual(target[i], q), rng)
    k = len(draft)
    return k, sample(target[k], rng)


def check_proposals(draft: list[int], proposals: list[Sparse], vocab: int) -> None:
    """A proposal list must match the draft and be a sub-distribution containing each draft."""
    if len(proposals) != len(draft):
        raise InvalidRequest(f"{len(proposals)} draft distributions for {len(draft)} draft tokens")
    for d, (ids, probs) in zip(draft, proposals):
        if ids.shape != probs.shape or ids.size == 0:
            raise InvalidRequest("a draft distribution needs one probability per token id")
        if ids.min() < 0 or ids.max() >= vocab:
            raise InvalidRequest(f"draft distribution token id out of range for vocab_size {vocab}")
        if np.unique(ids).size != ids.size:
            # A dense q keeps one value per id: a repeated id would silently lose probability.
            raise InvalidRequest("a draft distribution lists a token id twice; each id once")
        if not np.all(np.isfinite(probs)) or probs.min() < 0 or probs.sum() > 1.0 + 1e-3:
            raise InvalidRequest("draft probabilities must be finite, >= 0 and sum to at most 1")
        if probs[ids == d].sum() <= 0:
            raise InvalidRequest(f"draft token {d} has probability 0 in the distribution it was "
                                 "sampled from")
