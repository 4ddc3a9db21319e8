#!/usr/bin/env python
"""Train the small model family shipped in ``models/`` (project issue 3).

Everything is trained from scratch on CPU, from data that is present on every
machine: the ``*.py`` source files of the running interpreter's standard
library.  One run produces

* ``<out>/target/``  a ~10M-parameter ``LlamaForCausalLM`` (HF format, fp16),
  plus Turbo speculator heads in QEfficient's multi-projection format
  (``speculator_config.json`` + ``speculator.safetensors``);
* ``<out>/draft/``   a ~0.9M-parameter ``LlamaForCausalLM`` distilled from the
  target (KL(target || draft) over next-token distributions, mixed with CE);
* the same byte-level BPE tokenizer in both directories;
* ``<out>/README.md`` (model card) and ``<out>/metrics.json`` with held-out
  evaluation numbers.

Phases: corpus -> tokenizer -> target (CE) -> draft (distillation) -> Turbo
heads (target frozen) -> save -> reload from disk and evaluate on the held-out
split -> model card -> load/generate/round-trip verification.

Corpus and split
----------------
Files: every ``*.py`` under ``sysconfig.get_paths()["stdlib"]``, excluding the
directories ``site-packages``, ``test``, ``tests``, ``idlelib``, ``lib2to3``,
``turtledemo``, ``ensurepip``, ``pydoc_data``, ``__pycache__`` and
``__phello__`` and any file larger than ``--max-file-bytes``.  The file list is
sorted by its POSIX relative path.  A file is HELD OUT (evaluation only; it is
not seen by the tokenizer trainer or by any model) iff

    int(sha1(relative_posix_path).hexdigest(), 16) % --heldout-mod == 0

(default modulus 20, i.e. ~5% of the files).  Each file is encoded as
``<|endoftext|>`` + text; the training files are concatenated into one token
stream that is cut into ``--seq-len`` windows.

Determinism
-----------
All randomness (init, data order) comes from ``--seed``.  With the default
time budgets (``--*-minutes``) the number of optimisation steps depends on the
machine's speed; the run records the step counts it reached in metrics.json,
and passing them back through ``--target-steps/--draft-steps/--heads-steps``
(which override the time budgets) replays a step-for-step identical schedule.

Run ``python training/train_models.py --help`` for all flags and defaults.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shutil
import sys
import sysconfig
import time
from pathlib import Path

EOT = "<|endoftext|>"
EXCLUDED_DIRS = {
    "site-packages",
    "test",
    "tests",
    "idlelib",
    "lib2to3",
    "turtledemo",
    "ensurepip",
    "pydoc_data",
    "__pycache__",
    "__phello__",
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("general")
    g.add_argument("--out", default="models", help="output directory (target/, draft/, README.md, metrics.json)")
    g.add_argument("--threads", type=int, default=1, help="torch / tokenizers CPU threads")
    g.add_argument("--seed", type=int, default=1234, help="global seed")
    g.add_argument("--no-bf16", action="store_true", help="disable bf16 autocast during training (fp32 is ~2x slower on CPU)")
    g.add_argument("--smoke", action="store_true", help="tiny budgets for a quick end-to-end check (use with --out /tmp/...)")
    g.add_argument("--size-limit-mb", type=float, default=30.0, help="fail if everything under --out exceeds this many MB")
    g.add_argument("--log-every", type=float, default=30.0, help="seconds between progress lines")

    g = p.add_argument_group("data / tokenizer")
    g.add_argument("--stdlib", default=None, help="corpus root (default: sysconfig stdlib of this interpreter)")
    g.add_argument("--heldout-mod", type=int, default=20, help="file held out iff sha1(relpath) %% mod == 0")
    g.add_argument("--max-file-bytes", type=int, default=400_000, help="skip larger source files")
    g.add_argument("--max-files", type=int, default=0, help="use only the first N files of the sorted list (0 = all)")
    g.add_argument("--vocab-size", type=int, default=4096, help="BPE vocabulary size (incl. 256 byte symbols and <|endoftext|>)")
    g.add_argument("--seq-len", type=int, default=256, help="training window length")
    g.add_argument("--max-positions", type=int, default=1024, help="max_position_embeddings written to the configs")

    g = p.add_argument_group("target model")
    g.add_argument("--target-hidden", type=int, default=320)
    g.add_argument("--target-layers", type=int, default=8)
    g.add_argument("--target-heads", type=int, default=8)
    g.add_argument("--target-kv-heads", type=int, default=2)
    g.add_argument("--target-intermediate", type=int, default=864)
    g.add_argument("--target-batch", type=int, default=8, help="sequences per step")
    g.add_argument("--target-lr", type=float, default=1.5e-3)
    g.add_argument("--target-minutes", type=float, default=20.0, help="time budget for target training")
    g.add_argument("--target-steps", type=int, default=0, help="fixed step count (overrides --target-minutes if > 0)")

    g = p.add_argument_group("draft model")
    g.add_argument("--draft-hidden", type=int, default=128)
    g.add_argument("--draft-layers", type=int, default=2)
    g.add_argument("--draft-heads", type=int, default=4)
    g.add_argument("--draft-kv-heads", type=int, default=2)
    g.add_argument("--draft-intermediate", type=int, default=352)
    g.add_argument("--draft-batch", type=int, default=8)
    g.add_argument("--draft-lr", type=float, default=2e-3)
    g.add_argument("--draft-minutes", type=float, default=9.0)
    g.add_argument("--draft-steps", type=int, default=0)
    g.add_argument("--kl-weight", type=float, default=0.9, help="loss = w*KL(target||draft) + (1-w)*CE(true next token)")
    g.add_argument("--kd-temperature", type=float, default=1.0, help="softmax temperature for the KL term")

    g = p.add_argument_group("Turbo heads")
    g.add_argument("--turbo-heads", type=int, default=4, help="number of heads H; head j predicts token t+2+j")
    g.add_argument("--turbo-layers", type=int, default=1, help="ResBlocks per head (keep 1: QEfficient shares them)")
    g.add_argument("--heads-batch", type=int, default=8)
    g.add_argument("--heads-lr", type=float, default=2e-3)
    g.add_argument("--heads-minutes", type=float, default=4.0)
    g.add_argument("--heads-steps", type=int, default=0)

    g = p.add_argument_group("evaluation")
    g.add_argument("--eval-tokens", type=int, default=200_000, help="cap on held-out tokens for teacher-forced metrics")
    g.add_argument("--spec-prompts", type=int, default=8, help="held-out prompts for the speculation simulation")
    g.add_argument("--spec-prompt-len", type=int, default=64)
    g.add_argument("--spec-new-tokens", type=int, default=128, help="target greedy tokens generated per prompt")
    g.add_argument("--spec-k", type=int, default=4, help="draft proposals per target step")
    a = p.parse_args(argv)
    if a.smoke:
        a.target_minutes, a.draft_minutes, a.heads_minutes = 0.3, 0.2, 0.2
        a.max_files = a.max_files or 120
        a.vocab_size = min(a.vocab_size, 1024)
        a.eval_tokens = min(a.eval_tokens, 8192)
        a.spec_prompts, a.spec_new_tokens = 2, 24
    if a.turbo_layers != 1:
        print("warning: QEfficient builds [ResBlock(d)] * n, i.e. the SAME block n times; "
              "layers of a head will share weights", file=sys.stderr)
    return a


ARGS = parse_args()
os.environ.setdefault("RAYON_NUM_THREADS", str(ARGS.threads))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true" if ARGS.threads > 1 else "false")
os.environ.setdefault("OMP_NUM_THREADS", str(ARGS.threads))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from tokenizers import Tokenizer, decoders, pre_tokenizers, processors, trainers  # noqa: E402
from tokenizers import models as tk_models  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()
T0 = time.time()


def log(msg: str) -> None:
    el = time.time() - T0
    print(f"[{int(el // 60):3d}m{int(el % 60):02d}s] {msg}", file=sys.stderr, flush=True)


def fmt_s(s: float) -> str:
    s = max(0, int(s))
    return f"{s // 60}m{s % 60:02d}s"


# ---------------------------------------------------------------------------
# Turbo heads (QEfficient multi-projection format)
# ---------------------------------------------------------------------------
class ResBlock(nn.Module):
    """x + SiLU(Linear(x)); identical layout to QEfficient's ResBlock (attribute ``linear``)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, hidden_size)
        nn.init.zeros_(self.linear.weight)  # identity-like start, as QEfficient does
        self.act = nn.SiLU()

    def forward(self, x):
        return x + self.act(self.linear(x))


