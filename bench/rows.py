"""The report's rows and the figures derived from them: pure functions over GenerationRecords.

A row is one way of decoding the benchmark's prompts (a method at one k, or a transformers
peer). Times are per round: one target forward after the prefill (a verify step), with the
prefill's time spread over the rounds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from specdec.generation import GenerationRecord
from specdec.method import Method
from specdec.metrics import batch_metrics

TARGET_ONLY = "target-only"
GENERATE = "transformers generate()"
PEER_OF = {Method.DRAFT: "transformers assisted", Method.NGRAM: "transformers prompt lookup"}
PRE_DRAFTING = "draft pre-drafting"
AUTO_OF = {Method.DRAFT: "draft k auto", Method.NGRAM: "ngram k auto"}   # each method's k auto row
TIME_PARTS = ("proposer", "verifier", "network", "client")


@dataclass
class Row:
    mode: str                 # "target-only", "draft", "ngram", "turbo", "draft pre-drafting",
                              # "draft k auto", "ngram k auto", or a transformers peer
    k: int                    # drafts per round (k auto: its largest; target-only: 0)
    peer: bool                # transformers, run in this process; else this project over gRPC
    tokens_per_s: float       # generated tokens / wall time of the whole batch of prompts
    tokens_per_step: float    # tokens per target forward after the prefill (1 without drafts)
    identical: bool           # the same tokens as target-only, prompt for prompt
    alpha: float | None = None                   # per-draft-token acceptance (see `alpha`)
    acceptance_by_position: list[float] = field(default_factory=list)
    round_ms: dict[str, float] = field(default_factory=dict)  # TIME_PARTS -> ms per round
    c: float | None = None                       # a draft token's cost in target steps
    bound: float | None = None                   # Leviathan et al.'s speedup for alpha, k, c
    note: str = ""
    tokens: list[list[int]] = field(default_factory=list)  # each prompt's generated ids

    def as_dict(self) -> dict:
        return asdict(self)


def alpha(records: list[GenerationRecord]) -> float | None:
    """Leviathan et al.'s alpha, the chance that a draft token is accepted given those before it
    were: accepted drafts / drafts that were reached (position 0 always is; position i when
    position i - 1 was accepted and a draft i existed). None without drafts."""
    acc = [sum(col) for col in _columns([r.accepted_at for r in records])]
    drafted = [sum(col) for col in _columns([r.drafted_at for r in records])]
    reached = [d if i == 0 else min(d, acc[i - 1] if i - 1 < len(acc) else 0) for i, d in enumerate(drafted)]
    return sum(acc) / sum(reached) if sum(reached) else None


def _columns(rows: list[list[int]]) -> list[list[int]]:
    width = max((len(r) for r in rows), default=0)
    return [[r[i] if i < len(r) else 0 for r in rows] for i in range(width)]


def acceptance_by_position(records: list[GenerationRecord]) -> list[float]:
    """P(draft i accepted | a draft i was verified), pooled over the prompts (as the metrics)."""
    acc = [sum(c) for c in _columns([r.accepted_at for r in records])]
    drafted = [sum(c) for c in _columns([r.drafted_at for r in records])]
    return [(acc[i] if i < len(acc) else 0) / d if d else 0.0 for i, d in enumerate(drafted)]


def round_ms(records: list[GenerationRecord]) -> dict[str, float]:
    """Where a round's time goes, ms per round: inside the proposer service, inside the verifier
    service (both as the services report), on the wire (client-side call time minus what the
    services report: gRPC, serialization, scheduling), and in the client (the rest of the wall
    time: the round loop, acceptance bookkeeping)."""
    rounds = max(1, sum(r.verify_steps for r in records))
    calls = sum(r.proposer_ns + r.verifier_ns for r in records)
    e2e_ns = sum((r.t_end - r.t_start) * 1e9 for r in records)
    parts = {"proposer": sum(r.proposer_server_ns for r in records),
             "verifier": sum(r.server_ns - r.proposer_server_ns for r in records),
             "network": calls - sum(r.server_ns for r in records),
             # Calls can overlap (both prefills run at once), so the rest can come out below 0.
             "client": max(0.0, e2e_ns - calls)}
    return {k: v / rounds / 1e6 for k, v in parts.items()}


def proposer_call_ms(records: list[GenerationRecord]) -> float:
    """Client-side ms per round spent in proposer calls (0 when the drafts come from elsewhere)."""
    return sum(r.proposer_ns for r in records) / max(1, sum(r.verify_steps for r in records)) / 1e6


def service_row(mode: str, k: int, records: list[GenerationRecord], reference: list[list[int]],
                target_ms: float | None = None, note: str = "") -> Row:
    """target_ms: a target-only round's wall ms; given, a row with a fixed k > 0 gets its cost
    ratio and speedup bound."""
    m = batch_metrics(records)
    a = alpha(records)
    row = Row(mode, k, False, m.e2e_throughput, m.mean_accepted_tokens,
              [r.tokens for r in records] == reference, a, acceptance_by_position(records),
              round_ms(records), note=note, tokens=[r.tokens for r in records])
    if target_ms and k and a is not None:
        row.c = cost_ratio(records, k, target_ms)
        row.bound = speedup_bound(a, k, row.c)
    return row


def peer_row(mode: str, k: int, outputs: list[list[int]], tokens_per_s: float, per_step: float,
             reference: list[list[int]]) -> Row:
    return Row(mode, k, True, tokens_per_s, per_step, outputs == reference, tokens=outputs)


def expected_tokens(a: float, k: int) -> float:
    """Leviathan et al. (2023), eq. 1: tokens per target step with k drafts, each accepted with
    chance a given the ones before: (1 - a^(k+1)) / (1 - a)."""
    return k + 1.0 if a >= 1.0 else (1.0 - a ** (k + 1)) / (1.0 - a)


def speedup_bound(a: float, k: int, c: float) -> float:
    """Leviathan et al., theorem 3.8: the walltime speedup of k drafts costing c target steps each,
    if verifying k + 1 tokens costs one target step: E / (k c + 1)."""
    return expected_tokens(a, k) / (k * c + 1.0)


def cost_ratio(row_records: list[GenerationRecord], k: int, target_round_ms: float) -> float:
    """c: one draft token's cost in target steps, measured: the client-side proposer call time per
    round over k, over a target-only round (all over gRPC, so both include their overheads)."""
    return proposer_call_ms(row_records) / k / target_round_ms if k and target_round_ms else 0.0


def target_round_ms(records: list[GenerationRecord]) -> float:
    """Wall ms of one target-only round (k = 0: a step of one token), prefill spread over them."""
    return sum(round_ms(records).values())
