"""specdec.v1.Proposer: protobuf in, domain calls, protobuf out."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import grpc

from specdec.proposers.base import Proposer
from specdec_rpc.convert import proposal_to_pb
from specdec_rpc.status import abort_with
from specdec_rpc.v1 import specdec_pb2 as pb
from specdec_rpc.v1 import specdec_pb2_grpc as pb_grpc


class ProposerServicer(pb_grpc.ProposerServicer):
    def __init__(self, proposer: Proposer, info: pb.ModelInfo) -> None:
        self.proposer = proposer
        self.info = info

    async def Info(self, request: pb.InfoRequest, context: grpc.aio.ServicerContext) -> pb.ModelInfo:
        return self.info

    async def Session(self, requests: AsyncIterator[pb.ProposeRequest],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ProposeReply]:
        try:
            session = self.proposer.open_session()
        except Exception as exc:
            await abort_with(context, exc)
        try:
            async for req in requests:
                out = await asyncio.to_thread(self.proposer.propose, session, req.start,
                                              list(req.tokens), req.k)
                yield proposal_to_pb(out)
        except Exception as exc:
            await abort_with(context, exc)
        finally:
            self.proposer.close_session(session)
