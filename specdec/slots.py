"""KV slot allocation with bounded admission: one slot per open session; when all are taken a
new session waits in a bounded queue for a bounded time, then is refused."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from specdec.errors import OutOfSlots
from specdec.flags import flag


@dataclass(frozen=True)
class Admission:
    # The library refuses at once (no queue); the services queue, as a deployment wants.
    max_waiting: int = flag(0, name="--max-queue", cli_default=16,
                            help="sessions that may wait for a free slot; more get RESOURCE_EXHAUSTED")
    wait_s: float = flag(0.0, name="--queue-timeout", cli_default=30.0,
                         help="seconds a session waits for a slot before RESOURCE_EXHAUSTED")


class SlotPool:
    def __init__(self, size: int, admission: Admission = Admission()) -> None:
        self.size = size
        self.admission = admission
        self._free = list(range(size - 1, -1, -1))  # pop() hands out slot 0 first
        self._cv = threading.Condition()
        self._waiting = 0

    def acquire(self) -> int:
        with self._cv:
            if not self._free:
                if self._waiting >= self.admission.max_waiting:
                    raise OutOfSlots(self._refusal("and the wait queue is full"))
                self._waiting += 1
                try:
                    if not self._cv.wait_for(lambda: self._free, self.admission.wait_s):
                        raise OutOfSlots(self._refusal(f"for {self.admission.wait_s:g}s"))
                finally:
                    self._waiting -= 1
            return self._free.pop()

    def _refusal(self, why: str) -> str:
        return (f"all {self.size} sessions are in use (full_batch_size = {self.size}) {why}; "
                "retry later or start the service with a larger --full-batch-size")

    def release(self, slot: int) -> None:
        with self._cv:
            if slot in self._free or not 0 <= slot < self.size:
                raise ValueError(f"slot {slot} released twice or out of range")
            self._free.append(slot)
            self._cv.notify()

    @property
    def in_use(self) -> int:
        with self._cv:
            return self.size - len(self._free)

    @property
    def waiting(self) -> int:
        with self._cv:
            return self._waiting
