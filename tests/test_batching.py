"""Continuous batching: coalesced engine calls stay lossless, admission is bounded, idle
sessions are closed, and no slot leaks however sessions end."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time

import grpc
import numpy as np
import pytest

from client.api import SpecDecClient
from client.links import ServiceError
from specdec.admission import Admission
from specdec.batching import DECODE, PREFILL, Batcher, Chain, Row, pad_rows
from specdec.build import build_verifier
from specdec.config import EngineConfig
from specdec.engine.specializations import row_logit_slice
from specdec.engine.torch_engine import TorchEngine
from specdec.generation import GenerationConfig
from specdec.stopping import StopParams
from specdec.types import StepTimings
from specdec_rpc.convert import outcome_from_pb, outcome_to_pb, timings_from_pb, timings_to_pb
from specdec_rpc.v1 import specdec_pb2 as pb
from specdec_rpc.v1 import specdec_pb2_grpc as pb_grpc
from tests.conftest import engine_config, start_proposer, start_verifier
from tests.tiny_models import VOCAB, greedy_reference


def test_row_logit_slice():
    # Alone, a 3-token row keeping 1 logit gets its last position (index 2). In a call keeping
    # 4 logits the engine returned indices 0..3 for it (it is shorter than 4): take [2:3].
    assert row_logit_slice(3, 1, 4) == slice(2, 3)
    # A 6-token row keeping 2 of a call keeping 4: returned indices 2..5, wants 4..5.
    assert row_logit_slice(6, 2, 4) == slice(2, 4)
    assert row_logit_slice(5, 5, 5) == slice(0, 5)


def test_pad_rows():
    rows = [Row([5, 6, 7], [3, 4, 5], 2, 3, DECODE), Row([9], [0], 0, 1, DECODE)]
    ids, pos, slots, n = pad_rows(rows)
    assert ids.tolist() == [[5, 6, 7], [9, -1, -1]]
    assert pos.tolist() == [[3, 4, 5], [0, -1, -1]]
    assert slots.tolist() == [2, 0] and n == 3


def test_batched_rows_equal_solo_rows(tiny_pair):
    """Rows awaited together by several sessions (coroutines) get the logits they get alone;
    with batching off each runs in a call of its own, on the same engine thread."""
    cfg = EngineConfig(model=str(tiny_pair[0]), ctx_len=64, prefill_seq_len=8, full_batch_size=4)
    solo, batched = Batcher(TorchEngine(cfg), enabled=False), Batcher(TorchEngine(cfg))
    rng = np.random.default_rng(0)
    prompts = [rng.integers(2, VOCAB, size=n).tolist() for n in (3, 8, 5, 1)]

    async def rows(batcher: Batcher):
        return await asyncio.gather(*(batcher.run_row(p, list(range(len(p))), s, min(2, len(p)),
                                                PREFILL, StepTimings())
                                for s, p in enumerate(prompts)))
    expected = asyncio.run(rows(solo))
    assert solo.calls == 4 and solo.rows == 4       # off: one row per engine call
    got = asyncio.run(rows(batched))
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, atol=1e-4)
    assert batched.calls < 4 and batched.rows == 4  # at least two rows shared a call
    solo.close()
    batched.close()


def test_rows_learn_the_batch_they_ran_in_and_a_started_job_runs_first(tiny_pair):
    """Every row of an engine call reports the call's rows and padded window (what its step
    cost the engine), across the wire too; a job started before rows runs before them."""
    cfg = EngineConfig(model=str(tiny_pair[0]), ctx_len=64, prefill_seq_len=8, full_batch_size=4)
    engine = TorchEngine(cfg)
    batcher, order = Batcher(engine), []

    async def go():
        await batcher.run_row([3, 4, 5], [0, 1, 2], 0, 1, PREFILL, StepTimings())
        copied = batcher.start(lambda: order.append(("copy", batcher.calls)))
        timings = StepTimings()
        # Slot 1 drafts from slot 0's copy: the rows were submitted after the job.
        await batcher.run_greedy([([6], [3], 0), ([7, 8], [3, 4], 1)], 1, DECODE, timings)
        order.append(("rows", batcher.calls))
        await copied
        return timings
    timings = asyncio.run(go())
    assert order == [("copy", 1), ("rows", 2)]   # the job ran between the two engine calls
    assert (timings.batch_rows, timings.batch_window) == (2, 2)
    back = timings_from_pb(timings_to_pb(timings))
    assert (back.batch_rows, back.batch_window) == (2, 2)
    batcher.close()


def test_greedy_chains_equal_steps_from_the_loop_and_share_calls(tiny_pair):
    """run_greedy drafts on the engine thread what the loop would draft one step at a time
    (feed the argmax at the next position), each step of both chains in one engine call."""
    cfg = EngineConfig(model=str(tiny_pair[0]), ctx_len=64, prefill_seq_len=8, full_batch_size=2)
    stepped, chained = Batcher(TorchEngine(cfg)), Batcher(TorchEngine(cfg))
    rng = np.random.default_rng(4)
    prompts = [rng.integers(2, VOCAB, size=n).tolist() for n in (5, 3)]
    steps = 4

    async def by_steps(slot: int, prompt: list[int]):
        ids, pos, logits, tokens = prompt, list(range(len(prompt))), [], []
        for _ in range(steps):
            out = (await stepped.run_row(ids, pos, slot, 1, DECODE if len(ids) == 1 else PREFILL,
                                         StepTimings()))[-1]
            logits.append(out)
            tokens.append(int(np.argmax(out)))
            ids, pos = [tokens[-1]], [pos[-1] + 1]
        return np.stack(logits), tokens

    async def go():
        want = [await by_steps(s, p) for s, p in enumerate(prompts)]
        timings = StepTimings()
        got = await chained.run_greedy([(p, list(range(len(p))), s) for s, p in enumerate(prompts)],
                                       steps, PREFILL, timings)
        return want, got, timings
    want, got, timings = asyncio.run(go())
    for (w_logits, w_tokens), (g_logits, g_tokens) in zip(want, got):
        assert g_tokens == w_tokens
        np.testing.assert_allclose(g_logits, w_logits, atol=1e-4)
    assert (chained.calls, chained.rows) == (steps, 2 * steps)   # both chains in every call
    assert timings.forward_ns > 0 and (timings.batch_rows, timings.batch_window) == (2, 1)
    stepped.close()
    chained.close()


def test_a_stopped_chain_settles_early_with_the_steps_it_has(tiny_pair):
    """Chain.stop ends a chain after its current step; the others run on, and each step it
    has is what the unstopped chain drafts."""
    cfg = EngineConfig(model=str(tiny_pair[0]), ctx_len=64, prefill_seq_len=8, full_batch_size=3)
    batcher = Batcher(TorchEngine(cfg))
    prompt = [5, 9, 14, 3]
    rows = [(prompt, list(range(4)), s) for s in range(3)]

    async def go():
        full = await batcher.run_greedy(rows[:1], 4, PREFILL, StepTimings())
        chains = [Chain(4), Chain(4, stop=True), Chain(4)]
        return full, await batcher.run_greedy(rows, 4, PREFILL, StepTimings(), chains), chains
    full, got, chains = asyncio.run(go())
    assert [len(tokens) for _, tokens in got] == [4, 1, 4]
    assert got[0][1] == got[2][1] == full[0][1] and got[1][1] == full[0][1][:1]
    np.testing.assert_allclose(got[1][0][0], full[0][0][0], atol=1e-4)
    batcher.close()


def test_a_chain_picks_its_tokens_and_a_failing_pick_fails_its_chain_only(tiny_pair):
    """Chain.pick chooses each next token from the step's logits and the position it takes
    (a sampled pre-draft draws there); a pick that raises fails its own chain, and the engine
    thread goes on serving."""
    cfg = EngineConfig(model=str(tiny_pair[0]), ctx_len=64, prefill_seq_len=8, full_batch_size=2)
    batcher = Batcher(TorchEngine(cfg))
    prompt = [5, 9, 14, 3]
    seen: list[int] = []

    def pick(logits: np.ndarray, position: int) -> int:
        assert logits.shape == (VOCAB,)
        seen.append(position)
        return position * 7 % VOCAB

    def broken(logits: np.ndarray, position: int) -> int:
        raise ValueError("a bug in a pick")

    async def go():
        picked = await batcher.run_greedy([(prompt, list(range(4)), 0)], 3, PREFILL, StepTimings(),
                                          [Chain(3, pick=pick)])
        with pytest.raises(ValueError, match="a bug in a pick"):
            await batcher.run_greedy([(prompt, list(range(4)), 1)], 3, PREFILL, StepTimings(),
                                     [Chain(3, pick=broken)])
        after = await batcher.run_greedy([(prompt, list(range(4)), 1)], 2, PREFILL, StepTimings())
        return picked, after
    picked, after = asyncio.run(go())
    assert seen == [4, 5, 6] and picked[0][1] == [p * 7 % VOCAB for p in (4, 5, 6)]
    assert len(after[0][1]) == 2
    batcher.close()


def test_concurrent_sessions_are_lossless_and_batched(tiny_pair, target_hf):
    v_server, verifier = start_verifier(tiny_pair[0], slots=6)
    p_server, proposer = start_proposer(tiny_pair[1], slots=6)
    rng = np.random.default_rng(11)
    jobs = [(rng.integers(2, VOCAB, size=n).tolist(), k, new, delay)
            for n, k, new, delay in ((4, 3, 30, 0.0), (17, 1, 12, 0.0), (9, 0, 20, 0.05),
                                     (12, 5, 25, 0.02), (6, 2, 8, 0.1), (21, 4, 35, 0.0))]

    async def one(client, prompt, k, new, delay):
        await asyncio.sleep(delay)  # sessions start, and so end, at different times
        return await client.generate(prompt, GenerationConfig(k, new, ignore_eos=True))

    async def go():
        async with SpecDecClient(v_server.address, p_server.address) as client:
            return await asyncio.gather(*(one(client, *job) for job in jobs))

    try:
        records = asyncio.run(go())
    finally:
        v_server.stop()
        p_server.stop()
    for (prompt, k, new, _), rec in zip(jobs, records):
        assert rec.tokens == greedy_reference(target_hf, prompt, new), (len(prompt), k)
    # Steps of different sessions really shared engine calls, on both services.
    assert verifier.batcher.rows > verifier.batcher.calls
    assert proposer.batcher.rows > proposer.batcher.calls


def prefill_req(tokens):
    return pb.VerifierRequest(prefill=pb.Prefill(start=0, tokens=tokens))


async def attempt(call, request) -> grpc.StatusCode:
    """Write and read one step; return the stream's final status if it ended instead."""
    try:
        await call.write(request)
        await call.read()
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
        pass
    return await call.code()


