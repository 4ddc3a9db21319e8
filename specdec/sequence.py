"""The token sequence a service mirrors in one KV slot, and the sync rule of the protocol.

Invariant: the slot holds valid keys/values for positions 0..cached-1 of `tokens`. Positions
above `cached` may hold stale entries from rejected drafts; they are invisible to queries at
lower positions and get overwritten, so a rollback is only `cached = min(cached, start)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from specdec.batching import DECODE, PREFILL, Batcher, Chain, Pick
from specdec.errors import InvalidRequest, PreconditionFailed
from specdec.types import StepTimings


@dataclass
class SlotSequence:
    slot: int
    tokens: list[int] = field(default_factory=list)
    cached: int = 0  # leading tokens whose KV is in the slot

    def sync(self, start: int, new_tokens: list[int], ctx_len: int, vocab_size: int) -> None:
        """Drop positions >= start, append new_tokens (the protocol's only state change)."""
        if start > len(self.tokens):
            raise PreconditionFailed(f"sync start {start} is beyond the {len(self.tokens)} tokens "
                                     "this session holds; resend from a lower start (0 is always valid)")
        if start + len(new_tokens) > ctx_len:
            raise InvalidRequest(f"sequence of {start + len(new_tokens)} tokens exceeds ctx_len "
                                 f"{ctx_len}")
        check_token_ids(new_tokens, vocab_size)
        del self.tokens[start:]
        self.tokens.extend(new_tokens)
        self.cached = min(self.cached, start)

    async def feed(self, batcher: Batcher, timings: StepTimings) -> np.ndarray:
        """Run tokens[cached:] through the engine in prefill_seq_len chunks -> the last one's [V]."""
        s = await self._feed_head(batcher, timings)
        end = len(self.tokens)
        logits = await batcher.run_row(self.tokens[s:], list(range(s, end)), self.slot, 1,
                                       _phase(end - s), timings)   # [1, V]
        self.cached = end
        return logits[-1]

    async def feed_drafts(self, batcher: Batcher, timings: StepTimings, steps: int,
                          pick: Pick | None = None) -> tuple[list[np.ndarray], list[int]]:
        """feed, then `steps` drafts chained on the engine thread (Batcher.run_greedy), each the
        argmax or pick's; the drafts but the last are appended and cached, as a draft proposer
        holds them. -> the logits [V] each draft was picked from, and the drafts [steps]."""
        s = await self._feed_head(batcher, timings)
        end = len(self.tokens)
        [(logits, drafts)] = await batcher.run_greedy(
            [(self.tokens[s:], list(range(s, end)), self.slot)], steps, _phase(end - s), timings,
            [Chain(steps, pick=pick)])
        self.tokens += drafts[:-1]
        self.cached = len(self.tokens)
        return logits, drafts

    async def _feed_head(self, batcher: Batcher, timings: StepTimings) -> int:
        """Feed every prefill_seq_len chunk of tokens[cached:] but the last; return where the
        last one starts."""
        end = len(self.tokens)
        if end <= self.cached:
            raise PreconditionFailed("nothing to feed: the session holds no new tokens")
        chunk = batcher.engine.prefill_seq_len
        last = self.cached + (end - 1 - self.cached) // chunk * chunk
        for s in range(self.cached, last, chunk):
            await batcher.run_row(self.tokens[s:s + chunk], list(range(s, s + chunk)), self.slot,
                                  1, _phase(chunk), timings)
        return last


def _phase(tokens: int) -> str:
    """A one-token row is a decode step; longer ones are prefill chunks (batching.py)."""
    return DECODE if tokens == 1 else PREFILL


def check_token_ids(tokens: list[int], vocab_size: int) -> None:
    bad = [t for t in tokens if not 0 <= t < vocab_size]
    if bad:
        raise InvalidRequest(f"token id {bad[0]} is out of range for vocab_size {vocab_size}")


def common_prefix_len(a: list[int], b: list[int], known: int = 0) -> int:
    """Length of the common prefix; `known` leading tokens are already known to agree. Bisected
    by comparing slices (in C): a pre-draft compares hundreds of tokens on its critical path."""
    lo, hi = min(known, len(a), len(b)), min(len(a), len(b))
    while lo < hi:   # the common prefix is lo..hi tokens long
        mid = (lo + hi + 1) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo
