"""Links to the services over one bidirectional gRPC stream each (one stream = one session)."""

from __future__ import annotations

import asyncio

import grpc

from specdec.proposers.draft_model import Proposal
from specdec.stopping import StopParams
from specdec.verifier import StepOutcome
from specdec.sampling import SamplingParams, Sparse
from specdec_rpc.convert import outcome_from_pb, proposal_from_pb, sampling_to_pb, sparse_to_pb
from specdec_rpc.v1 import specdec_pb2 as pb


class ServiceError(RuntimeError):
    """A service answered a step with a non-OK status."""

    def __init__(self, service: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{service}: {code.name}: {details}")
        self.service, self.code, self.details = service, code, details


class _StreamLink:
    service = ""

    def __init__(self, call: grpc.aio.StreamStreamCall) -> None:
        self.call = call

    async def _step(self, request):
        try:
            await self.call.write(request)
            reply = await self.call.read()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            # A write to a stream the server already ended (e.g. RESOURCE_EXHAUSTED at open)
            # fails with a generic error; the call's own status says what happened.
            reply = grpc.aio.EOF
        if reply is grpc.aio.EOF:
            code = await self.call.code()
            raise ServiceError(self.service, code, await self.call.details() or "stream closed")
        return reply

    async def close(self) -> None:
        """End the session: half-close, then cancel, so the service frees the slot at once."""
        try:
            await self.call.done_writing()
        except (grpc.aio.AioRpcError, grpc.aio.UsageError):
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
