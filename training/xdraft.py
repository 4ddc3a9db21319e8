"""The cross-tokenizer draft (`draft-xtok/`): a draft the size of `draft/` with a tokenizer of its
own (training.xtok), for speculation that translates drafts between vocabularies.

It cannot be distilled token by token from the target (its logits are over another vocabulary),
so: (a) next-token CE on the train split in its own tokens, then (b) sequence-level distillation
(Kim & Rush 2016): the frozen target continues prompts from the train split greedily, the text is
re-encoded with the draft's tokenizer, and the draft learns the continuations by CE (mixed with
corpus windows so it keeps the corpus)."""

from __future__ import annotations

import time
from argparse import Namespace
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from training.data import EOT, Windows, token_stream
from training.loop import fmt_s, log, run_phase
from training.models import llama_config, n_params
from training.xtok import BOS, EOS

IGNORE = -100


def doc_stream(tok, texts: list[str]) -> torch.Tensor:
    """<s> + text + </s> per file (Llama-2's documents), concatenated: [T] int32."""
    bos, eos = tok.token_to_id(BOS), tok.token_to_id(EOS)
    encs = tok.encode_batch(texts, add_special_tokens=False)
    return torch.from_numpy(np.concatenate([np.asarray([bos, *e.ids, eos], dtype=np.int32) for e in encs]))


@torch.no_grad()
def target_continuations(target, target_tok, stream: torch.Tensor, args: Namespace) -> list[tuple[str, str]]:
    """(prompt text, greedy continuation text) pairs: prompts of xdraft_kd_prompt_min..max target
    tokens cut from the target's train stream (never across a file boundary; one length per
    generate batch), continued greedily (float32) by xdraft_kd_new_tokens tokens and cut at the
    first <|endoftext|> (the end of the file; the continuation then ends with "</s>")."""
    eot = target_tok.token_to_id(EOT)
    g = torch.Generator().manual_seed(args.seed + 24)
    n_batches = -(-args.xdraft_kd_sequences // args.xdraft_kd_gen_batch)
    pairs, t0 = [], time.time()
    for i in range(n_batches):
        plen = int(torch.randint(args.xdraft_kd_prompt_min, args.xdraft_kd_prompt_max + 1, (1,), generator=g))
        prompts = []
        while len(prompts) < args.xdraft_kd_gen_batch:
            s = int(torch.randint(0, len(stream) - plen, (1,), generator=g))
            if not bool((stream[s: s + plen] == eot).any()):
                prompts.append(stream[s: s + plen])
        x = torch.stack(prompts).long()
        ids = target.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=args.xdraft_kd_new_tokens,
                              min_new_tokens=args.xdraft_kd_new_tokens, do_sample=False, top_k=None, top_p=None,
                              temperature=None, pad_token_id=eot)
        for row in ids.tolist():
            cont = row[plen:]
            ends = eot in cont
            cont = cont[: cont.index(eot)] if ends else cont
            prompt = target_tok.decode(row[:plen], skip_special_tokens=False)
            full = target_tok.decode(row[:plen] + cont, skip_special_tokens=False)
            cut = common_prefix(prompt, full)  # a prompt ending inside a UTF-8 character decodes to U+FFFD
            pairs.append((full[:cut], full[cut:] + (EOS if ends else "")))
        el = time.time() - t0
        log(f"xdraft data: batch {i + 1}/{n_batches} (prompt {plen} target tokens) ETA "
            f"{fmt_s(el / (i + 1) * (n_batches - i - 1))}")
    return pairs[: args.xdraft_kd_sequences]