class TurboHeads(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, num_layers: int):
        super().__init__()
        # Same construction as QEfficient (note: `[ResBlock] * n` repeats one instance).
        self.projections = nn.ModuleList(
            [nn.Sequential(*([ResBlock(hidden_size)] * num_layers)) for _ in range(num_heads)]
        )

    def forward(self, h):  # h: [..., d] final (post-norm) hidden state -> list of [..., d]
        return [proj(h) for proj in self.projections]


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------
def is_heldout(rel: str, mod: int) -> bool:
    return int(hashlib.sha1(rel.encode("utf-8")).hexdigest(), 16) % mod == 0


def collect_corpus(args):
    root = Path(args.stdlib or sysconfig.get_paths()["stdlib"]).resolve()
    files = []
    skipped_big = 0
    for p in root.rglob("*.py"):
        rel = p.relative_to(root).as_posix()
        if any(part in EXCLUDED_DIRS for part in rel.split("/")[:-1]):
            continue
        if not p.is_file():
            continue
        if p.stat().st_size > args.max_file_bytes:
            skipped_big += 1
            continue
        files.append(rel)
    files.sort()
    if args.max_files:
        files = files[: args.max_files]
    train, held = [], []
    for rel in files:
        text = (root / rel).read_text(encoding="utf-8", errors="replace")
        if not text.strip():
            continue
        (held if is_heldout(rel, args.heldout_mod) else train).append((rel, text))
    return root, train, held, skipped_big


def train_tokenizer(texts, vocab_size):
    tok = Tokenizer(tk_models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tok


def wrap_tokenizer(tok, max_positions):
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOT,
        eos_token=EOT,
        unk_token=EOT,
        pad_token=EOT,
        model_max_length=max_positions,
        clean_up_tokenization_spaces=False,
        add_prefix_space=False,
    )


