"""Locating and reading HF-format checkpoints (config.json + safetensors), without transformers."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

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


# What a hub id fetches: config, tokenizer and weights; a tokenizer-only fetch skips the weights.
HUB_FILES = ("*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt")
WEIGHT_FILES = "*.safetensors"


def resolve_model_path(name: str, weights: bool = True) -> Path:
    """A local directory, else a hub id fetched through huggingface_hub (honouring HF_TOKEN for
    gated models, as the QEfficient examples do), or taken from its cache where the hub cannot
    be asked. weights=False fetches config and tokenizer only (a client encoding prompts).
    Every failure is a FileNotFoundError of one line that names the model and what to do."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists() or not _is_hub_id(name):
        what = "not a directory" if path.exists() else "no such directory"
        raise FileNotFoundError(f"model {name!r}: {what} (expected an HF-format checkpoint "
                                "directory with config.json and *.safetensors)")
    return _from_hub(name, [p for p in HUB_FILES if weights or p != WEIGHT_FILES])


def _is_hub_id(name: str) -> bool:
    """`namespace/name` as the hub spells ids; anything else can only have been meant as a path."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _from_hub(name: str, patterns: list[str]) -> Path:
    """The hub's snapshot of `name`, else a complete cached one when the hub cannot give it. The
    revision is looked up first, under HF_HUB_ETAG_TIMEOUT (10 s unless set): snapshot_download's
    own look-up has no timeout and, where packets are dropped, waits out the OS's (minutes)."""
    from huggingface_hub import HfApi, constants, snapshot_download

    if constants.HF_HUB_OFFLINE:
        return _cached(name, patterns) or _not_fetched(
            name, f"HF_HUB_OFFLINE is set; {_download_elsewhere(name)}, or unset HF_HUB_OFFLINE")
    token = os.environ.get("HF_TOKEN") or None   # None: the library's own (`hf auth login`)
    try:
        revision = HfApi(token=token).repo_info(name, timeout=constants.HF_HUB_ETAG_TIMEOUT).sha
        return Path(snapshot_download(name, revision=revision, token=token, allow_patterns=patterns))
    except Exception as exc:   # what fails differs with the library's version and transport
        return _cached(name, patterns) or _not_fetched(name, _hub_failure(name, exc))


def _cached(name: str, patterns: list[str]) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, allow_patterns=patterns, local_files_only=True))
    except OSError:   # not cached, or only in part
        return None


def _hub_failure(name: str, exc: Exception) -> str:
    """Why the hub did not give `name` and what to do, as the end of a sentence."""
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    said = _first_line(exc)
    if isinstance(exc, GatedRepoError):
        return (f"it is gated on the hub ({said}): accept its licence on "
                f"https://huggingface.co/{name} and set HF_TOKEN to a token of that account")
    if isinstance(exc, RepositoryNotFoundError):
        return (f"the hub has no model of that id this token may read ({said}): check the name, "
                "or set HF_TOKEN for a private model")
    if isinstance(exc, HfHubHTTPError):
        return f"the hub answered with an error ({said}); {_download_elsewhere(name)}"
    if isinstance(exc, (ConnectionError, TimeoutError)) or _transport(exc):
        return f"the hub is unreachable ({type(exc).__name__}: {said}); {_download_elsewhere(name)}"
    return f"fetching it from the hub failed ({type(exc).__name__}: {said})"


def _transport(exc: Exception) -> bool:
    """A failure of the HTTP library under huggingface_hub (no DNS, refused, timed out, a proxy),
    which is httpx, httpx2 or requests as its version goes."""
    return type(exc).__module__.partition(".")[0] in ("httpx", "httpx2", "requests", "urllib3")


def _not_fetched(name: str, why: str) -> NoReturn:
    """One line: the model, why the hub did not give it, and what to do."""
    raise FileNotFoundError(f"model {name!r} is neither a local directory nor a complete "
                            f"snapshot in the hub cache, and {why}")


def _download_elsewhere(name: str) -> str:
    return (f"download it where the hub is reachable (`hf download {name} --local-dir DIR`, with "
            "HF_TOKEN set for a gated model) and pass DIR as the model")


def _first_line(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), "")


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
