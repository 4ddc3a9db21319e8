"""What a Python user already has, on the same models and prompts: transformers' own `generate()`
(plain greedy), assisted generation with the draft model, and prompt lookup. The benchmark times
them beside this project's services in the same run.

Each function returns (generated ids, target forwards). Forwards are counted with a hook on the
target model: tokens per step = (generated - 1) / (forwards - 1), the first token coming from the
prefill in both.
"""

from __future__ import annotations

import sys
import time

import torch


def load_hf(path: str, dtype: str = "float32", device: str = "cpu"):
    """dtype and device: the services', so both sides compute alike (float32 on the CPU as the
    benchmarks default)."""
    import transformers

    model: torch.nn.Module = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    return model.to(device).eval()


def hf_generate(model, ids: list[int], new: int, **kw) -> tuple[list[int], int]:
    """Greedy generate() of exactly `new` tokens, EOS an ordinary token as the services' with
    ignore_eos (not min_new_tokens, which forbids EOS and so picks another token where the
    model's argmax is EOS); kw adds assistant_model, prompt lookup, ..."""
    calls = [0]
    hook = model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        with torch.no_grad():
            out = model.generate(torch.tensor([ids], device=model.device),
                                 attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=model.device),
                                 max_new_tokens=new, do_sample=False, eos_token_id=None,
                                 pad_token_id=0, **kw)
    finally:
        hook.remove()
    return out[0, len(ids):].tolist(), calls[0]


def hf_assisted(model, draft, ids: list[int], new: int, k: int,
                tokenizers: tuple | None = None) -> tuple[list[int], int]:
    """transformers' assisted generation with a constant k (its heuristic schedule changes k).
    tokenizers: (the target's, the draft's) where they differ: universal assisted decoding,
    which re-encodes text between the two vocabularies as this project's translation does."""
    draft.generation_config.num_assistant_tokens = k
    draft.generation_config.num_assistant_tokens_schedule = "constant"
    draft.generation_config.assistant_confidence_threshold = 0.0
    universal = dict(zip(("tokenizer", "assistant_tokenizer"), tokenizers or ()))
    return hf_generate(model, ids, new, assistant_model=draft, **universal)


def hf_prompt_lookup(model, ids: list[int], new: int, k: int, ngram: int) -> tuple[list[int], int]:
    return hf_generate(model, ids, new, prompt_lookup_num_tokens=k, max_matching_ngram_size=ngram)


def hf_prefill_s(model, ids: list[int]) -> float:
    """Seconds of one forward over the prompt as generate()'s prefill runs it: the KV cache
    built, logits of the last position only."""
    import time

    with torch.no_grad():
        t0 = time.perf_counter()
        model(torch.tensor([ids], device=model.device), use_cache=True, logits_to_keep=1)
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)
        return time.perf_counter() - t0


def measured_peer(label: str, run, prompts: list[list[int]]) -> tuple[list[list[int]], float, float, list[int]]:
    """A transformers peer: (outputs, tokens/s, tokens per target step, the prompts it failed),
    timed after a warm-up. A prompt it fails on (transformers' universal assisted decoding
    raises on some: a bug of its own) has an empty output and is left out of its figures."""
    _runs(run, prompts[0])   # warm-up
    outs: list[tuple[list[int], int] | None] = []
    wall = 0.0
    for p in prompts:
        t0 = time.perf_counter()
        outs.append(_runs(run, p))
        wall += time.perf_counter() - t0 if outs[-1] else 0.0
    done = [o for o in outs if o]
    failed = [i for i, o in enumerate(outs) if o is None]
    tokens = sum(len(ids) for ids, _ in done)
    per_step = sum(len(ids) - 1 for ids, _ in done) / max(1, sum(n - 1 for _, n in done))
    note = f"  (failed on prompts {failed})" if failed else ""
    print(f"{label:<32} {tokens / max(wall, 1e-9):8.2f} tok/s  ({torch.get_num_threads()} threads)"
          f"{'':>19}accepted/step {per_step:5.2f}{note}", file=sys.stderr, flush=True)
    return [o[0] if o else [] for o in outs], tokens / max(wall, 1e-9), per_step, failed


def _runs(run, prompt: list[int]) -> tuple[list[int], int] | None:
    try:
        return run(prompt)
    except RuntimeError as exc:   # transformers' own failure on this prompt: reported, not fatal
        print(f"  transformers failed: {str(exc)[:120]}", file=sys.stderr, flush=True)
        return None


def own_tokenizers(target_model: str, draft_model: str) -> tuple | None:
    """(the target's, the draft's) tokenizers where the draft has one of its own, else None."""
    from specdec.engine.hub import resolve_model_path
    from specdec.tokenizer_fingerprint import load_tokenizer, tokenizer_fingerprint

    target, draft = (resolve_model_path(m, weights=False) for m in (target_model, draft_model))
    if tokenizer_fingerprint(target, 0) == tokenizer_fingerprint(draft, 0):
        return None
    return load_tokenizer(target), load_tokenizer(draft)
