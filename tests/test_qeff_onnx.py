"""The qaic executor on QEfficient's REAL exported graphs, run by onnxruntime (--executor qaic
--qaic-session onnxruntime). The graphs in tests/fixtures/qeff/ were exported by
scripts/export_qeff_graphs.py with QEfficient's own API from the tiny checkpoints beside them
(PROVENANCE.json names the commit); this venv needs only onnx + onnxruntime, not QEfficient.

What this verifies without a card: QEfficient's graph (names, shapes, dtypes, the logits a TLM
keeps, the Turbo layout, KV retained across calls, -1 padding) behind the executor, lossless
for the draft model, prompt lookup with several compiled windows, and Turbo, batched.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from client.api import SpecDecClient
from specdec.config import EngineConfig
from specdec.engine.qaic_engine import QaicEngine, QaicOptions
from specdec.engine.qaic_onnx import OnnxQpc, OnnxQpcSession, OnnxRuntimeBackend, graph_path
from specdec.engine.qaic_specs import QpcLayout
from specdec.engine.specializations import gather_index
from specdec.engine.torch_engine import TorchEngine
from specdec.generation import GenerationConfig
from specdec.proposers.ngram import NgramProposer
from tests.conftest import CTX_LEN, PREFILL, start_proposer, start_verifier
from tests.qefficient_env import qefficient_installed
from tests.qpc_double import double_bindings
from tests.tiny_models import greedy_reference, hf_model

pytestmark = pytest.mark.slow  # services, compiling or a benchmark: `pytest -m "not slow"` skips it

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "qeff"
TARGET, DRAFT = FIXTURES / "target", FIXTURES / "draft"
ORT = QaicOptions(session="onnxruntime")
NEW = 20


@pytest.fixture(scope="module")
def reference():
    """prompt -> transformers' greedy continuation of the fixture target."""
    model = hf_model(TARGET)
    return lambda prompt: greedy_reference(model, prompt, NEW)


def prompts() -> list[list[int]]:
    rng = np.random.default_rng(20)
    vocab = json.loads((TARGET / "config.json").read_text())["vocab_size"]
    # lengths below, at and above the prefill chunk (8): -1 padded and chunked prefills
    out = [rng.integers(2, vocab, size=n).tolist() for n in (3, 8, 11)]
    unit = rng.integers(2, vocab, size=3).tolist()
    return out + [(unit * 4)[:-1]]  # a repeated pattern for prompt lookup


async def generate(verifier, proposer=None, local=None, k=3):
    async with SpecDecClient(verifier, proposer, local_proposer=local) as client:
        return await asyncio.gather(*(client.generate(p, GenerationConfig(k, NEW, True))
                                      for p in prompts()))


def assert_lossless(records, reference):
    for prompt, rec in zip(prompts(), records):
        assert rec.tokens == reference(prompt)


def decode_windows(engine) -> set[int]:
    return {s for phase, _, s in engine.session.calls if phase == "decode"}


def test_draft_model_sessions_qeff_onnx(reference):
    v, verifier = start_verifier(TARGET, window_sizes=(0, 3), executor="qaic", qaic=ORT)
    p, proposer = start_proposer(DRAFT, executor="qaic", qaic=ORT)
    try:
        records = asyncio.run(generate(v.address, p.address))
    finally:
        v.stop()
        p.stop()
    assert_lossless(records, reference)
    assert sum(r.accepted for r in records) > 0
    assert isinstance(verifier.engine.session, OnnxQpcSession)
    assert decode_windows(verifier.engine) <= {1, 4} and 4 in decode_windows(verifier.engine)
    assert decode_windows(proposer.engine) == {1}
    assert verifier.batcher.rows > verifier.batcher.calls  # sessions shared QPC runs
    assert proposer.batcher.rows > proposer.batcher.calls


def test_prompt_lookup_multi_window_sessions_qeff_onnx(reference):
    """Compiled for K in {0, 1, 3}: a draft of d tokens runs in the smallest K >= d, -1 padded."""
    v, verifier = start_verifier(TARGET, window_sizes=(0, 1, 3), executor="qaic", qaic=ORT)
    try:
        records = asyncio.run(generate(v.address, local=NgramProposer(3, 3, CTX_LEN, 8)))
    finally:
        v.stop()
    assert_lossless(records, reference)
    assert sum(r.accepted for r in records) > 0
    assert decode_windows(verifier.engine) <= {1, 2, 4} and 4 in decode_windows(verifier.engine)


