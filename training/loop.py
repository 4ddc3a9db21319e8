"""Progress logging and the one optimisation loop every phase uses (time- or step-budgeted)."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable

import torch

T0 = time.time()


def log(msg: str) -> None:
    el = time.time() - T0
    print(f"[{int(el // 60):3d}m{int(el % 60):02d}s] {msg}", file=sys.stderr, flush=True)


def fmt_s(s: float) -> str:
    s = max(0, int(s))
    return f"{s // 60}m{s % 60:02d}s"


def cpu_seconds() -> float:
    """user + sys CPU seconds of this process so far (what `time` reports)."""
    import os

    t = os.times()
    return t.user + t.system


def run_phase(name: str, params: list[torch.nn.Parameter], step_fn: Callable[[], torch.Tensor],
              lr: float, minutes: float, steps: int, tokens_per_step: int, log_every: float,
              warmup_steps: int = 100, min_lr_frac: float = 0.1, wd: float = 0.1) -> dict:
    """step_fn() -> loss (graph attached). Schedule: linear warmup, cosine to min_lr_frac * lr.

    progress = step / steps if steps > 0 else elapsed / (minutes * 60); stops at progress >= 1.
    """
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=wd)
    budget_s = minutes * 60.0
    t_start = time.time()
    last_log = t_start
    step, ema = 0, 0.0
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
        ema = lv if step == 1 else 0.98 * ema + 0.02 * lv
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
