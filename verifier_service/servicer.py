"""specdec.v1.Verifier: protobuf in, domain calls, protobuf out."""

from __future__ import annotations

from specdec.errors import InvalidRequest, PreconditionFailed
from specdec.stopping import StopParams
from specdec.verifier import VerifierSession
from specdec_rpc.convert import outcome_to_pb, sampling_from_pb, sparse_from_pb
from specdec_rpc.sessions import AttachedBackend
from specdec_rpc.v1 import specdec_pb2 as pb
from specdec_rpc.v1 import specdec_pb2_grpc as pb_grpc


class VerifierServicer(AttachedBackend, pb_grpc.VerifierServicer):
    """Info and Session come from AttachedBackend; the backend is a TargetVerifier."""

    def _check_first(self, req: pb.VerifierRequest) -> None:
        if _kind(req) != "prefill":  # refused before it takes a slot
            raise PreconditionFailed("verify before prefill: the first request of a session "
                                     "must be a Prefill")

    def _step(self, session: VerifierSession, req: pb.VerifierRequest) -> pb.VerifierReply:
        kind = _kind(req)
        if kind == "prefill":
            p = req.prefill
            return outcome_to_pb(self.backend.prefill(
                session, p.start, list(p.tokens), StopParams(p.max_new_tokens, p.ignore_eos),
                p.draft_tokenizer_fingerprint, sampling_from_pb(p.sampling)))
        v = req.verify
        return outcome_to_pb(self.backend.verify(session, list(v.draft_tokens),
                                                 sparse_from_pb(v.draft_probs)))


def _kind(req: pb.VerifierRequest) -> str:
    kind = req.WhichOneof("kind")
    if kind is None:
        raise InvalidRequest("empty VerifierRequest: set prefill or verify")
    return kind
