"""End-of-run checks: tokenizers round-trip, the models load and generate in transformers,
the speculator has QEfficient's keys, and --out fits the size limit."""

from __future__ import annotations

import json
from argparse import Namespace
from pathlib import Path

import torch

from training.loop import log


@torch.no_grad()
def verify(out: Path, args: Namespace, S: dict) -> None:
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tdir, ddir = out / "target", out / "draft"
    code = 'def f(x):\n    """Doc \u00e9\u00e8 \U0001F600"""\n\treturn {"a": [x ** 2, None]}  # tab\r\n\n'
    toks = []
    for d in (tdir, ddir):
        tk = AutoTokenizer.from_pretrained(d)
        back = tk.decode(tk(code)["input_ids"])
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
    want = {f"projections.{j}.{i}.linear.{w}" for j in range(cfg["turbo_num_heads"])
            for i in range(cfg["turbo_num_layers"]) for w in ("weight", "bias")}
    assert keys == want, f"speculator keys {sorted(keys)}"
    if (out / "draft-xtok").exists():
        verify_xdraft(out / "draft-xtok", code, prompt, tk)
    total = S["sizes"]["total"]
    log(f"verify: tokenizers round-trip OK, models load+generate OK, speculator keys OK; "
        f"total size {total / 1e6:.2f} MB (limit {args.size_limit_mb} MB)")
    if total > args.size_limit_mb * 1e6:
        raise SystemExit(f"ERROR: {out} is {total / 1e6:.2f} MB > {args.size_limit_mb} MB")


@torch.no_grad()
def verify_xdraft(xdir: Path, code: str, prompt: str, target_tok) -> None:
    """draft-xtok: its own tokenizer (not the target's) adds <s> and round-trips exactly; the
    model is float16 and generates."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tk = AutoTokenizer.from_pretrained(xdir)
    assert tk.get_vocab() != target_tok.get_vocab(), "draft-xtok has the target's vocabulary"
    ids = tk(code)["input_ids"]
    assert ids[0] == tk.bos_token_id and tk.convert_ids_to_tokens(ids[0]) == "<s>", "draft-xtok must add <s>"
    back = tk.decode(ids, skip_special_tokens=True)
    assert back == code, f"round-trip mismatch in {xdir}: {back!r}"
    m = AutoModelForCausalLM.from_pretrained(xdir).eval()
    assert m.dtype == torch.float16, m.dtype
    enc = tk(prompt, return_tensors="pt")
    g = m.generate(**enc, max_new_tokens=24, do_sample=False)
    log(f"verify: {xdir.name} ({m.dtype}, vocab {len(tk)}) generates: "
        f"{tk.decode(g[0][enc['input_ids'].shape[1]:])!r}")
