"""The phases in order: corpus -> tokenizer -> target -> draft -> Turbo heads -> save -> reload
and evaluate -> draft-xtok (its own tokenizer, training, evaluation) -> model card ->
load/generate/round-trip verification. `--only heads` and `--only xdraft` start from the target
already saved in --out, `--only xdraft-eval` re-measures the saved draft-xtok; `--only card` only
rewrites the card."""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
import traceback
from argparse import Namespace
from pathlib import Path

import torch

from specdec.engine.turbo import load_turbo_heads, save_turbo_heads
from training.card import versions, write_model_card
from training.data import (
    EOT,
    collect_corpus,
    load_tokenizer,
    pick_prompts,
    save_tokenizer,
    token_stream,
    train_tokenizer,
)
from training.evaluation import (
    bits_per_byte,
    continuation_agreement,
    evaluate_teacher_forced,
    head_agreement_on,
    lm_eval,
    speculate,
)
from training.heads import train_heads
from training.loop import T0, cpu_seconds, fmt_s, log
from training.models import save_model, train_draft, train_target
from training.xdraft import doc_stream, train_xdraft
from training.xtok import BOS, EOS, build_xtok, save_xtok

XDIR = "draft-xtok"


def dir_size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def autocast_for(args: Namespace):
    if args.no_bf16:
        return lambda: torch.autocast("cpu", enabled=False)
    return lambda: torch.autocast("cpu", dtype=torch.bfloat16)


def corpus(args: Namespace, S: dict, tok=None):
    """-> (tok, eot_id, train stream, held stream, train files, held files); trains the tokenizer if none."""
    t = time.time()
    root, train, held, skipped_big = collect_corpus(args.stdlib, args.max_file_bytes, args.max_files,
                                                    args.heldout_mod)
    log(f"corpus: {root}: {len(train)} train files, {len(held)} held-out files, {skipped_big} skipped (> size cap)")
    tok = tok or train_tokenizer([x for _, x in train], args.vocab_size)
    eot_id = tok.token_to_id(EOT)
    train_stream = token_stream(tok, [x for _, x in train], eot_id)
    held_stream = token_stream(tok, [x for _, x in held], eot_id)
    S["timing"]["tokenizer"] = time.time() - t
    S["data"] = {
        "train_files": len(train), "held_files": len(held),
        "train_bytes": sum(len(x.encode()) for _, x in train), "held_bytes": sum(len(x.encode()) for _, x in held),
        "train_tokens": len(train_stream), "held_tokens": len(held_stream),
        "skipped_big_files": skipped_big, "stdlib": str(root), "heldout_files_list": [r for r, _ in held],
    }
    S["vocab_size"], S["eot_id"] = tok.get_vocab_size(), eot_id
    log(f"tokenizer: vocab {S['vocab_size']}, eot id {eot_id}; train {len(train_stream):,} tokens, "
        f"held-out {len(held_stream):,} tokens")
    return tok, eot_id, train_stream, held_stream, train, held


def reload_target(tdir: Path):
    """The saved (float16) target in float32, frozen."""
    from transformers import AutoModelForCausalLM

    target = AutoModelForCausalLM.from_pretrained(tdir, dtype=torch.float32).eval()
    for p in target.parameters():
        p.requires_grad_(False)
    return target


def heads_phase(args: Namespace, target, train_stream: torch.Tensor, tdir: Path, S: dict) -> None:
    t, cpu = time.time(), cpu_seconds()
    cfg, heads = train_heads(args, target, train_stream, autocast_for(args), S)
    S["timing"]["heads_data"] = time.time() - t - S["heads_run"]["seconds"]
    S["timing"]["heads"] = S["heads_run"]["seconds"]
    S["heads_cpu_minutes"] = (cpu_seconds() - cpu) / 60
    save_turbo_heads(tdir, cfg, heads)
    log(f"heads: saved to {tdir} ({S['heads_cpu_minutes']:.1f} CPU-minutes)")


