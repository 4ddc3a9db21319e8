"""specdec.v1.Verifier: protobuf in, domain calls, protobuf out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing

import grpc

from specdec.errors import InvalidRequest, PreconditionFailed
from specdec.serving_generate import OneCallGenerator, ProposerSource, TextDelta
from specdec.stopping import StopParams
from specdec.text_codec import TextCodec
from specdec.verifier import TargetVerifier, VerifierSession
from specdec_rpc.convert import outcome_to_pb, sampling_from_pb, sparse_from_pb
from specdec_rpc.generate_convert import delta_to_pb, finished_to_pb, generate_request_from_pb
from specdec_rpc.sessions import AttachedBackend, SessionRunner
from specdec_rpc.status import abort_with
from specdec_rpc.v1 import specdec_pb2 as pb
from specdec_rpc.v1 import specdec_pb2_grpc as pb_grpc


class VerifierServicer(AttachedBackend[TargetVerifier], pb_grpc.VerifierServicer):
    """Info and Session come from AttachedBackend; the backend is a TargetVerifier."""

    text: TextCodec | None = None
    generator: OneCallGenerator | None = None

    def __init__(self, runner: SessionRunner, proposer: ProposerSource | None = None) -> None:
        """proposer: where Generate's method `draft` gets its sessions (--proposer), or None."""
        super().__init__(runner)
        self.remote = proposer

    def attach(self, backend: TargetVerifier, info: pb.ModelInfo) -> None:
        # The target's own tokenizer: its ids are the ones the sessions verify.
        engine = backend.engine
        self.text = TextCodec.load(engine.path, engine.vocab_size, engine.ctx_len)
        # Generate: prompt lookup in this process, the draft model from --proposer
        self.generator = OneCallGenerator(backend, self.text, self.remote)
        super().attach(backend, info)

    def _codec(self) -> TextCodec:
        # _unary runs this only once the service is ready, which it is after attach().
        assert self.text is not None, "Tokenize/Detokenize before the model was attached"
        return self.text

    def _check_first(self, req: pb.VerifierRequest) -> None:
        if _kind(req) != "prefill":  # refused before it takes a slot
            raise PreconditionFailed("verify before prefill: the first request of a session "
                                     "must be a Prefill")

    async def _step(self, session: VerifierSession, req: pb.VerifierRequest) -> pb.VerifierReply:
        kind = _kind(req)
        if kind == "prefill":
            p = req.prefill
            return outcome_to_pb(await self.backend.prefill(
                session, p.start, list(p.tokens), StopParams(p.max_new_tokens, p.ignore_eos),
                p.draft_tokenizer_fingerprint, sampling_from_pb(p.sampling)))
        v = req.verify
        return outcome_to_pb(await self.backend.verify(session, list(v.draft_tokens),
                                                       sparse_from_pb(v.draft_probs)))

    async def Tokenize(self, request: pb.TokenizeRequest,
                       context: grpc.aio.ServicerContext) -> pb.TokenizeReply:
        add = request.add_special_tokens if request.HasField("add_special_tokens") else True
        ids, added = await self._unary(context, lambda: self._codec().tokenize(request.text, add))
        return pb.TokenizeReply(ids=ids, added_special_tokens=added)

    async def Detokenize(self, request: pb.DetokenizeRequest,
                         context: grpc.aio.ServicerContext) -> pb.DetokenizeReply:
        text, n = await self._unary(context, lambda: self._codec().detokenize(
            list(request.ids), list(request.prefix_ids), request.skip_special_tokens))
        return pb.DetokenizeReply(text=text, num_ids=n)

    async def Generate(self, request: pb.GenerateRequest,
                       context: grpc.aio.ServicerContext) -> AsyncIterator[pb.GenerateReply]:
        try:
            self.runner.check_ready()
            assert self.generator is not None, "ready before the model was attached"
            # aclosing: a cancelled call ends the generation after its step in progress
            async with aclosing(self.generator.run(generate_request_from_pb(request))) as events:
                async for event in events:
                    if isinstance(event, TextDelta):
                        yield delta_to_pb(event)
                    else:
                        yield finished_to_pb(event.finish, event.prompt_tokens, event.record)
        except Exception as exc:
            await abort_with(context, exc)


def _kind(req: pb.VerifierRequest) -> str:
    kind = req.WhichOneof("kind")
    if kind is None:
        raise InvalidRequest("empty VerifierRequest: set prefill or verify")
    return kind
