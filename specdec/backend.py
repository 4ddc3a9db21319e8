"""What a service hosts: a verifier or a proposer, seen from the code that serves it."""

from __future__ import annotations

from typing import Any, Protocol

from specdec.admission import AdmissionPool


class Backend(Protocol):
    """Sessions admitted by a bounded pool, and an engine to free at shutdown. The steps
    themselves differ per role (TargetVerifier.prefill / verify, Proposer.propose)."""

    pool: AdmissionPool  # one ticket per open session; its in_use and waiting feed the metrics

    async def open_session(self) -> Any:
        """Waits while the pool is full (bounded, see specdec.admission.Admission)."""
        ...

    async def close_session(self, session: Any) -> None:
        """Frees the session's ticket (and KV slot) once no step of it is running."""
        ...

    def close(self) -> None:
        """Frees the engine (its thread and memory); the backend serves nothing after."""
        ...
