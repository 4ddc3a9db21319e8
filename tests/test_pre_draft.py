"""Pre-drafting: outcomes keyed by the next sync (pure), their ranking, and generation through
a pre-drafting proposer over gRPC identical to transformers' greedy output, with hits."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from specdec.generation import GenerationConfig
from specdec.proposers.pre_draft import (
    PRIOR_ACCEPTANCE,
    ConfidenceBins,
    draft_confidence,
    draft_distributions,
    observed_outcome,
    outcome_key,
    rank_outcomes,
    top_entries,
)
from specdec.sampling import SamplingParams
from tests.conftest import start_proposer, start_verifier
from tests.grpc_client import generate_one
from tests.tiny_models import VOCAB, greedy_reference


@pytest.mark.parametrize("k", [1, 2, 4])
def test_every_outcome_has_its_own_sync(k):
    """The proposer holds prefix (L = 10) + d1..d(k-1); each outcome's sync names it back."""
    draft = [50 + i for i in range(k)]
    keys = set()
    for accepted in range(k + 1):
        start, tokens = outcome_key(10, draft, accepted, 7)
        assert observed_outcome(10, draft, start, list(tokens)) == accepted
        keys.add((start, tokens))
    assert len(keys) == k + 1
    # A sync that is no outcome (a recovery from 0, a bigger jump) is not read as one.
    assert observed_outcome(10, draft, 0, list(range(12))) is None
    assert observed_outcome(10, draft, 10, [draft[0]]) is None   # "rejected" with the draft itself


def test_confidence_bins_learn_acceptance_by_confidence():
    """Sure drafts accepted and unsure ones rejected: the rates follow the confidence, and a
    draft past the first rejection (never verified) counts nowhere."""
    bins = ConfidenceBins()
    prior = bins.rates(np.array([0.5]))[0]
    assert prior == pytest.approx(PRIOR_ACCEPTANCE)   # nothing observed yet
    for _ in range(50):
        bins.observe(np.array([0.9, 0.85, 0.1, 0.95]), 2)   # 0.1 rejected; 0.95 never verified
    sure, unsure, unseen = bins.rates(np.array([0.9, 0.1, 0.5]))
    assert sure > 0.9 > prior > 0.1 > unsure
    assert unseen == prior
    logits = [np.log(np.array([0.7, 0.2, 0.1])), np.log(np.array([0.25, 0.25, 0.5]))]
    assert np.allclose(draft_confidence(draft_distributions(logits), [0, 2]), [0.7, 0.5], atol=1e-6)


def test_ranking_follows_acceptance_and_excludes_the_rejected_draft():
    v, k = 8, 3
    draft = [1, 2, 3]
    logits = [np.full(v, -5.0) for _ in range(k + 1)]
    for i, d in enumerate(draft):
        logits[i][d] = 5.0          # the draft was sure of its drafts ...
        logits[i][6] = 4.0          # ... and 6 its second choice everywhere
    logits[k][4] = 5.0              # after d_k it would say 4
    best = rank_outcomes(draft_distributions(logits), draft, np.full(k, 0.95), 3)   # drafts expected accepted
    assert best[0][:2] == (k, 4)                    # all accepted, bonus 4
    assert all(y != draft[a] for a, y, _ in best if a < k)
    best = rank_outcomes(draft_distributions(logits), draft, np.full(k, 0.05), 3)   # ... expected rejected
    assert best[0][:2] == (0, 6)                    # rejected at once, corrected to 6
    assert [p for *_, p in best] == sorted((p for *_, p in best), reverse=True)


def test_ranking_scores_are_outcome_probabilities():
    """Every outcome's score is P(the check stops at a) times the draft's probability of y at
    a, renormalised without the rejected draft: computed here the long way, from softmaxes."""
    rng = np.random.default_rng(3)
    v, k = 50, 4
    logits = [rng.normal(0, 3, v).astype(np.float32) for _ in range(k + 1)]
    draft = [int(np.argmax(x)) for x in logits[:k]]
    rates = rng.uniform(0.2, 0.9, k)
    probs = [np.exp(x - x.max()) / np.exp(x - x.max()).sum() for x in logits]
    want = {}
    for a in range(k + 1):
        p_stop = np.prod(rates[:a]) * (1 - rates[a] if a < k else 1.0)
        for y in range(v):
            if a < k and y == draft[a]:
                continue
            q = probs[a][y] / (1 - probs[a][draft[a]]) if a < k else probs[a][y]
            want[(a, y)] = p_stop * q
    best = rank_outcomes(draft_distributions(logits), draft, rates, 10)
    top = sorted(want.items(), key=lambda kv: -kv[1])[:10]
    assert [(a, y) for a, y, _ in best] == [key for key, _ in top]
    assert np.allclose([p for *_, p in best], [p for _, p in top], rtol=1e-4)