def test_turbo_sessions_qeff_onnx(reference):
    v, verifier = start_verifier(TARGET, executor="qaic", qaic=ORT, turbo=True)
    try:
        records = asyncio.run(generate(v.address))
    finally:
        v.stop()
    assert_lossless(records, reference)
    assert verifier.engine.layout.decode_ks == (3,)                 # K = the heads
    assert decode_windows(verifier.engine) == {4}


def qaic_engine(path: Path, **kw) -> QaicEngine:
    cfg = EngineConfig(model=str(path), ctx_len=32, prefill_seq_len=8, full_batch_size=2, **kw)
    return QaicEngine(cfg, ORT, tlm=True, decode_ks=(0, 3))


@pytest.mark.parametrize("turbo", [False, True])
def test_graph_logits_match_torch_executor_qeff_onnx(turbo):
    """Same calls, same logits: chunked and -1 padded prefill, windows, two slots, padded rows,
    and (Turbo) the [B, N, H+1, V] layout."""
    engine = qaic_engine(TARGET, turbo=turbo)
    torch_engine = TorchEngine(EngineConfig(model=str(TARGET), ctx_len=32, prefill_seq_len=8,
                                            full_batch_size=2, turbo=turbo))
    n_win = 4 if turbo else 2
    calls = [(np.array([[5, 6, 7, 8, 9, 10]]), np.arange(6)[None], np.array([1]), 1),   # prefill
             (np.array([[11, 12, 13, 14]]), np.array([[6, 7, 8, 9]]), np.array([1]), n_win),
             (np.array([[3], [4]]), np.array([[0], [10]]), np.array([0, 1]), 1),
             (np.array([[3, 4, 5, 6], [4, 5, -1, -1]]), np.array([[1, 2, 3, 4], [11, 12, -1, -1]]),
              np.array([0, 1]), 2)]
    for ids, pos, slots, n in calls:
        got, want = engine.run(ids, pos, slots, n), torch_engine.run(ids, pos, slots, n)
        if turbo:  # the graph returns every head at every kept position; torch, on demand
            kept = np.take_along_axis(pos, gather_index(pos, n, n), 1)               # [B, n]
            heads = np.stack([torch_engine.head_logits(np.repeat(slots[b], n), kept[b])
                              for b in range(len(slots))])                            # [B, n, H, V]
            want = np.concatenate([want[:, :, None], heads], axis=2)                  # [B, n, H+1, V]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_padding_writes_nothing_qeff_onnx():
    """-1 positions write no K/V (the graph scatters them to INT32_MAX; the card drops such
    writes): neither past the prompt, nor at position 0, nor in slots absent from a call."""
    engine = qaic_engine(TARGET)
    state = engine.session.state
    engine.run(np.array([[5, 6, 7]]), np.arange(3)[None], np.array([1]), 1)  # padded to 8
    key = state["past_key.0"]
    assert np.abs(key[1, :, :3]).min() > 0 and not key[1, :, 3:].any() and not key[0].any()
    before = key[1, :, 0].copy()
    engine.run(np.array([[9]]), np.array([[3]]), np.array([1]), 1)         # slot 0 absent: -1 row
    key = state["past_key.0"]
    assert not key[0].any() and not key[1, :, 4:].any()
    np.testing.assert_array_equal(key[1, :, 0], before)