def test_admission_queue_then_resource_exhausted(tiny_pair):
    v_server, verifier = start_verifier(tiny_pair[0], slots=1,
                                        admission=Admission(max_waiting=1, wait_s=0.5))

    async def go():
        async with grpc.aio.insecure_channel(v_server.address) as ch:
            stub = pb_grpc.VerifierStub(ch)
            holder = stub.Session()
            await holder.write(prefill_req([5, 6, 7]))
            await holder.read()
            # One waits (queue of 1) and times out; a second is refused at once: queue full.
            waiter, refused = stub.Session(), stub.Session()
            t0 = time.monotonic()
            waiting = asyncio.ensure_future(attempt(waiter, prefill_req([5])))
            while verifier.pool.waiting == 0:  # the waiter is queued before the next arrives
                await asyncio.sleep(0.01)
            assert await attempt(refused, prefill_req([5])) == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "queue is full" in await refused.details()
            assert await waiting == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "for 0.5s" in await waiter.details()
            assert time.monotonic() - t0 >= 0.45
            # A waiter gets the slot as soon as the holder leaves.
            lucky = stub.Session()
            await lucky.write(prefill_req([5, 6]))
            while verifier.pool.waiting == 0:
                await asyncio.sleep(0.01)
            holder.cancel()
            assert len((await lucky.read()).tokens) == 1
            lucky.cancel()

    try:
        asyncio.run(go())
        deadline = time.monotonic() + 5
        while verifier.pool.in_use and time.monotonic() < deadline:
            time.sleep(0.02)
        assert verifier.pool.in_use == 0
    finally:
        v_server.stop()


