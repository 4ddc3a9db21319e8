"""specdec.v1.Verifier: protobuf in, domain calls, protobuf out."""

from __future__ import annotations

from specdec.errors import InvalidRequest
from specdec.stopping import StopParams
from specdec.verifier import VerifierSession
from specdec_rpc.convert import outcome_to_pb, sampling_from_pb, sparse_from_pb
from specdec_rpc.sessions import AttachedBackend
from specdec_rpc.v1 import specdec_pb2 as pb
from specdec_rpc.v1 import specdec_pb2_grpc as pb_grpc


class VerifierServicer(AttachedBackend, pb_grpc.VerifierServicer):
    """Info and Session come from AttachedBackend; the backend is a TargetVerifier."""

    def _step(self, session: VerifierSession, req: pb.VerifierRequest) -> pb.VerifierReply:
        kind = req.WhichOneof("kind")
        if kind == "prefill":
            p = req.prefill
            return outcome_to_pb(self.backend.prefill(
                session, p.start, list(p.tokens), StopParams(p.max_new_tokens, p.ignore_eos),
                p.draft_tokenizer_fingerprint, sampling_from_pb(p.sampling)))
        if kind == "verify":
            v = req.verify
            return outcome_to_pb(self.backend.verify(session, list(v.draft_tokens),
                                                     sparse_from_pb(v.draft_probs)))
        raise InvalidRequest("empty VerifierRequest: set prefill or verify")