def test_session_enforces_the_compiled_qpc_qeff_onnx():
    layout = QpcLayout(True, 0, 8, 32, 2, (0, 3), 96)
    session = OnnxQpcSession(OnnxQpc(graph_path(TARGET, "target"), layout))
    ok = {"input_ids": np.zeros((2, 4), np.int64), "position_ids": np.zeros((2, 4), np.int64),
          "batch_index": np.arange(2).reshape(-1, 1), "num_logits_to_keep": np.zeros((4, 1), np.int64)}
    with pytest.raises(ValueError, match="not skipped"):
        session.run(ok)
    session.skip_buffers([n for n in session.input_names + session.output_names if n.startswith("past_")])
    with pytest.raises(ValueError, match="logits buffer"):
        session.run(ok)
    session.set_buffers({"logits": np.zeros((2, 4, 96), np.float32)})
    assert session.run(ok)["logits"].shape == (2, 4, 96)
    with pytest.raises(ValueError, match="allowed"):
        session.run({**ok, "input_ids": np.zeros((2, 3), np.int64),
                     "position_ids": np.zeros((2, 3), np.int64)})
    with pytest.raises(ValueError, match="allowed"):  # prefill is compiled for batch 1
        session.run({**ok, "input_ids": np.zeros((2, 8), np.int64),
                     "position_ids": np.zeros((2, 8), np.int64),
                     "num_logits_to_keep": np.zeros((1, 1), np.int64)})
    with pytest.raises(ValueError, match="binding is int64"):
        session.run({**ok, "batch_index": ok["batch_index"].astype(np.int32)})
    with pytest.raises(ValueError, match="retained"):
        session.run({**ok, "past_key.0": np.zeros(1)})


@pytest.mark.parametrize("role, path", [("target", TARGET), ("turbo", TARGET), ("draft", DRAFT)])
def test_double_binds_like_qefficient_graphs_qeff_onnx(role, path):
    """The hand-written double's binding names, order and dtypes are the real graph's."""
    layers = json.loads((path / "config.json").read_text())["num_hidden_layers"]
    layout = QpcLayout(role != "draft", 3 if role == "turbo" else 0, 8, 32, 2,
                       (3,) if role != "draft" else (0,), 96)
    real = OnnxQpcSession(OnnxQpc(graph_path(path, role), layout))
    inputs, outputs = double_bindings(layout, layers)
    assert real.input_dtypes == inputs
    assert real.input_names == list(inputs) and real.output_names == outputs


@pytest.mark.skipif(qefficient_installed(), reason="QEfficient would export the missing graph")
def test_missing_graph_names_the_export_script_qeff_onnx(tmp_path):
    import shutil

    shutil.copytree(DRAFT, tmp_path / "draft", ignore=shutil.ignore_patterns("onnx"))
    with pytest.raises(RuntimeError, match="export_qeff_graphs.py"):
        OnnxRuntimeBackend().compile(tmp_path / "draft", QpcLayout(False, 0, 8, 32, 2, (0,), 96), ORT)


def test_cli_executor_qaic_on_onnxruntime_qeff_onnx(tmp_path, reference):
    """The flags end to end: the client starts both services as processes with --executor qaic
    --qaic-session onnxruntime, and the output is the target's greedy output."""
    out = tmp_path / "out.json"
    prompt = " ".join(f"t{i}" for i in prompts()[1])
    proc = subprocess.run(
        [sys.executable, "-m", "client.draft_based", "--target-model-name", str(TARGET),
         "--draft-model-name", str(DRAFT), "--executor", "qaic", "--qaic-session", "onnxruntime",
         "--num-speculative-tokens", "3", "--prefill-seq-len", str(PREFILL), "--ctx-len", "64",
         "--max-new-tokens", str(NEW), "--ignore-eos-token", "--prompts", prompt, "--json", str(out),
         "--quiet-services"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    item = json.loads(out.read_text())["prompts"][0]
    assert item["prompt_ids"] == prompts()[1]
    assert item["generated_ids"] == reference(prompts()[1])


def test_fixtures_are_what_provenance_says_qeff_onnx():
    """The committed graphs and checkpoints are the files scripts/export_qeff_graphs.py wrote
    (rerun it to change them), exported by a named QEfficient commit."""
    import hashlib

    provenance = json.loads((FIXTURES / "PROVENANCE.json").read_text())
    assert len(provenance["qefficient"]["commit"]) == 40
    files = {str(f.relative_to(FIXTURES)) for f in FIXTURES.rglob("*")
             if f.is_file() and f.name != "PROVENANCE.json"}
    assert files == set(provenance["sha256"])
    for name, digest in provenance["sha256"].items():
        assert hashlib.sha256((FIXTURES / name).read_bytes()).hexdigest() == digest, name
