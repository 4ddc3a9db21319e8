"""Warm-up before a service reports SERVING: one short session through every kind of step, so
the first client does not pay lazy initialisation (allocator growth, first-call dispatch, a
compiled step's first run). Coroutines, like the sessions they warm: a service runs them
with asyncio.run on its model-load thread."""

from __future__ import annotations

import statistics
import time

import numpy as np

from specdec.engine.contract import Engine
from specdec.engine.specializations import batch_buckets
from specdec.proposers.base import Proposer
from specdec.stopping import StopParams
from specdec.types import ForwardCost
from specdec.verifier import TargetVerifier

FORWARD_COST_CALLS = 5   # timed calls per verify shape (after one untimed)


async def warm_up_verifier(verifier: TargetVerifier) -> None:
    """One prefill and one verify window.

    Whatever the model answers must not matter: a model may well emit EOS after token 0, which
    would end the session before the verify, so EOS is ignored and the budget is unbounded."""
    session = await verifier.open_session()
    try:
        await verifier.prefill(session, 0, [0], StopParams(max_new_tokens=0, ignore_eos=True), "")
        await verifier.verify(session, [0] * min(verifier.max_k, verifier.engine.ctx_len - 2))
    finally:
        await verifier.close_session(session)


async def measure_forward_costs(verifier: TargetVerifier) -> list[ForwardCost]:
    """The engine call at each verify shape (rows: each batch bucket; window: k + 1 for each
    k the verifier runs), timed back to back on the engine thread before any session exists.
    The calls write keys and values into free slots, at positions a session overwrites before
    it attends to them."""
    windows = sorted({k + 1 for k in verifier.window_sizes})
    shapes = [(rows, window) for rows in batch_buckets(verifier.engine.slots) for window in windows]
    return await verifier.batcher.call(time_shapes, verifier.engine, shapes)


def time_shapes(engine: Engine, shapes: list[tuple[int, int]]) -> list[ForwardCost]:
    """Each (rows, window) call FORWARD_COST_CALLS times after one untimed: the median."""
    out = []
    for rows, window in shapes:
        start = max(0, min(engine.ctx_len // 4, engine.ctx_len - window))  # a mid-length context
        ids = np.zeros((rows, window), dtype=np.int64)                        # [rows, window]
        pos = np.tile(np.arange(start, start + window, dtype=np.int64), (rows, 1))
        slots = np.arange(rows, dtype=np.int64)                               # [rows]
        seconds = []
        for _ in range(FORWARD_COST_CALLS + 1):
            t0 = time.perf_counter()
            engine.run(ids, pos, slots, window)
            seconds.append(time.perf_counter() - t0)
        out.append(ForwardCost(rows, window, statistics.median(seconds[1:])))
    return out


async def warm_up_proposer(proposer: Proposer) -> None:
    """A sync and a short draft."""
    session = await proposer.open_session()
    try:
        await proposer.propose(session, 0, [0], min(proposer.max_k, 2))
    finally:
        await proposer.close_session(session)
