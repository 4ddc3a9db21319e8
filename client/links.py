"""Links to the services over one bidirectional gRPC stream each (one stream = one session)."""

from __future__ import annotations

import asyncio

import grpc

from specdec.proposers.base import Proposal
from specdec.recovery import LinkLost
from specdec.sampling import SamplingParams, Sparse
from specdec.stopping import StopParams
from specdec.verifier import StepOutcome
from specdec_rpc.convert import outcome_from_pb, proposal_from_pb, sampling_to_pb, sparse_to_pb
from specdec_rpc.v1 import specdec_pb2 as pb

# The service went away or could not answer in time; a new session may work (see recovery.py).
LOST_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
              grpc.StatusCode.CANCELLED)


# What grpc reports locally for a write onto a stream the server has just closed.
LOCAL_WRITE_FAILURE = "Internal error from Core"


class ServiceError(RuntimeError):
    """A service answered a step with a non-OK status."""

    def __init__(self, service: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{service}: {code.name}: {details}")
        self.service, self.code, self.details = service, code, details


class ServiceLost(ServiceError, LinkLost):
    """The session's service is gone for now (see LOST_CODES)."""


def service_error(service: str, code: grpc.StatusCode, details: str) -> ServiceError:
    return (ServiceLost if code in LOST_CODES else ServiceError)(service, code, details)


class _StreamLink:
    service = ""

    def __init__(self, call: grpc.aio.StreamStreamCall, step_timeout_s: float = 60.0) -> None:
        self.call = call
        self.step_timeout_s = step_timeout_s  # deadline of every step

    async def _exchange(self, request):
        await self.call.write(request)
        return await self.call.read()

    async def _step(self, request):
        try:
            reply = await asyncio.wait_for(self._exchange(request), self.step_timeout_s)
        except asyncio.TimeoutError:
            self.call.cancel()
            raise ServiceLost(self.service, grpc.StatusCode.DEADLINE_EXCEEDED,
                              f"no reply within {self.step_timeout_s:g}s") from None
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            # A write to a stream the server already ended (e.g. RESOURCE_EXHAUSTED at open)
            # fails with a generic error; the call's own status says what happened.
            reply = grpc.aio.EOF
        if reply is grpc.aio.EOF:
            code, details = await self.call.code(), await self.call.details()
            if code == grpc.StatusCode.INTERNAL and details == LOCAL_WRITE_FAILURE:
                # Our write raced the service closing the stream (draining, restarting): the
                # service's own status is lost, but the session is over. A new one may work.
                raise ServiceLost(self.service, grpc.StatusCode.UNAVAILABLE,
                                  "the service ended the session while a step was being sent")
            raise service_error(self.service, code, details or "stream closed")
        return reply

    async def close(self) -> None:
        """End the session: half-close, then cancel, so the service frees the slot at once."""
        try:
            await self.call.done_writing()
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
            pass  # the stream already ended (error, cancel); nothing left to close
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
