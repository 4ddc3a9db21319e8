"""Links to the services over one bidirectional gRPC stream each (one stream = one session)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import grpc

from specdec.recovery import Busy, LinkLost
from specdec.sampling import SamplingParams, Sparse
from specdec.stopping import StopParams
from specdec.types import Proposal, StepOutcome
from specdec_rpc.convert import outcome_from_pb, proposal_from_pb, sampling_to_pb, sparse_to_pb
from specdec_rpc.v1 import specdec_pb2 as pb

# The service went away or could not answer in time; a new session may work (see recovery.py).
# Decided by status code only: every other code is the service's answer (a refusal such as
# RESOURCE_EXHAUSTED, UNAUTHENTICATED or INVALID_ARGUMENT, or a bug) and is final.
LOST_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
              grpc.StatusCode.CANCELLED)
# The service is full: final for the verifier, a reason to go on without the proposer for now.
BUSY_CODES = (grpc.StatusCode.RESOURCE_EXHAUSTED,)
CLOSE_WAIT_S = 1.0  # after a half-close, how long the service may take to end the stream


class ServiceError(RuntimeError):
    """A service answered a step with a non-OK status."""

    def __init__(self, service: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{service}: {code.name}: {details}")
        self.service, self.code, self.details = service, code, details


class ServiceLost(ServiceError, LinkLost):
    """The session's service is gone for now (see LOST_CODES)."""


class ServiceBusy(ServiceError, Busy):
    """The service refused the session: its admission pool is full (see BUSY_CODES)."""


def service_error(service: str, code: grpc.StatusCode, details: str) -> ServiceError:
    cls = ServiceLost if code in LOST_CODES else ServiceBusy if code in BUSY_CODES else ServiceError
    return cls(service, code, details)


# A probe of the service's answer to this client, for when a stream's own status is lost:
# () -> (code, details) of a unary call such as Info; OK when the service would accept us.
StatusProbe = Callable[[], Awaitable[tuple[grpc.StatusCode, str]]]


class _WriteFailed:
    """Marks a request that could not be sent: the stream had already ended."""


class _StreamLink:
    service = ""

    def __init__(self, call: grpc.aio.StreamStreamCall, step_timeout_s: float = 60.0,
                 probe: StatusProbe | None = None) -> None:
        self.call = call
        self.step_timeout_s = step_timeout_s  # deadline of every step
        self.probe = probe

    async def _exchange(self, request):
        try:
            await self.call.write(request)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            return _WriteFailed
        return await self.call.read()

    async def _step(self, request):
        try:
            async with asyncio.timeout(self.step_timeout_s):  # in this task: no task per step
                reply = await self._exchange(request)
        except TimeoutError:
            self.call.cancel()
            raise ServiceLost(self.service, grpc.StatusCode.DEADLINE_EXCEEDED,
                              f"no reply within {self.step_timeout_s:g}s") from None
        except grpc.aio.AioRpcError as exc:  # the read: the service's own status
            raise service_error(self.service, exc.code(), exc.details() or "") from None
        if reply is _WriteFailed:
            code, details = await self._status_after_failed_write()
            raise service_error(self.service, code, details)
        if reply is grpc.aio.EOF:
            code, details = await self.call.code(), await self.call.details()
            raise service_error(self.service, code, details or "stream closed")
        return reply

    async def _status_after_failed_write(self) -> tuple[grpc.StatusCode, str]:
        """Why the stream ended before our request could be sent. When the service's status
        reached grpc before the write did, grpc reports it; when it arrived while the write was
        under way, grpc replaces it with a local INTERNAL for the write, and it is lost. Then a
        probe (Info on the same channel, same credentials) gets the service's answer by code:
        a refusal (UNAUTHENTICATED, ...) is final, UNAVAILABLE is lost, and OK means only the
        session ended (drain, restart, idle close), so a new session may work."""
        code, details = await self.call.code(), await self.call.details()
        if code != grpc.StatusCode.INTERNAL or self.probe is None:
            return code, details or "stream closed"
        code, details = await self.probe()
        if code == grpc.StatusCode.OK:
            return grpc.StatusCode.UNAVAILABLE, "the service ended the session before the step was sent"
        return code, details

    async def close(self) -> None:
        """End the session: half-close and give the service a moment to end the stream itself
        (OK; it frees the slot then), and cancel after that bound or at once when the stream
        already ended. Cancelling right after the half-close raced it: the service then saw a
        cancelled stream, not a completed one."""
        try:
            await self.call.done_writing()
            await asyncio.wait_for(self.call.code(), CLOSE_WAIT_S)
        except (TimeoutError, grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
            pass  # the stream already ended (error, cancel), or the service is slow to end it
        self.call.cancel()


class GrpcVerifierLink(_StreamLink):
    service = "verifier"

    async def prefill(self, start: int, tokens: list[int], params: StopParams,
                      draft_fingerprint: str, sampling: SamplingParams) -> StepOutcome:
        req = pb.VerifierRequest(prefill=pb.Prefill(
            start=start, tokens=tokens, max_new_tokens=params.max_new_tokens,
            ignore_eos=params.ignore_eos, draft_tokenizer_fingerprint=draft_fingerprint,
            sampling=sampling_to_pb(sampling)))
        return outcome_from_pb(await self._step(req))

    async def verify(self, draft: list[int], draft_probs: list[Sparse] | None) -> StepOutcome:
        req = pb.VerifierRequest(verify=pb.Verify(draft_tokens=draft,
                                                  draft_probs=sparse_to_pb(draft_probs)))
        return outcome_from_pb(await self._step(req))


class GrpcProposerLink(_StreamLink):
    service = "proposer"

    async def propose(self, start: int, tokens: list[int], k: int, sampling: SamplingParams,
                      top_m: int) -> Proposal:
        return proposal_from_pb(await self._step(pb.ProposeRequest(
            start=start, tokens=tokens, k=k, sampling=sampling_to_pb(sampling), top_m=top_m)))
