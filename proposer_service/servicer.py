"""specdec.v1.Proposer: protobuf in, domain calls, protobuf out."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from specdec.proposers.base import Proposer
from specdec_rpc.convert import proposal_to_pb, sampling_from_pb
from specdec_rpc.sessions import AttachedBackend
from specdec_rpc.v1 import specdec_pb2 as pb
from specdec_rpc.v1 import specdec_pb2_grpc as pb_grpc


class ProposerServicer(AttachedBackend[Proposer], pb_grpc.ProposerServicer):
    """Info and Session come from AttachedBackend; the backend is a Proposer."""

    async def _step(self, session: Any, req: pb.ProposeRequest) -> pb.ProposeReply:
        return proposal_to_pb(await self.backend.propose(
            session, req.start, list(req.tokens), req.k, sampling_from_pb(req.sampling),
            req.top_m))

    def _after_reply(self) -> Callable[[Any], Awaitable[None]] | None:
        return self.backend.after_reply
