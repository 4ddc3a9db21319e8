"""Lossless sampling: the rejection rule exactly, warping, and end-to-end distributions that
match the target's own (computed from transformers), with fixed seeds so nothing can flake."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import chi2_contingency, chisquare

from specdec.build import build_draft_proposer, build_verifier
from specdec.config import EngineConfig
from specdec.generation import GenerationConfig, generate
from specdec.inprocess import InProcessProposerLink, InProcessVerifierLink
from specdec.proposers.translated_draft import TranslatedDraftProposer
from specdec.sampling import (
    SamplingParams,
    acceptance_probability,
    dense,
    rejection_sample,
    residual,
    truncate_top_m,
    warp,
)
from tests.tiny_models import hf_model, save_tiny

pytestmark = pytest.mark.slow  # services, compiling or a benchmark: `pytest -m "not slow"` skips it

P_MIN = 1e-4  # fixed seeds make each test deterministic; a p-value under this is a real bias


# --- the rule itself -----------------------------------------------------------------------

CASES = [
    (np.array([0.5, 0.3, 0.2]), np.array([0.2, 0.3, 0.5])),
    (np.array([0.1, 0.0, 0.9]), np.array([0.6, 0.4, 0.0])),
    (np.array([0.25, 0.25, 0.25, 0.25]), np.array([0.7, 0.1, 0.1, 0.1])),
    (np.array([0.2, 0.8]), np.array([0.2, 0.8])),  # q == p: always accepted
]


@pytest.mark.parametrize("p, q", CASES)
def test_one_position_output_is_exactly_p(p, q):
    """P(out = x) = q(x) a(x) + (1 - sum_y q(y) a(y)) r(x), with the code's own a and r."""
    a = np.array([acceptance_probability(p[x], q[x]) if q[x] > 0 else 0.0 for x in range(len(p))])
    reject = 1.0 - (q * a).sum()
    out = q * a + reject * residual(p, q)
    np.testing.assert_allclose(out, p, atol=1e-12)


@pytest.mark.parametrize("p", [c[0] for c in CASES])
def test_point_mass_draft_output_is_exactly_p(p):
    """Deterministic drafts (n-gram, greedy draft): q is a point mass on d, for every d."""
    for d in range(len(p)):
        q = dense(None, d, len(p))
        a = acceptance_probability(p[d], 1.0)
        out = a * q + (1 - a) * residual(p, q)
        np.testing.assert_allclose(out, p, atol=1e-12)


def test_rejection_sample_monte_carlo():
    """The sampler as coded (draft drawn from q, accept/resample, bonus) reproduces p at both
    the first position and the bonus position."""
    rng = np.random.default_rng(0)
    p = np.array([[0.5, 0.3, 0.2, 0.0], [0.1, 0.2, 0.3, 0.4]])
    q = np.array([0.1, 0.2, 0.3, 0.4])
    first, second = np.zeros(4), np.zeros(4)
    n = 40_000
    for _ in range(n):
        d = int(rng.choice(4, p=q))
        accepted, nxt = rejection_sample([d], [(np.arange(4), q)], p, rng)
        first[d if accepted else nxt] += 1
        if accepted:
            second[nxt] += 1
    assert chisquare(first[:3], p[0, :3] * n).pvalue > P_MIN and first[3] == 0
    assert chisquare(second, p[1] * second.sum()).pvalue > P_MIN


def test_warp():
    logits = np.log(np.array([0.4, 0.3, 0.2, 0.1]))
    np.testing.assert_allclose(warp(logits, SamplingParams(1.0)), [0.4, 0.3, 0.2, 0.1])
    np.testing.assert_allclose(warp(logits, SamplingParams(1.0, top_k=2)), [4 / 7, 3 / 7, 0, 0])
    # top_p 0.6: 0.4 alone is short of it, 0.4 + 0.3 crosses it: keep both.
    np.testing.assert_allclose(warp(logits, SamplingParams(1.0, top_p=0.6)), [4 / 7, 3 / 7, 0, 0])
    cold = warp(logits, SamplingParams(0.5))
    np.testing.assert_allclose(cold, np.array([16, 9, 4, 1]) / 30)
    ids, probs = truncate_top_m(np.array([0.1, 0.5, 0.15, 0.25]), 2)
    assert sorted(zip(ids.tolist(), probs.round(6).tolist())) == [(1, 0.666667), (3, 0.333333)]


# --- end to end against transformers --------------------------------------------------------

VOCAB6 = 6
PROMPT = [2, 3, 4]
NEW = 4
TEMP = 0.9
RUNS = 1500


@pytest.fixture(scope="module")
def small_vocab(tmp_path_factory):
    """A 6-token target, a draft cut from it (agrees often) and an unrelated draft (disagrees
    often, so rejections and resampling are exercised); `translated`: the close one with its
    vocabulary renumbered, so its drafts are translated."""
    from tests.tiny_models import permuted_copy, save_truncated, save_word_tokenizer

    root = tmp_path_factory.mktemp("v6")
    kw = dict(vocab_size=VOCAB6, eos_token_id=1, bos_token_id=0, pad_token_id=0)
    target = save_tiny(root / "target", "llama", seed=0, num_hidden_layers=4, **kw)
    save_word_tokenizer(target, vocab=VOCAB6)
    close = save_truncated(target, root / "close", layers=1)
    far = save_tiny(root / "far", "llama", seed=123, **kw)
    save_word_tokenizer(far, vocab=VOCAB6)
    permuted_copy(close, root / "translated")   # the close draft with its own tokenizer
    return target, close, far