def evaluate(args: Namespace, out: Path, tok, held_stream: torch.Tensor, held, S: dict) -> None:
    """Reload from disk (float32) and measure; S gets eval, spec, configs."""
    from transformers import AutoModelForCausalLM

    t = time.time()
    tdir, ddir = out / "target", out / "draft"
    target = AutoModelForCausalLM.from_pretrained(tdir, dtype=torch.float32).eval()
    draft = AutoModelForCausalLM.from_pretrained(ddir, dtype=torch.float32).eval()
    _, heads = load_turbo_heads(tdir, target.config.hidden_size)  # exactly how QEfficient loads it
    S["eval"] = evaluate_teacher_forced(target, draft, heads.float(), held_stream, args.seq_len, args.eval_tokens)
    log("eval: " + json.dumps(S["eval"], default=float))
    named = pick_prompts(tok, held, args.spec_prompts, args.spec_prompt_len, args.seed)
    prompts = [ids for _, ids in named]
    dr = speculate(tdir, ddir, prompts, args.spec_new_tokens, args.spec_k)
    tu = speculate(tdir, None, prompts, args.spec_new_tokens, len(heads))
    assert dr.pop("outputs") == tu["outputs"], "greedy speculation must give the target's greedy output"
    S["spec"] = {"k": args.spec_k, "draft": dr, "turbo": tu, "prompts": [rel for rel, _ in named],
                 "new_tokens_per_prompt": args.spec_new_tokens,
                 "turbo_head_agree_target_greedy": head_agreement_on(target, heads.float(), prompts,
                                                                     tu.pop("outputs"))}
    log(f"speculation: draft k={args.spec_k} {dr['mean_accepted_per_step']:.3f} tokens per step, "
        f"turbo {tu['mean_accepted_per_step']:.3f}")
    S["timing"]["eval"] = time.time() - t
    keys = ["hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size"]
    S["target_config"] = {k: getattr(target.config, k) for k in keys}
    S["draft_config"] = {k: getattr(draft.config, k) for k in keys}


def finish(args: Namespace, out: Path, S: dict) -> None:
    """Card + metrics (sizes measured after writing both), then the load/generate checks."""
    S["bench"] = [json.loads(p.read_text()) for p in args.bench_json] or S.get("bench", [])
    S["versions"] = S.get("versions") or versions()
    for _ in range(2):
        S["sizes"] = {"target": dir_size(out / "target"), "draft": dir_size(out / "draft"), "total": dir_size(out)}
        if (out / XDIR).exists():
            S["sizes"][XDIR] = dir_size(out / XDIR)
        # metrics first: a card that fails to render can be rewritten from them (--only card)
        (out / "metrics.json").write_text(json.dumps(S, indent=1, default=float) + "\n")
        write_model_card(out, S, Namespace(**S["args"]))  # the flags of the run that trained
    from training.verify import verify

    verify(out, args, S)


def run(args: Namespace) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    if args.only == "card":
        S = json.loads((out / "metrics.json").read_text())
        return finish(args, out, S)
    if args.only == "heads":
        return run_heads(args, out)
    if args.only in ("xdraft", "xdraft-eval"):
        return run_xdraft(args, out)
    out.mkdir(parents=True, exist_ok=True)
    tdir, ddir = out / "target", out / "draft"
    for d in (tdir, ddir):
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
    log(f"start: out={out} threads={args.threads} seed={args.seed} (target {args.target_minutes} min, "
        f"draft {args.draft_minutes} min, heads {args.heads_minutes} min + data/eval)")
    S: dict = {"host": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs", "timing": {},
               "versions": versions()}
    for k in ("target_lr", "target_batch", "draft_lr", "draft_batch", "kl_weight"):
        S[k] = getattr(args, k)
    tok, eot_id, train_stream, held_stream, train, held = corpus(args, S)
    for d in (tdir, ddir):
        save_tokenizer(tok, d, args.max_positions)
    autocast = autocast_for(args)
    t = time.time()
    target = train_target(args, train_stream, S["vocab_size"], eot_id, autocast, S)
    S["timing"]["target"] = time.time() - t
    t = time.time()
    draft = train_draft(args, target, train_stream, S["vocab_size"], eot_id, autocast, S)
    S["timing"]["draft"] = time.time() - t
    save_model(target, tdir, eot_id)
    save_model(draft, ddir, eot_id)
    del target, draft
    heads_phase(args, reload_target(tdir), train_stream, tdir, S)  # the heads serve the saved weights
    evaluate(args, out, tok, held_stream, held, S)
    S["total_seconds"] = time.time() - T0
    S["args"] = plain_args(args)
    xdraft_phase(args, out, tok, train, held, S)
    finish(args, out, S)
    log(f"all done in {fmt_s(time.time() - T0)}")
    xdraft_spec_check(S)


