"""specdec.v1.Verifier: protobuf in, domain calls, protobuf out."""

from __future__ import annotations

from typing import AsyncIterator

import grpc

from specdec.errors import InvalidRequest
from specdec.stopping import StopParams
from specdec.verifier import TargetVerifier, VerifierSession
from specdec_rpc.convert import outcome_to_pb, sampling_from_pb, sparse_from_pb
from specdec_rpc.sessions import SessionRunner
from specdec_rpc.status import abort_with
from specdec_rpc.v1 import specdec_pb2 as pb
from specdec_rpc.v1 import specdec_pb2_grpc as pb_grpc


class VerifierServicer(pb_grpc.VerifierServicer):
    """Registered before the model loads; `attach` hands it the loaded verifier."""

    def __init__(self, runner: SessionRunner) -> None:
        self.runner = runner
        self.verifier: TargetVerifier | None = None
        self.info: pb.ModelInfo | None = None

    def attach(self, verifier: TargetVerifier, info: pb.ModelInfo) -> None:
        self.verifier, self.info = verifier, info

    async def Info(self, request: pb.InfoRequest, context: grpc.aio.ServicerContext) -> pb.ModelInfo:
        try:
            self.runner.check_ready()
        except Exception as exc:
            await abort_with(context, exc)
        return self.info

    def _step(self, session: VerifierSession, req: pb.VerifierRequest) -> pb.VerifierReply:
        kind = req.WhichOneof("kind")
        if kind == "prefill":
            p = req.prefill
            return outcome_to_pb(self.verifier.prefill(
                session, p.start, list(p.tokens), StopParams(p.max_new_tokens, p.ignore_eos),
                p.draft_tokenizer_fingerprint, sampling_from_pb(p.sampling)))
        if kind == "verify":
            v = req.verify
            return outcome_to_pb(self.verifier.verify(session, list(v.draft_tokens),
                                                      sparse_from_pb(v.draft_probs)))
        raise InvalidRequest("empty VerifierRequest: set prefill or verify")

    async def Session(self, requests: AsyncIterator[pb.VerifierRequest],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[pb.VerifierReply]:
        # An async generator itself, so grpc.aio serves it as a streaming handler.
        async for reply in self.runner.run(requests, context, lambda: self.verifier.open_session(),
                                           lambda s: self.verifier.close_session(s), self._step):
            yield reply
