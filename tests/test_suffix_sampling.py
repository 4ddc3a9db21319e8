"""Suffix decoding under sampling: one proposer serves every run, so its global cache drafts
each run from the runs before it (point-mass drafts of the most frequent continuation), and the
output must still follow the target's own distribution (transformers', computed exactly)."""

from __future__ import annotations

import asyncio

import pytest

from specdec.build import build_verifier
from specdec.config import EngineConfig
from specdec.generation import GenerationConfig, generate
from specdec.inprocess import InProcessProposerLink, InProcessVerifierLink
from specdec.proposers.suffix import SuffixProposer
from specdec.sampling import SamplingParams
from tests.test_sampling import (
    NEW,
    PROMPT,
    RUNS,
    TEMP,
    assert_matches,
    exact_joint,
    small_vocab,  # noqa: F401  (fixture)
)

pytestmark = pytest.mark.slow  # services, compiling or a benchmark: `pytest -m "not slow"` skips it

K = 3


def test_suffix_sampling_matches_target(small_vocab):  # noqa: F811
    target = small_vocab[0]
    verifier = build_verifier(EngineConfig(model=str(target), ctx_len=32, prefill_seq_len=8,
                                           full_batch_size=1), tuple(range(K + 1)))
    proposer = SuffixProposer(max_k=K, ctx_len=32, sessions=1)

    async def run_all() -> tuple[list[tuple[int, ...]], int]:
        out, accepted = [], 0
        for seed in range(RUNS):
            v, d = InProcessVerifierLink(verifier), InProcessProposerLink(proposer)
            config = GenerationConfig(K, NEW, True, SamplingParams(TEMP, seed=seed))
            rec = await generate(PROMPT, v, d, config, 32)
            await v.close()
            await d.close()
            out.append(tuple(rec.tokens))
            accepted += rec.accepted
        return out, accepted

    samples, accepted = asyncio.run(run_all())
    stats = proposer.stats()
    # The cache did draft, and some of its drafts were accepted: speculation was exercised.
    assert stats.global_drafts > RUNS // 2 and accepted > 0, (stats, accepted)
    joint = exact_joint(target)
    for pos in (slice(1, 2), slice(2, 3), slice(3, 4), slice(1, 4)):
        assert_matches(samples, joint, pos)
