"""The round loop's two links, to a verifier session and to a proposer session: what they
offer (over gRPC: client.links; in-process: specdec.inprocess), and link wrappers: the one that
times their calls into the generation's record, and the base of the others."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from specdec.generation_record import GenerationRecord, Service
from specdec.sampling import SamplingParams, Sparse
from specdec.stopping import StopParams
from specdec.types import Proposal, StepOutcome


class VerifierLink(Protocol):
    async def prefill(self, start: int, tokens: list[int], params: StopParams,
                      draft_fingerprint: str, sampling: SamplingParams) -> StepOutcome: ...

    async def verify(self, draft: list[int], draft_probs: list[Sparse] | None) -> StepOutcome: ...


class ProposerLink(Protocol):
    async def propose(self, start: int, tokens: list[int], k: int, sampling: SamplingParams,
                      top_m: int) -> Proposal: ...


Reopen = Callable[[], Awaitable[Any]]  # opens a new session on a service (a fresh link)


def replacing(links: dict[str, Any], service: str, opener: Reopen) -> Reopen:
    """A Reopen that first closes the service's previous (lost) link in `links` and keeps the
    new one there, so a service that stays down costs one open link, not one per retry."""
    async def reopen() -> Any:
        old = links.pop(service, None)
        if old is not None:
            await old.close()
        links[service] = link = await opener()
        return link
    return reopen

Reply = TypeVar("Reply", Proposal, StepOutcome)


class Wrapper:
    """A link whose every step goes through `_step` (a subclass's timing, bookkeeping or error
    mapping), and whose close is the wrapped link's."""

    def __init__(self, link: Any) -> None:
        self.link = link

    async def prefill(self, *args: Any) -> StepOutcome:
        return await self._step(self.link.prefill(*args))

    async def verify(self, *args: Any) -> StepOutcome:
        return await self._step(self.link.verify(*args))

    async def propose(self, *args: Any) -> Proposal:
        return await self._step(self.link.propose(*args))

    async def close(self) -> None:
        await self.link.close()

    async def _step(self, call: Awaitable[Reply]) -> Reply:
        return await call


class Timed(Wrapper):
    """A link whose calls add their wall time here, and the time the service reported for
    them, to the record (a failed call adds nothing)."""

    def __init__(self, link: Any, record: GenerationRecord, service: Service) -> None:
        super().__init__(link)
        self.record, self.service = record, service

    async def _step(self, call: Awaitable[Reply]) -> Reply:
        t0 = time.perf_counter_ns()
        reply = await call
        self.record.call(self.service, time.perf_counter_ns() - t0, reply.timings.total_ns)
        return reply
