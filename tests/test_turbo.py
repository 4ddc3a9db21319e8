"""Multi-projection (Turbo) heads: logits against a direct reference on transformers' hidden
states, QEfficient's shared-weights layout, and lossless generation with the verifier drafting
for itself."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from client.api import SpecDecClient
from specdec.config import EngineConfig
from specdec.engine.torch_engine import TorchEngine
from specdec.engine.turbo import NotATurboModel
from specdec.generation import GenerationConfig
from specdec.sampling import SamplingParams
from tests.conftest import HostedServer, engine_config
from tests.tiny_models import VOCAB, greedy_reference, hf_model, save_tiny, save_turbo

ROOT = Path(__file__).resolve().parent.parent


def reference_heads(model, state: dict, ids: list[int], heads: int, layers: int) -> np.ndarray:
    """[S, H+1, V]: lm_head([h, ResBlocks_1(h), ...]) on transformers' final hidden states, with
    QEfficient's layout: every layer of a head is the checkpoint's LAST layer entry."""
    with torch.no_grad():
        h = model.model(torch.tensor([ids])).last_hidden_state[0]          # [S, D], post-norm
        outs = [h]
        for j in range(heads):
            w = state[f"projections.{j}.{layers - 1}.linear.weight"]
            b = state[f"projections.{j}.{layers - 1}.linear.bias"]
            x = h
            for _ in range(layers):
                x = x + torch.nn.functional.silu(x @ w.T + b)
            outs.append(x)
        return model.lm_head(torch.stack(outs, dim=1)).numpy()              # [S, H+1, V]


@pytest.mark.parametrize("heads, layers", [(3, 1), (2, 2)])
def test_head_logits_match_reference(tmp_path, heads, layers):
    """run() returns the base head; head_logits evaluates the heads at any kept position, per
    row of a batched call (rows of different lengths, different slots)."""
    path = save_tiny(tmp_path, "llama", seed=1)
    state = save_turbo(path, heads, layers)
    engine = TorchEngine(EngineConfig(model=str(path), ctx_len=32, prefill_seq_len=8,
                                      full_batch_size=2, turbo=True))
    ids = [5, 9, 14, 3, 22, 7, 40]
    other = [8, 2, 30]
    ref = reference_heads(hf_model(path), state, ids, heads, layers)                 # [S, H+1, V]
    ref_other = reference_heads(hf_model(path), state, other, heads, layers)
    out = engine.run(np.array([ids[:4]]), np.arange(4)[None], np.array([1]), 4)
    assert out.shape == (1, 4, VOCAB)
    np.testing.assert_allclose(out[0], ref[:4, 0], atol=1e-4)
    np.testing.assert_allclose(engine.head_logits(np.array([1]), np.array([2]))[0], ref[2, 1:],
                               atol=1e-4)
    # Batched: slot 1 continues with 3 tokens, slot 0 starts with `other` padded to the same width.
    batch_ids = np.array([ids[4:], other])
    out2 = engine.run(batch_ids, np.array([[4, 5, 6], [0, 1, 2]]), np.array([1, 0]), 3)
    np.testing.assert_allclose(out2[0], ref[4:, 0], atol=1e-4)
    np.testing.assert_allclose(out2[1], ref_other[:, 0], atol=1e-4)
    got = engine.head_logits(np.array([0, 1]), np.array([1, 5]))                    # [2, H, V]
    assert got.shape == (2, heads, VOCAB)
    np.testing.assert_allclose(got[0], ref_other[1, 1:], atol=1e-4)
    np.testing.assert_allclose(got[1], ref[5, 1:], atol=1e-4)
    with pytest.raises(ValueError, match="kept no hidden state at position 2"):
        engine.head_logits(np.array([1]), np.array([2]))  # overwritten by slot 1's later run


def test_run_guesses_where_a_greedy_verifier_drafts_from(tmp_path):
    """Per row, run() evaluates the heads at its greedy acceptance point (the drafts that equal
    the base argmax, while consecutive): the guesses equal head_logits' top-1 there, and no
    other position is answered (a sampling verifier may stop elsewhere: head_logits then)."""
    path = save_tiny(tmp_path, "llama", seed=1)
    state = save_turbo(path, 3, 1)
    model = hf_model(path)
    engine = TorchEngine(EngineConfig(model=str(path), ctx_len=32, prefill_seq_len=8,
                                      full_batch_size=2, turbo=True))
    seq = [5]
    for _ in range(2):   # two drafts the target accepts, then one it rejects
        seq.append(int(reference_heads(model, state, seq, 3, 1)[-1, 0].argmax()))
    seq.append((int(reference_heads(model, state, seq, 3, 1)[-1, 0].argmax()) + 1) % VOCAB)
    other = [8, 2, 30]
    ref = reference_heads(model, state, seq, 3, 1)                                   # [4, H+1, V]
    ref_other = reference_heads(model, state, other, 3, 1)
    other_col = 0   # its leading drafts the target would keep
    while other_col < 2 and ref_other[other_col, 0].argmax() == other[other_col + 1]:
        other_col += 1
    engine.run(np.array([seq, other + [-1]]), np.array([[0, 1, 2, 3], [0, 1, 2, -1]]),
               np.array([1, 0]), 4)
    assert engine.guesses_at(1, 2) == ref[2, 1:].argmax(-1).tolist()
    assert engine.guesses_at(1, 2) == engine.head_logits(np.array([1]), np.array([2]))[0].argmax(-1).tolist()
    assert engine.guesses_at(1, 3) is None and engine.guesses_at(1, 1) is None
    assert engine.guesses_at(0, other_col) == ref_other[other_col, 1:].argmax(-1).tolist()


def test_a_short_window_guesses_with_one_head_more_than_it_verifies(tmp_path):
    """A greedy step of w tokens evaluates the first min(H, w) heads: a target-only round (w = 1)
    one, so the next round may draft one token; the guesses are the full heads' first ones."""
    path = save_tiny(tmp_path, "llama", seed=1)
    state = save_turbo(path, 3, 1)
    ref = reference_heads(hf_model(path), state, [5, 9, 14], 3, 1)                  # [3, H+1, V]
    engine = TorchEngine(EngineConfig(model=str(path), ctx_len=32, prefill_seq_len=8,
                                      full_batch_size=1, turbo=True))
    engine.run(np.array([[5, 9]]), np.array([[0, 1]]), np.array([0]), 2)   # a two-token window
    col = 1 if ref[0, 0].argmax() == 9 else 0
    assert engine.guesses_at(0, col) == ref[col, 1:3].argmax(-1).tolist()   # two heads of three
    engine.run(np.array([[14]]), np.array([[2]]), np.array([0]), 1)         # target-only step
    assert engine.guesses_at(0, 2) == ref[2, 1:2].argmax(-1).tolist()       # one head
    assert engine.head_logits(np.array([0]), np.array([2])).shape[1] == 3   # on request: all