def common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def encode_pairs(tok, pairs: list[tuple[str, str]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """<s> + prompt + continuation in the draft's tokens (as a translating proposer would encode
    the text), with labels only on the tokens that start inside the continuation. A trailing
    "</s>" in the continuation is the eos token (added tokens are matched in the text)."""
    encs = tok.encode_batch([p + c for p, c in pairs], add_special_tokens=True)
    out = []
    for (p, _), e in zip(pairs, encs):
        ids = torch.tensor(e.ids)
        # offsets are (0, 0) for the <s> the post-processor adds; it is never a label
        starts = torch.tensor([s for s, _ in e.offsets])
        labels = torch.where(starts >= len(p), ids, torch.full_like(ids, IGNORE))
        labels[0] = IGNORE
        out.append((ids, labels))
    return out


def pad_batch(seqs: list[tuple[torch.Tensor, torch.Tensor]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right padding: a causal model's earlier positions never see it, and its labels are ignored."""
    n = max(len(x) for x, _ in seqs)
    x = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    y = torch.full((len(seqs), n), IGNORE, dtype=torch.long)
    for i, (ids, labels) in enumerate(seqs):
        x[i, : len(ids)], y[i, : len(ids)] = ids, labels
    return x, y


def next_token_ce(model, x: torch.Tensor, y: torch.Tensor, autocast: Callable) -> torch.Tensor:
    """CE of the prediction at t against y[t + 1] (y = x for plain windows)."""
    with autocast():
        logits = model(input_ids=x).logits
    v = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].float().reshape(-1, v), y[:, 1:].reshape(-1), ignore_index=IGNORE)


def build_xdraft(args: Namespace, tok):
    """LlamaForCausalLM of the --xdraft-* shape with the tokenizer's own bos/eos (pad = eos)."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(args.seed + 4)
    cfg = llama_config(args, "xdraft", tok.get_vocab_size(), tok.token_to_id(EOS), bos_id=tok.token_to_id(BOS))
    return LlamaForCausalLM(cfg).train()


def train_xdraft(args: Namespace, target, target_tok, tok, train_texts: list[str], autocast: Callable,
                 X: dict):
    """(a) CE on the draft's own token stream, (b) sequence-level distillation on the target's
    greedy continuations mixed with corpus windows. X gets params, ce_run, kd_data, kd_run, timing."""
    stream = doc_stream(tok, train_texts)
    model = build_xdraft(args, tok)
    X["params"] = n_params(model)
    X["train_stream_tokens"] = len(stream)
    log(f"xdraft: {X['params']:,} parameters, {len(stream):,} training tokens in its own vocabulary")
    windows = Windows(stream, args.seq_len, args.seed + 14)

    def ce_step():
        x = windows.batch(args.xdraft_batch)
        return next_token_ce(model, x, x, autocast)

    t = time.time()
    X["ce_run"] = run_phase("xdraft CE", list(model.parameters()), ce_step, args.xdraft_lr, args.xdraft_minutes,
                            args.xdraft_steps, args.xdraft_batch * args.seq_len, args.log_every)
    X["timing"]["ce"] = time.time() - t

    t = time.time()
    target_stream = token_stream(target_tok, train_texts, target_tok.token_to_id(EOT))
    pairs = target_continuations(target, target_tok, target_stream, args)
    seqs = encode_pairs(tok, pairs)
    labelled = sum(int((y != IGNORE).sum()) for _, y in seqs)
    X["kd_data"] = {"sequences": len(seqs), "new_tokens": args.xdraft_kd_new_tokens,
                    "prompt_len": [args.xdraft_kd_prompt_min, args.xdraft_kd_prompt_max],
                    "labelled_tokens": labelled, "text_bytes": sum(len(c.encode()) for _, c in pairs),
                    "ended_files": sum(c.endswith(EOS) for _, c in pairs)}
    X["timing"]["kd_data"] = time.time() - t
    log(f"xdraft data: {len(seqs)} continuations, {labelled:,} labelled draft tokens, {fmt_s(time.time() - t)}")

    g = torch.Generator().manual_seed(args.seed + 15)
    pad = tok.token_to_id(EOS)
    w = args.xdraft_kd_weight
    tokens_per_step = round(labelled / len(seqs) * args.xdraft_kd_batch) + args.xdraft_kd_corpus_batch * args.seq_len

    def kd_step():
        idx = torch.randint(0, len(seqs), (args.xdraft_kd_batch,), generator=g).tolist()
        x, y = pad_batch([seqs[i] for i in idx], pad)
        loss = w * next_token_ce(model, x, y, autocast)
        if args.xdraft_kd_corpus_batch:
            c = windows.batch(args.xdraft_kd_corpus_batch)
            loss = loss + (1 - w) * next_token_ce(model, c, c, autocast)
        return loss

    t = time.time()
    X["kd_run"] = run_phase("xdraft distill", list(model.parameters()), kd_step, args.xdraft_kd_lr,
                            args.xdraft_kd_minutes, args.xdraft_kd_steps, tokens_per_step, args.log_every)
    X["timing"]["kd"] = time.time() - t
    return model.eval()
