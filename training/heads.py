"""Turbo heads by self-distillation (Medusa-2's recipe): the frozen target continues prompts from
the training split, greedily and by sampling; head j learns, from the target's final hidden state
at position t, the token the target itself would pick at t+2+j on that continuation (its argmax
there, teacher forced), which is exactly the draft a greedy verifier accepts.

The heads are specdec.engine.turbo's own modules (QEfficient's ResBlock layout), saved in
QEfficient's format by specdec.engine.turbo.save_turbo_heads.
"""

from __future__ import annotations

import time
from argparse import Namespace
from collections.abc import Callable

import torch
import torch.nn.functional as F

from specdec.engine.turbo import TurboConfig, build_turbo_heads
from training.loop import fmt_s, log, run_phase
from training.models import n_params


@torch.no_grad()
def continuations(target, stream: torch.Tensor, args: Namespace) -> list[tuple[int, torch.Tensor]]:
    """Prompts cut at random from the training stream (lengths in [heads_prompt_min,
    heads_prompt_max], one per generate batch), continued by the target for heads_new_tokens;
    a heads_sampled_frac share of the batches samples (temperature 1), the rest is greedy.
    -> [(prompt_len, ids [b, prompt_len + new])]."""
    g = torch.Generator().manual_seed(args.seed + 21)
    n_batches = -(-args.heads_sequences // args.heads_gen_batch)
    n_sampled = round(n_batches * args.heads_sampled_frac)
    out, t0 = [], time.time()
    for i in range(n_batches):
        plen = int(torch.randint(args.heads_prompt_min, args.heads_prompt_max + 1, (1,), generator=g))
        starts = torch.randint(0, len(stream) - plen, (args.heads_gen_batch,), generator=g)
        prompts = torch.stack([stream[s: s + plen] for s in starts.tolist()]).long()
        sampled = i < n_sampled  # the first batches sample
        if sampled:
            torch.manual_seed(args.seed + 1000 + i)
        ids = target.generate(prompts, attention_mask=torch.ones_like(prompts),
                              max_new_tokens=args.heads_new_tokens, min_new_tokens=args.heads_new_tokens,
                              do_sample=sampled, temperature=1.0 if sampled else None, top_k=0 if sampled else None,
                              top_p=None, pad_token_id=target.config.eos_token_id)
        out.append((plen, ids))
        el = time.time() - t0
        log(f"heads data: batch {i + 1}/{n_batches} ({'sampled' if sampled else 'greedy'}, prompt {plen}) "
            f"ETA {fmt_s(el / (i + 1) * (n_batches - i - 1))}")
    return out


@torch.no_grad()
def hidden_and_labels(target, batches: list[tuple[int, torch.Tensor]],
                      chunk: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """The target's final (post-norm) hidden states and argmax predictions, float32 forward, on
    the continuation and the prompt's last position: h [N, L+1, D] (bfloat16), labels [N, L+1]
    where labels[:, i] is the target's greedy pick for the token after stored position i."""
    hs, ys = [], []
    lm_head = target.get_output_embeddings()
    for plen, ids in batches:
        for c in range(0, len(ids), chunk):
            x = ids[c: c + chunk]
            h = target.model(input_ids=x).last_hidden_state[:, plen - 1:]            # [b, L+1, D]
            ys.append(lm_head(h).argmax(-1))
            hs.append(h.to(torch.bfloat16))
    return torch.cat(hs), torch.cat(ys)


def head_loss(heads, lm_head, h: torch.Tensor, labels: torch.Tensor, weights: list[float]) -> torch.Tensor:
    """h [B, L+1, D], labels [B, L+1]: head j at stored position t vs labels[t + 1 + j]."""
    n = h.shape[1]
    losses = []
    for j, head in enumerate(heads):
        z = head(h[:, : n - 1 - j])                                                  # [B, n-1-j, D]
        logits = lm_head(z).float()
        losses.append(weights[j] * F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                   labels[:, 1 + j:].reshape(-1)))
    return torch.stack(losses).sum() / sum(weights)


def train_heads(args: Namespace, target, stream: torch.Tensor, autocast: Callable, S: dict):
    """-> (TurboConfig, heads); S gets turbo_params, heads_data, heads_run."""
    cfg = TurboConfig(args.turbo_heads, args.turbo_layers)
    batches = continuations(target, stream, args)
    h, labels = hidden_and_labels(target, batches)
    S["heads_data"] = {"sequences": int(h.shape[0]), "positions": int(h.shape[0] * (h.shape[1] - 1)),
                       "new_tokens": args.heads_new_tokens, "sampled_frac": args.heads_sampled_frac,
                       "prompt_len": [args.heads_prompt_min, args.heads_prompt_max]}
    log(f"heads data: {h.shape[0]} continuations x {h.shape[1] - 1} positions")
    torch.manual_seed(args.seed + 3)
    heads = build_turbo_heads(target.config.hidden_size, cfg)
    for p in heads.parameters():
        torch.nn.init.zeros_(p)  # each head starts as the base head's copy (QEfficient's init)
    heads.train()
    S["turbo_params"] = n_params(heads)
    lm_head = target.get_output_embeddings()
    weights = [args.heads_decay ** j for j in range(cfg.num_heads)]
    g = torch.Generator().manual_seed(args.seed + 13)

    def step():
        idx = torch.randint(0, h.shape[0], (args.heads_batch,), generator=g)
        with autocast():
            return head_loss(heads, lm_head, h[idx].float(), labels[idx], weights)

    S["heads_run"] = run_phase("heads", list(heads.parameters()), step, args.heads_lr,
                               args.heads_minutes, args.heads_steps,
                               args.heads_batch * (h.shape[1] - 1), args.log_every, wd=0.0)
    return cfg, heads.eval()
