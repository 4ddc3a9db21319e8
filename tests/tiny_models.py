"""Random tiny checkpoints of each supported family, saved in HF format for the tests.

Random weights are enough wherever a test compares against `transformers` on the same
checkpoint; tests that need a model that predicts real text use the trained ones in models/.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

# Re-exported for the tests that import them from here; their home is bench/families.py.
from bench.families import save_truncated as save_truncated
from bench.families import save_word_tokenizer as save_word_tokenizer

FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
VOCAB = 96
# Where engine tests run: cpu here; scripts/gpu_check.sh sets cuda:0 on a GPU machine.
TEST_DEVICE = os.environ.get("SPECDEC_TEST_DEVICE", "cpu")


def tiny_config(family: str, **overrides):
    import transformers

    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  rms_norm_eps=1e-6, eos_token_id=1, bos_token_id=0, pad_token_id=0,
                  tie_word_embeddings=False)
    common.update(overrides)
    cls = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
           "qwen2": transformers.Qwen2Config, "qwen3": transformers.Qwen3Config}[family]
    if family == "qwen3":
        common.setdefault("head_dim", 16)  # Qwen3 decouples head_dim from hidden/heads
    if family == "mistral":
        common.setdefault("sliding_window", None)
    return cls(**common)


def save_tiny(path: Path, family: str = "llama", seed: int = 0, **overrides) -> Path:
    """Write a random tiny `*ForCausalLM` checkpoint (config.json + model.safetensors)."""
    import transformers

    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(tiny_config(family, **overrides))
    # Default init is nearly uniform over the vocab; widen it so argmax decisions are clear-cut
    # and greedy comparisons are not decided by float rounding.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.2)
    model.save_pretrained(path, safe_serialization=True)
    return path


def hf_model(path: Path):
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def greedy_reference(model, prompt: list[int], max_new_tokens: int) -> list[int]:
    """transformers' own greedy decoding, EOS disabled: the ground truth of lossless tests."""
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=None,
                             pad_token_id=0)
    return out[0, len(prompt):].tolist()


def save_turbo(path: Path, heads: int, layers: int, seed: int = 0, zero_heads: tuple = ()) -> dict:
    """speculator_config.json + speculator.safetensors with random ResBlocks (heads listed in
    zero_heads get QEfficient's zero init: they repeat the base head's guess)."""
    import json

    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    hidden = json.loads((path / "config.json").read_text())["hidden_size"]
    state = {}
    for j in range(heads):
        for layer in range(layers):
            scale = 0.0 if j in zero_heads else 0.3
            state[f"projections.{j}.{layer}.linear.weight"] = torch.randn(hidden, hidden, generator=g) * scale
            state[f"projections.{j}.{layer}.linear.bias"] = torch.randn(hidden, generator=g) * scale
    save_file(state, str(path / "speculator.safetensors"))
    (path / "speculator_config.json").write_text(json.dumps(
        {"model_type": "turbo", "turbo_num_heads": heads, "turbo_num_layers": layers}))
    return state


def permuted_copy(src: Path, dst: Path, seed: int = 0, weights: bool = True) -> Path:
    """`src` with its vocabulary renumbered (special tokens keep their ids) and, with weights,
    the embedding and head rows moved to match: the same model in another vocabulary, so a
    translated draft from it is the target's own guess."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.name not in ("tokenizer.json", "model.safetensors", "speculator.safetensors"):
            shutil.copy(f, dst / f.name)
    spec = json.loads((src / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    specials = {t["id"] for t in spec["added_tokens"]}
    rest = [i for i in range(len(vocab)) if i not in specials]
    new_id = np.arange(len(vocab))
    new_id[rest] = np.random.default_rng(seed).permutation(rest)
    spec["model"]["vocab"] = {tok: int(new_id[i]) for tok, i in vocab.items()}
    (dst / "tokenizer.json").write_text(json.dumps(spec))
    if weights:
        from safetensors.torch import load_file, save_file

        tensors = load_file(src / "model.safetensors")
        old_of_new = torch.from_numpy(np.argsort(new_id))
        for name, t in tensors.items():
            if t.shape[0] == len(vocab) and ("embed_tokens" in name or "lm_head" in name):
                tensors[name] = t[old_of_new].contiguous()
        save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def save_char_tokenizer(path: Path, alphabet: str) -> None:
    """One token per character of `alphabet` after <unk> <s> </s>, adding <s> as Llama-2's
    tokenizer does: it splits any text into more, other pieces than a word-level tokenizer."""
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {c: 3 + i for i, c in enumerate(alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(path)