def test_top_entries_are_the_largest_in_order():
    """The bound it sorts above never drops one of the n largest, ties and all."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        score = rng.random((int(rng.integers(1, 6)), int(rng.integers(1, 40))))
        score[0, :3] = score[0, 3] if score.shape[1] > 3 else score[0, 0]   # ties
        n = int(rng.integers(1, 2 * score.size))
        before = score.copy()
        got = score.ravel()[top_entries(score, n)]
        want = np.sort(score.ravel())[::-1][:n]
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(score, before)   # what it masked, it restored


@pytest.fixture(scope="module")
def pre_drafting(tiny_pair):
    v_server, _ = start_verifier(tiny_pair[0])
    p_server, proposer = start_proposer(tiny_pair[1], pre_draft_branches=3)
    seq_server, _ = start_proposer(tiny_pair[1])
    yield v_server.address, p_server.address, seq_server.address, proposer
    for s in (v_server, p_server, seq_server):
        s.stop()


def generate(verifier, proposer, prompt, config):
    return generate_one(verifier, proposer, prompt, config)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_pre_drafting_equals_greedy_and_hits(pre_drafting, target_hf, k):
    verifier, proposer, _, backend = pre_drafting
    rng = np.random.default_rng(11)
    hits = proposals = 0
    for n in (6, 13):
        prompt = rng.integers(2, VOCAB, size=n).tolist()
        rec = generate(verifier, proposer, prompt, GenerationConfig(k, 30, ignore_eos=True))
        assert rec.tokens == greedy_reference(target_hf, prompt, 30)
        hits += rec.pre_draft_hits
        proposals += rec.proposals
    assert 0 < hits < proposals          # branches were used, and misses happened too
    assert backend.pre_drafter.counters.hits >= hits
    assert sorted(backend.pre_drafter._spare) == list(range(backend.engine.slots))   # every slot back, once


def test_a_hit_in_a_scratch_slot_moves_the_session_there(tiny_pair):
    """after_reply drafts one branch per ranked outcome; a sync naming one answers its draft,
    and a hit in a scratch slot makes that slot the session's, with the right KV in it."""
    from specdec.build import build_draft_proposer
    from tests.conftest import engine_config

    proposer = build_draft_proposer(engine_config(tiny_pair[1], 1), 4, pre_draft_branches=3)
    fresh = build_draft_proposer(engine_config(tiny_pair[1], 1), 4)

    async def go() -> None:
        session = await proposer.open_session()
        try:
            prompt = [5, 9, 14, 3, 22]
            await proposer.propose(session, 0, prompt, 3)
            await proposer.after_reply(session)
            assert len(session.pre.branches) == 3
            assert len({b.outcome for b in session.pre.branches.values()}) == 3
            assert all(len(b.draft) == 3 for b in session.pre.branches.values())
            own = session.seq.slot
            (start, tokens), branch = next((key, b) for key, b in session.pre.branches.items()
                                           if b.slot != own)   # in a scratch slot
            hit = await proposer.propose(session, start, list(tokens), 3)
            assert hit.pre_drafted and hit.draft == branch.draft
            # The session adopted the branch's slot, and that slot holds the right KV: drafting
            # on from it equals drafting the same sequence from scratch.
            assert session.seq.slot == branch.slot != own
            # (d_k itself is never a branch's sync: this drafts from the slot.)
            held = session.seq.tokens[:hit.held_len] + [hit.draft[-1]]
            on = await proposer.propose(session, hit.held_len, held[-1:], 3)
            assert not on.pre_drafted
            fresh_session = await fresh.open_session()
            assert on.draft == (await fresh.propose(fresh_session, 0, held, 3)).draft
            await fresh.close_session(fresh_session)
            assert proposer.pre_drafter.counters.drafted_tokens == 3 * 3
        finally:
            await proposer.close_session(session)
    asyncio.run(go())
    proposer.batcher.close()
    fresh.batcher.close()


