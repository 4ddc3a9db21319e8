"""The Cloud AI 100 executor, run against a TEST DOUBLE of QAICInferenceSession (tests/qpc_double.py)
that enforces a compiled QPC's rules and computes with the torch executor: the qaic executor
passes the same lossless tests as torch for draft-model, prompt-lookup and Turbo sessions,
batched. Nothing here touches real hardware; see docs/operations.md, "Cloud AI 100"."""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from client.api import SpecDecClient
from specdec.config import EngineConfig
from specdec.engine.qaic_engine import QaicEngine, QaicOptions
from specdec.errors import EXIT_START_ERROR
from specdec.generation import GenerationConfig
from specdec.proposers.ngram import NgramProposer
from tests.conftest import CTX_LEN, start_proposer, start_verifier
from tests.qefficient_env import qefficient_installed
from tests.qpc_double import QpcDoubleBackend
from tests.tiny_models import VOCAB, greedy_reference, save_turbo

ROOT = Path(__file__).resolve().parent.parent


def prompts() -> list[list[int]]:
    rng = np.random.default_rng(21)
    out = [rng.integers(2, VOCAB, size=n).tolist() for n in (5, 13, 9)]
    unit = rng.integers(2, VOCAB, size=4).tolist()
    return out + [(unit * 3)[:-1]]  # a repeated pattern for prompt lookup


async def run_all(verifier, proposer=None, local=None, k=3, new=24):
    async with SpecDecClient(verifier, proposer, local_proposer=local) as client:
        return await asyncio.gather(*(client.generate(p, GenerationConfig(k, new, True))
                                      for p in prompts()))


def assert_lossless(records, target_hf, new=24):
    for prompt, rec in zip(prompts(), records):
        assert rec.tokens == greedy_reference(target_hf, prompt, new)


def test_draft_model_sessions_on_qaic(tiny_pair, target_hf):
    backend = QpcDoubleBackend()
    v, verifier = start_verifier(tiny_pair[0], window_sizes=(0, 3), executor="qaic",
                                 qaic_backend=backend)
    p, proposer = start_proposer(tiny_pair[1], executor="qaic", qaic_backend=backend)
    try:
        records = asyncio.run(run_all(v.address, p.address))
    finally:
        v.stop()
        p.stop()
    assert_lossless(records, target_hf)
    target_qpc, draft_qpc = backend.sessions
    # Compiled as QEfficient would: target windows K+1 in {1, 4}; the draft decodes 1 token.
    assert {c for c in target_qpc.calls if c[0] == "decode"} <= {("decode", 4, 1), ("decode", 4, 4)}
    assert {c[2] for c in draft_qpc.calls if c[0] == "decode"} == {1}
    assert verifier.batcher.rows > verifier.batcher.calls  # sessions shared QPC runs
    assert proposer.batcher.rows > proposer.batcher.calls


def test_prompt_lookup_sessions_on_qaic(tiny_pair, target_hf):
    backend = QpcDoubleBackend()
    v, verifier = start_verifier(tiny_pair[0], window_sizes=(0, 3), executor="qaic",
                                 qaic_backend=backend)
    try:
        local = NgramProposer(3, 3, CTX_LEN, 8)
        records = asyncio.run(run_all(v.address, local=local))
    finally:
        v.stop()
    assert_lossless(records, target_hf)
    assert sum(r.accepted for r in records) > 0


def test_turbo_sessions_on_qaic(tiny_pair, target_hf, tmp_path):
    import shutil

    target = shutil.copytree(tiny_pair[0], tmp_path / "turbo")
    save_turbo(target, heads=3, layers=1, zero_heads=(0,))
    backend = QpcDoubleBackend()
    v, verifier = start_verifier(target, executor="qaic", qaic_backend=backend, turbo=True)
    try:
        records = asyncio.run(run_all(v.address, k=3))
    finally:
        v.stop()
    assert_lossless(records, target_hf)
    assert backend.compiled[0].layout.decode_ks == (3,)  # K from speculator_config.json
    assert backend.compiled[0].layout.num_heads == 3


def double_engine(path, **kw) -> tuple[QaicEngine, QpcDoubleBackend]:
    backend = QpcDoubleBackend()
    cfg = EngineConfig(model=str(path), ctx_len=32, prefill_seq_len=8, full_batch_size=2)
    return QaicEngine(cfg, QaicOptions(), tlm=True, decode_ks=(0, 3), backend=backend, **kw), backend


