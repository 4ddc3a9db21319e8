"""specdec.v1.Proposer: protobuf in, domain calls, protobuf out."""

from __future__ import annotations

from typing import Any, AsyncIterator

import grpc

from specdec.proposers.base import Proposer
from specdec_rpc.convert import proposal_to_pb, sampling_from_pb
from specdec_rpc.sessions import SessionRunner
from specdec_rpc.v1 import specdec_pb2 as pb
from specdec_rpc.v1 import specdec_pb2_grpc as pb_grpc


class ProposerServicer(pb_grpc.ProposerServicer):
    def __init__(self, proposer: Proposer, info: pb.ModelInfo, runner: SessionRunner) -> None:
        self.proposer = proposer
        self.info = info
        self.runner = runner

    async def Info(self, request: pb.InfoRequest, context: grpc.aio.ServicerContext) -> pb.ModelInfo:
        return self.info

    def _step(self, session: Any, req: pb.ProposeRequest) -> pb.ProposeReply:
        return proposal_to_pb(self.proposer.propose(session, req.start, list(req.tokens), req.k,
                                                    sampling_from_pb(req.sampling), req.top_m))

    async def Session(self, requests: AsyncIterator[pb.ProposeRequest],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ProposeReply]:
        # An async generator itself, so grpc.aio serves it as a streaming handler.
        async for reply in self.runner.run(requests, context, self.proposer.open_session,
                                           self.proposer.close_session, self._step):
            yield reply