def encode_docs(tok, texts, eot_id):
    encs = tok.encode_batch(texts, add_special_tokens=False)
    docs = [np.asarray([eot_id] + e.ids, dtype=np.int32) for e in encs]
    return docs


class Windows:
    """Epoch-shuffled, non-overlapping seq_len windows over a token stream (per-epoch offset)."""

    def __init__(self, stream: torch.Tensor, seq_len: int, seed: int):
        self.stream, self.seq_len = stream, seq_len
        self.g = torch.Generator().manual_seed(seed)
        self.epoch, self.order, self.pos = -1, None, 0
        self._new_epoch()

    def _new_epoch(self):
        self.epoch += 1
        off = int(torch.randint(0, self.seq_len, (1,), generator=self.g)) if self.epoch > 0 else 0
        n = (len(self.stream) - off) // self.seq_len
        self.starts = off + torch.arange(n) * self.seq_len
        self.order = torch.randperm(n, generator=self.g)
        self.pos = 0

    def batch(self, bs: int) -> torch.Tensor:
        if self.pos + bs > len(self.order):
            self._new_epoch()
        idx = self.starts[self.order[self.pos : self.pos + bs]]
        self.pos += bs
        return torch.stack([self.stream[i : i + self.seq_len] for i in idx.tolist()]).long()