def test_idle_session_is_closed(tiny_pair):
    v_server, verifier = start_verifier(tiny_pair[0], slots=1, idle_timeout_s=0.3)

    async def go():
        async with grpc.aio.insecure_channel(v_server.address) as ch:
            call = pb_grpc.VerifierStub(ch).Session()
            await call.write(prefill_req([5, 6, 7]))
            await call.read()
            await asyncio.sleep(0.6)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call.read()
            return err.value

    try:
        err = asyncio.run(go())
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "idle" in err.details()
        assert verifier.pool.in_use == 0
    finally:
        v_server.stop()


def test_no_slot_leak_after_hundreds_of_sessions(tiny_pair):
    """Sessions that complete, are cancelled mid-generation, break (channel closed mid-stream)
    or fail on bad input: afterwards every slot of both services is free."""
    queue = Admission(max_waiting=64, wait_s=30)
    v_server, verifier = start_verifier(tiny_pair[0], slots=4, admission=queue)
    p_server, proposer = start_proposer(tiny_pair[1], slots=4, admission=queue)
    rnd = random.Random(5)
    outcomes = {"completed": 0, "cancelled": 0, "broken": 0, "refused": 0}

    async def complete(client):
        await client.generate([rnd.randrange(2, VOCAB) for _ in range(5)], GenerationConfig(2, 6, True))
        outcomes["completed"] += 1

    async def cancel(client):
        task = asyncio.ensure_future(client.generate([7, 8, 9], GenerationConfig(3, 40, True)))
        await asyncio.sleep(rnd.uniform(0, 0.02))
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        outcomes["cancelled"] += 1

    async def broken():
        ch = grpc.aio.insecure_channel(v_server.address)
        call = pb_grpc.VerifierStub(ch).Session()
        await call.write(prefill_req([5, 6, 7, 8]))
        if rnd.random() < 0.5:
            await call.read()
        await ch.close(grace=None)  # the connection goes away mid-session
        outcomes["broken"] += 1

    async def bad(client):
        with pytest.raises(ServiceError):
            await client.generate([VOCAB + 1], GenerationConfig(2, 6, True))
        outcomes["refused"] += 1

    async def go():
        async with SpecDecClient(v_server.address, p_server.address) as client:
            kinds = [complete, cancel, broken, bad]
            for _ in range(25):  # 25 waves of 10 concurrent sessions = 250 sessions
                wave = [rnd.choice(kinds) for _ in range(10)]
                await asyncio.gather(*(k() if k is broken else k(client) for k in wave))

    try:
        asyncio.run(go())
        deadline = time.monotonic() + 10
        while (verifier.pool.in_use or proposer.pool.in_use) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert verifier.pool.in_use == 0 and proposer.pool.in_use == 0
        assert verifier.pool.waiting == 0
        assert sum(outcomes.values()) == 250 and min(outcomes.values()) > 0, outcomes
    finally:
        v_server.stop()
        p_server.stop()


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
