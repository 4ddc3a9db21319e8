"""Continuous batching: the steps of many sessions coalesced into one engine call, run by the one
thread that owns the engine (docs/architecture.md, "Batching and concurrency").

A step waits for others no longer than the engine call in progress: waiting on purpose for a
fuller batch would add latency to every step for throughput the busy periods already give.
Prefill chunks and decode rows run in separate calls (a 1-token row padded to a chunk would pay
the chunk's compute, and a QPC compiles them apart), alternating in arrival order.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from specdec.engine import Engine
from specdec.engine.contract import CompilesInBackground, CompilesWhenIdle
from specdec.engine.specializations import row_logit_slice
from specdec.types import StepTimings

PREFILL, DECODE = "prefill", "decode"


@dataclass
class Row:
    ids: list[int]          # [S_row]; -1 = padding the caller added (a fixed window size)
    positions: list[int]    # [S_row]; real positions first, then -1
    slot: int
    num_logits: int
    phase: str
    # Resolved on its loop with a Settled; created by the submitting coroutine (tests build
    # bare rows without one).
    future: asyncio.Future | None = None
    submitted_ns: int = field(default_factory=time.perf_counter_ns)
    # A chain's step (Batcher.run_greedy): the engine thread feeds its pick at the next position
    # as a new row, batched with whatever is pending, and wakes the loop once the chain ends.
    chain: Chain | None = None


# A chain's choice of its next token: (the step's last logits [V], the position that token
# takes in the sequence) -> the token. Runs on the engine thread.
Pick = Callable[[np.ndarray, int], int]


@dataclass
class Chain:
    """A chain of `steps` steps and what it has produced so far: per step, the last
    position's logits [V] and the token picked from them (the argmax, or `pick`'s: a sampled
    pre-draft draws there), and the engine time it waited for and spent."""

    steps: int
    logits: list[np.ndarray] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    queue_ns: int = 0
    forward_ns: int = 0
    # Set from the loop to end the chain early: it settles after the step it is at, with the
    # steps it has (a pre-draft's branch that the next request has ruled out).
    stop: bool = False
    pick: Pick | None = None


@dataclass(frozen=True)
class Settled:
    """A row's result: its logits and what its engine call was."""

    # [num_logits, V] float32; a greedy chain: the [V] of each step (its callers want them
    # one by one, and stacking copies every one of them on the engine thread)
    logits: np.ndarray | list[np.ndarray]
    queue_ns: int        # submitted -> its engine call began (a chain: summed over its steps)
    forward_ns: int      # the engine call (a chain: its calls)
    batch_rows: int      # rows in that call (this row and every other batched with it)
    batch_window: int    # the call's window: the widest row's length
    tokens: list[int] | None = None   # a greedy chain: the argmax of each step [steps]

    def add_to(self, timings: StepTimings) -> None:
        timings.queue_ns += self.queue_ns
        timings.batch_rows, timings.batch_window = self.batch_rows, self.batch_window


@dataclass
class Job:
    """Other engine work (a slot copy) that must not run beside a batch or on the loop."""

    fn: Callable[..., Any]
    args: tuple
    future: asyncio.Future


class Idle:
    """What the engine thread takes when nothing is pending and its engine compiles when idle."""


IDLE = Idle()


def pad_rows(rows: list[Row]) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """rows -> (input_ids [B, S], position_ids [B, S], batch_index [B], num_logits)."""
    width = max(len(r.ids) for r in rows)
    ids = np.full((len(rows), width), -1, dtype=np.int64)
    pos = np.full((len(rows), width), -1, dtype=np.int64)
    for b, r in enumerate(rows):
        ids[b, :len(r.ids)] = r.ids
        pos[b, :len(r.positions)] = r.positions
    slots = np.array([r.slot for r in rows], dtype=np.int64)
    return ids, pos, slots, max(r.num_logits for r in rows)


