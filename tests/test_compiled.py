"""The compiled step path: shape planning (pure), logits parity with transformers through the
compiled specializations, greedy speculation identical to transformers' greedy output, and the
eager fallback where the compiler is missing."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from specdec.build import build_draft_proposer, build_verifier
from specdec.config import EngineConfig
from specdec.engine.compiled import KV_BUCKET
from specdec.engine.shared_constants import ConstantPool
from specdec.engine.specializations import (
    Specialization,
    batch_buckets,
    by_size,
    fit,
    gather_index,
    pad_call,
    plan,
)
from specdec.engine.torch_engine import TorchEngine
from specdec.generation import GenerationConfig, generate
from specdec.inprocess import InProcessProposerLink, InProcessVerifierLink
from tests.test_torch_engine import ATOL, reference_logits
from tests.tiny_models import TEST_DEVICE, VOCAB, greedy_reference, hf_model, save_tiny

pytestmark = pytest.mark.slow  # services, compiling or a benchmark: `pytest -m "not slow"` skips it


def test_batch_buckets_and_plan():
    assert batch_buckets(1) == (1,)
    assert batch_buckets(4) == (1, 2, 4)
    assert batch_buckets(6) == (1, 2, 4, 6)
    target = plan(2, (1, 4), keep_window_logits=True)
    assert set(target) == {Specialization(b, s, s) for b in (1, 2) for s in (1, 4)}
    draft = plan(2, (1, 2), keep_window_logits=False)
    assert set(draft) == {Specialization(b, s, 1) for b in (1, 2) for s in (1, 2)}


def test_fit_picks_the_smallest_of_the_same_kind():
    specs = by_size(plan(4, (1, 3, 5), keep_window_logits=True))
    assert fit(specs, 1, 2, 2) == Specialization(1, 3, 3)      # a 2-token window in the 3 one
    assert fit(specs, 3, 5, 5) == Specialization(4, 5, 5)      # 3 rows in the 4-row bucket
    assert fit(specs, 1, 1, 1) == Specialization(1, 1, 1)
    assert fit(specs, 1, 3, 1) is None     # one logit of a 3-token chunk: no such kind compiled
    assert fit(specs, 1, 6, 6) is None     # wider than every window
    assert fit(specs, 5, 1, 1) is None     # more rows than slots


def test_gather_index_and_padding():
    pos = np.array([[7, 8, 9, -1], [0, 1, -1, -1]])
    np.testing.assert_array_equal(gather_index(pos, 2, 4), [[1, 2, 2, 2], [0, 1, 1, 1]])
    np.testing.assert_array_equal(gather_index(pos, 3, 3), [[0, 1, 2], [0, 1, 2]])
    ids = np.array([[5, 6, 7, -1], [3, 4, -1, -1]])
    pids, ppos, slots = pad_call(Specialization(4, 5, 5), ids, pos, np.array([2, 0]))
    assert pids.shape == ppos.shape == (4, 5)
    np.testing.assert_array_equal(ppos[:2, :4], pos)
    assert (ppos[2:] == -1).all() and (ppos[:, 4] == -1).all() and (pids >= 0).all()
    np.testing.assert_array_equal(slots, [2, 0, 2, 2])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = save_tiny(tmp_path_factory.mktemp("compiled"), "llama", num_hidden_layers=2)
    return path, hf_model(path)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One compile cache for the module: same-shaped graphs compile once (weights are inputs)."""
    return tmp_path_factory.mktemp("compile-cache")


def compiled_engine(path, cache, windows=(1, 3), keep=True, slots=2) -> TorchEngine:
    engine = TorchEngine(EngineConfig(model=str(path), device=TEST_DEVICE, ctx_len=48, prefill_seq_len=8,
                                      full_batch_size=slots, compile="on", compile_dir=cache),
                         windows, keep_window_logits=keep)
    engine.wait_compiled()
    assert engine.compiled is not None, "torch.compile failed on this machine"
    return engine


