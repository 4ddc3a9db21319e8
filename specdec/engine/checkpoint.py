"""Locating and reading HF-format checkpoints (config.json + safetensors), without transformers."""

from __future__ import annotations

import json
import os
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


def resolve_model_path(name: str) -> Path:
    """A local directory, else a hub id fetched through huggingface_hub (honouring HF_TOKEN for
    gated models, as the QEfficient examples do) where a hub is reachable."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists() or name.startswith((".", "/")) or name.count("/") != 1:
        raise FileNotFoundError(f"model {name!r}: no such directory (expected an HF-format "
                                "directory with config.json and *.safetensors)")
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(
            name,
            token=os.environ.get("HF_TOKEN"),
            allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"],
        )
    except Exception as exc:  # offline, gated, unknown repo: say what was tried
        raise FileNotFoundError(
            f"model {name!r} is not a local directory and could not be fetched from the hub "
            f"({type(exc).__name__}: {exc}). Pass a local path to an HF-format checkpoint."
        ) from exc
    return Path(local)


def _eos_ids(path: Path, config: dict) -> tuple[int, ...]:
    eos = config.get("eos_token_id")
    gen = path / "generation_config.json"
    if gen.exists():
        eos = json.loads(gen.read_text()).get("eos_token_id", eos)
    if eos is None:
        return ()
    return tuple(eos) if isinstance(eos, list) else (int(eos),)


def read_config(path: Path) -> LlamaFamilyConfig:
    raw = json.loads((path / "config.json").read_text())
    model_type = raw.get("model_type", "")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"{path}: model_type {model_type!r} is not supported by the torch "
                         f"executor (supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
    if raw.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{path}: hidden_act {raw['hidden_act']!r} is not supported (silu only)")
    heads = raw["num_attention_heads"]
    # transformers 5 moved rope_theta/rope_scaling into rope_parameters.
    rope = raw.get("rope_parameters") or {}
    rope_theta = float(raw.get("rope_theta", rope.get("rope_theta", 10000.0)))
    scaling = raw.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
    sliding = raw.get("sliding_window") if raw.get("use_sliding_window", model_type == "mistral") else None
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
