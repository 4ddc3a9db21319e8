"""specdec.v1.Proposer: protobuf in, domain calls, protobuf out."""

from __future__ import annotations

from typing import Any, AsyncIterator

import grpc

from specdec.proposers.base import Proposer
from specdec_rpc.convert import proposal_to_pb, sampling_from_pb
from specdec_rpc.sessions import SessionRunner
from specdec_rpc.status import abort_with
from specdec_rpc.v1 import specdec_pb2 as pb
from specdec_rpc.v1 import specdec_pb2_grpc as pb_grpc


class ProposerServicer(pb_grpc.ProposerServicer):
    """Registered before the model loads; `attach` hands it the loaded proposer."""

    def __init__(self, runner: SessionRunner) -> None:
        self.runner = runner
        self.proposer: Proposer | None = None
        self.info: pb.ModelInfo | None = None

    def attach(self, proposer: Proposer, info: pb.ModelInfo) -> None:
        self.proposer, self.info = proposer, info

    async def Info(self, request: pb.InfoRequest, context: grpc.aio.ServicerContext) -> pb.ModelInfo:
        try:
            self.runner.check_ready()
        except Exception as exc:
            await abort_with(context, exc)
        return self.info

    def _step(self, session: Any, req: pb.ProposeRequest) -> pb.ProposeReply:
        return proposal_to_pb(self.proposer.propose(session, req.start, list(req.tokens), req.k,
                                                    sampling_from_pb(req.sampling), req.top_m))

    async def Session(self, requests: AsyncIterator[pb.ProposeRequest],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ProposeReply]:
        # An async generator itself, so grpc.aio serves it as a streaming handler.
        async for reply in self.runner.run(requests, context, lambda: self.proposer.open_session(),
                                           lambda s: self.proposer.close_session(s), self._step):
            yield reply
