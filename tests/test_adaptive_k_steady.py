"""Adaptive k against a service whose costs depend on what ran before: a verify window called
among calls of another runs colder than in use, and a pre-drafted hit waits longer at a
larger k. What k auto measures of a k it does not use must not be taken for what that k
would cost in use (specdec.round_estimates: the verifier's reference costs, hit costs and
rates of steady rounds, explorations of two rounds)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from client.api import SpecDecClient
from client.launcher import start_service
from specdec.adaptive_k import AdaptiveK
from specdec.round_estimates import RECENT, RoundEstimates, RoundReport, WindowCosts
from specdec.round_model import expected_tokens

ALPHA = 0.8
STEADY_S = {1: 2.2e-3, 2: 2.5e-3, 3: 2.8e-3, 4: 3.4e-3, 5: 3.8e-3}   # engine call by window, in use
COLD_S = 1.5e-3          # more, for the first COLD_CALLS calls after a call of another window
COLD_CALLS = 2
VERIFY_FIXED_S = 0.8e-3
HIT_RATE = {1: 0.95, 2: 0.9, 3: 0.82, 4: 0.77}   # of the branches drafted at the last round's k
MISS_FIXED_S, DRAFT_STEP_S = 0.95e-3, 0.6e-3


HIT_TRIP_S = 0.55e-3


def hit_wait_s(k_drafted: int) -> float:
    """A hit waits for the part of its pre-draft (k_drafted depths, 0.9 ms each) that outlasts
    the verify and the round trips (2.2 ms)."""
    return max(0.0, 0.9e-3 * k_drafted - 2.2e-3)


def hit_s(k_drafted: int) -> float:
    return HIT_TRIP_S + hit_wait_s(k_drafted)


def rate_in_use(k: int) -> float:
    """Tokens per second of always asking for k."""
    h = HIT_RATE[k]
    propose = h * hit_s(k) + (1 - h) * (MISS_FIXED_S + k * DRAFT_STEP_S)
    return expected_tokens([ALPHA] * k, k) / (propose + VERIFY_FIXED_S + STEADY_S[k + 1])


def run(rounds: int, seed: int, reference: bool) -> list[int]:
    """AdaptiveK against the service above; each round's k."""
    rng = np.random.default_rng(seed)
    auto = AdaptiveK(max_k=4)
    if reference:   # what the verifier reports in Info: its calls timed back to back
        auto.estimates.verify_forward.reference = {(1, w): s for w, s in STEADY_S.items()}
    ks, last_window, same_window = [], 0, 0
    for _ in range(rounds):
        k = auto.next_k()
        drafted_for, hit = auto.asked_last, False
        if 0 < k <= drafted_for:
            hit = rng.random() < HIT_RATE[drafted_for]
        propose = hit_s(drafted_for) if hit else MISS_FIXED_S + k * DRAFT_STEP_S
        accepted = 0
        while accepted < k and rng.random() < ALPHA:
            accepted += 1
        window = k + 1
        same_window = same_window + 1 if window == last_window else 0
        last_window = window
        forward = STEADY_S[window] + (COLD_S if same_window < COLD_CALLS else 0.0)
        auto.observe(RoundReport(k, k, k, accepted, propose, 0.0 if hit else k * DRAFT_STEP_S,
                                 VERIFY_FIXED_S + forward, forward, 1, pre_drafted=hit,
                                 propose_service_s=hit_wait_s(drafted_for) if hit else propose - 0.3e-3))
        ks.append(k)
    return ks


def test_the_world_rewards_a_k_that_explorations_would_misjudge():
    """The premise: k = 2 pays best in use, by a margin the noise of estimates cannot hide."""
    rates = {k: rate_in_use(k) for k in range(1, 5)}
    assert max(rates, key=rates.__getitem__) == 2
    assert rates[2] > 1.04 * max(rates[3], rates[4])


