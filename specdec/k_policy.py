"""How many drafts each round asks for: a fixed k, or k auto (specdec.adaptive_k)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from specdec.adaptive_k import AutoK, KEstimates
from specdec.generation_record import CallTime
from specdec.types import Proposal, StepOutcome


class KPolicy(Protocol):
    def next_k(self) -> int:
        """This round's k (the round loop caps it to what still fits)."""
        ...

    def observe(self, k: int, proposal: Proposal | None, step: StepOutcome, time: CallTime) -> None:
        """What the round that asked for k got: the proposal (None: no proposer call), the
        verify step, and the round's calls' time."""
        ...


@dataclass(frozen=True)
class FixedK:
    k: int

    def next_k(self) -> int:
        return self.k

    def observe(self, k: int, proposal: Proposal | None, step: StepOutcome, time: CallTime) -> None:
        pass


def k_policy(k: int, auto: bool, estimates: KEstimates | None) -> KPolicy:
    """k, or with auto each round's k in 0..k, from `estimates` (shared with the caller's other
    generations) or a fresh set."""
    return AutoK(k, estimates or KEstimates()) if auto else FixedK(k)
