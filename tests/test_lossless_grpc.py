"""Lossless: speculative output over real gRPC servers equals transformers' greedy generate()."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from client.api import SpecDecClient
from specdec.generation import GenerationConfig
from specdec.metrics import generation_metrics
from specdec.stopping import FinishReason
from tests.conftest import CTX_LEN, start_proposer, start_verifier
from tests.grpc_client import generate_one
from tests.tiny_models import VOCAB, greedy_reference

# Lengths below, at and above multiples of prefill_seq_len (8).
PROMPT_LENGTHS = (5, 8, 13, 21)
NEW_TOKENS = 30


def prompts() -> list[list[int]]:
    rng = np.random.default_rng(7)
    return [rng.integers(2, VOCAB, size=n).tolist() for n in PROMPT_LENGTHS]


def run(services, prompt, config, proposer=True):
    return generate_one(services["verifier"], services["proposer"] if proposer else None, prompt, config)


@pytest.mark.parametrize("k", [1, 2, 4, 7])
def test_speculative_equals_greedy(services, target_hf, k):
    accepted = drafted = 0
    for prompt in prompts():
        rec = run(services, prompt, GenerationConfig(k, NEW_TOKENS, ignore_eos=True))
        assert rec.tokens == greedy_reference(target_hf, prompt, NEW_TOKENS), f"prompt len {len(prompt)}"
        assert rec.finish == FinishReason.LENGTH
        accepted += rec.accepted
        drafted += rec.drafted
    # The truncated draft must be neither always right nor always wrong, or the test would not
    # exercise both the rejection and the bonus paths.
    assert 0 < accepted < drafted


def test_target_only_equals_greedy(services, target_hf):
    prompt = prompts()[2]
    rec = run(services, prompt, GenerationConfig(0, NEW_TOKENS, ignore_eos=True), proposer=False)
    assert rec.tokens == greedy_reference(target_hf, prompt, NEW_TOKENS)
    assert rec.drafted == 0 and rec.verify_steps == NEW_TOKENS - 1


def test_runs_to_ctx_len(services, target_hf):
    prompt = prompts()[3]
    rec = run(services, prompt, GenerationConfig(4, 0, ignore_eos=True))
    assert rec.finish == FinishReason.CTX_LEN
    assert len(prompt) + len(rec.tokens) == CTX_LEN
    assert rec.tokens == greedy_reference(target_hf, prompt, CTX_LEN - len(prompt))


def test_stops_at_eos(tiny_pair, target_hf, tmp_path):
    """The checkpoint's EOS ends the session right after it is emitted, in the middle of a step."""
    import json
    import shutil

    prompt = prompts()[1]
    ref = greedy_reference(target_hf, prompt, NEW_TOKENS)
    eos = ref[9]
    first = ref.index(eos)
    target = shutil.copytree(tiny_pair[0], tmp_path / "target")
    (target / "generation_config.json").write_text(json.dumps({"eos_token_id": eos}))
    v_server, _ = start_verifier(target)
    p_server, _ = start_proposer(tiny_pair[1])
    try:
        addr = {"verifier": v_server.address, "proposer": p_server.address}
        rec = run(addr, prompt, GenerationConfig(4, NEW_TOKENS))
        assert rec.tokens == ref[:first + 1] and rec.finish == FinishReason.EOS
        rec = run(addr, prompt, GenerationConfig(4, NEW_TOKENS, ignore_eos=True))
        assert rec.tokens == ref
    finally:
        v_server.stop()
        p_server.stop()


@pytest.mark.parametrize("k", [1, 3, 4])
def test_draft_equal_to_target_accepts_everything(tiny_pair, k):
    v_server, _ = start_verifier(tiny_pair[0])
    p_server, _ = start_proposer(tiny_pair[0])
    try:
        addr = {"verifier": v_server.address, "proposer": p_server.address}
        steps = 5
        rec = run(addr, prompts()[0], GenerationConfig(k, 1 + steps * (k + 1), ignore_eos=True))
        m = generation_metrics(rec)
        assert m.mean_accepted_tokens == k + 1
        assert m.acceptance_by_position == [1.0] * k
        assert rec.verify_steps == steps
    finally:
        v_server.stop()
        p_server.stop()


def test_streaming_yields_steps_in_order(services, target_hf):
    prompt = prompts()[0]

    async def go():
        async with SpecDecClient(services["verifier"], services["proposer"]) as c:
            return [t async for t in c.stream(prompt, GenerationConfig(3, NEW_TOKENS, True))]

    chunks = asyncio.run(go())
    assert len(chunks) > 1 and chunks[0] and all(1 <= len(c) <= 4 for c in chunks[1:])
    assert sum(chunks, []) == greedy_reference(target_hf, prompt, NEW_TOKENS)


def test_seeded_sampling_over_grpc_is_reproducible(services):
    from specdec.sampling import SamplingParams

    def sample(seed):
        config = GenerationConfig(3, 24, True, SamplingParams(1.0, top_k=20, top_p=0.9, seed=seed))
        return run(services, prompts()[1], config).tokens

    assert sample(5) == sample(5)
    assert sample(5) != sample(6)
