"""The token sequence a service mirrors in one KV slot, and the sync rule of the protocol.

Invariant: the slot holds valid keys/values for positions 0..cached-1 of `tokens`. Positions
above `cached` may hold stale entries from rejected drafts; they are invisible to queries at
lower positions and get overwritten, so a rollback is only `cached = min(cached, start)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from specdec.engine import Engine
from specdec.errors import InvalidRequest, PreconditionFailed


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

    def feed(self, engine: Engine, upto: int | None = None) -> np.ndarray:
        """Run tokens[cached:upto] through the engine in chunks of prefill_seq_len.
        Returns the logits of the last fed token: [V] float32."""
        upto = len(self.tokens) if upto is None else upto
        if upto <= self.cached:
            raise PreconditionFailed("nothing to feed: the session holds no new tokens")
        logits = None
        for s in range(self.cached, upto, engine.prefill_seq_len):
            e = min(s + engine.prefill_seq_len, upto)
            ids = np.array([self.tokens[s:e]], dtype=np.int64)          # [1, S]
            pos = np.arange(s, e, dtype=np.int64)[None]                  # [1, S]
            logits = engine.run(ids, pos, np.array([self.slot], dtype=np.int64), 1)[0, -1]
        self.cached = upto
        return logits


def check_token_ids(tokens: list[int], vocab_size: int) -> None:
    bad = [t for t in tokens if not 0 <= t < vocab_size]
    if bad:
        raise InvalidRequest(f"token id {bad[0]} is out of range for vocab_size {vocab_size}")


def common_prefix_len(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
