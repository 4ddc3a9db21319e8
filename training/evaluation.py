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


def draft_proposer(cfg, k: int, tdir: Path):
    """The draft-model proposer for cfg.model, drafting in the tokenizer of the target in tdir
    (it translates when the draft's tokenizer differs: draft-xtok)."""
    from specdec.build import build_draft_proposer

    return build_draft_proposer(cfg, k, target_model=str(tdir))


def speculate(tdir: Path, ddir: Path | None, prompts: list[list[int]], new_tokens: int, k: int) -> dict:
    """Greedy speculative decoding of each prompt through specdec.generation.generate, in
    process, float32 eager torch executor, batch 1: the draft model with k drafts (ddir), or the
    target's Turbo heads (ddir None, k = H). -> accepted tokens per target step and the share of
    steps accepting >= i drafts, plus the outputs (the target's greedy continuations)."""
    from dataclasses import replace

    from specdec.build import build_verifier
    from specdec.config import EngineConfig
    from specdec.generation import GenerationConfig

    ctx_len = max(len(p) for p in prompts) + new_tokens + 1
    cfg = EngineConfig(model=str(tdir), ctx_len=ctx_len, prefill_seq_len=64, full_batch_size=1)
    if ddir is None:
        verifier, proposer = build_verifier(replace(cfg, turbo=True), (0,)), None
    else:
        verifier = build_verifier(cfg, tuple(range(k + 1)))
        proposer = draft_proposer(replace(cfg, model=str(ddir)), k, tdir)
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


@torch.no_grad()
def lm_eval(model, stream: torch.Tensor, seq_len: int, max_tokens: int, bs: int = 8) -> dict:
    """Teacher-forced loss/ppl/top-1 of one model on the first max_tokens of a token stream
    (seq_len windows; the first token of each window is context only)."""
    n_win = min(len(stream) // seq_len, max(1, max_tokens // seq_len))
    wins = stream[: n_win * seq_len].view(n_win, seq_len).long()
    nll = top1 = n = 0
    for b0 in range(0, n_win, bs):
        x = wins[b0: b0 + bs]
        logits = model(input_ids=x).logits[:, :-1].float()
        y = x[:, 1:]
        nll += F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum").item()
        top1 += (logits.argmax(-1) == y).sum().item()
        n += y.numel()
    return {"tokens_evaluated": int(n_win * seq_len), "loss": nll / n, "ppl": math.exp(nll / n), "top1": top1 / n}


def bits_per_byte(loss: float, stream_tokens: int, nbytes: int) -> float:
    """nats/token -> bits/byte with the stream's tokens per byte (the evaluated windows cover the
    stream, or a prefix of it with the same density), comparable across vocabularies."""
    return loss / math.log(2) * stream_tokens / nbytes


@torch.no_grad()
def continuation_agreement(model, tok, texts: list[tuple[str, str]], add_bos: bool) -> dict:
    """Teacher forced on prompt + continuation texts (the target's greedy continuations), each
    encoded by the model's own tokenizer (a raw `tokenizers` object): the share of continuation
    tokens where the model's argmax is the next token, and the share of continuation bytes that
    such correctly predicted tokens cover (comparable across vocabularies)."""
    hit_tok = n_tok = hit_bytes = n_bytes = 0
    for prompt, cont in texts:
        text = prompt + cont
        e = tok.encode(text, add_special_tokens=add_bos)
        x = torch.tensor([e.ids])
        pred = model(input_ids=x).logits[0, :-1].argmax(-1).tolist()
        covered = len(prompt)  # tokens of one character's bytes share its offsets: count them once
        for t in range(1, len(e.ids)):
            s, f = e.offsets[t]
            if s < len(prompt) or f <= s:  # prompt tokens, and the <s> the post-processor adds
                continue
            nb = len(text[max(s, covered):f].encode())
            covered = max(covered, f)
            ok = pred[t - 1] == e.ids[t]
            hit_tok, n_tok = hit_tok + ok, n_tok + 1
            hit_bytes, n_bytes = hit_bytes + ok * nb, n_bytes + nb
    return {"token_agreement": hit_tok / max(1, n_tok), "byte_agreement": hit_bytes / max(1, n_bytes),
            "tokens": n_tok, "bytes": n_bytes}