def run_heads(args: Namespace, out: Path) -> None:
    """Retrain the heads on the saved target (same corpus, the saved tokenizer) and re-measure;
    metrics.json keeps the target's and the draft's training record."""
    tdir = out / "target"
    S = json.loads((out / "metrics.json").read_text())
    for k in ("target_lr", "target_batch", "draft_lr", "draft_batch", "kl_weight"):
        S.setdefault(k, S["args"][k])
    tok, _, train_stream, held_stream, _, held = corpus(args, S, load_tokenizer(tdir))
    heads_phase(args, reload_target(tdir), train_stream, tdir, S)
    evaluate(args, out, tok, held_stream, held, S)
    heads_args = {k: v for k, v in vars(args).items() if k.startswith(("heads_", "turbo_", "spec_"))}
    S["args"].update(heads_args)
    S["heads_args"] = heads_args
    S.pop("bench", None)  # measured with the old heads
    finish(args, out, S)
    log(f"heads retrained and measured in {fmt_s(time.time() - T0)}")


def plain_args(args: Namespace) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "bench_json"}


def xdraft_phase(args: Namespace, out: Path, target_tok, train: list, held: list, S: dict) -> None:
    """draft-xtok: its tokenizer (exact round trip checked), CE, sequence-level distillation from
    the saved target, save, measure; S["xdraft"]."""
    t0 = time.time()
    xdir = out / XDIR
    if xdir.exists():
        shutil.rmtree(xdir)
    xdir.mkdir(parents=True)
    log(f"xdraft: start (CE {args.xdraft_minutes} min, target continuations {args.xdraft_kd_sequences} x "
        f"{args.xdraft_kd_new_tokens} tokens, distillation {args.xdraft_kd_minutes} min + tokenizer/eval)")
    tok, stats = build_xtok(train, held, args.xdraft_vocab_size, target_tok)
    log(f"xdraft tokenizer: vocab {stats['vocab_size']}, {stats['bytes_per_token']:.2f} bytes/token on the train "
        f"split (target's {stats['target_bytes_per_token']:.2f}), exact round trip on {stats['round_trip_files']} "
        f"files, {fmt_s(time.time() - t0)}")
    save_xtok(tok, xdir, args.max_positions)
    X: dict = {"tokenizer": stats, "timing": {"tokenizer": time.time() - t0},
               "args": {k: v for k, v in plain_args(args).items()
                        if k.startswith(("xdraft_", "spec_")) or k in ("seed", "threads", "no_bf16", "seq_len",
                                                                       "eval_tokens", "max_positions")}}
    target = reload_target(out / "target")
    model = train_xdraft(args, target, target_tok, tok, [x for _, x in train], autocast_for(args), X)
    save_model(model, xdir, tok.token_to_id(EOS), tok.token_to_id(BOS))
    del model
    keys = ["hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size"]
    cfg = load_config(xdir)
    X["config"] = {k: getattr(cfg, k) for k in keys}
    X["timing"]["train_total"] = time.time() - t0
    S["xdraft"] = X
    xdraft_evaluate(args, out, target_tok, target, held, S)
    X["timing"]["phase_total"] = time.time() - t0
    log(f"xdraft: phase done in {fmt_s(X['timing']['phase_total'])}")


