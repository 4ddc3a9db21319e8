"""Held-out evaluation of the saved models: teacher-forced loss, agreement and head accuracy,
and speculation measured through the shipped code (specdec.generation.generate over in-process
links to a verifier and a proposer built as the services build them)."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from training.loop import fmt_s, log


@torch.no_grad()
def evaluate_teacher_forced(target, draft, heads, stream: torch.Tensor, seq_len: int,
                            max_tokens: int, bs: int = 8) -> dict:
    """Loss/ppl/top-1 of both models, draft-target argmax agreement, and per Turbo head j
    (predicting t+2+j) top-1 vs the true token and vs the target's own teacher-forced argmax."""
    H = len(heads)
    n_win = min(len(stream) // seq_len, max(1, max_tokens // seq_len))
    wins = stream[: n_win * seq_len].view(n_win, seq_len).long()
    lm_head = target.get_output_embeddings()
    acc = dict.fromkeys(["t_nll", "d_nll", "t_top1", "d_top1", "agree", "n"], 0.0)
    h_true, h_tgt, h_n = [0.0] * H, [0.0] * H, [0] * H
    t_ev = time.time()
    for b0 in range(0, n_win, bs):
        x = wins[b0: b0 + bs]
        hid = target.model(input_ids=x).last_hidden_state  # post final RMSNorm
        tl = lm_head(hid).float()
        dl = draft(input_ids=x).logits.float()
        y = x[:, 1:]
        tl_, dl_ = tl[:, :-1], dl[:, :-1]
        acc["t_nll"] += F.cross_entropy(tl_.reshape(-1, tl.size(-1)), y.reshape(-1), reduction="sum").item()
        acc["d_nll"] += F.cross_entropy(dl_.reshape(-1, dl.size(-1)), y.reshape(-1), reduction="sum").item()
        ta, da = tl_.argmax(-1), dl_.argmax(-1)
        acc["t_top1"] += (ta == y).sum().item()
        acc["d_top1"] += (da == y).sum().item()
        acc["agree"] += (ta == da).sum().item()
        acc["n"] += y.numel()
        tgt_greedy = tl.argmax(-1)  # target's teacher-forced prediction for the token at t+1
        for j, head in enumerate(heads):
            off = 2 + j
            pred = lm_head(head(hid[:, : seq_len - off])).argmax(-1)
            h_true[j] += (pred == x[:, off:]).sum().item()
            # the target's own prediction of the same token (made at position t+1+j)
            h_tgt[j] += (pred == tgt_greedy[:, off - 1: seq_len - 1]).sum().item()
            h_n[j] += pred.numel()
        if (b0 // bs) % 20 == 0:
            done = min(b0 + bs, n_win) / n_win
            el = time.time() - t_ev
            log(f"eval: {100 * done:5.1f}% of {n_win * seq_len:,} held-out tokens, ETA {fmt_s(el / done - el)}")
    n = acc["n"]
    return {
        "heldout_tokens_evaluated": int(n_win * seq_len),
        "target_loss": acc["t_nll"] / n, "target_ppl": math.exp(acc["t_nll"] / n),
        "draft_loss": acc["d_nll"] / n, "draft_ppl": math.exp(acc["d_nll"] / n),
        "target_top1": acc["t_top1"] / n, "draft_top1": acc["d_top1"] / n,
        "greedy_agreement": acc["agree"] / n,
        "turbo_head_top1_vs_true": [h_true[j] / max(1, h_n[j]) for j in range(H)],
        "turbo_head_agree_target_teacher_forced": [h_tgt[j] / max(1, h_n[j]) for j in range(H)],
    }


async def _generate_all(verifier, proposer, prompts: list[list[int]], config, ctx_len: int):
    from specdec.generation import generate
    from specdec.inprocess import InProcessProposerLink, InProcessVerifierLink

    records = []
    for ids in prompts:
        v = InProcessVerifierLink(verifier)
        d = InProcessProposerLink(proposer) if proposer is not None else None
        try:
            records.append(await generate(ids, v, d, config, ctx_len))
        finally:
            await v.close()
            if d is not None:
                await d.close()
    return records


def speculate(tdir: Path, ddir: Path | None, prompts: list[list[int]], new_tokens: int, k: int) -> dict:
    """Greedy speculative decoding of each prompt through specdec.generation.generate, in
    process, float32 eager torch executor, batch 1: the draft model with k drafts (ddir), or the
    target's Turbo heads (ddir None, k = H). -> accepted tokens per target step and the share of
    steps accepting >= i drafts, plus the outputs (the target's greedy continuations)."""
    from dataclasses import replace

    from specdec.build import build_draft_proposer, build_verifier
    from specdec.config import EngineConfig
    from specdec.generation import GenerationConfig

    ctx_len = max(len(p) for p in prompts) + new_tokens + 1
    cfg = EngineConfig(model=str(tdir), ctx_len=ctx_len, prefill_seq_len=64, full_batch_size=1)
    if ddir is None:
        verifier, proposer = build_verifier(replace(cfg, turbo=True), (0,)), None
    else:
        verifier = build_verifier(cfg, tuple(range(k + 1)))
        proposer = build_draft_proposer(replace(cfg, model=str(ddir)), k)
    recs = asyncio.run(_generate_all(verifier, proposer, prompts,
                                     GenerationConfig(k, new_tokens, ignore_eos=True), ctx_len))
    steps = sum(r.verify_steps for r in recs)
    accepted_at = [sum(r.accepted_at[i] if i < len(r.accepted_at) else 0 for r in recs) for i in range(k)]
    return {
        "mean_accepted_per_step": sum(r.step_tokens for r in recs) / steps,
        "steps": steps,
        "accept_rate_by_position": [a / steps for a in accepted_at],
        "outputs": [r.tokens for r in recs],
    }


@torch.no_grad()
def head_agreement_on(target, heads, prompts: list[list[int]], outputs: list[list[int]]) -> list[float]:
    """Per head j: how often its guess at position t equals the token at t+2+j of the target's
    greedy continuation (over every continuation position, whatever was accepted before)."""
    lm_head = target.get_output_embeddings()
    H = len(heads)
    hits, n = [0] * H, 0
    for prompt, out in zip(prompts, outputs):
        g = torch.tensor(prompt + out)
        hid = target.model(input_ids=g[None]).last_hidden_state[0]
        guesses = [lm_head(head(hid)).argmax(-1) for head in heads]   # [j][t] guesses t+2+j
        for t in range(len(prompt) - 1, len(g) - 1 - H):
            for j in range(H):
                hits[j] += int(guesses[j][t] == g[t + 2 + j])
            n += 1
    return [h / max(1, n) for h in hits]
