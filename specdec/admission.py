"""Bounded admission: a pool of places (tickets 0..size-1), one per open session; when all are
taken a new session waits in a bounded queue for a bounded time, then is refused. What a ticket
holds is the host's (docs/architecture.md, glossary). The pool lives on the event loop: a
waiter awaits a future (no thread held), and a release hands the ticket straight to the oldest
waiter, so a newcomer that did not queue never takes a place freed while others wait.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

from specdec.errors import AdmissionRefused
from specdec.flags import flag


@dataclass(frozen=True)
class Admission:
    # The library refuses at once (no queue); the services queue, as a deployment wants.
    max_waiting: int = flag(0, name="--max-queue", cli_default=16,
                            help="sessions that may wait to be admitted; more get RESOURCE_EXHAUSTED")
    wait_s: float = flag(0.0, name="--queue-timeout", cli_default=30.0,
                         help="seconds a session waits to be admitted before RESOURCE_EXHAUSTED")


class AdmissionPool:
    def __init__(self, size: int, admission: Admission = Admission()) -> None:
        self.size = size
        self.admission = admission
        self._free = list(range(size - 1, -1, -1))  # pop() hands out ticket 0 first
        self._waiters: deque[asyncio.Future] = deque()  # each resolves to the ticket it is given

    async def acquire(self) -> int:
        if self._free:
            return self._free.pop()
        if len(self._waiters) >= self.admission.max_waiting:
            raise AdmissionRefused(self._refusal("and the wait queue is full"))
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            # shield: a timeout must not cancel a waiter that was handed a ticket meanwhile
            return await asyncio.wait_for(asyncio.shield(waiter), self.admission.wait_s)
        except (TimeoutError, asyncio.CancelledError) as exc:
            if waiter.done() and not waiter.cancelled():
                self.release(waiter.result())  # handed a ticket just as it gave up: pass it on
            else:
                waiter.cancel()
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise AdmissionRefused(self._refusal(f"for {self.admission.wait_s:g}s")) from None
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def _refusal(self, why: str) -> str:
        return (f"all {self.size} sessions are in use (full_batch_size = {self.size}) {why}; "
                "retry later or start the service with a larger --full-batch-size")

    def release(self, ticket: int) -> None:
        """On the loop that acquires (the service's)."""
        if ticket in self._free or not 0 <= ticket < self.size:
            raise ValueError(f"ticket {ticket} released twice or out of range")
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(ticket)
                return
        self._free.append(ticket)

    @property
    def in_use(self) -> int:
        return self.size - len(self._free)

    @property
    def waiting(self) -> int:
        return sum(not w.done() for w in list(self._waiters))
