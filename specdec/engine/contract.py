"""The one interface every model (target or draft) runs behind. It mirrors a compiled
QEfficient QPC, so the torch and the Cloud AI 100 executors are interchangeable:

    run(input_ids[B,S], position_ids[B,S], batch_index[B], num_logits) -> logits[B, num_logits, V]

- The engine owns a KV cache of `slots` rows and `ctx_len` positions per layer. Row b of a call
  writes its keys/values into slot batch_index[b] at position_ids[b, s].
- position_ids == -1 marks padding: nothing is written there and its logits are meaningless.
- A query at position p attends to positions 0..p of its own slot only, so entries above the
  current position are invisible and get overwritten later: rolling back a rejected draft is
  free (the next call simply reuses the positions).
- num_logits keeps the logits of the last num_logits real positions of each row.
- A multi-projection (Turbo) target returns [B, num_logits, H+1, V]: index 0 is the base head,
  index j the head that guesses j tokens further (num_heads = H; 0 for plain models). That is
  QEfficient's layout (a QPC's one output). An executor may instead offer the optional
  capability HeadsOnDemand: run() returns the base head [B, num_logits, V] alone, and
  head_logits() evaluates the H heads only where the verifier drafts from (the last accepted
  position of each row), saving H lm_head passes per window position.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np


class Engine(Protocol):
    vocab_size: int       # logits width V
    ctx_len: int          # positions per slot
    slots: int            # KV rows (full_batch_size)
    prefill_seq_len: int  # longest S a caller sends in one prefill chunk
    device: str           # where it runs, for Info
    path: Path            # checkpoint directory (tokenizer files live there too)
    eos_token_ids: tuple[int, ...]
    num_heads: int        # Turbo heads evaluated with the base head; 0 = a plain model

    def run(
        self,
        input_ids: np.ndarray,     # [B, S] int64
        position_ids: np.ndarray,  # [B, S] int64, -1 = padding
        batch_index: np.ndarray,   # [B] int64, distinct slots
        num_logits: int,
    ) -> np.ndarray:               # [B, num_logits, V] or [B, num_logits, H+1, V] float32
        ...


@runtime_checkable
class HeadsOnDemand(Protocol):
    """Optional capability of a Turbo engine (num_heads > 0): run() keeps each row's final
    hidden states at its kept logit positions, and the heads are evaluated on request."""

    def head_logits(
        self,
        batch_index: np.ndarray,   # [R] int64 slots, each in the last run() that fed it
        positions: np.ndarray,     # [R] int64 position whose logits that run() kept
    ) -> np.ndarray:               # [R, H, V] float32: head j guesses position + 2 + j
        ...

    def guesses_at(self, slot: int, position: int) -> list[int] | None:
        """The heads' top-1 guesses [<= H] at `position` when the slot's last run() already
        evaluated them there (the executor may guess where a greedy verifier drafts from, and
        run only the first heads after a short window); None: ask head_logits. Cheap, no
        engine call."""
        ...


@runtime_checkable
class CompilesWhenIdle(Protocol):
    """Optional capability of an engine whose compiling must run on the thread that runs it
    (CUDA graphs replay on the thread that recorded them): its owner names that thread, then
    calls idle_step() there whenever it has nothing else to run."""

    def compile_on(self, thread_id: int) -> None:
        ...

    def idle_step(self) -> bool:
        """Do one piece of compiling; False when there is none to do on this thread."""
        ...


@runtime_checkable
class CompilesInBackground(Protocol):
    """Optional capability of an engine that serves before its compiled steps are all built."""

    def when_compiled(self, callback: Callable[[], None]) -> None:
        """callback() once compiling has ended (at once if it has), from any thread."""
        ...

    def stop_compiling(self) -> None:
        """Build no more graphs (the one being built finishes): its owner is closing."""
        ...