def count_compiled_calls(engine: TorchEngine, kv_lens: set | None = None) -> dict:
    """Wrap the compiled step so the test can see which shapes ran compiled: (rows, window)
    of its ids and the kept logits of its gather index name the specialization; kv_lens
    collects the KV lengths the calls attended over."""
    used: dict = {}
    step = engine.compiled.step

    def counted(ids, pos, slots, gather, kv_pos):
        spec = Specialization(*ids.shape, gather.shape[1])
        used[spec] = used.get(spec, 0) + 1
        if kv_lens is not None:
            kv_lens.add(len(kv_pos))
        return step(ids, pos, slots, gather, kv_pos)
    engine.compiled.step = counted
    return used


def test_compiled_steps_match_transformers(tiny, cache):
    path, model = tiny
    engine = compiled_engine(path, cache)
    kv_lens: set[int] = set()
    used = count_compiled_calls(engine, kv_lens)
    graphs = counters["stats"]["unique_graphs"]   # as compiled at start-up
    # On CPU the specializations share one copy of each frozen weight (shared_constants); the
    # parity below is then through the shared copies. On CUDA the weights are not frozen into
    # the graphs (freezing is CPU_FROZEN_INDUCTOR's), so there is nothing to share.
    assert (engine.compiled.shared > 0) == (TEST_DEVICE == "cpu")
    rng = np.random.default_rng(3)
    a = rng.integers(2, VOCAB, size=12).tolist()
    b = rng.integers(2, VOCAB, size=44).tolist()
    # Prefill chunks run eager (no compiled kind holds them) ...
    engine.run(np.array([a[:8]]), np.arange(8)[None], np.array([1]), 1)
    engine.run(np.array([b[:6]]), np.arange(6)[None], np.array([0]), 1)
    # ... then one batched verify window of 3 (row b padded to it) and single-token steps.
    ids = np.array([a[8:11], b[6:8] + [-1]])
    pos = np.array([[8, 9, 10], [6, 7, -1]])
    out = engine.run(ids, pos, np.array([1, 0]), 3)
    np.testing.assert_allclose(out[0], reference_logits(model, a[:11])[8:11], atol=ATOL)
    # Row b is shorter than the window: its logits start at column 0 (row_logit_slice).
    np.testing.assert_allclose(out[1, :2], reference_logits(model, b[:8])[6:8], atol=ATOL)
    # A 2-token window runs in the compiled 3 one; its rejected position is rolled back.
    out = engine.run(np.array([[a[11], 4]]), np.array([[11, 12]]), np.array([1]), 2)
    np.testing.assert_allclose(out[0], reference_logits(model, a + [4])[11:13], atol=ATOL)
    out = engine.run(np.array([[b[8]]]), np.array([[8]]), np.array([0]), 1)
    np.testing.assert_allclose(out[0], reference_logits(model, b[:9])[8:9], atol=ATOL)
    assert used == {Specialization(2, 3, 3): 1, Specialization(1, 3, 3): 1,
                    Specialization(1, 1, 1): 1}
    # On CPU the KV length is a dynamic dimension of the same graphs: past the first bucket (32
    # of ctx_len 48) the steps attend over all 48 positions, still compiled, still exact. CUDA
    # graphs replay fixed addresses, so there every step attends over the whole context.
    assert kv_lens == ({KV_BUCKET} if TEST_DEVICE == "cpu" else {48})
    want = reference_logits(model, b)
    for p in range(9, len(b)):
        out = engine.run(np.array([[b[p]]]), np.array([[p]]), np.array([0]), 1)
        np.testing.assert_allclose(out[0], want[p:p + 1], atol=ATOL)
    assert kv_lens == ({KV_BUCKET, 48} if TEST_DEVICE == "cpu" else {48})
    assert used[Specialization(1, 1, 1)] == len(b) - 8
    assert counters["stats"]["unique_graphs"] == graphs   # no graph recompiled for a length


