"""What crosses between the services and the client, as plain data: the proposers and the
verifier make it, specdec_rpc.convert puts it on the wire, and the round loop reads it."""

from __future__ import annotations

from dataclasses import dataclass, field

from specdec.sampling import Sparse
from specdec.stopping import FinishReason


@dataclass
class StepTimings:
    queue_ns: int = 0    # rows waiting for the engine (another batch was running)
    forward_ns: int = 0  # engine calls that carried this step's rows
    total_ns: int = 0    # whole step, set by the code that sees the request arrive
    # The engine call that carried this step's rows (a proposer's last): its rows, of every
    # session, and its window, the widest row's; each row pays for both. 0 = not reported.
    batch_rows: int = 0
    batch_window: int = 0


@dataclass
class Proposal:
    draft: list[int]   # d1..dk (may be shorter than asked, or empty: no guess)
    held_len: int      # tokens the session holds now: synced + drafts it fed to itself
    timings: StepTimings = field(default_factory=StepTimings)
    probs: list[Sparse] | None = None  # per draft, the q it was sampled from; None = deterministic
    pre_drafted: bool = False          # answered from a branch drafted while the last was verified


@dataclass
class StepOutcome:
    tokens: list[int]       # appended to the sequence: accepted drafts + one target token
    accepted: int           # drafts kept (before a stop cut)
    drafted: int            # drafts verified (after fitting to ctx_len / budget)
    finish: FinishReason
    sequence_len: int
    timings: StepTimings = field(default_factory=StepTimings)
    next_draft: list[int] = field(default_factory=list)  # Turbo: the heads' guesses for next round
    sessions_active: int = 0  # verify: sessions holding a slot when it ran (batch occupancy); 0 = unknown