def test_missing_speculator_is_named(tmp_path):
    path = save_tiny(tmp_path, "llama")
    with pytest.raises(NotATurboModel, match="not a Turbo model"):
        TorchEngine(EngineConfig(model=str(path), turbo=True))


@pytest.fixture(scope="module")
def turbo_target(tiny_pair, tmp_path_factory):
    import shutil

    path = shutil.copytree(tiny_pair[0], tmp_path_factory.mktemp("turbo") / "target")
    save_turbo(path, heads=3, layers=1, zero_heads=(0,))
    return path


@pytest.fixture(scope="module")
def turbo_service(turbo_target):
    from dataclasses import replace

    from specdec.build import build_verifier
    from specdec_rpc.convert import model_info

    cfg = replace(engine_config(turbo_target), turbo=True)
    verifier = build_verifier(cfg, (0,))
    info = model_info(verifier.engine, cfg, verifier.fingerprint, verifier.max_k, "turbo", "torch")
    server = HostedServer("verifier", verifier, info)
    yield server.address, verifier
    server.stop()


def test_turbo_is_lossless_for_several_batch_shapes(turbo_service, target_hf, monkeypatch):
    """Greedy rounds take the heads' guesses from the verify call itself (no head_logits);
    sampled rounds may accept elsewhere and ask head_logits."""
    address, verifier = turbo_service
    assert verifier.max_k == 3  # k comes from the speculator config, not from the caller
    asked = []
    head_logits = verifier.engine.head_logits
    monkeypatch.setattr(verifier.engine, "head_logits",
                        lambda *a: asked.append(1) or head_logits(*a))
    rng = np.random.default_rng(4)
    prompts = [rng.integers(2, VOCAB, size=n).tolist() for n in (3, 8, 11, 19, 6)]

    async def go(batch):
        async with SpecDecClient(address) as client:
            assert client.max_k() == 3
            return await asyncio.gather(*(client.generate(p, GenerationConfig(3, 30, True))
                                          for p in batch))

    records = asyncio.run(go(prompts[:1])) + asyncio.run(go(prompts[1:3])) + asyncio.run(go(prompts[3:]))
    for prompt, rec in zip(prompts, records):
        assert rec.tokens == greedy_reference(target_hf, prompt, 30)
        assert rec.drafted > 0
    assert sum(r.accepted for r in records) > 0  # the zero-init head repeats tokens: some accepted
    assert not asked

    async def sampled():
        async with SpecDecClient(address) as client:
            return await client.generate(prompts[0], GenerationConfig(
                3, 30, True, SamplingParams(temperature=1.5, seed=3)))

    rec = asyncio.run(sampled())
    assert len(rec.tokens) == 30 and rec.drafted > 0 and asked


