"""Continuous batching: steps of many sessions coalesced into one engine call.

Sessions submit rows (a prefill chunk, a draft token, a verify window) from their own threads
and block until the row's logits are back. One worker thread owns the engine and loops: take
every row that is pending, run them as one call (batch_index = their slots, shorter rows padded
with -1), hand each row its logits. Sessions join and leave between any two calls.

Policy (how long a step may wait for others): never longer than the engine call already in
progress. Rows that arrive while the engine is busy go together in the next call; an idle
engine runs a lone row at once. Waiting on purpose for a fuller batch would add latency to
every step for throughput that the busy periods already provide.

Prefill chunks and decode rows (single tokens, verify windows) run in separate calls: padding
a 1-token decode row to a 32-token prefill chunk would make it pay the chunk's compute, and a
compiled QPC has separate prefill and decode specializations anyway. Phases alternate in
arrival order, so neither starves the other.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from specdec.engine import Engine
from specdec.types import StepTimings

PREFILL, DECODE = "prefill", "decode"


@dataclass
class Row:
    ids: list[int]          # [S_row]; -1 = padding the caller added (a fixed window size)
    positions: list[int]    # [S_row]; real positions first, then -1
    slot: int
    num_logits: int
    phase: str
    future: Future = field(default_factory=Future)
    submitted_ns: int = field(default_factory=time.perf_counter_ns)


def row_logit_slice(real_len: int, n: int, batch_n: int) -> slice:
    """Where a row's own logits sit in a call that kept batch_n >= n logits per row.

    The engine keeps, per row, the batch_n positions ending at its last real position (from 0
    when the row is shorter); run alone the row would get the n ending there. Real positions
    are a prefix of the row.
    """
    lower_batch = max(real_len - batch_n, 0)
    lower_alone = max(real_len - n, 0)
    start = lower_alone - lower_batch
    return slice(start, start + n)


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
    """Owns the engine. `enabled=False` runs one row per call (the benchmark's baseline)."""

    def __init__(self, engine: Engine, enabled: bool = True) -> None:
        self.engine = engine
        self.enabled = enabled
        self._pending: list[Row] = []
        self._cv = threading.Condition()
        self._closed = False
        self.calls = 0          # engine calls made
        self.rows = 0           # rows they carried (rows / calls = mean batch size)
        self._worker = threading.Thread(target=self._loop, name="engine-batcher", daemon=True)
        self._worker.start()

    def run_row(self, ids: list[int], positions: list[int], slot: int, num_logits: int,
                phase: str, timings: StepTimings) -> np.ndarray:
        """Blocks until the row has run; returns its logits [num_logits, V] float32."""
        row = Row(ids, positions, slot, num_logits, phase)
        with self._cv:
            if self._closed:
                raise RuntimeError("batcher closed")
            self._pending.append(row)
            self._cv.notify()
        logits, queue_ns, forward_ns = row.future.result()
        timings.queue_ns += queue_ns
        timings.forward_ns += forward_ns
        return logits

    def run_rows(self, rows: list[tuple[list[int], list[int], int]], phase: str,
                 timings: StepTimings) -> list[np.ndarray]:
        """Several one-logit rows (ids, positions, slot) submitted together, so they run in one
        engine call (with whatever else is pending); blocks until all have run: [V] each."""
        batch = [Row(ids, positions, slot, 1, phase) for ids, positions, slot in rows]
        with self._cv:
            if self._closed:
                raise RuntimeError("batcher closed")
            self._pending.extend(batch)
            self._cv.notify()
        out = []
        for row in batch:
            logits, queue_ns, forward_ns = row.future.result()
            timings.queue_ns += queue_ns
            timings.forward_ns = max(timings.forward_ns, forward_ns)
            out.append(logits[-1])
        return out

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._worker.join(10)

    def _take(self) -> list[Row] | None:
        with self._cv:
            while not self._pending and not self._closed:
                self._cv.wait()
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
        while (batch := self._take()) is not None:
            start = time.perf_counter_ns()
            try:
                ids, pos, slots, n = pad_rows(batch)
                logits = self.engine.run(ids, pos, slots, n)           # [B, n, V]
            except BaseException as exc:  # a bug: fail these rows, keep serving others
                for r in batch:
                    r.future.set_exception(exc)
                continue
            forward = time.perf_counter_ns() - start
            self.calls += 1
            self.rows += len(batch)
            for b, r in enumerate(batch):
                real = sum(p >= 0 for p in r.positions)
                out = logits[b, row_logit_slice(real, r.num_logits, n)]
                r.future.set_result((out, start - r.submitted_ns, forward))