def exact_joint(target_path) -> dict[tuple[int, ...], float]:
    """P(x1..x4 | prompt) under softmax(logits / T) of transformers' own model."""
    model = hf_model(target_path)
    prefixes = list(itertools.product(range(VOCAB6), repeat=NEW - 1))
    ids = torch.tensor([PROMPT + list(p) for p in prefixes])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[:, len(PROMPT) - 1:].double() / TEMP, -1)
    joint = {}
    for row, prefix in enumerate(prefixes):
        base = sum(logp[row, i, prefix[i]].item() for i in range(NEW - 1))
        for last in range(VOCAB6):
            joint[prefix + (last,)] = float(np.exp(base + logp[row, NEW - 1, last].item()))
    return joint


def sampled_runs(target, draft, k: int, top_m: int, branches: int = 0,
                 hits: list[int] | None = None) -> list[tuple[int, ...]]:
    """branches: the proposer pre-drafts this many outcomes; hits: gets its pre-draft hits."""
    cfg = lambda m: EngineConfig(model=str(m), ctx_len=32, prefill_seq_len=8, full_batch_size=1)
    verifier = build_verifier(cfg(target), tuple(range(k + 1)))
    proposer = build_draft_proposer(cfg(draft), max(k, 1), pre_draft_branches=branches,
                                    target_model=str(target)) if k else None
    if proposer is not None:
        assert isinstance(proposer, TranslatedDraftProposer) == (Path(draft).name == "translated")

    async def run_all():
        out = []
        for seed in range(RUNS):
            v = InProcessVerifierLink(verifier)
            d = InProcessProposerLink(proposer) if proposer else None
            config = GenerationConfig(k, NEW, True, SamplingParams(TEMP, seed=seed), top_m)
            rec = await generate(PROMPT, v, d, config, 32)
            await v.close()
            if d:
                await d.close()
            out.append(tuple(rec.tokens))
            if hits is not None:
                hits.append(rec.pre_draft_hits)
        return out

    return asyncio.run(run_all())


def assert_matches(samples: list[tuple[int, ...]], joint: dict, positions: slice) -> None:
    """Chi-square of the empirical vs exact distribution of x[positions], cells with an
    expected count under 5 pooled into one."""
    probs: dict[tuple, float] = {}
    for seq, pr in joint.items():
        probs[seq[positions]] = probs.get(seq[positions], 0.0) + pr
    counts: dict[tuple, int] = {}
    for s in samples:
        counts[s[positions]] = counts.get(s[positions], 0) + 1
    n = len(samples)
    big = [c for c, pr in probs.items() if pr * n >= 5]
    obs = [counts.get(c, 0) for c in big] + [n - sum(counts.get(c, 0) for c in big)]
    exp = [probs[c] * n for c in big] + [n - sum(probs[c] * n for c in big)]
    if exp[-1] < 1e-9:
        obs, exp = obs[:-1], exp[:-1]
    result = chisquare(obs, exp)
    assert result.pvalue > P_MIN, (positions, result)


@pytest.fixture(scope="module")
def target_only(small_vocab):
    return sampled_runs(small_vocab[0], None, 0, 0)


@pytest.mark.parametrize("draft_kind, k, top_m, branches", [
    ("close", 3, 16, 0),   # sampled drafts, sparse q on the wire (top 16 >= vocab: the full q)
    ("far", 3, 3, 0),      # sampled from a top-3 truncation: q is that truncation, still exact
    ("far", 2, 0, 0),      # greedy drafts under sampling: the point-mass case, many rejections
    ("close", 3, 16, 4),   # pre-drafted: a hit's drafts were drawn during the last verify
    ("far", 3, 3, 4),
    ("translated", 3, 16, 0),  # another tokenizer: greedy drafts translated, checked as point masses
])
def test_speculative_sampling_matches_target(small_vocab, target_only, draft_kind, k, top_m,
                                             branches):
    target, close, far = small_vocab
    joint = exact_joint(target)
    hits: list[int] = []
    draft = {"close": close, "far": far, "translated": close.parent / "translated"}[draft_kind]
    spec = sampled_runs(target, draft, k, top_m, branches, hits)
    assert (sum(hits) > 0) == (branches > 0)
    # Positions 2..4 are the ones speculation decides; per position and jointly.
    for pos in (slice(1, 2), slice(2, 3), slice(3, 4), slice(1, 4)):
        assert_matches(spec, joint, pos)
    assert_matches(target_only, joint, slice(0, 4))
    # And the two samplers against each other, joint of positions 2..4.
    cells = sorted({s[1:4] for s in spec + target_only})
    table = np.array([[sum(s[1:4] == c for s in runs) for c in cells]
                      for runs in (spec, target_only)])
    table = table[:, table.sum(0) >= 10]
    assert chi2_contingency(table).pvalue > P_MIN


def test_seeded_runs_are_reproducible(small_vocab):
    target, close, _ = small_vocab
    a = sampled_runs_small(target, close, seed=7)
    assert a == sampled_runs_small(target, close, seed=7)
    assert a != sampled_runs_small(target, close, seed=8)


def sampled_runs_small(target, draft, seed):
    cfg = lambda m: EngineConfig(model=str(m), ctx_len=64, prefill_seq_len=8, full_batch_size=1)
    verifier = build_verifier(cfg(target), tuple(range(4)))
    proposer = build_draft_proposer(cfg(draft), 3)

    async def go():
        v, d = InProcessVerifierLink(verifier), InProcessProposerLink(proposer)
        rec = await generate(PROMPT, v, d, GenerationConfig(3, 40, True, SamplingParams(1.0, seed=seed)), 64)
        return rec.tokens

    return asyncio.run(go())
