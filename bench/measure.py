"""Measuring rows of a benchmark: each warmed up, then measured in turn, a median repeat kept."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

from specdec.generation import GenerationRecord
from specdec.metrics import BatchMetrics, batch_metrics

Result = tuple[list[GenerationRecord], BatchMetrics]   # a row's median repeat: records, figures


def measured(label: str, run) -> Result:
    return measured_in_turn([(label, run)], 1)[0]


def measured_in_turn(rows: list[tuple[str, Callable[..., list[GenerationRecord]]]],
                     repeats: int) -> list[Result]:
    """Each row warmed up, then measured `repeats` times in turn (a, b, ..., a, b, ...): a
    machine that speeds up or slows down during the run (a shared CPU does, by 10-20% over
    minutes) then moves every row alike, not only the one it was running; each turn starts
    further along the rows (`rotated`), so no row always runs at the same point of a turn. A
    row's figures are those of its median repeat by tokens per second; the spread is printed
    beside it."""
    for _, run in rows:
        run(warmup=True)
    runs: list[list[Result]] = [[] for _ in rows]
    for r in range(repeats):
        for i in rotated(list(range(len(rows))), r, repeats):
            records = rows[i][1](warmup=False)
            runs[i].append((records, batch_metrics(records)))
    out = []
    for (label, _), done in zip(rows, runs):
        done.sort(key=lambda r: r[1].e2e_throughput)
        records, m = done[len(done) // 2]
        spread = (f"  (of {repeats}: {done[0][1].e2e_throughput:.0f}-{done[-1][1].e2e_throughput:.0f})"
                  if repeats > 1 else "")
        print(f"{label:<32} {m.e2e_throughput:8.2f} tok/s  decode {m.decode_throughput:8.2f} tok/s  "
              f"accepted/step {m.mean_accepted_tokens:5.2f}{spread}", file=sys.stderr, flush=True)
        out.append((records, m))
    return out


T = TypeVar("T")


def rotated(items: list[T], repeat: int, repeats: int) -> list[T]:
    """The order of the items in repeat `repeat` of `repeats`: the repeats' first items spread
    evenly over the list."""
    i = repeat * len(items) // max(repeats, 1) % max(len(items), 1)
    return items[i:] + items[:i]


def throughput_without(records: list[GenerationRecord], skip: list[int]) -> float:
    """tokens/s of a row's generations but those at `skip` (the prompts a peer failed on)."""
    kept = [r for i, r in enumerate(records) if i not in skip]
    return sum(len(r.tokens) for r in kept) / sum(r.t_end - r.t_start for r in kept)
