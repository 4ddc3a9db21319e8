"""Generation metrics with the names QEfficient's examples print, as pure functions; where the
formulas differ from QEfficient's `SpDPerfMetrics`: docs/operations.md, "Metrics".
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from specdec.generation import GenerationRecord


@dataclass(frozen=True)
class GenerationMetrics:
    ttft_s: float                    # start -> first token (target and draft both prefilled)
    decode_time_s: float             # first token -> last token
    e2e_time_s: float
    generated_tokens: int
    decode_throughput: float         # (generated - 1) / decode_time, tokens/s
    e2e_throughput: float            # generated / e2e_time, tokens/s
    mean_accepted_tokens: float      # tokens per target forward after prefill
    drafted: int
    accepted: int
    acceptance_rate: float           # accepted / drafted
    acceptance_by_position: list[float]  # P(draft i accepted | draft i verified)
    proposer_ms: float
    verifier_ms: float
    network_ms: float                # client-side call time minus time spent in the services
    pre_draft_hits: int              # drafts answered from a branch pre-drafted during a verify
    pre_draft_hit_rate: float        # pre_draft_hits / proposals
    k_histogram: list[int]           # [k] rounds that asked for k drafts (varies with k auto)
    draft_length_histogram: list[int]  # [n] rounds that verified n drafted tokens (a suffix or
                                       # n-gram draft is often shorter than k, or empty)

    def as_dict(self) -> dict:
        return asdict(self)


def draft_lengths(drafted_at: list[int], rounds: int) -> list[int]:
    """[n] rounds that verified exactly n drafted tokens, from drafted_at ([i] rounds whose
    draft had a token i) and the number of rounds: 2 rounds of 2 drafts and 1 of none ->
    drafted_at [2, 2], rounds 3 -> [1, 0, 2]."""
    at = [rounds, *drafted_at, 0]
    return [at[n] - at[n + 1] for n in range(len(at) - 1)]


def drafted_at_of(lengths: list[int]) -> list[int]:
    """The inverse of draft_lengths: from [n] rounds that verified n drafted tokens, [i] rounds
    whose draft had a token i ([1, 0, 2] -> [2, 2])."""
    return [sum(lengths[i + 1:]) for i in range(len(lengths) - 1)]


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def generation_metrics(rec: GenerationRecord) -> GenerationMetrics:
    n = len(rec.tokens)
    decode = rec.t_end - rec.t_first
    e2e = rec.t_end - rec.t_start
    return GenerationMetrics(
        ttft_s=rec.t_first - rec.t_start,
        decode_time_s=decode,
        e2e_time_s=e2e,
        generated_tokens=n,
        decode_throughput=_ratio(n - 1, decode),
        e2e_throughput=_ratio(n, e2e),
        mean_accepted_tokens=_ratio(rec.step_tokens, rec.verify_steps),
        drafted=rec.drafted,
        accepted=rec.accepted,
        acceptance_rate=_ratio(rec.accepted, rec.drafted),
        acceptance_by_position=[_ratio(a, d) for a, d in
                                zip(rec.accepted_at + [0] * len(rec.drafted_at), rec.drafted_at)],
        proposer_ms=rec.proposer_ns / 1e6,
        verifier_ms=rec.verifier_ns / 1e6,
        network_ms=(rec.proposer_ns + rec.verifier_ns - rec.server_ns) / 1e6,
        pre_draft_hits=rec.pre_draft_hits,
        pre_draft_hit_rate=_ratio(rec.pre_draft_hits, rec.proposals),
        k_histogram=list(rec.k_histogram),
        draft_length_histogram=draft_lengths(rec.drafted_at, rec.verify_steps),
    )


def union_length(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by a set of [start, end] intervals."""
    total, covered_to = 0.0, -math.inf
    for s, e in sorted(intervals):   # each adds what lies past the ones before it
        total += max(0.0, e - max(s, covered_to))
        covered_to = max(covered_to, e)
    return total


@dataclass(frozen=True)
class BatchMetrics:
    avg_ttft_s: float                # "Avg TLM+DLM TTFT"
    decode_throughput: float         # "Decode Throughput": Σ(n_i - 1) / union of decode spans
    e2e_throughput: float            # "E2E Throughput": Σ n_i / (last end - first start)
    mean_accepted_tokens: float      # "Avg number of accepted tokens"
    generated_tokens: int
    drafted: int
    accepted: int
    acceptance_rate: float
    pre_draft_hits: int
    pre_draft_hit_rate: float        # drafts answered from pre-drafted branches / proposals
    k_histogram: list[int]           # [k] rounds of all prompts that asked for k drafts
    draft_length_histogram: list[int]  # [n] rounds of all prompts that verified n drafts

    def as_dict(self) -> dict:
        return asdict(self)


def batch_metrics(records: list[GenerationRecord]) -> BatchMetrics:
    n = sum(len(r.tokens) for r in records)
    decode_span = union_length([(r.t_first, r.t_end) for r in records])
    wall = max(r.t_end for r in records) - min(r.t_start for r in records)
    drafted = sum(r.drafted for r in records)
    accepted = sum(r.accepted for r in records)
    return BatchMetrics(
        avg_ttft_s=sum(r.t_first - r.t_start for r in records) / len(records),
        decode_throughput=_ratio(sum(len(r.tokens) - 1 for r in records), decode_span),
        e2e_throughput=_ratio(n, wall),
        mean_accepted_tokens=_ratio(sum(r.step_tokens for r in records),
                                    sum(r.verify_steps for r in records)),
        generated_tokens=n,
        drafted=drafted,
        accepted=accepted,
        acceptance_rate=_ratio(accepted, drafted),
        pre_draft_hits=sum(r.pre_draft_hits for r in records),
        pre_draft_hit_rate=_ratio(sum(r.pre_draft_hits for r in records),
                                  sum(r.proposals for r in records)),
        k_histogram=add_histograms([r.k_histogram for r in records]),
        draft_length_histogram=add_histograms([draft_lengths(r.drafted_at, r.verify_steps)
                                               for r in records]),
    )


def add_histograms(histograms: list[list[int]]) -> list[int]:
    total = [0] * max((len(h) for h in histograms), default=0)
    for h in histograms:
        for k, n in enumerate(h):
            total[k] += n
    return total


def format_metrics(m: BatchMetrics) -> str:
    """The metrics block, with the labels of QEfficient's SpDPerfMetrics."""
    return "\n".join([
        f"Avg TLM+DLM TTFT = {m.avg_ttft_s:.4f} s",
        f"Decode Throughput = {m.decode_throughput:.2f} tokens/s",
        f"E2E Throughput = {m.e2e_throughput:.2f} tokens/s",
        f"Avg number of accepted tokens = {m.mean_accepted_tokens:.3f}",
        f"Total generated tokens = {m.generated_tokens}",
        f"Drafted / accepted draft tokens = {m.drafted} / {m.accepted} "
        f"(acceptance rate {m.acceptance_rate:.1%})",
        f"Pre-drafted drafts used = {m.pre_draft_hits} (hit rate {m.pre_draft_hit_rate:.1%})",
        "Rounds by k = " + " ".join(f"{k}:{n}" for k, n in enumerate(m.k_histogram) if n),
        "Rounds by draft length = " + " ".join(
            f"{k}:{n}" for k, n in enumerate(m.draft_length_histogram) if n),
    ])
