"""The target (next-token CE) and the draft (distilled from the target): build, train, save."""

from __future__ import annotations

from argparse import Namespace
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from training.data import Windows
from training.loop import log, run_phase


def llama_config(args: Namespace, prefix: str, vocab: int, eot_id: int, bos_id: int | None = None):
    """eot_id is eos and pad; bos_id defaults to it (one <|endoftext|> for all three)."""
    from transformers import LlamaConfig

    def g(k: str) -> int:
        return getattr(args, f"{prefix}_{k}")

    return LlamaConfig(
        vocab_size=vocab, hidden_size=g("hidden"), num_hidden_layers=g("layers"),
        num_attention_heads=g("heads"), num_key_value_heads=g("kv_heads"),
        intermediate_size=g("intermediate"), max_position_embeddings=args.max_positions,
        rms_norm_eps=1e-5, initializer_range=0.02, tie_word_embeddings=True,
        bos_token_id=eot_id if bos_id is None else bos_id, eos_token_id=eot_id, pad_token_id=eot_id)


def n_params(m: torch.nn.Module) -> int:
    """Tied embeddings counted once."""
    return sum(p.numel() for p in {id(p): p for p in m.parameters()}.values())


def save_model(model, d: Path, eot_id: int, bos_id: int | None = None) -> None:
    """float16 safetensors; eot_id is eos and pad, bos_id defaults to it."""
    from transformers import GenerationConfig

    m = model.to(torch.float16)
    m.config.dtype = torch.float16
    bos = eot_id if bos_id is None else bos_id
    m.generation_config = GenerationConfig(bos_token_id=bos, eos_token_id=eot_id, pad_token_id=eot_id,
                                           do_sample=False, max_new_tokens=128)
    m.save_pretrained(d, safe_serialization=True)
    model.to(torch.float32)


def train_target(args: Namespace, stream: torch.Tensor, vocab: int, eot_id: int,
                 autocast: Callable, S: dict):
    """Next-token CE on seq_len windows; S gets target_params and target_run."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(args.seed + 1)
    target = LlamaForCausalLM(llama_config(args, "target", vocab, eot_id))
    target.train()
    S["target_params"] = n_params(target)
    log(f"target: {S['target_params']:,} parameters")
    data = Windows(stream, args.seq_len, args.seed + 11)

    def step():
        x = data.batch(args.target_batch)
        with autocast():
            logits = target(input_ids=x).logits
        return F.cross_entropy(logits[:, :-1].float().reshape(-1, vocab), x[:, 1:].reshape(-1))

    S["target_run"] = run_phase("target", list(target.parameters()), step, args.target_lr,
                                args.target_minutes, args.target_steps, args.target_batch * args.seq_len,
                                args.log_every)
    target.eval()
    for p in target.parameters():
        p.requires_grad_(False)
    return target


def train_draft(args: Namespace, target, stream: torch.Tensor, vocab: int, eot_id: int,
                autocast: Callable, S: dict):
    """w * KL(target || draft) (temperature T) + (1 - w) * CE; S gets draft_params, draft_run."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(args.seed + 2)
    draft = LlamaForCausalLM(llama_config(args, "draft", vocab, eot_id))
    draft.train()
    S["draft_params"] = n_params(draft)
    log(f"draft: {S['draft_params']:,} parameters ({S['target_params'] / S['draft_params']:.1f}x fewer)")
    data = Windows(stream, args.seq_len, args.seed + 12)
    T = args.kd_temperature

    def step():
        x = data.batch(args.draft_batch)
        with torch.no_grad(), autocast():
            tl = target(input_ids=x).logits
        with autocast():
            dl = draft(input_ids=x).logits
        tl, dl = tl.float().reshape(-1, vocab), dl.float().reshape(-1, vocab)
        kl = F.kl_div(F.log_softmax(dl / T, -1), F.log_softmax(tl / T, -1), log_target=True,
                      reduction="batchmean") * (T * T)
        if args.kl_weight >= 1.0:
            return kl
        ce = F.cross_entropy(dl.view(x.size(0), -1, vocab)[:, :-1].reshape(-1, vocab), x[:, 1:].reshape(-1))
        return args.kl_weight * kl + (1 - args.kl_weight) * ce

    S["draft_run"] = run_phase("draft", list(draft.parameters()), step, args.draft_lr,
                               args.draft_minutes, args.draft_steps, args.draft_batch * args.seq_len,
                               args.log_every)
    draft.eval()
    return draft