# ---------------------------------------------------------------------------
# Training loop helper (time- or step-budgeted, cosine schedule on "progress")
# ---------------------------------------------------------------------------
def run_phase(name, params, step_fn, lr, minutes, steps, tokens_per_step, log_every,
              warmup_steps=100, min_lr_frac=0.1, wd=0.1):
    """step_fn() -> loss tensor (graph attached). Schedule: linear warmup, cosine to min_lr_frac*lr.

    progress = step/steps if steps > 0 else elapsed/(minutes*60); training stops at progress >= 1.
    """
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=wd)
    budget_s = minutes * 60.0
    t_start = time.time()
    last_log = t_start
    step, ema = 0, None
    warmup_steps = min(warmup_steps, steps // 10) if steps else warmup_steps
    while True:
        el = time.time() - t_start
        progress = step / steps if steps > 0 else el / budget_s
        if progress >= 1.0:
            break
        warm = min(1.0, (step + 1) / max(1, warmup_steps))
        cos = min_lr_frac + (1 - min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        cur_lr = lr * warm * cos
        for gr in opt.param_groups:
            gr["lr"] = cur_lr
        loss = step_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        lv = float(loss.detach())
        ema = lv if ema is None else 0.98 * ema + 0.02 * lv
        now = time.time()
        if now - last_log >= log_every or step == 1:
            el = now - t_start
            prog = step / steps if steps > 0 else el / budget_s
            eta = el / max(prog, 1e-9) - el
            log(f"{name}: step {step} ({100 * prog:5.1f}%) loss {lv:.4f} (ema {ema:.4f}) lr {cur_lr:.2e} "
                f"{step * tokens_per_step / el:,.0f} tok/s  elapsed {fmt_s(el)}  phase ETA {fmt_s(eta)}")
            last_log = now
    el = time.time() - t_start
    log(f"{name}: done, {step} steps, {step * tokens_per_step:,} tokens, {fmt_s(el)}, final ema loss {ema:.4f}")
    return {"steps": step, "tokens": step * tokens_per_step, "seconds": round(el, 1), "final_ema_loss": ema}


def llama_config(args, prefix, vocab, eot_id):
    g = lambda k: getattr(args, f"{prefix}_{k}")  # noqa: E731
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=g("hidden"),
        num_hidden_layers=g("layers"),
        num_attention_heads=g("heads"),
        num_key_value_heads=g("kv_heads"),
        intermediate_size=g("intermediate"),
        max_position_embeddings=args.max_positions,
        rms_norm_eps=1e-5,
        initializer_range=0.02,
        tie_word_embeddings=True,
        bos_token_id=eot_id,
        eos_token_id=eot_id,
        pad_token_id=eot_id,
    )
    return cfg


def n_params(m):
    # tied embeddings counted once
    return sum(p.numel() for p in {id(p): p for p in m.parameters()}.values())


def save_tokenizer(hf_tok, d: Path):
    hf_tok.save_pretrained(d)
    # transformers 5 writes its new class name "TokenizersBackend"; "PreTrainedTokenizerFast" is an alias of it
    # in v5 and also loads with transformers 4.x.
    tc = d / "tokenizer_config.json"
    cfg = json.loads(tc.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    tc.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    stm = d / "special_tokens_map.json"
    if not stm.exists():  # transformers 5 no longer writes it; keep it for older loaders
        stm.write_text(json.dumps({"bos_token": EOT, "eos_token": EOT, "unk_token": EOT, "pad_token": EOT}, indent=2) + "\n")


def save_model(model, d: Path, eot_id):
    m = model.to(torch.float16)
    m.config.dtype = torch.float16
    m.generation_config = GenerationConfig(bos_token_id=eot_id, eos_token_id=eot_id, pad_token_id=eot_id,
                                           do_sample=False, max_new_tokens=128)
    m.save_pretrained(d, safe_serialization=True)
    model.to(torch.float32)


# ---------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------
@torch.no_grad()
def evaluate_teacher_forced(target, draft, heads, stream, seq_len, max_tokens, H, bs=8):
    n_win = min(len(stream) // seq_len, max(1, max_tokens // seq_len))
    wins = stream[: n_win * seq_len].view(n_win, seq_len).long()
    lm_head = target.get_output_embeddings()
    acc = {k: 0.0 for k in ["t_nll", "d_nll", "t_top1", "d_top1", "agree", "n"]}
    h_true = [0.0] * H
    h_tgt = [0.0] * H
    h_n = [0] * H
    t_ev = time.time()
    for b0 in range(0, n_win, bs):
        x = wins[b0 : b0 + bs]
        out = target.model(input_ids=x)
        hid = out.last_hidden_state  # == output_hidden_states[-1] (post final RMSNorm)
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
        tgt_greedy = tl.argmax(-1)  # target's teacher-forced prediction for token at t+1
        for j, z in enumerate(heads(hid)):
            off = 2 + j
            if seq_len <= off:
                continue
            pred = lm_head(z[:, : seq_len - off]).argmax(-1)
            h_true[j] += (pred == x[:, off:]).sum().item()
            # target's own teacher-forced prediction of the same token (made at position t+1+j)
            h_tgt[j] += (pred == tgt_greedy[:, off - 1 : seq_len - 1]).sum().item()
            h_n[j] += pred.numel()
        if b0 == 0 or (b0 // bs) % 20 == 0:
            done = min(b0 + bs, n_win) / n_win
            el = time.time() - t_ev
            log(f"eval: {100 * done:5.1f}% of {n_win * seq_len:,} held-out tokens, ETA {fmt_s(el / done - el)}")
    n = acc["n"]
    res = {
        "heldout_tokens_evaluated": int(n_win * seq_len),
        "target_loss": acc["t_nll"] / n,
        "target_ppl": math.exp(acc["t_nll"] / n),
        "draft_loss": acc["d_nll"] / n,
        "draft_ppl": math.exp(acc["d_nll"] / n),
        "target_top1": acc["t_top1"] / n,
        "draft_top1": acc["d_top1"] / n,
        "greedy_agreement": acc["agree"] / n,
        "turbo_head_top1_vs_true": [h_true[j] / max(1, h_n[j]) for j in range(H)],
        "turbo_head_agree_target_teacher_forced": [h_tgt[j] / max(1, h_tgt_n) for j, h_tgt_n in enumerate(h_n)],
    }
    return res


def pick_prompts(tok, held, n, plen, seed):
    """Line-aligned prompts from the middle third of held-out files (deterministic)."""
    rng = np.random.default_rng(seed)
    cands = [(rel, t) for rel, t in held if len(t) > 4000]
    order = rng.permutation(len(cands))
    prompts = []
    for i in order:
        rel, text = cands[i]
        lines = text.splitlines(keepends=True)
        start = len(lines) // 3 + int(rng.integers(0, max(1, len(lines) // 3)))
        chunk = "".join(lines[start:])
        ids = tok.encode(chunk, add_special_tokens=False).ids
        if len(ids) >= plen:
            prompts.append((rel, ids[:plen]))
        if len(prompts) >= n:
            break
    return prompts


@torch.no_grad()
def simulate_speculation(target, draft, heads, prompts, new_tokens, k, H):
    """Exact simulation of greedy speculative decoding (output == target greedy output).

    Draft model: at each target step the draft greedily proposes k tokens from the accepted prefix;
    accepted = 1 + length of the matching prefix (the +1 is the target's own correction/bonus token).
    Turbo: each target step emits its own greedy token t+1 and heads propose t+2..t+1+H from the
    same final hidden state; accepted = 1 + matching prefix.  Only full steps (whole window inside
    the generated continuation) are counted.
    """
    lm_head = target.get_output_embeddings()
    d_acc, t_acc = [], []
    d_pos_match = [0] * k
    t_pos_match = [0] * H
    t_uncond = [0] * H
    t_uncond_n = 0
    for pi, (rel, ids) in enumerate(prompts):
        inp = torch.tensor([ids])
        g = target.generate(inp, max_new_tokens=new_tokens, do_sample=False, min_new_tokens=new_tokens,
                            pad_token_id=target.config.eos_token_id)[0]
        plen = len(ids)
        pos = plen
        while pos + k + 1 <= len(g):
            prop = draft.generate(g[:pos].unsqueeze(0), max_new_tokens=k, min_new_tokens=k, do_sample=False,
                                  pad_token_id=draft.config.eos_token_id)[0, pos : pos + k]
            m = 0
            while m < k and int(prop[m]) == int(g[pos + m]):
                d_pos_match[m] += 1
                m += 1
            d_acc.append(m + 1)
            pos += m + 1
        hid = target.model(input_ids=g.unsqueeze(0)).last_hidden_state[0]
        hl = [lm_head(z).argmax(-1) for z in heads(hid)]  # hl[j][t] = head j's guess for token t+2+j
        # unconditional agreement of head j with the target's greedy continuation
        for t in range(plen - 1, len(g) - 1 - H):
            for j in range(H):
                t_uncond[j] += int(hl[j][t] == g[t + 2 + j])
            t_uncond_n += 1
        pos = plen  # next token to produce; target forward at pos-1 emits g[pos]
        while pos + H + 1 <= len(g):
            m = 0
            while m < H and int(hl[m][pos - 1]) == int(g[pos + 1 + m]):
                t_pos_match[m] += 1
                m += 1
            t_acc.append(m + 1)
            pos += m + 1
        log(f"spec-sim: prompt {pi + 1}/{len(prompts)} ({rel}) draft mean {np.mean(d_acc):.3f} "
            f"turbo mean {np.mean(t_acc):.3f}")
    return {
        "k": k,
        "draft_mean_accepted_per_step": float(np.mean(d_acc)),
        "draft_steps": len(d_acc),
        "draft_accept_rate_by_position": [c / len(d_acc) for c in d_pos_match],
        "turbo_mean_accepted_per_step": float(np.mean(t_acc)),
        "turbo_steps": len(t_acc),
        "turbo_accept_rate_by_position": [c / len(t_acc) for c in t_pos_match],
        "turbo_head_agree_target_greedy": [c / max(1, t_uncond_n) for c in t_uncond],
        "prompts": [rel for rel, _ in prompts],
        "new_tokens_per_prompt": new_tokens,
    }


def dir_size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


# ---------------------------------------------------------------------------
# Model card
# ---------------------------------------------------------------------------
def write_model_card(out: Path, S: dict, args):
    d, t, ev, sp = S["data"], S["timing"], S["eval"], S["spec"]
    tc, dc = S["target_config"], S["draft_config"]
    H = args.turbo_heads
    pct = lambda x: f"{100 * x:.1f}%"  # noqa: E731
    head_rows = "\n".join(
        f"| {j} | t+{2 + j} | {pct(ev['turbo_head_top1_vs_true'][j])} | "
        f"{pct(ev['turbo_head_agree_target_teacher_forced'][j])} | {pct(sp['turbo_head_agree_target_greedy'][j])} | "
        f"{pct(sp['turbo_accept_rate_by_position'][j])} |"
        for j in range(H)
    )
    card = f"""# Model family for the speculative-decoding server

Small models trained from scratch by `training/train_models.py` (see `training/README.md`) on CPU in
{fmt_s(S['total_seconds'])} ({S['host']}, torch {torch.__version__}, transformers {transformers.__version__},
`--threads {args.threads}`). They are deliberately tiny so they fit in the repository (< {args.size_limit_mb:.0f} MB
in total); they produce Python-looking code, not useful completions.

| dir | what | architecture | parameters | on disk |
|---|---|---|---|---|
| `target/` | `LlamaForCausalLM` + Turbo heads | hidden {tc['hidden_size']}, {tc['num_hidden_layers']} layers, {tc['num_attention_heads']} heads / {tc['num_key_value_heads']} KV heads (GQA, head_dim {tc['hidden_size'] // tc['num_attention_heads']}), MLP {tc['intermediate_size']}, tied embeddings | {S['target_params']:,} (+ {S['turbo_params']:,} Turbo) | {S['sizes']['target'] / 1e6:.2f} MB |
| `draft/` | `LlamaForCausalLM` distilled from target | hidden {dc['hidden_size']}, {dc['num_hidden_layers']} layers, {dc['num_attention_heads']} heads / {dc['num_key_value_heads']} KV heads, MLP {dc['intermediate_size']}, tied embeddings | {S['draft_params']:,} ({S['target_params'] / S['draft_params']:.1f}x fewer) | {S['sizes']['draft'] / 1e6:.2f} MB |

Common: vocabulary {S['vocab_size']} (byte-level BPE, identical tokenizer files in both directories),
RoPE (theta 10000), `max_position_embeddings` {args.max_positions} but **trained on {args.seq_len}-token windows**
(quality beyond ~{args.seq_len} tokens of context is untested), weights stored as float16 safetensors
(`config.json` says `dtype: float16`; pass `dtype=torch.float32` to `from_pretrained` on CPU if preferred).
`<|endoftext|>` (id {S['eot_id']}) is bos, eos, pad and unk. The tokenizer does **not** add a BOS token; training
text is a packed stream of `<|endoftext|>` + file text, cut into windows at arbitrary offsets, so prompts need
no BOS.

## Data

* Corpus: the `*.py` files of the Python {platform.python_version()} standard library
  (`sysconfig.get_paths()["stdlib"]`), excluding directories {', '.join(f'`{x}`' for x in sorted(EXCLUDED_DIRS))}
  and files over {args.max_file_bytes:,} bytes; file list sorted by relative POSIX path.
* Held-out split (never seen by the tokenizer trainer or any model): a file is held out iff
  `int(sha1(relative_path).hexdigest(), 16) % {args.heldout_mod} == 0`.
* Train: {d['train_files']} files, {d['train_bytes']:,} bytes, {d['train_tokens']:,} tokens
  ({d['train_bytes'] / d['train_tokens']:.2f} bytes/token). Held out: {d['held_files']} files,
  {d['held_bytes']:,} bytes, {d['held_tokens']:,} tokens.

## Training (seed {args.seed}, AdamW betas (0.9, 0.95), wd 0.1, grad clip 1.0, 100 warmup steps, cosine to 10%, bf16 autocast {'off' if args.no_bf16 else 'on'})

| phase | objective | steps x batch x seq | tokens | wall time |
|---|---|---|---|---|
| tokenizer | BPE on train split | - | - | {fmt_s(t['tokenizer'])} |
| target | next-token CE, lr {args.target_lr} | {S['target_run']['steps']} x {args.target_batch} x {args.seq_len} | {S['target_run']['tokens']:,} ({S['target_run']['tokens'] / d['train_tokens']:.2f} epochs) | {fmt_s(t['target'])} |
| draft | {args.kl_weight} * KL(target &#124;&#124; draft) (T={args.kd_temperature}) + {1 - args.kl_weight:.2f} * CE, lr {args.draft_lr} | {S['draft_run']['steps']} x {args.draft_batch} x {args.seq_len} | {S['draft_run']['tokens']:,} | {fmt_s(t['draft'])} |
| Turbo heads | mean CE of head j vs token t+2+j, target frozen, lr {args.heads_lr} | {S['heads_run']['steps']} x {args.heads_batch} x {args.seq_len} | {S['heads_run']['tokens']:,} | {fmt_s(t['heads'])} |
| evaluation + simulation | - | - | - | {fmt_s(t['eval'])} |

Replaying exactly: `--target-steps {S['target_run']['steps']} --draft-steps {S['draft_run']['steps']} --heads-steps {S['heads_run']['steps']}`
(with the same seed and flags) reproduces this schedule step for step.

## Held-out evaluation

Teacher-forced on the first {ev['heldout_tokens_evaluated']:,} held-out tokens ({args.seq_len}-token windows), models
reloaded from the saved float16 files and run in float32:

| model | loss (nats/token) | perplexity | top-1 next-token accuracy |
|---|---|---|---|
| target | {ev['target_loss']:.3f} | {ev['target_ppl']:.2f} | {pct(ev['target_top1'])} |
| draft | {ev['draft_loss']:.3f} | {ev['draft_ppl']:.2f} | {pct(ev['draft_top1'])} |

**Greedy agreement** (positions where argmax(draft) == argmax(target), same teacher-forced context):
**{pct(ev['greedy_agreement'])}**.

### Turbo heads (`target/speculator_config.json`, `target/speculator.safetensors`)

QEfficient multi-projection format: `{{"model_type": "turbo", "turbo_num_heads": {H}, "turbo_num_layers": {args.turbo_layers},
"num_speculative_tokens": {H}}}`; keys `projections.{{j}}.0.linear.weight|bias` ({tc['hidden_size']}x{tc['hidden_size']}, float16).
Head j applies `h + SiLU(Linear(h))` to the target's final hidden state at position t (after the final RMSNorm,
i.e. HF `output_hidden_states[-1]`) and then the target's own `lm_head`; it predicts the token at t+2+j (the base
head predicts t+1). `turbo_num_layers` is 1 on purpose: QEfficient builds `[ResBlock(d)] * n`, which repeats one
module instance, so n > 1 would share weights between a head's layers.

| head j | predicts | top-1 vs true token (teacher forced) | agrees with target's teacher-forced argmax for that token | agrees with target's greedy continuation | simulated steps accepting >= j+1 head proposals |
|---|---|---|---|---|---|
{head_rows}

### Simulated greedy speculative decoding

{len(sp['prompts'])} held-out prompts of {args.spec_prompt_len} tokens; the target greedily generates {sp['new_tokens_per_prompt']}
tokens each; at every target step the proposer's guesses are checked against the target's greedy tokens
(accepted = matching prefix + 1 token from the target itself, so 1.0 is the floor).

| proposer | mean accepted tokens per target step | steps | steps accepting >= 1, 2, ... proposals |
|---|---|---|---|
| draft model, k={sp['k']} | **{sp['draft_mean_accepted_per_step']:.2f}** | {sp['draft_steps']} | {', '.join(pct(x) for x in sp['draft_accept_rate_by_position'])} |
| Turbo heads, {H} heads | **{sp['turbo_mean_accepted_per_step']:.2f}** | {sp['turbo_steps']} | {', '.join(pct(x) for x in sp['turbo_accept_rate_by_position'])} |

Greedy continuations of a model this small tend to fall into repetitive loops, which are easy to predict, so
these simulated numbers are optimistic compared with the teacher-forced agreement above.

Project benchmark (measured speedup of the served models): run `python -m bench --method draft --k 4`.

### What limits agreement

* Capacity: the draft has {S['draft_params']:,} parameters, {100 * S['draft_params'] / S['target_params']:.0f}% of the target; {dc['num_hidden_layers']} layers of width {dc['hidden_size']},
  and more than half of its parameters are the {S['vocab_size']}x{dc['hidden_size']} embedding.
* Budget: every phase ran for minutes on one CPU thread; the target saw ~{S['target_run']['tokens'] / d['train_tokens']:.1f}
  epochs of a {d['train_tokens'] / 1e6:.1f}M-token corpus and is itself far from converged, so its distribution is
  high-entropy on hard positions (identifiers, literals, comments), where a small draft's argmax disagrees most.
* Turbo heads see only the target's last hidden state (no information about tokens t+1...), so accuracy falls
  quickly with the distance t+2+j.

## Files

`target/`: `config.json`, `generation_config.json`, `model.safetensors`, tokenizer files (`tokenizer.json`,
`tokenizer_config.json`, `special_tokens_map.json`), `speculator_config.json`, `speculator.safetensors`.
`draft/`: the same minus the speculator. `metrics.json`: all numbers on this page, machine readable.
Total size: {S['sizes']['total'] / 1e6:.2f} MB.
"""
    (out / "README.md").write_text(card)


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------
def main():
    args = ARGS
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tdir, ddir = out / "target", out / "draft"
    for d in (tdir, ddir):
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
    planned = 60 + 60 * (args.target_minutes + args.draft_minutes + args.heads_minutes) + 180
    log(f"start: out={out} threads={args.threads} seed={args.seed}; planned wall time ~{fmt_s(planned)} "
        f"(target {args.target_minutes} min, draft {args.draft_minutes} min, heads {args.heads_minutes} min "
        f"+ data/eval)")
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if not args.no_bf16 else \
        (lambda: torch.autocast("cpu", enabled=False))
    S = {"host": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs", "timing": {}}

    # ---- data + tokenizer
    t = time.time()
    root, train, held, skipped_big = collect_corpus(args)
    log(f"corpus: {root}: {len(train)} train files, {len(held)} held-out files, {skipped_big} skipped (> size cap)")
    tok = train_tokenizer([x for _, x in train], args.vocab_size)
    eot_id = tok.token_to_id(EOT)
    hf_tok = wrap_tokenizer(tok, args.max_positions)
    vocab = tok.get_vocab_size()
    train_docs = encode_docs(tok, [x for _, x in train], eot_id)
    held_docs = encode_docs(tok, [x for _, x in held], eot_id)
    train_stream = torch.from_numpy(np.concatenate(train_docs))
    held_stream = torch.from_numpy(np.concatenate(held_docs))
    S["timing"]["tokenizer"] = time.time() - t
    S["data"] = {
        "train_files": len(train), "held_files": len(held),
        "train_bytes": sum(len(x.encode()) for _, x in train), "held_bytes": sum(len(x.encode()) for _, x in held),
        "train_tokens": len(train_stream), "held_tokens": len(held_stream),
        "skipped_big_files": skipped_big, "stdlib": str(root),
        "heldout_files_list": [r for r, _ in held],
    }
    S["vocab_size"], S["eot_id"] = vocab, eot_id
    log(f"tokenizer: vocab {vocab}, eot id {eot_id}; train {len(train_stream):,} tokens, "
        f"held-out {len(held_stream):,} tokens ({fmt_s(S['timing']['tokenizer'])})")
    for d in (tdir, ddir):
        save_tokenizer(hf_tok, d)

    # ---- target
    t = time.time()
    torch.manual_seed(args.seed + 1)
    tcfg = llama_config(args, "target", vocab, eot_id)
    target = LlamaForCausalLM(tcfg)
    target.train()
    S["target_params"] = n_params(target)
    log(f"target: {S['target_params']:,} parameters")
    data_t = Windows(train_stream, args.seq_len, args.seed + 11)

    def target_step():
        x = data_t.batch(args.target_batch)
        with autocast():
            logits = target(input_ids=x).logits
        return F.cross_entropy(logits[:, :-1].float().reshape(-1, vocab), x[:, 1:].reshape(-1))

    S["target_run"] = run_phase("target", list(target.parameters()), target_step, args.target_lr,
                                args.target_minutes, args.target_steps, args.target_batch * args.seq_len,
                                args.log_every)
    S["timing"]["target"] = time.time() - t
    target.eval()
    for p in target.parameters():
        p.requires_grad_(False)

    # ---- draft (distillation)
    t = time.time()
    torch.manual_seed(args.seed + 2)
    dcfg = llama_config(args, "draft", vocab, eot_id)
    draft = LlamaForCausalLM(dcfg)
    draft.train()
    S["draft_params"] = n_params(draft)
    log(f"draft: {S['draft_params']:,} parameters ({S['target_params'] / S['draft_params']:.1f}x fewer)")
    data_d = Windows(train_stream, args.seq_len, args.seed + 12)
    T = args.kd_temperature

    def draft_step():
        x = data_d.batch(args.draft_batch)
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

    S["draft_run"] = run_phase("draft", list(draft.parameters()), draft_step, args.draft_lr,
                               args.draft_minutes, args.draft_steps, args.draft_batch * args.seq_len,
                               args.log_every)
    S["timing"]["draft"] = time.time() - t
    draft.eval()

    # ---- Turbo heads (target frozen)
    t = time.time()
    torch.manual_seed(args.seed + 3)
    H = args.turbo_heads
    heads = TurboHeads(args.target_hidden, H, args.turbo_layers)
    heads.train()
    S["turbo_params"] = n_params(heads)
    data_h = Windows(train_stream, args.seq_len, args.seed + 13)
    lm_head = target.get_output_embeddings()

    def heads_step():
        x = data_h.batch(args.heads_batch)
        with torch.no_grad(), autocast():
            hid = target.model(input_ids=x).last_hidden_state  # post-norm == output_hidden_states[-1]
        hid = hid.float()
        losses = []
        with autocast():
            for j, z in enumerate(heads(hid)):
                off = 2 + j
                logits = lm_head(z[:, : args.seq_len - off])
                losses.append(F.cross_entropy(logits.float().reshape(-1, vocab), x[:, off:].reshape(-1)))
        return torch.stack(losses).mean()

    S["heads_run"] = run_phase("heads", list(heads.parameters()), heads_step, args.heads_lr,
                               args.heads_minutes, args.heads_steps, args.heads_batch * args.seq_len,
                               args.log_every, wd=0.0)
    S["timing"]["heads"] = time.time() - t
    heads.eval()

    # ---- save
    save_model(target, tdir, eot_id)
    save_model(draft, ddir, eot_id)
    sd = {f"projections.{k}": v.detach().to(torch.float16).contiguous() for k, v in heads.projections.state_dict().items()}
    save_file(sd, str(tdir / "speculator.safetensors"), metadata={"format": "pt"})
    (tdir / "speculator_config.json").write_text(json.dumps(
        {"model_type": "turbo", "turbo_num_heads": H, "turbo_num_layers": args.turbo_layers,
         "num_speculative_tokens": H}, indent=2) + "\n")
    log(f"saved to {out}")
    del target, draft

    # ---- reload from disk and evaluate
    t = time.time()
    target = AutoModelForCausalLM.from_pretrained(tdir, dtype=torch.float32).eval()
    draft = AutoModelForCausalLM.from_pretrained(ddir, dtype=torch.float32).eval()
    heads = TurboHeads(target.config.hidden_size, H, args.turbo_layers)
    sd = {k.replace("projections.", "", 1): v.float() for k, v in load_file(str(tdir / "speculator.safetensors")).items()}
    heads.projections.load_state_dict(sd, strict=True)  # exactly how QEfficient loads it
    heads.eval()
    S["eval"] = evaluate_teacher_forced(target, draft, heads, held_stream, args.seq_len, args.eval_tokens, H)
    log("eval: " + json.dumps({k: v for k, v in S["eval"].items()}, default=float))
    prompts = pick_prompts(tok, held, args.spec_prompts, args.spec_prompt_len, args.seed)
    S["spec"] = simulate_speculation(target, draft, heads, prompts, args.spec_new_tokens, args.spec_k, H)
    log(f"spec-sim: draft k={args.spec_k} mean accepted {S['spec']['draft_mean_accepted_per_step']:.3f}, "
        f"turbo mean accepted {S['spec']['turbo_mean_accepted_per_step']:.3f}")
    S["timing"]["eval"] = time.time() - t
    S["target_config"] = {k: getattr(target.config, k) for k in
                          ["hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                           "intermediate_size"]}
    S["draft_config"] = {k: getattr(draft.config, k) for k in S["target_config"]}

    # ---- model card + metrics (sizes measured after writing both)
    S["total_seconds"] = time.time() - T0
    S["args"] = vars(args)
    for _ in range(2):
        S["sizes"] = {"target": dir_size(tdir), "draft": dir_size(ddir), "total": dir_size(out)}
        write_model_card(out, S, args)
        (out / "metrics.json").write_text(json.dumps(S, indent=1, default=float) + "\n")

    # ---- verification
    verify(out, args, S)
    log(f"all done in {fmt_s(time.time() - T0)}")


@torch.no_grad()
def verify(out: Path, args, S):
    tdir, ddir = out / "target", out / "draft"
    code = 'def f(x):\n    """Doc \u00e9\u00e8 \U0001F600"""\n\treturn {"a": [x ** 2, None]}  # tab\r\n\n'
    toks = []
    for d in (tdir, ddir):
        tk = AutoTokenizer.from_pretrained(d)
        ids = tk(code)["input_ids"]
        back = tk.decode(ids)
        assert back == code, f"round-trip mismatch in {d}: {back!r}"
        toks.append(tk)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tdir / name).read_bytes() == (ddir / name).read_bytes(), f"{name} differs between target and draft"
    tk = toks[0]
    prompt = "import os\n\n\ndef main(argv):\n    "
    for d in (tdir, ddir):
        m = AutoModelForCausalLM.from_pretrained(d).eval()
        enc = tk(prompt, return_tensors="pt")
        g = m.generate(**enc, max_new_tokens=24, do_sample=False)
        log(f"verify: {d.name} ({m.dtype}) generates: {tk.decode(g[0][enc['input_ids'].shape[1]:])!r}")
    cfg = json.loads((tdir / "speculator_config.json").read_text())
    keys = set(load_file(str(tdir / "speculator.safetensors")).keys())
    want = {f"projections.{j}.0.linear.{w}" for j in range(cfg["turbo_num_heads"]) for w in ("weight", "bias")}
    assert keys == want, f"speculator keys {sorted(keys)}"
    total = S["sizes"]["total"]
    log(f"verify: tokenizers round-trip OK, models load+generate OK, speculator keys OK; "
        f"total size {total / 1e6:.2f} MB (limit {args.size_limit_mb} MB)")
    if total > args.size_limit_mb * 1e6:
        raise SystemExit(f"ERROR: {out} is {total / 1e6:.2f} MB > {args.size_limit_mb} MB")


if __name__ == "__main__":
    main()
