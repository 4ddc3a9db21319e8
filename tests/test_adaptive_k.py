"""k auto (`--num-speculative-tokens auto`): the round model's pure functions, the choice of k
against simulated services whose best k is known, what each round's figures are filed under,
and lossless output with k chosen per round."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
import pytest

from specdec import generation
from specdec.adaptive_k import (
    EXPLORE_EVERY,
    SWITCH_MARGIN,
    ZERO_MARGIN,
    AutoK,
    KEstimates,
    choose,
    expected_tokens,
    priced,
)
from specdec.build import build_draft_proposer, build_verifier
from specdec.generation import GenerationConfig, generate
from specdec.generation_record import CallTime
from specdec.inprocess import InProcessProposerLink, InProcessVerifierLink
from specdec.metrics import batch_metrics, generation_metrics
from specdec.stopping import FinishReason
from specdec.types import Proposal, StepOutcome, StepTimings
from tests.conftest import CTX_LEN, engine_config
from tests.grpc_client import generate_all
from tests.test_prompt_lookup import ngram_service, pattern_prompts  # noqa: F401
from tests.tiny_models import VOCAB, greedy_reference, hf_model


def test_expected_tokens_is_leviathans_formula():
    for a in (0.3, 0.7, 0.95):
        for k in range(6):
            assert expected_tokens([a] * 8, k) == pytest.approx((1 - a ** (k + 1)) / (1 - a))
    # Per position: the chain stops at the first rejection.
    assert expected_tokens([0.9, 0.5, 0.0, 1.0], 4) == pytest.approx(1 + 0.9 + 0.45)


def test_an_unmeasured_cost_is_the_nearest_measured_one():
    assert priced({2: 5.0, 4: 9.0}, 4) == 9.0
    assert priced({2: 5.0, 4: 9.0}, 3) == 5.0     # the smaller on a tie
    assert priced({2: 5.0, 4: 9.0}, 7) == 9.0
    assert priced({2: 5.0, 4: 9.0}, 0) == 5.0
    assert priced({}, 3) == 0.0


def test_the_k_in_use_is_kept_within_the_margin():
    best = 2.0 * (1 + SWITCH_MARGIN / 2)
    rates = [1.0, 2.0, best, best / (1 + 2 * SWITCH_MARGIN)]
    assert choose(rates, None, SWITCH_MARGIN) == 2
    assert choose(rates, 1, SWITCH_MARGIN) == 1          # within the margin: kept
    assert choose(rates, 3, SWITCH_MARGIN) == 2          # beyond it: switched
    assert choose(rates, 9, SWITCH_MARGIN) == 2          # beyond this max_k


def test_k_zero_must_win_by_its_own_margin():
    """A k = 0 round brings no news of acceptance: a near tie keeps drafting."""
    near = [1.0 * (1 + ZERO_MARGIN / 2), 0.5, 1.0, 0.9]
    assert choose(near, None, SWITCH_MARGIN) == 2
    clear = [1.0 * (1 + 2 * ZERO_MARGIN), 0.5, 1.0, 0.9]
    assert choose(clear, None, SWITCH_MARGIN) == 0
    assert choose(clear, 2, SWITCH_MARGIN) == 0          # beyond the switch margin too
    assert choose([1.0], None, SWITCH_MARGIN) == 0       # max k 0: nothing else to choose


def step(drafted: int, accepted: int, window: int = 0, sessions: int = 1) -> StepOutcome:
    return StepOutcome([0] * (accepted + 1), accepted, drafted, FinishReason.NONE, 0,
                       StepTimings(batch_window=window or drafted + 1), sessions_active=sessions)


def test_a_call_that_no_pre_drafted_branch_could_answer_is_not_priced():
    """The first round at a larger k than the last cannot hit (the branches were drafted for
    the smaller one): its proposer call is left out of k's cost, the next at k counts."""
    auto = AutoK(4, KEstimates())
    for k in (2, 4, 4):
        auto.observe(k, Proposal([1] * k, 0), step(k, 0), CallTime(1000 * k, 5000))
    assert list(auto.estimates.propose) == [4] and len(auto.estimates.propose[4]) == 1


def test_a_verify_is_filed_under_the_window_its_engine_call_ran():
    """In a batch the rows are padded to the widest: asking for fewer saves nothing."""
    auto = AutoK(4, KEstimates())
    auto.observe(2, Proposal([1, 1], 0), step(2, 1, window=5), CallTime(1000, 7000))
    auto.observe(3, Proposal([1] * 3, 0), step(3, 1, window=2), CallTime(1000, 6000))
    assert sorted(auto.estimates.verify) == [3, 4]


def test_missing_drafts_count_as_not_accepted_but_missing_guesses_do_not():
    auto = AutoK(4, KEstimates())
    for _ in range(20):   # asked for 4, the proposer had 1, and it was accepted
        auto.observe(4, Proposal([1], 0), step(1, 1), CallTime(1000, 5000))
    first, second = auto.estimates.acceptance.rates(2)
    assert first > 0.8 and second < 0.2
    turbo = AutoK(4, KEstimates())
    for _ in range(20):   # no proposer: the heads had one guess for a round asking for 4
        turbo.observe(4, None, step(1, 1), CallTime(0, 5000))
    first, second = turbo.estimates.acceptance.rates(2)
    assert second == first > 0.8   # never drafted: the prior, the position before it


