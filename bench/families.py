"""The model families users bring, as random-weight checkpoints built from their published configs.

`FAMILIES` holds each family's config.json as published on the hub (the fields transformers'
config classes take); `build_checkpoint` writes a random checkpoint of that shape (layers
trimmed), or, with `shrink=True`, a small one that keeps what distinguishes the family (RoPE
scaling, tied embeddings, q/k/v bias, q/k norm, decoupled head_dim, the GQA ratio) for fast
tests. Random weights suffice wherever a comparison runs against transformers on the same
checkpoint; the benchmark (bench/scale.py) uses the published shapes for realistic step costs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FAMILIES: dict[str, dict[str, Any]] = {
    # meta-llama/Llama-3.2-1B config.json
    "llama-3.2-1b": dict(
        model_type="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192,
        num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
        rope_theta=500000.0,
        rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0,
                          high_freq_factor=4.0, original_max_position_embeddings=8192),
        max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=True,
        attention_bias=False, mlp_bias=False, hidden_act="silu",
        bos_token_id=128000, eos_token_id=128001, torch_dtype="bfloat16"),
    # TinyLlama/TinyLlama-1.1B-Chat-v1.0 config.json
    "tinyllama-1.1b": dict(
        model_type="llama", vocab_size=32000, hidden_size=2048, intermediate_size=5632,
        num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
        rope_theta=10000.0, rope_scaling=None, max_position_embeddings=2048, rms_norm_eps=1e-5,
        tie_word_embeddings=False, attention_bias=False, hidden_act="silu",
        bos_token_id=1, eos_token_id=2, torch_dtype="bfloat16"),
    # Qwen/Qwen2.5-0.5B config.json (q/k/v biases are implied by model_type qwen2; the window
    # is published but off: use_sliding_window false)
    "qwen2.5-0.5b": dict(
        model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
        num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
        rope_theta=1000000.0, max_position_embeddings=32768, rms_norm_eps=1e-6,
        tie_word_embeddings=True, sliding_window=32768, use_sliding_window=False,
        max_window_layers=24, hidden_act="silu",
        bos_token_id=151643, eos_token_id=151643, torch_dtype="bfloat16"),
    # Qwen/Qwen3-0.6B config.json (head_dim 128 != hidden/heads = 64; q/k RMSNorm by model_type)
    "qwen3-0.6b": dict(
        model_type="qwen3", vocab_size=151936, hidden_size=1024, intermediate_size=3072,
        num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
        rope_theta=1000000.0, rope_scaling=None, max_position_embeddings=40960,
        rms_norm_eps=1e-6, tie_word_embeddings=True, attention_bias=False,
        sliding_window=None, use_sliding_window=False, max_window_layers=28, hidden_act="silu",
        bos_token_id=151643, eos_token_id=151645, torch_dtype="bfloat16"),
    # mistralai/Mistral-7B-v0.1 config.json
    "mistral-7b": dict(
        model_type="mistral", vocab_size=32000, hidden_size=4096, intermediate_size=14336,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
        rope_theta=10000.0, max_position_embeddings=32768, rms_norm_eps=1e-5,
        tie_word_embeddings=False, sliding_window=4096, hidden_act="silu",
        bos_token_id=1, eos_token_id=2, torch_dtype="bfloat16"),
}

# shrink=True: small widths with each family's ratios kept (GQA heads/kv_heads, Qwen3's head_dim
# twice hidden/heads); everything else (RoPE, ties, biases, norms, windows) stays as published.
SHRUNK: dict[str, dict[str, int]] = {
    "llama-3.2-1b": dict(vocab_size=512, hidden_size=64, intermediate_size=256,
                         num_attention_heads=4, num_key_value_heads=1, head_dim=16),   # 4:1
    "tinyllama-1.1b": dict(vocab_size=512, hidden_size=64, intermediate_size=176,
                           num_attention_heads=8, num_key_value_heads=1),              # 8:1
    "qwen2.5-0.5b": dict(vocab_size=512, hidden_size=112, intermediate_size=608,
                         num_attention_heads=7, num_key_value_heads=1),                # 7:1
    "qwen3-0.6b": dict(vocab_size=512, hidden_size=64, intermediate_size=192,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=32),     # 2:1
    "mistral-7b": dict(vocab_size=512, hidden_size=64, intermediate_size=224,
                       num_attention_heads=4, num_key_value_heads=1),                  # 4:1
}

# Random weights' std: wide enough that argmax decisions are clear-cut (the default init is
# nearly uniform over the vocab) and greedy comparisons are not decided by float rounding.
WEIGHT_STD = 0.2


def family_config(family: str, layers: int, shrink: bool = False, **overrides: Any) -> dict[str, Any]:
    """config.json fields of `family` with `layers` layers (shrunk if asked) and `overrides`."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r} (known: {', '.join(FAMILIES)})")
    fields = dict(FAMILIES[family], num_hidden_layers=layers)
    if shrink:
        published_vocab = fields["vocab_size"]
        fields.update(SHRUNK[family])
        # Special ids past the shrunk vocab keep their distance from its top.
        for key in ("bos_token_id", "eos_token_id"):
            if fields[key] >= fields["vocab_size"]:
                fields[key] = fields["vocab_size"] - (published_vocab - fields[key])
    fields.update(overrides)
    return fields