def test_compiled_speculation_equals_greedy(tiny, cache, tmp_path_factory, monkeypatch):
    """Target and draft both compiled; the draft is another random model of the same shape, so
    most drafts are rejected and the rollback path runs compiled too. Plain inductor settings
    here: the tuned CPU build costs minutes per engine and has its parity test above."""
    import specdec.engine.compiled as compiled

    monkeypatch.setattr(compiled, "CPU_FROZEN_INDUCTOR", {})
    path, model = tiny
    # One slot: each batch bucket is a graph more per window, and batching has its own tests.
    cfg = EngineConfig(model=str(path), device=TEST_DEVICE, ctx_len=48, prefill_seq_len=8, full_batch_size=1,
                       compile="on", compile_dir=cache)
    draft_path = save_tiny(tmp_path_factory.mktemp("draft"), "llama", seed=5, num_hidden_layers=2)
    verifier = build_verifier(cfg, (0, 2))
    proposer = build_draft_proposer(replace(cfg, model=str(draft_path)), 2)
    verifier.engine.wait_compiled()
    proposer.engine.wait_compiled()
    assert verifier.engine.compiled is not None and proposer.engine.compiled is not None
    prompt = np.random.default_rng(9).integers(2, VOCAB, size=10).tolist()

    async def go():
        v, d = InProcessVerifierLink(verifier), InProcessProposerLink(proposer)
        try:
            return await generate(prompt, v, d, GenerationConfig(2, 20, ignore_eos=True), 48)
        finally:
            await v.close()
            await d.close()

    rec = asyncio.run(go())
    assert rec.tokens == greedy_reference(model, prompt, 20)


@pytest.mark.skipif(TEST_DEVICE != "cpu", reason="the C++ compiler is the CPU backend's; "
                                                 "CUDA kernels compile through Triton")
def test_missing_compiler_warns_and_runs_eager(tiny, tmp_path, caplog, monkeypatch):
    import specdec.engine.compiled as compiled

    path, model = tiny
    torch._dynamo.reset()
    # The compiling thread's settings (torch's config patches are per thread); no cache either:
    # a graph an earlier test compiled would load without the compiler.
    monkeypatch.setattr(compiled, "CPU_FROZEN_INDUCTOR", {"cpp.cxx": ("/nonexistent/c++",),
                                                          "force_disable_caches": True})
    with caplog.at_level(logging.WARNING):
        engine = TorchEngine(EngineConfig(model=str(path), device=TEST_DEVICE, ctx_len=48, full_batch_size=1,
                                          compile="on", compile_dir=tmp_path))
        engine.wait_compiled()
    assert engine.compiled is None
    assert "torch.compile is unavailable" in caplog.text
    out = engine.run(np.array([[5, 6, 7]]), np.arange(3)[None], np.array([0]), 3)
    np.testing.assert_allclose(out[0], reference_logits(model, [5, 6, 7]), atol=ATOL)


def test_compiled_turbo_is_lossless(tiny, cache, tmp_path_factory, monkeypatch):
    """A Turbo target compiled (base head only in the graph, heads evaluated at the drafting
    position afterwards): greedy output identical to transformers'."""
    import shutil

    import specdec.engine.compiled as compiled
    from tests.tiny_models import save_turbo

    monkeypatch.setattr(compiled, "CPU_FROZEN_INDUCTOR", {})
    path, model = tiny
    turbo = shutil.copytree(path, tmp_path_factory.mktemp("turbo") / "target")
    save_turbo(turbo, heads=2, layers=1, zero_heads=(0,))
    cfg = EngineConfig(model=str(turbo), device=TEST_DEVICE, ctx_len=48, prefill_seq_len=8,
                       full_batch_size=1, compile="on", compile_dir=cache, turbo=True)
    verifier = build_verifier(cfg, (0,))
    verifier.engine.wait_compiled()
    assert verifier.engine.compiled is not None and verifier.heads is not None
    used = count_compiled_calls(verifier.engine)
    prompt = np.random.default_rng(11).integers(2, VOCAB, size=10).tolist()

    async def go():
        v = InProcessVerifierLink(verifier)
        try:
            return await generate(prompt, v, None, GenerationConfig(2, 20, ignore_eos=True), 48)
        finally:
            await v.close()

    rec = asyncio.run(go())
    assert rec.tokens == greedy_reference(model, prompt, 20)
    assert rec.drafted > 0 and sum(used.values()) >= rec.verify_steps


