"""The model card models/README.md, written from metrics.json (S) and the run's arguments."""

from __future__ import annotations

import platform
from argparse import Namespace
from pathlib import Path

from training.data import EXCLUDED_DIRS
from training.loop import fmt_s


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def bench_rows(bench: list[dict]) -> str:
    if not bench:
        return ("Not measured in this run: `python -m bench --method turbo --json FILE` (and `--method draft`), "
                "then `python -m training --only card --bench-json FILE ...` puts the figures here.")
    rows = ["| method | k | mean accepted tokens per target step | speculative tok/s (gRPC) | "
            "target-only tok/s (gRPC) | speedup |", "|---|---|---|---|---|---|"]
    for b in bench:
        s, t = b["setup"], b["tokens_per_s"]
        rows.append(f"| {s['method']} | {s['k']} | **{b['mean_accepted_tokens']:.2f}** | "
                    f"{t['speculative_grpc']:.0f} | {t['target_only_grpc']:.0f} | **{b['speedup_b_over_a']:.2f}x** |")
    s = bench[0]["setup"]
    return (f"`python -m bench --method METHOD` (the services over gRPC on loopback, batch 1, {s['prompts']} prompts "
            f"x {s['max_new_tokens']} tokens, {s['device']}/{s['dtype']}, compile {s['compile']}; "
            f"one run each on the shared 2-core development CPU):\n\n" + "\n".join(rows))


def xdraft_section(S: dict) -> str:
    """The section of draft-xtok/ (empty until it is trained), ending with a blank line."""
    if "xdraft" not in S:
        return ""
    X = S["xdraft"]
    a, tk, c, t, ev = Namespace(**X["args"]), X["tokenizer"], X["config"], X["timing"], X["eval"]
    ce, kd, kdd = X["ce_run"], X["kd_run"], X["kd_data"]
    return f"""## Cross-tokenizer draft (`draft-xtok/`)

A draft with a vocabulary of its own, for speculation that translates drafts between tokenizers (as
TinyLlama's 32,000-token Llama-2 SentencePiece vocabulary differs from Llama-3's 128,256-token byte-level BPE):
`LlamaForCausalLM`, hidden {c['hidden_size']}, {c['num_hidden_layers']} layers, {c['num_attention_heads']} heads / {c['num_key_value_heads']} KV heads, MLP {c['intermediate_size']}, tied embeddings (the shape of `draft/`),
{X['params']:,} parameters, {S['sizes'].get('draft-xtok', 0) / 1e6:.2f} MB on disk (float16 safetensors, loaded in float32 for the figures below).

**Tokenizer** (Llama-2-like, unlike the target's): BPE over characters with byte fallback, vocabulary
{tk['vocab_size']:,} = `<unk>` `<s>` `</s>` (ids 0, 1, 2) + the 256 byte tokens `<0x00>`..`<0xFF>` (ids 3-258: a
character outside the learned alphabet encodes as its UTF-8 bytes, so every string encodes) + {tk['vocab_size'] - 259:,} learned
pieces. `▁` stands for a space (Metaspace, `prepend_scheme="first"`: prepended to the text's first piece only);
before the BPE the text is cut into pieces of `spaces + non-space run`, newline runs and trailing spaces, so an
indentation stays one piece with the word after it. The post-processor **adds `<s>`** (bos `<s>`, eos `</s>`,
pad = eos, unk `<unk>`); the decoder is transformers' LlamaConverter one (`▁` to space, byte fallback, fuse, strip the
prepended space). `AutoTokenizer` loads it as a fast tokenizer (`PreTrainedTokenizerFast`, `tokenizer.json` as saved).
On the train split: **{tk['bytes_per_token']:.2f} bytes/token**, against the target tokenizer's {tk['target_bytes_per_token']:.2f}
({tk['train_tokens']:,} tokens against {tk['target_train_tokens']:,}; no special tokens).
`decode(encode(text))` returns the text exactly on all {tk['round_trip_files']} files (checked by the run); exceptions by
construction, as in Llama-2: a text that *begins* with a space loses it (the decoder strips the first `▁`, as the
prepended one), and `▁` (U+2581) in the text decodes as a space.

| phase | objective | steps x batch | tokens | wall time |
|---|---|---|---|---|
| tokenizer | BPE on the train split, round-trip check | - | - | {fmt_s(t['tokenizer'])} |
| CE | next-token CE on the train split in its own tokens (`<s>` + file + `</s>`, packed, {a.seq_len}-token windows), lr {a.xdraft_lr}, wd 0.1 | {ce['steps']} x {a.xdraft_batch} x {a.seq_len} | {ce['tokens']:,} ({ce['tokens'] / X['train_stream_tokens']:.2f} epochs) | {fmt_s(t['ce'])} |
| target continuations | the frozen target (float32) continues {kdd['sequences']:,} prompts of {kdd['prompt_len'][0]}-{kdd['prompt_len'][1]} training tokens greedily by {kdd['new_tokens']} tokens (cut where it ends the file: `</s>`, {kdd['ended_files']} times); text decoded with the target's tokenizer, re-encoded as `<s>` + prompt + continuation with draft-xtok's | - | {kdd['labelled_tokens']:,} continuation tokens ({kdd['text_bytes']:,} bytes) | {fmt_s(t['kd_data'])} |
| sequence-level distillation | {a.xdraft_kd_weight} * CE on the continuation tokens + {1 - a.xdraft_kd_weight:.2f} * CE on corpus windows, lr {a.xdraft_kd_lr}, wd 0.1 | {kd['steps']} x ({a.xdraft_kd_batch} continuations + {a.xdraft_kd_corpus_batch} x {a.seq_len}) | {kd['tokens']:,} | {fmt_s(t['kd'])} |
| evaluation + speculation | - | - | - | {fmt_s(t['eval'])} |

The whole phase took {fmt_s(t['phase_total'])} with `--threads {a.threads}` (`python -m training --only xdraft`).
Replaying exactly: `--xdraft-steps {ce['steps']} --xdraft-kd-steps {kd['steps']}` (with the same seed and flags).

Held out, teacher forced ({a.seq_len}-token windows; the target's and the draft's rows are the ones above):

| model | tokenizer | tokens evaluated | loss (nats/token) | perplexity | top-1 | bits per byte |
|---|---|---|---|---|---|---|
| target | byte-level BPE, {S['vocab_size']} | {S['eval']['heldout_tokens_evaluated']:,} | {S['eval']['target_loss']:.3f} | {S['eval']['target_ppl']:.2f} | {pct(S['eval']['target_top1'])} | **{ev['target_bits_per_byte']:.3f}** |
| draft | byte-level BPE, {S['vocab_size']} | {S['eval']['heldout_tokens_evaluated']:,} | {S['eval']['draft_loss']:.3f} | {S['eval']['draft_ppl']:.2f} | {pct(S['eval']['draft_top1'])} | **{ev['draft_bits_per_byte']:.3f}** |
| draft-xtok | its own, {tk['vocab_size']:,} | {ev['tokens_evaluated']:,} | {ev['loss']:.3f} | {ev['ppl']:.2f} | {pct(ev['top1'])} | **{ev['bits_per_byte']:.3f}** |

Loss, perplexity and top-1 count each model's own tokens; bits per byte (loss / ln 2 x tokens / bytes of the
held-out split under that model's tokenizer, {ev['held_bytes']:,} bytes) compare across vocabularies.

{xdraft_agreement(S)}
"""