def test_double_enforces_the_qpc_rules(tiny_pair):
    engine, backend = double_engine(tiny_pair[0])
    session = backend.sessions[0]
    ok = {"input_ids": np.zeros((2, 4), np.int64), "position_ids": np.zeros((2, 4), np.int64),
          "batch_index": np.arange(2).reshape(-1, 1), "num_logits_to_keep": np.zeros((4, 1), np.int64)}
    with pytest.raises(ValueError, match="logits buffer"):
        session.run(ok)  # the output buffer was not sized for this shape
    session.set_buffers({"logits": np.zeros((2, 4, VOCAB), np.float32)})
    session.run(ok)
    with pytest.raises(ValueError, match="allowed"):
        session.run({**ok, "input_ids": np.zeros((2, 5), np.int64),
                     "position_ids": np.zeros((2, 5), np.int64)})
    with pytest.raises(ValueError, match="retained"):
        session.run({**ok, "past_key.0": np.zeros(1)})
    with pytest.raises(ValueError, match="int64"):
        session.run({**ok, "batch_index": ok["batch_index"].astype(np.int32)})


def test_qaic_engine_matches_torch_engine(tiny_pair):
    """Same calls, same logits: padding to specializations changes nothing."""
    from specdec.engine.torch_engine import TorchEngine

    engine, _ = double_engine(tiny_pair[0])
    torch_engine = TorchEngine(EngineConfig(model=str(tiny_pair[0]), ctx_len=32, prefill_seq_len=8,
                                            full_batch_size=2))
    calls = [(np.array([[5, 6, 7, 8, 9, 10]]), np.arange(6)[None], np.array([1]), 1),   # prefill
             (np.array([[11, 12]]), np.array([[6, 7]]), np.array([1]), 2),              # window K=3
             (np.array([[3], [4]]), np.array([[0], [8]]), np.array([0, 1]), 1)]         # K=0, 2 rows
    for ids, pos, slots, n in calls:
        np.testing.assert_allclose(engine.run(ids, pos, slots, n), torch_engine.run(ids, pos, slots, n),
                                   atol=1e-5)


@pytest.mark.slow  # a process of its own
def test_executor_qaic_without_qefficient_fails_clearly(tiny_pair):
    if importlib.util.find_spec("QEfficient") is not None:
        pytest.skip("QEfficient is installed here")
    proc = subprocess.run([sys.executable, "-m", "verifier_service", "--model", str(tiny_pair[0]),
                           "--executor", "qaic"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == EXIT_START_ERROR and "Traceback" not in proc.stderr
    assert "QEfficient" in proc.stderr and "Cloud AI 100" in proc.stderr and "--executor torch" in proc.stderr


@pytest.mark.skipif(not qefficient_installed(),
                    reason="QEfficient is not installed (docs/operations.md: Cloud AI 100 hosts, or its own venv)")
@pytest.mark.parametrize("role", ["target", "draft"])
def test_qefficient_transformed_model_matches_torch_executor(tiny_pair, role):
    """Where QEfficient is importable: its transformed PyTorch model, called as QEfficient's own
    runner calls it (continuous batching: batch_index, its QEffDynamicCache carried from call to
    call, num_logits_to_keep on a TLM), gives our torch executor's logits for a prefill, a K+1
    window and a two-slot decode. No -1 positions: in eager PyTorch QEfficient scatters them to
    index INT32_MAX, which only the card (and the onnxruntime session) drop."""
    import torch

    from specdec.engine.torch_engine import TorchEngine
    from tests.qefficient_env import import_qefficient

    qeff_pkg = import_qefficient()
    from QEfficient.transformers.cache_utils import QEffDynamicCache

    path = tiny_pair[0] if role == "target" else tiny_pair[1]
    qeff = qeff_pkg.QEFFAutoModelForCausalLM.from_pretrained(
        str(path), continuous_batching=True,
        qaic_config={"speculative_model_type": "target"} if role == "target" else None)
    cfg = qeff.model.config
    slots, ctx = 2, 32
    shape = (slots, cfg.num_key_value_heads, ctx, cfg.hidden_size // cfg.num_attention_heads)
    cache = QEffDynamicCache.from_legacy_cache(
        tuple((torch.zeros(shape), torch.zeros(shape)) for _ in range(cfg.num_hidden_layers)))
    ours = TorchEngine(EngineConfig(model=str(path), ctx_len=ctx, prefill_seq_len=8,
                                    full_batch_size=slots))
    calls = [([[5, 6, 7, 8, 9, 10]], [list(range(6))], [1], 1),      # prefill into slot 1
             ([[11, 12, 13, 14]], [[6, 7, 8, 9]], [1], 4),           # a K=3 window
             ([[3], [4]], [[0], [10]], [0, 1], 1)]                   # both slots, one token each
    for ids, pos, batch_index, n in calls:
        n = n if role == "target" else 1  # a plain model keeps its last position's logits
        inputs = dict(input_ids=torch.tensor(ids), position_ids=torch.tensor(pos),
                      batch_index=torch.tensor(batch_index).view(-1, 1), past_key_values=cache)
        if role == "target":
            inputs["num_logits_to_keep"] = torch.zeros((n, 1), dtype=torch.int64)
        with torch.no_grad():
            out = qeff.model(**inputs)
        cache = out.past_key_values
        want = ours.run(np.array(ids), np.array(pos), np.array(batch_index), n)
        np.testing.assert_allclose(out.logits.numpy(), want, atol=1e-4)