@pytest.mark.slow  # a process of its own
def test_cli_refuses_a_model_without_heads(tiny_pair):
    proc = subprocess.run([sys.executable, "-m", "client.multi_projection",
                           "--pretrained-model-name-or-path", str(tiny_pair[1])],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "not a Turbo model" in proc.stderr


@pytest.mark.slow  # a process of its own
def test_proposer_service_explains_turbo():
    proc = subprocess.run([sys.executable, "-m", "proposer_service", "--method", "turbo"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "inside the verifier" in proc.stderr and "--speculative-model-type turbo" in proc.stderr


@pytest.mark.slow  # a process of its own
def test_multi_projection_cli_is_lossless(turbo_target, target_hf, tmp_path):
    out = tmp_path / "turbo.json"
    proc = subprocess.run([sys.executable, "-m", "client.multi_projection",
                           "--pretrained-model-name-or-path", str(turbo_target),
                           "--prefill-seq-len", "8", "--ctx-len", "64", "--max-new-tokens", "16",
                           "--ignore-eos-token", "--prompts", "t5 t6 t7 t8", "--json", str(out),
                           "--num-speculative-tokens", "auto", "--quiet-services"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    item = json.loads(out.read_text())["prompts"][0]
    assert item["generated_ids"] == greedy_reference(target_hf, item["prompt_ids"], 16)


def test_turbo_with_k_auto_is_lossless(turbo_service, target_hf):
    """k auto over the heads' guesses: rounds may verify fewer guesses, or none, and a round
    after a short one has fewer heads' guesses in hand (heads_for_window); greedy output stays
    the target's."""
    address, _ = turbo_service
    rng = np.random.default_rng(5)
    prompts = [rng.integers(2, VOCAB, size=n).tolist() for n in (4, 9)]

    async def go():
        async with SpecDecClient(address) as client:
            return [await client.generate(p, GenerationConfig(3, 40, True, adaptive_k=True))
                    for p in prompts]

    for prompt, rec in zip(prompts, asyncio.run(go())):
        assert rec.tokens == greedy_reference(target_hf, prompt, 40)
        assert sum(rec.k_histogram) == rec.verify_steps


@pytest.mark.parametrize("layers", [1, 2])
def test_saved_heads_load_as_qefficient_loads_them(tmp_path, layers):
    """save_turbo_heads (the training script's writer) -> QEfficient's keys and config, read back
    by load_turbo_heads to the same function (float16 on disk)."""
    from safetensors.torch import load_file

    from specdec.engine.turbo import TurboConfig, build_turbo_heads, load_turbo_heads, save_turbo_heads

    cfg = TurboConfig(num_heads=3, num_layers=layers)
    torch.manual_seed(0)
    heads = build_turbo_heads(16, cfg)
    save_turbo_heads(tmp_path, cfg, heads)
    raw = json.loads((tmp_path / "speculator_config.json").read_text())
    assert raw == {"model_type": "turbo", "turbo_num_heads": 3, "turbo_num_layers": layers,
                   "num_speculative_tokens": 3}
    keys = set(load_file(str(tmp_path / "speculator.safetensors")))
    assert keys == {f"projections.{j}.{i}.linear.{w}" for j in range(3) for i in range(layers)
                    for w in ("weight", "bias")}
    loaded_cfg, loaded = load_turbo_heads(tmp_path, 16)
    assert loaded_cfg == cfg
    x = torch.randn(5, 16)
    with torch.no_grad():
        for a, b in zip(heads, loaded):
            torch.testing.assert_close(b(x), a.half().float()(x), atol=1e-3, rtol=1e-3)