def save_word_tokenizer(path: Path, prefix: str = "t", vocab: int = 96, bos: int = 0,
                        eos: int = 1) -> None:
    """A word-level tokenizer over tokens '<prefix>i' for id i, with '<s>' at `bos` and '</s>'
    at `eos`: lets the services fingerprint it and the client encode text, at no training cost.
    Another prefix gives another tokenizer. The default vocab is the tests' tiny models'
    (tests/tiny_models.VOCAB)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {f"{prefix}{i}": i for i in range(vocab) if i not in (bos, eos)}
    words["<s>"], words["</s>"] = bos, eos
    tok = Tokenizer(models.WordLevel(vocab=words, unk_token="</s>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                            unk_token="</s>").save_pretrained(path)


def _layer_of(key: str) -> int:
    """The decoder layer a tensor belongs to ("model.layers.3.mlp..." -> 3); -1 for the rest."""
    parts = key.split(".")
    return int(parts[2]) if parts[:2] == ["model", "layers"] else -1


def save_truncated(src: Path, dst: Path, layers: int) -> Path:
    """A draft that shares the target's first layers, embeddings and head: it agrees with the
    target often but not always, so acceptance and rejection are both exercised. Tensors are
    copied as stored (no transformers model is built), so a large checkpoint cuts fast."""
    import shutil

    from safetensors.torch import load_file, save_file

    config = json.loads((src / "config.json").read_text())
    state = {}
    for f in sorted(src.glob("model*.safetensors")):
        state.update({k: v for k, v in load_file(str(f)).items() if _layer_of(k) < layers})
    dst.mkdir(parents=True, exist_ok=True)
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    config["num_hidden_layers"] = layers
    if config.get("layer_types"):
        config["layer_types"] = config["layer_types"][:layers]
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    for f in src.iterdir():  # tokenizer and generation config as they are; weights cut above
        weights = f.name.startswith(("model", "speculator")) and ".safetensors" in f.name
        if f.is_file() and not weights and f.name not in ("config.json", "speculator_config.json"):
            shutil.copy(f, dst / f.name)
    return dst


def build_checkpoint(family: str, out: Path, layers: int, *, dtype: str = "bfloat16", seed: int = 0,
                     shrink: bool = False, **overrides: Any) -> Path:
    """Write a random `family` checkpoint (config.json, model.safetensors, generation config and
    a word-level tokenizer of the family's vocab) to `out` and return `out`. Weights are
    allocated once, uninitialised, then drawn once: a 2-layer Llama-3.2-1B takes seconds. The
    tokenizer is written last, so its presence marks a complete checkpoint (bench/scale.py)."""
    import torch
    import transformers

    fields = family_config(family, layers, shrink, **overrides)
    config = transformers.AutoConfig.for_model(**fields)
    torch_dtype = getattr(torch, dtype)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    model.to_empty(device="cpu")  # storage without transformers' init pass
    if config.tie_word_embeddings:
        model.tie_weights()  # to_empty gave lm_head storage of its own: share the table again
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # a tied lm_head is listed once: drawn once
            if name.endswith("norm.weight"):
                p.normal_(1.0, 0.1, generator=gen)  # near-1 gains: a dropped norm weight shows
            else:
                p.normal_(0.0, WEIGHT_STD, generator=gen)  # matrices and biases
    model.save_pretrained(out, safe_serialization=True)
    save_word_tokenizer(out, vocab=config.vocab_size, bos=fields["bos_token_id"],
                        eos=fields["eos_token_id"])
    return out
