"""specdec.v1.Verifier: protobuf in, domain calls, protobuf out."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import grpc

from specdec.errors import InvalidRequest
from specdec.stopping import StopParams
from specdec.verifier import TargetVerifier
from specdec_rpc.convert import outcome_to_pb
from specdec_rpc.status import abort_with
from specdec_rpc.v1 import specdec_pb2 as pb
from specdec_rpc.v1 import specdec_pb2_grpc as pb_grpc


class VerifierServicer(pb_grpc.VerifierServicer):
    def __init__(self, verifier: TargetVerifier, info: pb.ModelInfo) -> None:
        self.verifier = verifier
        self.info = info

    async def Info(self, request: pb.InfoRequest, context: grpc.aio.ServicerContext) -> pb.ModelInfo:
        return self.info

    async def Session(self, requests: AsyncIterator[pb.VerifierRequest],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[pb.VerifierReply]:
        try:
            session = self.verifier.open_session()
        except Exception as exc:
            await abort_with(context, exc)
        # The slot is held exactly as long as the stream: released on end, error or cancel.
        try:
            async for req in requests:
                kind = req.WhichOneof("kind")
                if kind == "prefill":
                    p = req.prefill
                    out = await asyncio.to_thread(
                        self.verifier.prefill, session, p.start, list(p.tokens),
                        StopParams(p.max_new_tokens, p.ignore_eos), p.draft_tokenizer_fingerprint)
                elif kind == "verify":
                    out = await asyncio.to_thread(self.verifier.verify, session,
                                                  list(req.verify.draft_tokens))
                else:
                    raise InvalidRequest("empty VerifierRequest: set prefill or verify")
                yield outcome_to_pb(out)
        except Exception as exc:
            await abort_with(context, exc)
        finally:
            self.verifier.close_session(session)