def test_the_constant_pool_returns_an_equal_constant_it_holds():
    pool = ConstantPool()
    w = torch.arange(12.0).reshape(3, 4)
    assert pool.share(w) is w                              # the first of its kind is kept
    assert pool.share(w.clone()) is w and pool.shared == 1 and pool.shared_bytes == 48
    assert pool.share(w) is w and pool.shared == 1         # the same tensor is no copy
    other = w + 1
    assert pool.share(other) is other                      # other values: its own
    assert pool.share(w.t().contiguous()) is not w         # another layout: its own
    assert pool.share(w.double()) is not w                 # another dtype: its own
    assert pool.share(other.clone()) is other and pool.shared == 2
    assert pool.share("not a tensor") == "not a tensor"


def plain_inductor(monkeypatch) -> None:
    """Plain inductor settings: the tuned CPU build costs minutes per engine and has its own
    parity test above."""
    import specdec.engine.compiled as compiled

    monkeypatch.setattr(compiled, "CPU_FROZEN_INDUCTOR", {})


def test_an_engine_serves_eagerly_while_it_compiles_the_shapes_used_most_first(tiny, tmp_path, monkeypatch):
    plain_inductor(monkeypatch)
    path, model = tiny
    # A cache of its own: graphs another test left in the shared one load in moments, and the
    # compiler could then build a shape before the first call says which one is used.
    engine = TorchEngine(EngineConfig(model=str(path), device=TEST_DEVICE, ctx_len=48, prefill_seq_len=8,
                                      full_batch_size=1, compile="on", compile_dir=tmp_path),
                         (1, 3, 5), keep_window_logits=True)
    assert engine.compiler is not None and not engine.compiler.done.is_set()
    # Served at once, eager, while the first graph builds: a 5-token window, again and again.
    prompt = np.random.default_rng(5).integers(2, VOCAB, size=13).tolist()
    want = reference_logits(model, prompt)
    engine.run(np.array([prompt[:8]]), np.arange(8)[None], np.array([0]), 1)
    for _ in range(3):
        out = engine.run(np.array([prompt[8:13]]), np.arange(8, 13)[None], np.array([0]), 5)
        np.testing.assert_allclose(out[0], want[8:13], atol=ATOL)
    assert engine.wait_compiled(600)
    built = engine.compiler.built
    assert set(built) == set(plan(1, (1, 3, 5), True))
    # The one shape used goes first, or second where the first was picked before any call.
    assert built.index(Specialization(1, 5, 5)) <= 1, built
    used = count_compiled_calls(engine)
    out = engine.run(np.array([prompt[8:13]]), np.arange(8, 13)[None], np.array([0]), 5)
    np.testing.assert_allclose(out[0], want[8:13], atol=ATOL)
    assert used == {Specialization(1, 5, 5): 1}


def test_compile_auto_runs_eager_where_compiling_does_not_pay(tiny, cache, monkeypatch, caplog):
    import specdec.engine.compiled as compiled

    plain_inductor(monkeypatch)
    monkeypatch.setattr(compiled, "COMPILE_MIN_GAIN", 1e6)   # no graph is a million times faster
    path, model = tiny
    with caplog.at_level(logging.INFO):
        engine = TorchEngine(EngineConfig(model=str(path), device=TEST_DEVICE, ctx_len=48,
                                          full_batch_size=2, compile="auto", compile_dir=cache),
                             (1, 3), keep_window_logits=True)
        assert engine.wait_compiled(600)
    assert engine.compiled is None and len(engine.compiler.built) == 1   # gave up after one
    assert "compiling does not pay for this model" in caplog.text
    out = engine.run(np.array([[5, 6, 7]]), np.arange(3)[None], np.array([0]), 3)
    np.testing.assert_allclose(out[0], reference_logits(model, [5, 6, 7]), atol=ATOL)


