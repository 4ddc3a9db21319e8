"""Adaptive k (`--num-speculative-tokens auto`): the choice of k as a pure function, its running
estimates, the verifier's occupancy report, and lossless output with k chosen per round."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from specdec.adaptive_k import (
    EXPLORE_EVERY,
    AdaptiveK,
    LinearFit,
    RoundCosts,
    choose_k,
    expected_tokens,
    round_time,
)
from specdec.build import build_draft_proposer, build_verifier
from specdec.generation import GenerationConfig, generate
from specdec.inprocess import InProcessProposerLink, InProcessVerifierLink
from specdec.metrics import batch_metrics, generation_metrics
from specdec.proposers.pre_draft import AcceptanceStats
from specdec.stopping import StopParams
from specdec_rpc.convert import outcome_from_pb, outcome_to_pb
from tests.conftest import CTX_LEN, engine_config
from tests.grpc_client import generate_all
from tests.test_prompt_lookup import ngram_service, pattern_prompts  # noqa: F401
from tests.tiny_models import VOCAB, greedy_reference, hf_model

# A draft forward at a tenth of a target forward; verifying more tokens costs a little more.
CHEAP_DRAFT = RoundCosts(propose_fixed_s=0.2e-3, draft_step_s=1e-3, verify_fixed_s=0.2e-3,
                         verify_forward_s=10e-3, verify_token_s=0.3e-3)


def test_expected_tokens_is_leviathans_formula_at_constant_acceptance():
    for a in (0.3, 0.7, 0.95):
        for k in range(6):
            assert expected_tokens([a] * k, k) == pytest.approx((1 - a ** (k + 1)) / (1 - a))
    # Per position: the chain stops at the first rejection.
    assert expected_tokens([0.9, 0.5, 0.0, 1.0], 4) == pytest.approx(1 + 0.9 + 0.45)


def test_k_grows_with_acceptance():
    ks = [choose_k([a] * 8, CHEAP_DRAFT, 8, occupancy=1) for a in (0.05, 0.3, 0.6, 0.8, 0.95)]
    assert ks == sorted(ks) and ks[0] < ks[-1]
    assert ks[0] == 0    # drafts that are almost never accepted are not worth their time
    assert ks[-1] >= 5


def test_k_stops_at_the_first_position_that_does_not_pay():
    # Positions 1-3 are almost always accepted, position 4 almost never.
    assert choose_k([0.95, 0.95, 0.95, 0.02, 0.95, 0.95], CHEAP_DRAFT, 6, 1) == 3


def test_k_falls_to_zero_when_the_draft_is_as_slow_as_the_target():
    slow = RoundCosts(0.2e-3, 10e-3, 0.2e-3, 10e-3, 0.3e-3)
    assert choose_k([0.8] * 8, CHEAP_DRAFT, 8, 1) > 0
    assert choose_k([0.8] * 8, slow, 8, 1) == 0


def test_k_falls_as_the_verifier_fills():
    ks = [choose_k([0.8] * 8, CHEAP_DRAFT, 8, occupancy=n) for n in (1, 2, 4, 8, 32, 128)]
    assert ks == sorted(ks, reverse=True) and ks[0] > ks[2] > ks[-1]
    assert ks[-1] == 0   # at 128 sessions a window token costs more than a draft saves
    # A verifier whose windows cost nothing extra keeps k whatever its occupancy.
    flat = RoundCosts(0.2e-3, 1e-3, 0.2e-3, 10e-3, 0.0)
    assert choose_k([0.8] * 8, flat, 8, 1) == choose_k([0.8] * 8, flat, 8, 128) > 0


def test_round_time_counts_the_proposer_only_when_drafting():
    assert round_time(CHEAP_DRAFT, 0, 1) == pytest.approx(0.2e-3 + 10e-3)
    assert round_time(CHEAP_DRAFT, 2, 1) == pytest.approx(0.2e-3 + 2e-3 + 0.2e-3 + 10e-3 + 0.6e-3)
    assert round_time(CHEAP_DRAFT, 2, 4) == pytest.approx(0.2e-3 + 2e-3 + 0.2e-3 + 10e-3 + 11 * 0.3e-3)


def test_linear_fit_recovers_a_line_and_stays_defined_from_one_point():
    fit = LinearFit()
    fit.observe(5.0, 2.0)
    a, b = fit.coefficients()
    assert a + 5 * b == pytest.approx(2.0) and b > 0   # one x: the prior slope, through the point
    for _ in range(50):
        for x in (1.0, 3.0, 6.0):
            fit.observe(x, 4.0 + 0.5 * x)
    a, b = fit.coefficients()
    assert a == pytest.approx(4.0, abs=0.05) and b == pytest.approx(0.5, abs=0.02)


def test_running_acceptance_follows_a_change():
    fading, counting = AcceptanceStats(decay=0.9), AcceptanceStats()
    for _ in range(100):
        fading.observe(3, 3)
        counting.observe(3, 3)
    for _ in range(30):
        fading.observe(0, 3)
        counting.observe(0, 3)
    assert fading.rate(0) < 0.25 < 0.5 < counting.rate(0)


def simulate(world: RoundCosts, alpha: float, occupancy: int, rounds: int, seed: int = 0) -> list[int]:
    """Feed AdaptiveK rounds of a synthetic service whose true costs are `world`."""
    rng = np.random.default_rng(seed)
    auto, ks = AdaptiveK(max_k=8), []
    for _ in range(rounds):
        k = auto.next_k()
        ks.append(k)
        accepted = 0
        while accepted < k and rng.random() < alpha:
            accepted += 1
        forward = world.verify_forward_s + world.verify_token_s * (occupancy * (k + 1) - 1)
        auto.observe(k, accepted, world.propose_fixed_s + k * world.draft_step_s if k else None,
                     k * world.draft_step_s, world.verify_fixed_s + forward, forward, occupancy)
    return ks


@pytest.mark.parametrize("alpha, occupancy", [(0.9, 1), (0.6, 1), (0.9, 8), (0.2, 1)])
def test_estimates_from_rounds_find_the_best_k(alpha, occupancy):
    def rate(k: int) -> float:  # the true tokens per second of k
        return expected_tokens([alpha] * 8, k) / round_time(CHEAP_DRAFT, k, occupancy)

    best = max(rate(k) for k in range(9))
    worst = min(rate(k) for k in range(9))
    for seed in range(3):
        settled = simulate(CHEAP_DRAFT, alpha, occupancy, 400, seed)[200:]
        # The k chosen from running estimates is worth what the best k is, within 5%
        # (exploration rounds included), and the exploration rounds never stop.
        achieved = sum(rate(k) for k in settled) / len(settled)
        assert achieved >= 0.95 * best > worst, (seed, achieved, best, settled)
        assert len(set(settled)) >= 2


def test_a_catch_up_sync_is_not_draft_cost():
    """After k = 0 rounds the next sync feeds every token since: that feed must not count as
    draft cost, or k = 0 would look cheaper each time it is chosen and never be left."""
    auto = AdaptiveK(max_k=4)
    for _ in range(10):
        auto.observe(3, 2, 2e-3, 1.5e-3, 6e-3, 5e-3, 1, synced=1)
    step, fixed = auto.draft_step.value(), auto.propose_fixed.value()
    auto.observe(3, 2, 30e-3, 28e-3, 6e-3, 5e-3, 1, synced=12)   # 12 tokens fed first
    assert (auto.draft_step.value(), auto.propose_fixed.value()) == (step, fixed)
    auto.observe(3, 2, 30e-3, 28e-3, 6e-3, 5e-3, 1, synced=2)    # [dk, bonus]: a round's own
    assert auto.draft_step.value() > step


def test_exploration_leaves_k_zero_now_and_then():
    # Drafts never accepted: k settles at 0 but one round in EXPLORE_EVERY still tries k = 1.
    ks = simulate(CHEAP_DRAFT, 0.0, 1, 160)[40:]
    assert ks.count(0) >= 0.8 * len(ks)
    assert 0 < ks.count(1) <= len(ks) // EXPLORE_EVERY + 1


def test_verifier_reports_occupancy_and_it_crosses_the_wire(tiny_pair):
    verifier = build_verifier(engine_config(tiny_pair[0]), tuple(range(5)))

    async def go():
        a, b = await verifier.open_session(), await verifier.open_session()
        for s in (a, b):
            await verifier.prefill(s, 0, [3, 4, 5], StopParams(0, True))
        assert (await verifier.verify(a, [6, 7])).sessions_active == 2
        await verifier.close_session(b)
        out = await verifier.verify(a, [])
        await verifier.close_session(a)
        return out
    out = asyncio.run(go())
    assert out.sessions_active == 1
    assert outcome_from_pb(outcome_to_pb(out)).sessions_active == 1
    verifier.batcher.close()


def run_grpc(services, prompts, config):
    return generate_all(services["verifier"], services["proposer"], prompts, config)


def test_auto_k_draft_model_equals_greedy(services, target_hf):
    rng = np.random.default_rng(11)
    prompts = [rng.integers(2, VOCAB, size=n).tolist() for n in (6, 13)]
    # max k above the services' (8): auto takes what both accept.
    records = run_grpc(services, prompts, GenerationConfig(16, 40, ignore_eos=True, adaptive_k=True))
    for prompt, rec in zip(prompts, records):
        assert rec.tokens == greedy_reference(target_hf, prompt, 40)
        m = generation_metrics(rec).as_dict()
        assert sum(m["k_histogram"]) == rec.verify_steps and len(m["k_histogram"]) <= 9
    totals = batch_metrics(records).as_dict()["k_histogram"]
    assert sum(totals) == sum(r.verify_steps for r in records)
    assert sum(r.drafted for r in records) > 0


def test_auto_k_prompt_lookup_equals_greedy(services, ngram_service, target_hf):  # noqa: F811
    prompts = pattern_prompts()
    records = generate_all(services["verifier"], ngram_service, prompts,
                           GenerationConfig(8, 40, ignore_eos=True, adaptive_k=True), concurrent=True)
    for prompt, rec in zip(prompts, records):
        assert rec.tokens == greedy_reference(target_hf, prompt, 40)
        assert sum(rec.k_histogram) == rec.verify_steps
    assert sum(r.accepted for r in records) > 0


class ScheduledK(AdaptiveK):
    """Adaptive k with a fixed schedule of k, to force k = 0 rounds between drafting rounds."""

    schedule = [0, 0, 3, 0, 2, 0, 0, 0, 4, 1]

    def next_k(self) -> int:
        self.rounds += 1
        return self.schedule[(self.rounds - 1) % len(self.schedule)]


def test_proposer_stays_synced_through_k_zero_rounds(tiny_pair, target_hf, monkeypatch):
    """After rounds without a proposer call, the next draft is still the draft model's greedy
    continuation of the whole sequence: the sync carried every token it missed (TensorRT-LLM
    lost acceptance where a k = 0 step left the drafter behind)."""
    import specdec.generation as generation

    monkeypatch.setattr(generation, "AdaptiveK", ScheduledK)
    draft_hf = hf_model(tiny_pair[1])
    verifier = build_verifier(engine_config(tiny_pair[0]), tuple(range(5)))
    proposer = build_draft_proposer(engine_config(tiny_pair[1]), 4)
    vlink, plink = InProcessVerifierLink(verifier), InProcessProposerLink(proposer)
    proposals: list[tuple[list[int], list[int]]] = []
    propose = plink.propose

    async def recording(start, tokens, k, sampling, top_m, return_branches=False):
        out = await propose(start, tokens, k, sampling, top_m, return_branches)
        if k:
            proposals.append((list(seq_now), out.draft))  # it now holds the whole sequence
        return out

    seq_now: list[int] = []
    plink.propose = recording
    prompt = np.random.default_rng(5).integers(2, VOCAB, size=9).tolist()

    def on_tokens(tokens):
        seq_now.extend(tokens)

    seq_now.extend(prompt)
    rec = asyncio.run(generate(prompt, vlink, plink, GenerationConfig(4, 30, True, adaptive_k=True),
                               CTX_LEN, proposer.fingerprint, on_tokens))
    asyncio.run(vlink.close())
    asyncio.run(plink.close())
    assert rec.tokens == greedy_reference(target_hf, prompt, 30)
    assert rec.k_histogram[0] > 0 and len(proposals) >= 4
    for context, draft in proposals:
        assert draft == greedy_reference(draft_hf, context, len(draft)), len(context)


def test_cli_flags_take_auto():
    from client import draft_based, prompt_lookup
    from client.cli_common import AUTO

    assert draft_based.parse_args(["--num-speculative-tokens", "auto"]).num_speculative_tokens == AUTO
    assert draft_based.parse_args(["--num-speculative-tokens", "5"]).num_speculative_tokens == 5
    assert prompt_lookup.parse_args(["--num-speculative-tokens", "AUTO"]).num_speculative_tokens == AUTO
    assert prompt_lookup.parse_args(["--num-speculative-tokens", "0,3"]).num_speculative_tokens == (0, 3)
    with pytest.raises(SystemExit):
        draft_based.parse_args(["--num-speculative-tokens", "often"])
    with pytest.raises(SystemExit):
        draft_based.parse_args(["--num-speculative-tokens", "-1"])
