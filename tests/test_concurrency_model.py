"""One concurrency model: sessions are coroutines on one event loop, every engine call runs on
its engine's one thread (never on the loop), and sessions add no threads; batching on or off,
concurrent generations stay the target's greedy output."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from specdec.build import build_draft_proposer, build_verifier
from specdec.generation import GenerationConfig, generate
from specdec.inprocess import InProcessProposerLink, InProcessVerifierLink
from tests.conftest import MAX_K, engine_config
from tests.tiny_models import VOCAB, greedy_reference


def spy_threads(engine) -> set[threading.Thread]:
    """Record the thread each engine call runs on (the real engine still runs)."""
    seen: set[threading.Thread] = set()
    run = engine.run

    def recorded(*args):
        seen.add(threading.current_thread())
        return run(*args)
    engine.run = recorded
    return seen


@pytest.mark.parametrize("batching", [True, False])
def test_engine_calls_stay_on_the_engine_thread_and_sessions_add_no_threads(tiny_pair, target_hf,
                                                                           batching):
    verifier = build_verifier(engine_config(tiny_pair[0], slots=4), tuple(range(MAX_K + 1)),
                              batching=batching)
    proposer = build_draft_proposer(engine_config(tiny_pair[1], slots=4), MAX_K, batching=batching,
                                    pre_draft_branches=1)
    v_threads, p_threads = spy_threads(verifier.engine), spy_threads(proposer.engine)
    rng = np.random.default_rng(5)
    prompts = [rng.integers(2, VOCAB, size=n).tolist() for n in (5, 11, 3, 8)]
    config = GenerationConfig(3, 16, ignore_eos=True)
    most_threads = [0]

    async def one(prompt: list[int]):
        v, p = InProcessVerifierLink(verifier), InProcessProposerLink(proposer)
        try:
            return await generate(prompt, v, p, config, verifier.engine.ctx_len, proposer.fingerprint)
        finally:
            await v.close()
            await p.close()

    async def watch(done: asyncio.Event) -> None:
        while not done.is_set():
            most_threads[0] = max(most_threads[0], threading.active_count())
            await asyncio.sleep(0.001)

    async def go():
        done = asyncio.Event()
        watcher = asyncio.ensure_future(watch(done))
        try:
            return await asyncio.gather(*(one(p) for p in prompts))
        finally:
            done.set()
            await watcher

    before = threading.active_count()
    try:
        records = asyncio.run(go())
    finally:
        verifier.batcher.close()
        proposer.batcher.close()
    for prompt, rec in zip(prompts, records):
        assert rec.tokens == greedy_reference(target_hf, prompt, 16)
    # Every engine call ran on that engine's own thread, never on the loop (the main thread).
    assert v_threads == {verifier.batcher._worker} and p_threads == {proposer.batcher._worker}
    # Four concurrent sessions (and their pre-drafts) ran without a thread of their own.
    assert most_threads[0] <= before
    assert verifier.pool.in_use == 0 and proposer.pool.in_use == 0
