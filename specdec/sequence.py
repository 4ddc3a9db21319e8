"""The token sequence a service mirrors in one KV slot, and the sync rule of the protocol.

Invariant: the slot holds valid keys/values for positions 0..cached-1 of `tokens`. Positions
above `cached` may hold stale entries from rejected drafts; they are invisible to queries at
lower positions and get overwritten, so a rollback is only `cached = min(cached, start)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from specdec.batching import DECODE, PREFILL, Batcher
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
        """Run tokens[cached:] through the engine in chunks of prefill_seq_len.
        Returns the logits of the last fed token: [V] float32."""
        end = len(self.tokens)
        if end <= self.cached:
            raise PreconditionFailed("nothing to feed: the session holds no new tokens")
        chunk = batcher.engine.prefill_seq_len
        for s in range(self.cached, end, chunk):
            e = min(s + chunk, end)
            logits = await batcher.run_row(self.tokens[s:e], list(range(s, e)), self.slot, 1,
                                     DECODE if e - s == 1 else PREFILL, timings)   # [1, V]
        self.cached = end
        return logits[-1]


def check_token_ids(tokens: list[int], vocab_size: int) -> None:
    bad = [t for t in tokens if not 0 <= t < vocab_size]
    if bad:
        raise InvalidRequest(f"token id {bad[0]} is out of range for vocab_size {vocab_size}")


def common_prefix_len(a: list[int], b: list[int], known: int = 0) -> int:
    """Length of the common prefix; `known` leading tokens are already known to agree."""
    n = min(len(a), len(b))
    i = min(known, n)
    while i < n and a[i] == b[i]:
        i += 1
    return i