@dataclass
class World:
    """Services whose costs and acceptance are known, so is their best k."""

    alpha: float
    propose_fixed: float = 0.3e-3
    draft_step: float = 1e-3
    verify_fixed: float = 10e-3
    verify_token: float = 0.3e-3
    costly_window: int = 99    # from this window on a verify costs twice as much

    def propose(self, k: int) -> float:
        return self.propose_fixed + self.draft_step * k if k else 0.0

    def verify(self, k: int) -> float:
        cost = self.verify_fixed + self.verify_token * (k + 1)
        return 2 * cost if k + 1 >= self.costly_window else cost

    def rate(self, k: int) -> float:
        return expected_tokens([self.alpha] * k, k) / (self.propose(k) + self.verify(k))

    def best(self, max_k: int) -> float:
        return max(self.rate(k) for k in range(max_k + 1))


def simulate(world: World, max_k: int, rounds: int, auto: AutoK | None = None, seed: int = 0) -> list[int]:
    """The k of each round of a generation on `world`, each call's time within +-20%."""
    rng = np.random.default_rng(seed)
    auto = auto or AutoK(max_k, KEstimates())
    ks = []
    for _ in range(rounds):
        k = auto.next_k()
        accepted = 0
        while accepted < k and rng.random() < world.alpha:
            accepted += 1
        noise = rng.uniform(0.8, 1.2, size=2)
        auto.observe(k, Proposal([1] * k, 0) if k else None, step(k, accepted),
                     CallTime(int(world.propose(k) * noise[0] * 1e9), int(world.verify(k) * noise[1] * 1e9)))
        ks.append(k)
    return ks


def rate(world: World, ks: list[int]) -> float:
    """Tokens per second of rounds at these k, on average."""
    return sum(expected_tokens([world.alpha] * k, k) for k in ks) \
        / sum(world.propose(k) + world.verify(k) for k in ks)


@pytest.mark.parametrize("world", [
    World(0.9),                            # cheap drafts, accepted: the largest k
    World(0.6),
    World(0.3),                            # a short k
    World(0.8, draft_step=10e-3),          # a draft as slow as the target: k = 0
    World(0.9, costly_window=5),           # a costly window: the k below it
], ids=["0.9", "0.6", "0.3", "slow draft", "costly window"])
def test_auto_comes_within_a_few_percent_of_the_best_k(world):
    ks = simulate(world, 8, 1000)
    assert rate(world, ks[100:]) >= 0.95 * world.best(8), (sorted(set(ks)), ks[-100:])
    assert rate(world, ks) >= 0.93 * world.best(8)   # the first pass over every k included


def test_an_abandoned_k_comes_back():
    """Drafts stop being accepted, k falls to 0; when they are accepted again (a repeated
    passage for prompt lookup), k comes back."""
    auto = AutoK(4, KEstimates())
    ks = simulate(World(0.0), 4, 300, auto)
    assert ks[-100:].count(0) >= 70 and rate(World(0.0), ks[-100:]) >= 0.95 * World(0.0).best(4)
    back = simulate(World(0.9), 4, 300, auto, seed=1)
    assert back[-100:].count(4) >= 90, back


def test_one_round_in_explore_every_tries_a_neighbour():
    ks = simulate(World(0.9), 4, 20 * EXPLORE_EVERY)[4 * EXPLORE_EVERY:]
    assert ks.count(4) >= 0.9 * len(ks) and 0 < ks.count(3) <= 0.1 * len(ks)


def test_a_batch_tries_each_k_together():
    """Sessions whose rows share the verifier's engine calls, padded to the widest window: they
    move together (a lone session asking for fewer would save nothing), and find the best k."""
    world, n = World(0.7, draft_step=2e-3, verify_token=2e-3), 8
    estimates = KEstimates()
    sessions = [AutoK(6, estimates) for _ in range(n)]
    rng = np.random.default_rng(0)
    rounds = []
    for _ in range(400):
        ks = [s.next_k() for s in sessions]
        widest = max(ks)
        for s, k in zip(sessions, ks):
            accepted = 0
            while accepted < k and rng.random() < world.alpha:
                accepted += 1
            s.observe(k, Proposal([1] * k, 0) if k else None, step(k, accepted, widest + 1, n),
                      CallTime(int(world.propose(k) * 1e9), int(world.verify(widest) * 1e9)))
        rounds.append(ks)
    settled = rounds[50:]
    assert sum(len(set(ks)) == 1 for ks in settled) >= 0.9 * len(settled)
    tokens = sum(expected_tokens([world.alpha] * k, k) for ks in settled for k in ks)
    time = sum(max(world.propose(k) for k in ks) + world.verify(max(ks)) for ks in settled)
    assert tokens / time >= 0.95 * n * world.best(6), [ks[0] for ks in settled[-50:]]


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


class ScheduledK:
    """A KPolicy with a fixed schedule of k, to force k = 0 rounds between drafting rounds."""

    schedule = [0, 0, 3, 0, 2, 0, 0, 0, 4, 1]

    def __init__(self) -> None:
        self.rounds = 0

    def next_k(self) -> int:
        self.rounds += 1
        return self.schedule[(self.rounds - 1) % len(self.schedule)]

    def observe(self, *args) -> None:
        pass


def test_proposer_stays_synced_through_k_zero_rounds(tiny_pair, target_hf, monkeypatch):
    """After rounds without a proposer call, the next draft is still the draft model's greedy
    continuation of the whole sequence: the sync carried every token it missed (TensorRT-LLM
    lost acceptance where a k = 0 step left the drafter behind)."""
    monkeypatch.setattr(generation, "k_policy", lambda *args: ScheduledK())
    draft_hf = hf_model(tiny_pair[1])
    verifier = build_verifier(engine_config(tiny_pair[0]), tuple(range(5)))
    proposer = build_draft_proposer(engine_config(tiny_pair[1]), 4)
    vlink, plink = InProcessVerifierLink(verifier), InProcessProposerLink(proposer)
    proposals: list[tuple[list[int], list[int]]] = []
    propose = plink.propose

    async def recording(start, tokens, k, sampling, top_m):
        out = await propose(start, tokens, k, sampling, top_m)
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