@pytest.mark.parametrize("top_m", [16, 0])   # sampled drafts (a q each); greedy drafts
def test_sampled_pre_drafts_draw_what_requests_would(pre_drafting, top_m):
    """A sampled branch draws each draft with the numbers of its position (draw_draft), as a
    request drafting it would: a seeded generation through a pre-drafting proposer equals the
    same through a sequential one, token for token, and some of its drafts were pre-drafted.
    (With the sequential proposer's own sampling shown exact by test_sampling's chi-square
    tests, so is the pre-drafting one's; test_sampling runs them with pre-drafting too.)"""
    verifier, pre, seq, _ = pre_drafting
    config = GenerationConfig(3, 40, True, SamplingParams(0.7, top_k=20, seed=3), top_m)
    prompt = [5, 9, 14, 3, 22]
    a = generate(verifier, pre, prompt, config)
    b = generate(verifier, seq, prompt, config)
    assert a.tokens == b.tokens and a.pre_draft_hits > 0


def test_pre_drafting_under_adaptive_k_equals_greedy(pre_drafting, target_hf):
    """k changes between rounds: a branch drafted for a larger k serves a smaller one (its first
    drafts), and the output stays the target's greedy output."""
    verifier, proposer, _, _ = pre_drafting
    prompt = np.random.default_rng(12).integers(2, VOCAB, size=9).tolist()
    rec = generate(verifier, proposer, prompt, GenerationConfig(5, 40, ignore_eos=True, adaptive_k=True))
    assert rec.tokens == greedy_reference(target_hf, prompt, 40)


def test_a_branch_serves_a_smaller_k(tiny_pair):
    """Deterministic, in-process: a branch pre-drafted after a k = 3 proposal answers a k = 2
    request with its first two drafts, and the session then holds exactly what it reports."""
    from specdec.build import build_draft_proposer
    from tests.conftest import engine_config

    proposer = build_draft_proposer(engine_config(tiny_pair[1], 1), 4, pre_draft_branches=2)

    async def go() -> None:
        session = await proposer.open_session()
        try:
            first = await proposer.propose(session, 0, [5, 9, 14, 3, 22], 3)
            await proposer.after_reply(session)
            start, tokens = next(key for key in session.pre.branches if len(key[1]) == 2)  # all accepted
            full = session.pre.branches[(start, tokens)].draft
            hit = await proposer.propose(session, start, list(tokens), 2)
            assert hit.pre_drafted and hit.draft == full[:2]
            assert tokens[0] == first.draft[-1]
            assert hit.held_len == len(session.seq.tokens) == start + len(tokens) + 1
            assert session.seq.cached == hit.held_len
        finally:
            await proposer.close_session(session)
    asyncio.run(go())
    proposer.batcher.close()


