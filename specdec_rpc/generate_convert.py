"""Protobuf <-> domain objects of the Generate RPC (specdec.serving_generate), beside convert.py's
for the session protocol."""

from __future__ import annotations

from specdec.generation import GenerationRecord
from specdec.metrics import generation_metrics
from specdec.serving_generate import GenerateRequest, TextDelta
from specdec.stopping import FinishReason
from specdec_rpc.convert import sampling_from_pb, sampling_to_pb
from specdec_rpc.v1 import specdec_pb2 as pb


def generate_request_from_pb(r: pb.GenerateRequest) -> GenerateRequest:
    which = r.WhichOneof("prompt")
    prompt: str | tuple[int, ...] = r.text if which == "text" else tuple(r.token_ids.ids)
    return GenerateRequest(prompt, r.method, r.k, r.adaptive_k, sampling_from_pb(r.sampling),
                           r.max_new_tokens, tuple(r.stop), r.ignore_eos)


def delta_to_pb(d: TextDelta) -> pb.GenerateReply:
    return pb.GenerateReply(tokens=d.tokens, text=d.text)


def finished_to_pb(finish: FinishReason, prompt_tokens: int, rec: GenerationRecord) -> pb.GenerateReply:
    m = generation_metrics(rec)
    metrics = pb.GenerateMetrics(
        prompt_tokens=prompt_tokens, generated_tokens=m.generated_tokens, ttft_s=m.ttft_s,
        decode_time_s=m.decode_time_s, e2e_time_s=m.e2e_time_s,
        decode_throughput=m.decode_throughput, e2e_throughput=m.e2e_throughput,
        mean_accepted_tokens=m.mean_accepted_tokens, drafted=m.drafted, accepted=m.accepted,
        acceptance_rate=m.acceptance_rate, acceptance_by_position=m.acceptance_by_position,
        pre_draft_hits=m.pre_draft_hits, k_histogram=m.k_histogram, recoveries=rec.recoveries,
        draft_length_histogram=m.draft_length_histogram)
    return pb.GenerateReply(finish_reason=pb.FinishReason.ValueType(int(finish)), metrics=metrics)


def generate_request_to_pb(r: GenerateRequest) -> pb.GenerateRequest:
    req = pb.GenerateRequest(method=r.method, k=r.k, adaptive_k=r.adaptive_k,
                             sampling=sampling_to_pb(r.sampling), max_new_tokens=r.max_new_tokens,
                             stop=r.stop, ignore_eos=r.ignore_eos)
    if isinstance(r.prompt, str):
        req.text = r.prompt
    else:
        req.token_ids.ids.extend(r.prompt)
    return req
