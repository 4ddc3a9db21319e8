"""The client's generation loop, written against two links (to a verifier and to an optional
proposer) so the same loop runs over gRPC (client/) and in-process (specdec.inprocess, bench).

One round, as in DESIGN.md: sync the proposer and get d1..dk; verify them; append what the
verifier emitted. The client is the source of truth for the sequence; each link mirrors it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Protocol

from specdec.proposers.draft_model import Proposal
from specdec.sampling import SamplingParams, Sparse
from specdec.sequence import common_prefix_len
from specdec.stopping import FinishReason, StopParams
from specdec.verifier import StepOutcome


class VerifierLink(Protocol):
    async def prefill(self, start: int, tokens: list[int], params: StopParams,
                      draft_fingerprint: str, sampling: SamplingParams) -> StepOutcome: ...

    async def verify(self, draft: list[int], draft_probs: list[Sparse] | None) -> StepOutcome: ...


class ProposerLink(Protocol):
    async def propose(self, start: int, tokens: list[int], k: int, sampling: SamplingParams,
                      top_m: int) -> Proposal: ...


@dataclass(frozen=True)
class GenerationConfig:
    num_speculative_tokens: int = 4   # k; 0 = target-only decoding
    max_new_tokens: int = 0           # 0 = until EOS or ctx_len
    ignore_eos: bool = False
    sampling: SamplingParams = SamplingParams()  # greedy by default
    # When sampling, a draft model samples its drafts from its top draft_top_m tokens and sends
    # those probabilities (the exact q); 0 = greedy drafts (deterministic, nothing sent).
    draft_top_m: int = 16


@dataclass
class GenerationRecord:
    """What one generation produced and where its time went (perf_counter seconds / ns)."""

    prompt_len: int
    tokens: list[int] = field(default_factory=list)
    finish: FinishReason = FinishReason.NONE
    t_start: float = 0.0
    t_first: float = 0.0               # first token emitted and the proposer prefilled
    t_end: float = 0.0
    verify_steps: int = 0              # target forwards after prefill
    step_tokens: int = 0               # tokens emitted by those steps
    drafted: int = 0
    accepted: int = 0
    accepted_at: list[int] = field(default_factory=list)  # [k] steps whose draft i was accepted
    drafted_at: list[int] = field(default_factory=list)   # [k] steps that verified a draft i
    proposer_ns: int = 0               # client-side wall time of proposer calls
    verifier_ns: int = 0               # client-side wall time of verifier calls
    server_ns: int = 0                 # time the services reported for those calls


def _count(at: list[int], n: int) -> None:
    at.extend([0] * (n - len(at)))
    for i in range(n):
        at[i] += 1


async def _timed(record: GenerationRecord, attr: str, call: Awaitable):
    t0 = time.perf_counter_ns()
    out = await call
    setattr(record, attr, getattr(record, attr) + time.perf_counter_ns() - t0)
    record.server_ns += out.timings.total_ns
    return out


async def generate(
    prompt: list[int],
    verifier: VerifierLink,
    proposer: ProposerLink | None,
    config: GenerationConfig,
    ctx_len: int,
    draft_fingerprint: str = "",
    on_tokens: Callable[[list[int]], None] | None = None,
) -> GenerationRecord:
    rec = GenerationRecord(prompt_len=len(prompt), t_start=time.perf_counter())
    params = StopParams(config.max_new_tokens, config.ignore_eos)
    k_max = config.num_speculative_tokens
    # Prefill the target and the draft concurrently: each owns its own device.
    sampling, top_m = config.sampling, config.draft_top_m
    calls = [_timed(rec, "verifier_ns",
                    verifier.prefill(0, prompt, params, draft_fingerprint, sampling))]
    if k_max and proposer is not None:
        calls.append(_timed(rec, "proposer_ns", proposer.propose(0, prompt, 0, sampling, top_m)))
    first, *_ = await asyncio.gather(*calls)
    held = list(prompt)  # what the proposer holds
    seq = prompt + first.tokens
    rec.tokens += first.tokens
    rec.finish = first.finish
    rec.t_first = time.perf_counter()
    guesses = first.next_draft  # Turbo: the verifier's own heads draft the next round
    if on_tokens:
        on_tokens(first.tokens)
    while not rec.finish:
        k = min(k_max, ctx_len - len(seq))
        if config.max_new_tokens:
            k = min(k, config.max_new_tokens - len(rec.tokens) - 1)
        draft: list[int] = []
        probs = None
        if k > 0 and proposer is None:
            draft = guesses[:k]
        elif k > 0:
            start = common_prefix_len(held, seq)
            proposal = await _timed(rec, "proposer_ns",
                                    proposer.propose(start, seq[start:], k, sampling, top_m))
            draft, probs = proposal.draft, proposal.probs
            held = (seq + draft)[:proposal.held_len]
        step = await _timed(rec, "verifier_ns", verifier.verify(draft, probs))
        guesses = step.next_draft
        rec.verify_steps += 1
        rec.step_tokens += len(step.tokens)
        rec.drafted += step.drafted
        rec.accepted += step.accepted
        _count(rec.drafted_at, step.drafted)
        _count(rec.accepted_at, step.accepted)
        seq += step.tokens
        rec.tokens += step.tokens
        rec.finish = step.finish
        if on_tokens:
            on_tokens(step.tokens)
    rec.t_end = time.perf_counter()
    return rec