def test_an_engine_that_compiles_on_its_own_thread_does_so_when_idle(tiny, cache, monkeypatch):
    """CUDA graphs must be recorded on the thread that replays them: there the Batcher's engine
    thread compiles between batches (on_engine_thread, forced here on the CPU), and nobody else
    does, not even a caller waiting for it."""
    import threading

    import specdec.engine.compiled as compiled
    from specdec.batching import Batcher
    from specdec.engine.compiled import StepCompiler

    plain_inductor(monkeypatch)
    threads: list[str] = []
    warm_up = compiled.warm_up
    monkeypatch.setattr(compiled, "warm_up", lambda *a: (threads.append(threading.current_thread().name),
                                                         warm_up(*a))[1])
    path, model = tiny
    engine = TorchEngine(EngineConfig(model=str(path), device=TEST_DEVICE, ctx_len=48, full_batch_size=1))
    engine.compiler = StepCompiler(engine, by_size(plan(1, (1, 2), False)), cache, auto=False,
                                   on_engine_thread=True)
    engine.compiled = engine.compiler.steps
    engine.compiler.start()
    batcher = Batcher(engine)
    try:
        assert engine.wait_compiled(600)
        assert threads == ["engine", "engine"]
        used = count_compiled_calls(engine)

        async def step():
            from specdec.types import StepTimings
            return await batcher.run_row([5, 6], [0, 1], 0, 1, "decode", StepTimings())

        out = asyncio.run(step())
        np.testing.assert_allclose(out, reference_logits(model, [5, 6])[1:], atol=ATOL)
        assert used == {Specialization(1, 2, 1): 1}
    finally:
        batcher.close()


def test_two_engines_of_one_shape_compute_with_their_own_weights(tiny, tmp_path_factory, monkeypatch):
    """Dynamo keeps graphs per code object, and the guards on module attributes are dropped:
    each engine compiles its own copy of the step's code, or the second engine would run the
    first one's graph, with the first one's frozen weights."""
    import specdec.engine.compiled as compiled

    monkeypatch.setattr(compiled, "CPU_FROZEN_INDUCTOR", {"freezing": True})
    path, model = tiny
    other = save_tiny(tmp_path_factory.mktemp("other"), "llama", seed=3, num_hidden_layers=2)
    engines = [TorchEngine(EngineConfig(model=str(p), device=TEST_DEVICE, ctx_len=48, full_batch_size=1,
                                        compile="on"), (1,)) for p in (path, other)]
    used = []
    for engine in engines:
        engine.wait_compiled()
        used.append(count_compiled_calls(engine))
    for engine, reference, calls in zip(engines, (model, hf_model(other)), used):
        out = engine.run(np.array([[5]]), np.array([[0]]), np.array([0]), 1)
        np.testing.assert_allclose(out[0], reference_logits(reference, [5]), atol=ATOL)
        assert calls == {Specialization(1, 1, 1): 1}


def test_a_closing_engine_builds_no_more_graphs(tiny, cache, monkeypatch):
    from specdec.batching import Batcher

    plain_inductor(monkeypatch)
    path, _ = tiny
    engine = TorchEngine(EngineConfig(model=str(path), device=TEST_DEVICE, ctx_len=48, full_batch_size=4,
                                      compile="on", compile_dir=cache), (1, 2, 3))
    Batcher(engine).close()   # as a service's backend closes, seconds into the first graph
    assert engine.wait_compiled(600)
    assert len(engine.compiler.built) <= 1 < len(engine.compiler.planned)
    assert "compiling stopped" in engine.compiler.outcome
