"""Protobuf <-> domain objects. Generated types stop here: nothing below sees them."""

from __future__ import annotations

import numpy as np

from specdec.config import EngineConfig
from specdec.engine import Engine
from specdec.sampling import SamplingParams, Sparse
from specdec.stopping import FinishReason
from specdec.types import Proposal, StepOutcome, StepTimings
from specdec_rpc.v1 import specdec_pb2 as pb


def timings_to_pb(t: StepTimings) -> pb.StepTimings:
    return pb.StepTimings(queue_ns=t.queue_ns, forward_ns=t.forward_ns, total_ns=t.total_ns,
                          batch_rows=t.batch_rows, batch_window=t.batch_window)


def timings_from_pb(t: pb.StepTimings) -> StepTimings:
    return StepTimings(t.queue_ns, t.forward_ns, t.total_ns, t.batch_rows, t.batch_window)


def outcome_to_pb(o: StepOutcome) -> pb.VerifierReply:
    return pb.VerifierReply(tokens=o.tokens, num_accepted_drafts=o.accepted, num_drafted=o.drafted,
                            finish_reason=pb.FinishReason.ValueType(int(o.finish)), timings=timings_to_pb(o.timings),
                            sequence_len=o.sequence_len, next_draft=o.next_draft,
                            sessions_active=o.sessions_active)


def outcome_from_pb(r: pb.VerifierReply) -> StepOutcome:
    return StepOutcome(list(r.tokens), r.num_accepted_drafts, r.num_drafted,
                       FinishReason(r.finish_reason), r.sequence_len, timings_from_pb(r.timings),
                       list(r.next_draft), r.sessions_active)


def proposal_to_pb(p: Proposal) -> pb.ProposeReply:
    return pb.ProposeReply(draft_tokens=p.draft, held_len=p.held_len, timings=timings_to_pb(p.timings),
                           draft_probs=sparse_to_pb(p.probs), pre_drafted=p.pre_drafted)


def proposal_from_pb(r: pb.ProposeReply) -> Proposal:
    return Proposal(list(r.draft_tokens), r.held_len, timings_from_pb(r.timings),
                    sparse_from_pb(r.draft_probs), r.pre_drafted)


def sampling_to_pb(s: SamplingParams) -> pb.SamplingParams:
    return pb.SamplingParams(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, seed=s.seed)


def sampling_from_pb(s: pb.SamplingParams) -> SamplingParams:
    # top_p 0 is proto3's unset value: read it as "off", like top_k 0.
    return SamplingParams(s.temperature, s.top_k, s.top_p or 1.0,
                          s.seed if s.HasField("seed") else None)


def sparse_to_pb(dists: list[Sparse] | None) -> list[pb.TokenDistribution]:
    return [pb.TokenDistribution(token_ids=ids.tolist(), probs=p.tolist()) for ids, p in dists or []]


def sparse_from_pb(dists) -> list[Sparse] | None:
    """An empty list on the wire means deterministic drafts: None."""
    return [(np.array(d.token_ids, dtype=np.int64), np.array(d.probs, dtype=np.float64))
            for d in dists] or None


def model_info(engine: Engine | None, config: EngineConfig, fingerprint: str, max_k: int,
               method: str, executor: str, draft_fingerprint: str = "") -> pb.ModelInfo:
    """engine None: a proposer without a model (n-gram), sized by config alone;
    draft_fingerprint: a translating proposer's own tokenizer."""
    if engine is None:
        return pb.ModelInfo(model_id=method, ctx_len=config.ctx_len, max_k=max_k,
                            full_batch_size=config.full_batch_size, method=method,
                            executor=executor, device="cpu")
    return pb.ModelInfo(model_id=config.model, vocab_size=engine.vocab_size,
                        tokenizer_fingerprint=fingerprint, ctx_len=engine.ctx_len, max_k=max_k,
                        eos_token_ids=engine.eos_token_ids,
                        prefill_seq_len=engine.prefill_seq_len, full_batch_size=engine.slots,
                        method=method, executor=executor, device=engine.device,
                        draft_tokenizer_fingerprint=draft_fingerprint)