def load_config(d: Path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(d)


@torch.no_grad()
def target_greedy(target, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    """The target's greedy continuations (float32, one prompt at a time: no padding)."""
    outs = []
    for p in prompts:
        x = torch.tensor([p])
        g = target.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new_tokens,
                            min_new_tokens=new_tokens, do_sample=False, top_k=None, top_p=None, temperature=None,
                            pad_token_id=target.config.eos_token_id)
        outs.append(g[0, len(p):].tolist())
    return outs


def xdraft_evaluate(args: Namespace, out: Path, target_tok, target, held: list, S: dict) -> None:
    """The saved draft-xtok reloaded in float32: held-out loss in its own tokens and bits per byte
    (with the target's and the draft's, from S["eval"]), agreement with the target's greedy
    continuations of the speculation prompts in text terms, and speculation through the shipped
    code with translation. A speculation that cannot run is recorded (and reported by
    xdraft_spec_check after the card is written)."""
    from transformers import AutoModelForCausalLM

    t = time.time()
    X, xdir, tdir = S["xdraft"], out / XDIR, out / "target"
    xtok = load_tokenizer(xdir)
    xmodel = AutoModelForCausalLM.from_pretrained(xdir, dtype=torch.float32).eval()
    held_stream = doc_stream(xtok, [x for _, x in held])
    ev = lm_eval(xmodel, held_stream, args.seq_len, args.eval_tokens)
    d, nbytes = S["data"], sum(len(x.encode()) for _, x in held)
    ev.update(held_tokens=len(held_stream), held_bytes=nbytes,
              bits_per_byte=bits_per_byte(ev["loss"], len(held_stream), nbytes),
              target_bits_per_byte=bits_per_byte(S["eval"]["target_loss"], d["held_tokens"], d["held_bytes"]),
              draft_bits_per_byte=bits_per_byte(S["eval"]["draft_loss"], d["held_tokens"], d["held_bytes"]))
    log("xdraft eval: " + json.dumps(ev, default=float))
    named = pick_prompts(target_tok, held, args.spec_prompts, args.spec_prompt_len, args.seed)
    prompts = [ids for _, ids in named]
    greedy = target_greedy(target, prompts, args.spec_new_tokens)
    texts = [(target_tok.decode(p, skip_special_tokens=False), target_tok.decode(g, skip_special_tokens=False))
             for p, g in zip(prompts, greedy)]
    draft = AutoModelForCausalLM.from_pretrained(out / "draft", dtype=torch.float32).eval()
    X["text_agreement"] = {XDIR: continuation_agreement(xmodel, xtok, texts, add_bos=True),
                           "draft": continuation_agreement(draft, target_tok, texts, add_bos=False)}
    log("xdraft agreement on the target's greedy text: " + json.dumps(X["text_agreement"], default=float))
    X["eval"] = ev
    try:
        sp = speculate(tdir, xdir, prompts, args.spec_new_tokens, args.spec_k)
        sp["matches_target_greedy"] = sp.pop("outputs") == greedy
        log(f"xdraft speculation: k={args.spec_k} {sp['mean_accepted_per_step']:.3f} tokens per target step, "
            f"output == target greedy: {sp['matches_target_greedy']}")
    except Exception as e:  # the translating proposer is specdec's: keep the trained model, write the card
        sp = {"error": f"{type(e).__name__}: {e}"}
        log(f"ERROR: xdraft speculation not measured:\n{traceback.format_exc()}")
    X["spec"] = dict(sp, k=args.spec_k, prompts=[rel for rel, _ in named], new_tokens_per_prompt=args.spec_new_tokens)
    X["timing"]["eval"] = time.time() - t


def xdraft_spec_check(S: dict) -> None:
    """Fail the run (after everything else is saved) when draft-xtok's speculation could not run."""
    err = S.get("xdraft", {}).get("spec", {}).get("error")
    if err:
        raise SystemExit(f"ERROR: {err}; rerun `python -m training --only xdraft-eval` once it does")


def run_xdraft(args: Namespace, out: Path) -> None:
    """--only xdraft: train draft-xtok against the saved target (its tokenizer, the same corpus);
    --only xdraft-eval: re-measure the saved draft-xtok. metrics.json keeps everything else."""
    S = json.loads((out / "metrics.json").read_text())
    target_tok = load_tokenizer(out / "target")
    root, train, held, _ = collect_corpus(args.stdlib, args.max_file_bytes, args.max_files, args.heldout_mod)
    log(f"corpus: {root}: {len(train)} train files, {len(held)} held-out files")
    if args.only == "xdraft":
        xdraft_phase(args, out, target_tok, train, held, S)
    else:
        if "xdraft" not in S:
            raise SystemExit(f"ERROR: {out / 'metrics.json'} has no draft-xtok record: run --only xdraft first")
        xdraft_evaluate(args, out, target_tok, reload_target(out / "target"), held, S)
    finish(args, out, S)
    log(f"{args.only} done in {fmt_s(time.time() - T0)}")
    xdraft_spec_check(S)
