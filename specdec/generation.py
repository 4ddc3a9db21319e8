"""The client's round loop, written against two links (a verifier and an optional proposer) so
the same loop runs over gRPC (client/) and in-process (specdec.inprocess, bench). The client
owns the sequence and each link mirrors it; k comes from a KPolicy, statistics go to the
GenerationRecord, recovery and timing are RecoveringLinks' (docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from specdec.adaptive_k import KEstimates
from specdec.flags import flag
from specdec.generation_record import GenerationRecord
from specdec.k_policy import k_policy
from specdec.links import ProposerLink, Reopen, VerifierLink
from specdec.recovery import RecoveringLinks, RecoveryPolicy
from specdec.sampling import SamplingParams
from specdec.types import StepOutcome

__all__ = ["GenerationConfig", "GenerationRecord", "ProposerLink", "VerifierLink", "generate"]


@dataclass(frozen=True)
class GenerationConfig:
    num_speculative_tokens: int = 4   # k; 0 = target-only decoding
    max_new_tokens: int = flag(0, help="tokens to generate per prompt; 0 = until EOS or ctx_len")
    ignore_eos: bool = flag(False, name="--ignore-eos-token", help="do not stop at EOS")
    sampling: SamplingParams = SamplingParams()  # greedy by default
    draft_top_m: int = flag(16, help="when sampling, the draft samples from its top m tokens and "
                                     "sends their probabilities (the exact q); 0 = greedy drafts")
    # --num-speculative-tokens auto: each round picks its k in 0..num_speculative_tokens, the
    # one with the most expected tokens per second (specdec.adaptive_k).
    adaptive_k: bool = False


async def generate(prompt: list[int], verifier: VerifierLink, proposer: ProposerLink | None,
                   config: GenerationConfig, ctx_len: int, draft_fingerprint: str = "",
                   on_tokens: Callable[[list[int]], None] | None = None,
                   reopen_verifier: Reopen | None = None, reopen_proposer: Reopen | None = None,
                   policy: RecoveryPolicy = RecoveryPolicy(),
                   k_estimates: KEstimates | None = None) -> GenerationRecord:
    """reopen_*: open a new session when a link is lost (LinkLost); None = fail instead.
    k_estimates: with adaptive k, the running estimates to start from and update, shared with
    the caller's other generations on the same services (None: this generation's own)."""
    rec = GenerationRecord(prompt_len=len(prompt), t_start=time.perf_counter())
    seq = list(prompt)   # prompt + everything emitted: the source of truth
    links = RecoveringLinks(rec, seq, config, draft_fingerprint, verifier, proposer,
                            reopen_verifier, reopen_proposer, policy)
    ks = k_policy(config.num_speculative_tokens, config.adaptive_k, k_estimates)

    def commit(step: StepOutcome) -> None:
        seq.extend(step.tokens)
        rec.emitted(step)
        if on_tokens:
            on_tokens(step.tokens)

    # Prefill the target and the draft concurrently: each owns its own device.
    drafting = config.num_speculative_tokens and proposer is not None
    step, _ = await asyncio.gather(links.prefill(), links.propose(0) if drafting else asyncio.sleep(0))
    rec.t_first = time.perf_counter()
    commit(step)
    while not rec.finish:
        k = min(ks.next_k(), rec.room(ctx_len, config.max_new_tokens))
        before = rec.call_time()
        # A k = 0 round skips the proposer; the next sync (start = the common prefix of what it
        # holds and the sequence) then carries every token since, so it never falls behind.
        proposal = await links.propose(k) if k else None
        # No proposer (Turbo, or lost): the verifier's own heads' guesses, if any.
        draft, probs = (proposal.draft, proposal.probs) if proposal is not None else (step.next_draft[:k], None)
        step = await links.verify(draft, probs)
        ks.observe(k, proposal, step, rec.call_time() - before)
        rec.round(step, k)
        commit(step)
    rec.t_end = time.perf_counter()
    return rec