@pytest.mark.parametrize("seed", range(3))
def test_auto_finds_the_k_that_pays_in_use(seed):
    best = max(rate_in_use(k) for k in range(1, 5))
    settled = run(600, seed, reference=True)[300:]
    achieved = sum(rate_in_use(k) if k else 0.0 for k in settled) / len(settled)
    assert achieved >= 0.95 * best, (seed, achieved / best, np.bincount(settled))


def test_reference_costs_scale_with_the_calls_in_use_and_ignore_rare_cold_ones():
    costs = WindowCosts(reference={(1, 3): 2.0, (1, 5): 4.0, (4, 3): 6.0, (4, 5): 10.0})
    for i in range(2 * RECENT):
        costs.observe(1, 5, 5.0)          # in use: 1.25 x its reference
        if i % 8 == 0:
            costs.observe(1, 3, 5.0)      # now and then, cold: 2.5 x
    assert costs.measured(1)[3] == pytest.approx(2.5)   # 2.0 x 1.25, not the cold 5.0
    assert costs.measured(1)[5] == pytest.approx(5.0)
    # 3 rows run padded to the 4-row bucket: its reference, at x = 3 rows x window
    assert costs.measured(3)[9] == pytest.approx(7.5) and costs.measured(3)[15] == pytest.approx(12.5)
    assert costs.reference_at(8, 5) == 10.0 and costs.reference_at(1, 2) == 0.0
    bare = WindowCosts()                  # an older verifier: the calls' own medians
    bare.observe(1, 3, 5.0)
    assert bare.measured(1) == {3: 5.0}


def test_hit_costs_and_rates_count_steady_rounds_for_their_k():
    est = RoundEstimates()
    est.draft_step.observe(0.5e-3)

    def round_at(k: int, asked_last: int, hit: bool, propose_s: float, service_s: float) -> None:
        est.observe(RoundReport(k, k, k, 1, propose_s, 0.0 if hit else k * 0.5e-3, 5e-3, 4e-3, 1,
                                pre_drafted=hit, propose_service_s=service_s), 1, True, asked_last)

    for _ in range(5):   # steady at 4: a hit waited 0.7 ms for the rest of a 4-deep pre-draft
        round_at(4, 4, True, 1.2e-3, 0.7e-3)
    round_at(2, 4, True, 1.2e-3, 0.7e-3)   # first round at 2: answered by 4-deep branches
    round_at(2, 4, False, 3e-3, 2.5e-3)
    assert est.hit_cost(4) == pytest.approx(1.2e-3)
    assert 2 not in est.hit_wait and est.hits.rate(2, -1.0) == -1.0   # nothing of k = 2's own
    # k = 3: one depth less to wait for; k = 2, two (not below no wait); 5: one more
    assert est.hit_cost(3) == pytest.approx(0.5e-3 + 0.2e-3)
    assert est.hit_cost(2) == est.hit_cost(1) == pytest.approx(0.5e-3)
    assert est.hit_cost(5) == pytest.approx(0.5e-3 + 1.2e-3)
    round_at(2, 2, True, 0.6e-3, 0.1e-3)   # steady at 2: its own wait
    assert est.hit_cost(2) == pytest.approx(0.5e-3 + 0.1e-3)
    assert est.costs(4).propose_hit_s[4] == pytest.approx(1.2e-3)


def test_the_verifier_times_each_verify_shape_and_the_client_prices_windows_from_it(tiny_pair):
    """The verifier service times every (batch bucket, k + 1) shape at start-up; Info carries
    the table to the client, whose k auto estimates take it as their reference."""
    svc = start_service("verifier", "verifier_service",
                        ["--model", str(tiny_pair[0]), "--full-batch-size", "3", "--max-k", "2",
                         "--compile", "off", "--ctx-len", "64"])
    try:
        async def reference() -> dict[tuple[int, int], float]:
            async with SpecDecClient(svc.address) as client:
                return client.k_estimates.verify_forward.reference

        table = asyncio.run(reference())
        assert sorted(table) == [(r, w) for r in (1, 2, 3) for w in (1, 2, 3)]
        assert all(s > 0 for s in table.values())
    finally:
        svc.stop()