def xdraft_agreement(S: dict) -> str:
    """Agreement in text terms and speculation through the shipped code with translation."""
    X = S["xdraft"]
    sp, ta, dr = X["spec"], X["text_agreement"], S["spec"]["draft"]
    n_p = f"{len(sp['prompts'])} held-out prompts of {X['args']['spec_prompt_len']} target tokens"
    agree = f"""**Agreement with the target, in text**: the target's greedy continuations ({sp['new_tokens_per_prompt']} tokens) of the
{n_p} used below, each model teacher forced on prompt + continuation in its own tokens: the share
of continuation tokens where its argmax is the next token, and the share of continuation bytes those tokens cover.

| model | tokens | token agreement | bytes | byte agreement |
|---|---|---|---|---|
| draft (the target's tokenizer) | {ta['draft']['tokens']:,} | {pct(ta['draft']['token_agreement'])} | {ta['draft']['bytes']:,} | **{pct(ta['draft']['byte_agreement'])}** |
| draft-xtok | {ta['draft-xtok']['tokens']:,} | {pct(ta['draft-xtok']['token_agreement'])} | {ta['draft-xtok']['bytes']:,} | **{pct(ta['draft-xtok']['byte_agreement'])}** |
"""
    if "error" in sp:
        return agree + f"""
**Speculation** through the shipped code: not measured ({sp['error']}).
"""
    same = "yes" if sp["matches_target_greedy"] else "**NO**"
    return agree + f"""
**Speculation** through the shipped code, greedy, {n_p}, {sp['new_tokens_per_prompt']} new tokens each, batch 1,
float32 eager torch executor: `specdec.generation.generate` over in-process links to a verifier on `target/` and a
draft-model proposer on `draft-xtok/` built by `specdec.build.build_draft_proposer(..., target_model=target/)`,
which translates (draft-xtok drafts in its own tokens; its drafts reach the verifier as target ids).
Accepted tokens per target step count the target's own token, so 1.0 is the floor.

| proposer | mean accepted tokens per target step | steps | steps accepting >= 1, 2, ... drafts | output = target's greedy |
|---|---|---|---|---|
| draft-xtok, k={sp['k']}, translated | **{sp['mean_accepted_per_step']:.2f}** | {sp['steps']} | {', '.join(pct(x) for x in sp['accept_rate_by_position'])} | {same} |
| draft (same tokenizer), k={S['spec']['k']}, from above | {dr['mean_accepted_per_step']:.2f} | {dr['steps']} | {', '.join(pct(x) for x in dr['accept_rate_by_position'])} | - |
"""


