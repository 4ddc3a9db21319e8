"""Reading HF-format checkpoints (config.json + safetensors), without transformers; `hub.py`
finds them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


@dataclass(frozen=True)
class LlamaFamilyConfig:
    """The fields of config.json the lean forward needs, normalised across the families."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None
    tie_word_embeddings: bool
    qkv_bias: bool      # Qwen2 always; Llama with attention_bias
    o_bias: bool        # Llama with attention_bias
    mlp_bias: bool
    qk_norm: bool       # Qwen3: RMSNorm over head_dim on q and k before RoPE
    sliding_window: int | None
    eos_token_ids: tuple[int, ...]
    torch_dtype: str | None = None   # what the checkpoint's weights are stored as ("bfloat16", ...)


def _eos_ids(path: Path, config: dict) -> tuple[int, ...]:
    eos = config.get("eos_token_id")
    gen = path / "generation_config.json"
    if gen.exists():
        eos = json.loads(gen.read_text()).get("eos_token_id", eos)
    if eos is None:
        return ()
    return tuple(eos) if isinstance(eos, list) else (int(eos),)


def _sliding_window(path: Path, raw: dict, model_type: str) -> int | None:
    """The window every layer attends within, or None for full attention, decided as transformers
    does: Mistral slides wherever sliding_window is set; Qwen2/Qwen3 only with use_sliding_window
    (false in their published configs, which still carry a sliding_window), and then only in
    layers from max_window_layers on (layer_types, where written, says it per layer). Llama has
    no window. Mixed full/sliding layers are refused: the forward uses one mask for all."""
    window = raw.get("sliding_window")
    if window is None or model_type == "llama":
        return None
    if model_type == "mistral":
        return int(window)
    if not raw.get("use_sliding_window", False):
        return None
    layers = raw["num_hidden_layers"]
    types = raw.get("layer_types") or [
        "sliding_attention" if i >= raw.get("max_window_layers", 28) else "full_attention"
        for i in range(layers)]  # 28: transformers' Qwen2/Qwen3 default
    if all(t == "full_attention" for t in types):
        return None
    if all(t == "sliding_attention" for t in types):
        return int(window)
    sliding = sum(t == "sliding_attention" for t in types)
    raise ValueError(f"{path}: {sliding} of {len(types)} layers attend within a sliding window and "
                     "the rest in full, a mix the torch executor does not implement")


def read_config(path: Path) -> LlamaFamilyConfig:
    raw = json.loads((path / "config.json").read_text())
    model_type = raw.get("model_type", "")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"model {str(path)!r}: model_type {model_type!r} is not supported "
                         f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
    if raw.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{path}: hidden_act {raw['hidden_act']!r} is not supported (silu only)")
    heads = raw["num_attention_heads"]
    # transformers 5 moved rope_theta/rope_scaling into rope_parameters.
    rope = raw.get("rope_parameters") or {}
    rope_theta = float(raw.get("rope_theta", rope.get("rope_theta", 10000.0)))
    scaling = raw.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
    sliding = _sliding_window(path, raw, model_type)
    return LlamaFamilyConfig(
        model_type=model_type,
        vocab_size=raw["vocab_size"],
        hidden_size=raw["hidden_size"],
        intermediate_size=raw["intermediate_size"],
        num_layers=raw["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=raw.get("num_key_value_heads") or heads,
        head_dim=raw.get("head_dim") or raw["hidden_size"] // heads,
        rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
        rope_theta=rope_theta,
        rope_scaling=scaling,
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),  # False in all four configs
        qkv_bias=model_type == "qwen2" or bool(raw.get("attention_bias", False)),
        o_bias=model_type != "qwen2" and bool(raw.get("attention_bias", False)),
        mlp_bias=bool(raw.get("mlp_bias", False)),
        qk_norm=model_type == "qwen3",
        sliding_window=sliding,
        eos_token_ids=_eos_ids(path, raw),
        # transformers 5 writes "dtype"; earlier versions "torch_dtype".
        torch_dtype=raw.get("dtype") or raw.get("torch_dtype"),
    )


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a (possibly sharded) safetensors checkpoint."""
    from safetensors.torch import load_file

    files = sorted(path.glob("*.safetensors"))
    files = [f for f in files if f.name != "speculator.safetensors"]  # Turbo heads load apart
    if not files:
        raise FileNotFoundError(f"{path}: no *.safetensors weights (pytorch_model.bin is not read)")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    return state