def test_scratch_slots_get_only_the_positions_they_lack(tiny_pair):
    """Round after round of hits in scratch slots: each pre-draft copies only the positions
    its scratch slots lack (after the first, a few, not the whole prefix), and every branch
    still drafts what a fresh proposer drafts from the branch's sequence."""
    from specdec.build import build_draft_proposer
    from tests.conftest import engine_config

    k = 3
    proposer = build_draft_proposer(engine_config(tiny_pair[1], 1), 4, pre_draft_branches=3)
    fresh = build_draft_proposer(engine_config(tiny_pair[1], 1), 4)
    copies: list[tuple[int, int]] = []
    assert proposer.pre_drafter.copy_slot is not None
    copy_slot = proposer.pre_drafter.copy_slot

    def recorded(src: int, dsts: list[int], start: int, stop: int) -> None:
        copies.append((start, stop))
        copy_slot(src, dsts, start, stop)
    proposer.pre_drafter.copy_slot = recorded

    async def go() -> None:
        session, check = await proposer.open_session(), await fresh.open_session()
        try:
            prompt = np.random.default_rng(5).integers(2, VOCAB, size=12).tolist()
            proposal = await proposer.propose(session, 0, prompt, k)
            for _ in range(6):
                await proposer.after_reply(session)
                for branch in session.pre.branches.values():
                    synced = branch.tokens[:len(branch.tokens) - (k - 1)]   # prefix + outcome
                    assert branch.draft == (await fresh.propose(check, 0, synced, k)).draft
                # The next outcome: a correction, so the hit adopts a scratch slot.
                (start, tokens), branch = next((key, b) for key, b in session.pre.branches.items()
                                               if b.outcome[0] < k and b.slot != session.seq.slot)
                proposal = await proposer.propose(session, start, list(tokens), k)
                assert proposal.pre_drafted and proposal.draft == branch.draft
                assert session.seq.slot == branch.slot
        finally:
            await proposer.close_session(session)
            await fresh.close_session(check)
    asyncio.run(go())
    proposer.batcher.close()
    fresh.batcher.close()
    assert len(copies) == 6 and copies[0][0] == 0
    # Once every scratch slot has held a branch (the second pre-draft may take one never used),
    # copies start past the prompt: the slots share the prefix up to the last outcomes.
    assert all(start >= 12 and stop - start <= 2 * k for start, stop in copies[2:])


def test_open_sessions_share_the_branch_budget(tiny_pair):
    """--pre-draft-branches F is the proposer's budget: a lone session's pre-draft drafts F
    branches, each of n open sessions F // n (at least one), so the proposer's pre-draft work
    does not grow with its load."""
    from specdec.build import build_draft_proposer
    from tests.conftest import engine_config

    proposer = build_draft_proposer(engine_config(tiny_pair[1], 3), 4, pre_draft_branches=4)

    async def branches(session) -> int:
        await proposer.propose(session, 0, [5, 9, 14, 3, 22], 3)
        await proposer.after_reply(session)
        return len(session.pre.branches)

    async def go() -> None:
        a = await proposer.open_session()
        assert await branches(a) == 4
        b = await proposer.open_session()
        assert await branches(a) == 2 and await branches(b) == 2
        c = await proposer.open_session()
        assert await branches(c) == 1
        for s in (b, c):
            await proposer.close_session(s)
        assert await branches(a) == 4
        await proposer.close_session(a)
        assert sorted(proposer.pre_drafter._spare) == list(range(proposer.engine.slots))
    asyncio.run(go())
    proposer.batcher.close()


@pytest.mark.parametrize("hit", [True, False])
def test_a_request_arriving_during_the_pre_draft_waits_for_its_own_branch_only(tiny_pair, hit):
    """The next request names its outcome while the pre-draft runs: the pre-draft drafts that
    outcome's branch only (none on a miss), and the answer is what a full pre-draft gives."""
    from specdec.build import build_draft_proposer
    from tests.conftest import engine_config

    def proposer():
        return build_draft_proposer(engine_config(tiny_pair[1], 1), 4, pre_draft_branches=4)
    full, pruned = proposer(), proposer()
    prompt = [5, 9, 14, 3, 22]

    async def go():
        a, b = await full.open_session(), await pruned.open_session()
        await full.propose(a, 0, prompt, 3)
        await full.after_reply(a)
        # Outcome: the second-ranked branch (a hit), or a sync no branch was drafted for.
        (start, tokens), branch = list(a.pre.branches.items())[1]
        if not hit:
            start, tokens = len(prompt), (max(t for _, ts in a.pre.branches for t in ts) + 1,)
        want = await full.propose(a, start, list(tokens), 3)
        await pruned.propose(b, 0, prompt, 3)
        # The service calls after_reply once the reply is out; the request arrives meanwhile.
        pre_draft = asyncio.create_task(pruned.after_reply(b))
        await asyncio.sleep(0)   # it holds the session and is drafting d_k's row
        got = await pruned.propose(b, start, list(tokens), 3)
        await pre_draft
        assert got.draft == want.draft and got.pre_drafted == want.pre_drafted == hit
        return pruned.pre_drafter.counters.drafted_tokens
    drafted = asyncio.run(go())
    assert drafted == (3 if hit else 0)   # one branch of k = 3, or none
    for p in (full, pruned):
        p.batcher.close()