class Batcher:
    """Owns the engine and its one thread. `enabled=False` runs one row per call (the
    benchmark's baseline)."""

    def __init__(self, engine: Engine, enabled: bool = True) -> None:
        self.engine = engine
        self.enabled = enabled
        self._pending: list[Row] = []
        self._jobs: list[Job] = []        # run before the next batch
        self._cv = threading.Condition()  # guards _pending/_closed: the loop and the engine thread
        self._closed = False
        self.calls = 0          # engine calls made
        self.rows = 0           # rows they carried (rows / calls = mean batch size)
        # An engine that compiles on its own thread (CUDA graphs) does so when idle.
        self._compiles_when_idle = isinstance(engine, CompilesWhenIdle)
        self._running = threading.Event()   # set once the engine thread has claimed the engine
        self._worker = threading.Thread(target=self._loop, name="engine", daemon=True)
        self._worker.start()
        self._running.wait()

    def _submit(self, rows: Sequence[Row] = (), job: Job | None = None) -> None:
        loop = asyncio.get_running_loop()
        for row in rows:
            row.future = loop.create_future()
        with self._cv:  # held only to append: the engine thread holds it only to take
            if self._closed:
                raise RuntimeError("batcher closed")
            self._pending.extend(rows)
            if job is not None:
                self._jobs.append(job)
            self._cv.notify()

    def start(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future:
        """Queue fn(*args) for the engine thread; its future, not awaited. Jobs run before any
        row, so rows submitted after it see its effect with no round trip to the loop."""
        job = Job(fn, args, asyncio.get_running_loop().create_future())
        self._submit(job=job)
        return job.future

    async def run_row(self, ids: list[int], positions: list[int], slot: int, num_logits: int,
                      phase: str, timings: StepTimings) -> np.ndarray:
        """The row's logits [num_logits, V] float32, once the engine thread has run it."""
        row = Row(ids, positions, slot, num_logits, phase)
        self._submit([row])
        settled = await _settled(row)
        settled.add_to(timings)
        timings.forward_ns += settled.forward_ns
        assert isinstance(settled.logits, np.ndarray)   # not a chain
        return settled.logits

    async def run_greedy(self, rows: list[tuple[list[int], list[int], int]], steps: int,
                         phase: str, timings: StepTimings,
                         chains: list[Chain] | None = None) -> list[tuple[list[np.ndarray], list[int]]]:
        """`steps` greedy drafts from each row (ids, positions, slot), chained on the engine
        thread, every row's step in one engine call. Per row: the logits [V] of each step and
        the tokens picked [steps] (all but the last were fed). chains: the rows' Chain(steps),
        to stop one early (1..steps tokens) or pick otherwise (Chain.pick)."""
        chains = chains or [Chain(steps) for _ in rows]
        batch = [Row(ids, positions, slot, 1, phase, chain=chain)
                 for (ids, positions, slot), chain in zip(rows, chains)]
        self._submit(batch)
        settled = [await _settled(row) for row in batch]
        for one in settled:
            one.add_to(timings)
        timings.forward_ns += max(one.forward_ns for one in settled)   # the chains shared calls
        out = []
        for one in settled:
            assert one.tokens is not None and isinstance(one.logits, list)  # a chain's
            out.append((one.logits, one.tokens))
        return out

    def close(self) -> None:
        if isinstance(self.engine, CompilesInBackground):   # no graphs for a closing engine
            self.engine.stop_compiling()
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._worker.join(10)

    def _take(self) -> list[Row] | Job | Idle | None:
        with self._cv:
            while not self._pending and not self._jobs and not self._closed:
                if self._compiles_when_idle:
                    return IDLE
                self._cv.wait()
            if self._jobs:
                return self._jobs.pop(0)
            if not self._pending:
                return None
            phase = self._pending[0].phase  # the oldest row decides: arrival order, no starvation
            if self.enabled:
                batch = [r for r in self._pending if r.phase == phase][:self.engine.slots]
            else:
                batch = self._pending[:1]
            taken = set(map(id, batch))
            self._pending = [r for r in self._pending if id(r) not in taken]
            return batch

    def _loop(self) -> None:
        if isinstance(self.engine, CompilesWhenIdle):   # before anyone else may compile it
            self.engine.compile_on(threading.get_ident())
        self._running.set()
        while (batch := self._take()) is not None:
            if isinstance(batch, Idle):
                assert isinstance(self.engine, CompilesWhenIdle)
                # One compiled shape at a time, so rows that arrive meanwhile wait for one only.
                self._compiles_when_idle = self.engine.idle_step()
            elif isinstance(batch, Job):
                try:
                    result = batch.fn(*batch.args)
                except BaseException as exc:  # a bug: fail the caller, keep serving
                    result = exc
                _resolve_all([(batch.future, result)])
            else:
                self._run(batch)

    def _run(self, batch: list[Row]) -> None:
        """One engine call: each row's logits settle its future, but a chain's step that is not
        its last goes on as the chain's next row, ahead of every pending row."""
        start = time.perf_counter_ns()
        try:
            ids, pos, slots, n = pad_rows(batch)
            logits = self.engine.run(ids, pos, slots, n)           # [B, n, V]
        except BaseException as exc:  # a bug: fail these rows, keep serving others
            _resolve_all([(r.future, exc) for r in batch])
            return
        forward = time.perf_counter_ns() - start
        self.calls += 1
        self.rows += len(batch)
        rows, window = ids.shape
        lasts = [sum(p >= 0 for p in r.positions) for r in batch]   # real length of each row
        ended, follow = _chain_steps(batch, logits, n, lasts, start, forward, window)
        results: list[tuple[asyncio.Future | None, Settled | BaseException]] = []
        for b, r in enumerate(batch):
            if r.chain is None:
                out = logits[b, row_logit_slice(lasts[b], r.num_logits, n)]   # [num_logits, V]
                results.append((r.future, Settled(out, start - r.submitted_ns, forward, rows, window)))
            elif b in ended:
                results.append((r.future, ended[b]))
        if follow:
            with self._cv:   # the chains' next steps go first: they are the oldest work
                self._pending[:0] = follow
        _resolve_all(results)


def _chain_steps(batch: list[Row], logits: np.ndarray, n: int, lasts: list[int], start: int, forward: int,
                 window: int) -> tuple[dict[int, Settled | BaseException], list[Row]]:
    """The chained rows' steps (logits [B, n, V]; lasts: the rows' real lengths): each picks a
    token and goes on as its next row, or ends -> (ended results by batch index, next rows)."""
    ended: dict[int, Settled | BaseException] = {}
    follow: list[Row] = []
    chained = [b for b, r in enumerate(batch) if r.chain is not None]
    if not chained:
        return ended, follow
    at = [row_logit_slice(lasts[b], batch[b].num_logits, n).stop - 1 for b in chained]
    last_logits = logits[chained, at]                       # [chains, V]
    for b, step_logits, token in zip(chained, last_logits, last_logits.argmax(axis=1).tolist()):
        r, chain = batch[b], batch[b].chain
        assert chain is not None
        position = r.positions[lasts[b] - 1] + 1   # the token's
        if chain.pick is not None:
            try:
                token = chain.pick(step_logits, position)
            except BaseException as exc:  # a bug: fail this chain, keep serving
                ended[b] = exc
                continue
        chain.logits.append(step_logits)
        chain.tokens.append(token)
        chain.queue_ns += start - r.submitted_ns
        chain.forward_ns += forward
        if len(chain.tokens) < chain.steps and not chain.stop:
            follow.append(Row([token], [position], r.slot, 1, DECODE, r.future, chain=chain))
        else:
            ended[b] = Settled(chain.logits, chain.queue_ns, chain.forward_ns, len(batch), window, chain.tokens)
    return ended, follow


async def _settled(row: Row) -> Settled:
    """Await the row's result. A cancelled session leaves the row to run (its slot is freed
    only after the step ends, see specdec_rpc.sessions); its result is dropped then."""
    assert row.future is not None
    return await row.future


def _resolve_all(results: Sequence[tuple[asyncio.Future | None, object]]) -> None:
    """From the engine thread: settle futures on their loops, one wake-up per loop, not per row
    (each wake-up is a cross-thread hop; `python -m bench.overhead` measures them)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, object]]] = {}
    for future, result in results:
        assert future is not None
        by_loop.setdefault(future.get_loop(), []).append((future, result))
    for loop, settled in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits for these rows
            loop.call_soon_threadsafe(_settle, settled)


def _settle(settled: list[tuple[asyncio.Future, object]]) -> None:
    for future, result in settled:
        if future.done():  # the awaiting coroutine was cancelled
            continue
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)
