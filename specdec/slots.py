"""KV slot allocation: one slot per open session, freed when the session ends."""

from __future__ import annotations

import threading

from specdec.errors import OutOfSlots


class SlotPool:
    def __init__(self, size: int) -> None:
        self.size = size
        self._free = list(range(size - 1, -1, -1))  # pop() hands out slot 0 first
        self._lock = threading.Lock()

    def acquire(self) -> int:
        with self._lock:
            if not self._free:
                raise OutOfSlots(f"all {self.size} sessions are in use (full_batch_size = "
                                 f"{self.size}); retry later or start the service with a larger "
                                 "--full-batch-size")
            return self._free.pop()

    def release(self, slot: int) -> None:
        with self._lock:
            if slot in self._free or not 0 <= slot < self.size:
                raise ValueError(f"slot {slot} released twice or out of range")
            self._free.append(slot)

    @property
    def in_use(self) -> int:
        with self._lock:
            return self.size - len(self._free)
