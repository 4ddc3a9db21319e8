"""What a service hosts: a verifier or a proposer, seen from the code that serves it."""

from __future__ import annotations

from typing import Any, Protocol

from specdec.slots import SlotPool


class Backend(Protocol):
    """Sessions on a bounded pool of slots, and an engine to free at shutdown. The steps
    themselves differ per role (TargetVerifier.prefill / verify, Proposer.propose)."""

    pool: SlotPool  # one slot per open session; its in_use and waiting feed the metrics

    async def open_session(self) -> Any:
        """Waits while all slots are taken (bounded, see specdec.slots.Admission)."""
        ...

    async def close_session(self, session: Any) -> None:
        """Frees the session's slot once no step of it is running."""
        ...

    def close(self) -> None:
        """Frees the engine (its thread and memory); the backend serves nothing after."""
        ...