def write_model_card(out: Path, S: dict, args: Namespace) -> None:
    d, t, ev, sp = S["data"], S["timing"], S["eval"], S["spec"]
    tc, dc, hd = S["target_config"], S["draft_config"], S["heads_data"]
    H = len(ev["turbo_head_top1_vs_true"])
    dr, tu = sp["draft"], sp["turbo"]
    head_rows = "\n".join(
        f"| {j} | t+{2 + j} | {pct(ev['turbo_head_top1_vs_true'][j])} | "
        f"{pct(ev['turbo_head_agree_target_teacher_forced'][j])} | {pct(sp['turbo_head_agree_target_greedy'][j])} | "
        f"{pct(tu['accept_rate_by_position'][j])} |"
        for j in range(H))
    hr = S["heads_run"]
    card = f"""# Model family for the speculative-decoding server

Small models trained from scratch by `python -m training` (see `training/README.md`) on CPU
({S['host']}, torch {S['versions']['torch']}, transformers {S['versions']['transformers']}, `--threads {args.threads}`).
They are deliberately tiny so they fit in the repository (< {args.size_limit_mb:.0f} MB in total); they produce
Python-looking code, not useful completions.

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

* Corpus: the `*.py` files of the Python {S['versions']['python']} standard library
  (`sysconfig.get_paths()["stdlib"]`), excluding directories {', '.join(f'`{x}`' for x in sorted(EXCLUDED_DIRS))}
  and files over {args.max_file_bytes:,} bytes; file list sorted by relative POSIX path.
* Held-out split (never seen by the tokenizer trainer or any model): a file is held out iff
  `int(sha1(relative_path).hexdigest(), 16) % {args.heldout_mod} == 0`.
* Train: {d['train_files']} files, {d['train_bytes']:,} bytes, {d['train_tokens']:,} tokens
  ({d['train_bytes'] / d['train_tokens']:.2f} bytes/token). Held out: {d['held_files']} files,
  {d['held_bytes']:,} bytes, {d['held_tokens']:,} tokens.
* Benchmark prompts from held-out files only: `bench/prompts/heldout.json` (openings of 8
  functions, `python -m bench --prompts-file`) and `bench/prompts/agent.json` (the
  repeated workload of `python -m bench.suffix`).

## Training (seed {args.seed}, AdamW betas (0.9, 0.95), grad clip 1.0, cosine to 10%, bf16 autocast {'off' if args.no_bf16 else 'on'})

| phase | objective | steps x batch | tokens | wall time |
|---|---|---|---|---|
| tokenizer | BPE on train split | - | - | {fmt_s(t['tokenizer'])} |
| target | next-token CE, lr {S['target_lr']}, wd 0.1 | {S['target_run']['steps']} x {S['target_batch']} x {args.seq_len} | {S['target_run']['tokens']:,} ({S['target_run']['tokens'] / d['train_tokens']:.2f} epochs) | {fmt_s(t['target'])} |
| draft | {S['kl_weight']} * KL(target &#124;&#124; draft) + {1 - S['kl_weight']:.2f} * CE, lr {S['draft_lr']}, wd 0.1 | {S['draft_run']['steps']} x {S['draft_batch']} x {args.seq_len} | {S['draft_run']['tokens']:,} | {fmt_s(t['draft'])} |
| Turbo heads: data | the frozen target continues {hd['sequences']:,} prompts of {hd['prompt_len'][0]}-{hd['prompt_len'][1]} training tokens by {hd['new_tokens']} tokens ({pct(hd['sampled_frac'])} sampled at temperature 1, the rest greedy) | - | {hd['positions']:,} positions | {fmt_s(t['heads_data'])} |
| Turbo heads | self-distillation: CE of head j at t vs the target's own argmax for t+2+j on those continuations (weight {args.heads_decay}^j), target frozen, lr {args.heads_lr} | {hr['steps']} x {args.heads_batch} continuations | {hr['tokens']:,} positions | {fmt_s(t['heads'])} |
| evaluation + speculation | - | - | - | {fmt_s(t['eval'])} |

The Turbo heads (data + training) took {S['heads_cpu_minutes']:.1f} CPU-minutes (user + sys) with `--threads {args.threads}`.
Replaying exactly: `--target-steps {S['target_run']['steps']} --draft-steps {S['draft_run']['steps']} --heads-steps {hr['steps']}`
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
Head j applies `h + SiLU(Linear(h))` to the target's final hidden state at position t (after the final RMSNorm)
and then the target's own `lm_head`; it predicts the token at t+2+j (the base head predicts t+1).

What the format allows: a head's **width is fixed** at the target's hidden size (one square `Linear` with bias per
ResBlock, read through the target's `lm_head`); its **depth** `turbo_num_layers` n is allowed but QEfficient builds
`[ResBlock(d)] * n`, one module instance repeated, so n > 1 applies the same weights n times (no new parameters);
the **number of heads** H is free (each adds one `lm_head` pass at the drafting position and one more draft per
step). The shipped heads keep n = 1 and H = 4.

| head j | predicts | top-1 vs true token (teacher forced) | agrees with target's teacher-forced argmax for that token | agrees with target's greedy continuation | speculation steps accepting >= j+1 head drafts |
|---|---|---|---|---|---|
{head_rows}

### Speculative decoding, simulated through the shipped code

{len(sp['prompts'])} held-out prompts of {args.spec_prompt_len} tokens, {sp['new_tokens_per_prompt']} new tokens each, greedy:
`specdec.generation.generate` over in-process links to a verifier (and a draft-model proposer) built by
`specdec.build`, float32 eager torch executor, batch 1. Accepted tokens per target step count the target's own
token, so 1.0 is the floor.

| proposer | mean accepted tokens per target step | steps | steps accepting >= 1, 2, ... drafts |
|---|---|---|---|
| draft model, k={sp['k']} | **{dr['mean_accepted_per_step']:.2f}** | {dr['steps']} | {', '.join(pct(x) for x in dr['accept_rate_by_position'])} |
| Turbo heads, {H} heads | **{tu['mean_accepted_per_step']:.2f}** | {tu['steps']} | {', '.join(pct(x) for x in tu['accept_rate_by_position'])} |

Greedy continuations of a model this small tend to fall into repetitive loops, which are easy to predict (and the
Turbo heads are trained on such continuations), so these numbers are optimistic compared with the teacher-forced
agreement above.

### Measured through the services

{bench_rows(S.get('bench', []))}

### What limits agreement

* Capacity: the draft has {S['draft_params']:,} parameters, {100 * S['draft_params'] / S['target_params']:.0f}% of the target; {dc['num_hidden_layers']} layers of width {dc['hidden_size']},
  and more than half of its parameters are the {S['vocab_size']}x{dc['hidden_size']} embedding.
* Budget: every phase ran for minutes on one CPU thread; the target saw ~{S['target_run']['tokens'] / d['train_tokens']:.1f}
  epochs of a {d['train_tokens'] / 1e6:.1f}M-token corpus and is itself far from converged, so its distribution is
  high-entropy on hard positions (identifiers, literals, comments), where a small draft's argmax disagrees most.
* Turbo heads see only the target's last hidden state (no information about the tokens t+1... they skip), so
  accuracy falls quickly with the distance t+2+j.

{xdraft_section(S)}## Files

`target/`: `config.json`, `generation_config.json`, `model.safetensors`, tokenizer files (`tokenizer.json`,
`tokenizer_config.json`, `special_tokens_map.json`), `speculator_config.json`, `speculator.safetensors`.
`draft/`: the same minus the speculator. `metrics.json`: all numbers on this page, machine readable.
Total size: {S['sizes']['total'] / 1e6:.2f} MB.
"""
    (out / "README.md").write_text(card)


def versions() -> dict:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}
