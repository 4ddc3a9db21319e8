"""Fixed step shapes, as a QPC has them: which (batch, window, logits) shapes an executor compiles,
and how a call of any smaller shape is padded into one. Pure functions over numpy arrays.

A specialization is (batch B, window S, logits N). N is 1 (prefill, drafting, target-only) or S
(a verify window keeps the logits of every position). A call [b, s] with n logits runs in the
smallest specialization with B >= b, S >= s and N >= n of the same kind; extra rows are all
padding (-1 positions: they write nothing and their logits are dropped), extra columns are -1
padding after each row's real tokens. A call no specialization holds runs uncompiled.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Specialization(NamedTuple):
    batch: int    # rows
    window: int   # positions per row
    logits: int   # logits kept per row: 1 or window


def batch_buckets(slots: int) -> tuple[int, ...]:
    """1, 2, 4, ... below slots, and slots itself: a batch of b runs in the smallest >= b."""
    sizes, b = {slots}, 1
    while b < slots:
        sizes.add(b)
        b *= 2
    return tuple(sorted(sizes))


def plan(slots: int, windows: tuple[int, ...], keep_window_logits: bool) -> tuple[Specialization, ...]:
    """windows: positions per step (verify: k + 1; drafting: 1 and 2 for the bonus sync).
    keep_window_logits: a target keeps every window position's logits; a draft keeps one."""
    out = {Specialization(b, s, s if keep_window_logits else 1)
           for b in batch_buckets(slots) for s in windows}
    if keep_window_logits:  # a target's prefill-free single-token step (k = 0) keeps one logit
        out |= {Specialization(b, 1, 1) for b in batch_buckets(slots)}
    return tuple(sorted(out))


def by_size(specs: tuple[Specialization, ...]) -> tuple[Specialization, ...]:
    """Smallest (fewest positions) first: the order `fit` searches in."""
    return tuple(sorted(specs, key=lambda s: (s.batch * s.window, s.window)))


def fit(specs: tuple[Specialization, ...], batch: int, window: int,
        logits: int) -> Specialization | None:
    """The smallest specialization that holds a call, or None (run it uncompiled); specs in
    `by_size` order (sorted once, not per step)."""
    for spec in specs:
        if spec.batch >= batch and spec.window >= window and spec.logits >= logits \
                and (spec.logits == 1) == (logits == 1):
            return spec
    return None


def gather_index(position_ids: np.ndarray, num_logits: int, width: int) -> np.ndarray:
    """[B, width] column of each kept logit: the num_logits positions ending at each row's last
    real position (QEfficient's filter_hidden_states; from 0 when the row is shorter), then
    repeats of the last one up to width (dropped after the call)."""
    last = position_ids.argmax(axis=1)                                       # [B]
    idx = np.maximum(last - num_logits + 1, 0)[:, None] + np.arange(num_logits)
    fill = np.repeat(idx[:, -1:], width - num_logits, axis=1)
    return np.concatenate([idx, fill], axis=1).astype(np.int64)


def pad_call(spec: Specialization, input_ids: np.ndarray, position_ids: np.ndarray,
             batch_index: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[b, s] -> [B, S] with -1 padding; padding rows read the first row's slot (they write
    only to the scratch position and their logits are dropped)."""
    b, s = input_ids.shape
    ids = np.zeros((spec.batch, spec.window), dtype=np.int64)
    pos = np.full((spec.batch, spec.window), -1, dtype=np.int64)
    ids[:b, :s] = np.where(position_ids >= 0, input_ids, 0)
    pos[:b, :s] = position_ids
    slots = np.full(spec.batch, batch_index[0], dtype=np.int64)
    slots[:b] = batch_index
    return ids, pos, slots


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
