"""A lean llama-family forward (Llama, Mistral, Qwen2, Qwen3) over a slot-indexed KV cache.

Parameter names follow the HF checkpoints, rearranged at load by `fuse_state_dict`: q/k/v and
gate/up are fused into one matrix each (one matmul instead of three, two), and every projection
is stored transposed, [in, out], because a small-batch step multiplies a few rows by each matrix
and CPU GEMV streams the [in, out] layout about twice as fast as nn.Linear's [out, in]. The
numerics follow `transformers`' eager implementation (RMSNorm in float32, RoPE tables in float32
cast to the activation dtype), which the tests compare against.

The step is written for a fixed shape and no host syncs, so `torch.compile` can capture it
whole (see `compiled.py`): KV writes go by index (padding writes land in a scratch position past
`ctx_len` that no mask ever lets a query see), and the attended KV length is the length of an
input the caller picks (`kv_pos`), not something read back from the device. A sliding window
(Mistral; Qwen2/3 where enabled) is one more term of the same mask, as in transformers: the cache
still holds every position, and a query just does not see keys older than its window.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from specdec.engine import packed_linear
from specdec.engine.checkpoint import LlamaFamilyConfig
from specdec.engine.packed_linear import PackedWeight


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_inv_freq(cfg: LlamaFamilyConfig) -> torch.Tensor:
    """[head_dim/2] float32 inverse frequencies, with the 'linear' and 'llama3' scalings."""
    dim = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scaling = cfg.rope_scaling or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return inv
    if kind == "linear":
        return inv / scaling["factor"]
    if kind == "llama3":
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_ctx = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > old_ctx / low, inv / factor, inv)
        smooth = (old_ctx / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_ctx / high) & (wavelen <= old_ctx / low)
        return torch.where(medium, smoothed, scaled)
    raise ValueError(f"rope scaling {kind!r} is not supported by the torch executor")


def fuse_state_dict(state: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """HF names -> this module's: q/k/v_proj -> qkv_proj and gate/up_proj -> gate_up_proj
    (concatenated along the output dim), and every `*proj.weight` / `lm_head.weight` [out, in]
    -> `.weight_t` [in, out]. The embedding table keeps its [V, D] rows."""
    state = dict(state)
    for i in range(num_layers):
        for fused, parts in (("self_attn.qkv_proj", ("self_attn.q_proj", "self_attn.k_proj",
                                                     "self_attn.v_proj")),
                             ("mlp.gate_up_proj", ("mlp.gate_proj", "mlp.up_proj"))):
            for kind in ("weight", "bias"):
                keys = [f"model.layers.{i}.{p}.{kind}" for p in parts]
                if all(k in state for k in keys):
                    state[f"model.layers.{i}.{fused}.{kind}"] = torch.cat([state.pop(k) for k in keys])
    for key in [k for k in state if k.endswith(("proj.weight", "lm_head.weight"))]:
        state[key + "_t"] = state.pop(key).t().contiguous()
    return state


class Proj(nn.Module):
    """y = x @ weight_t + bias, with the weight stored [in, out] (see the module docstring)."""

    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.weight_t = nn.Parameter(torch.empty(in_features, out_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.packed: PackedWeight | None = None   # set by pack(): compiled CPU steps only

    def pack(self) -> None:
        """Compiled steps of MIN_ROWS rows or more multiply through oneDNN (packed_linear)."""
        if packed_linear.available(self.weight_t):
            self.packed = packed_linear.pack(self.weight_t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None and torch.compiler.is_compiling() \
                and x.shape[:-1].numel() >= packed_linear.MIN_ROWS:
            y = torch.ops.specdec.packed_linear(x, self.packed.key)
        else:
            y = x @ self.weight_t
        return y if self.bias is None else y + self.bias


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: LlamaFamilyConfig) -> None:
        super().__init__()
        self.cfg = cfg
        h, kv, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.split = (h * d, kv * d, kv * d)
        self.qkv_proj = Proj(cfg.hidden_size, (h + 2 * kv) * d, bias=cfg.qkv_bias)
        self.o_proj = Proj(h * d, cfg.hidden_size, bias=cfg.o_bias)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(d, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(d, cfg.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,        # [B, S, D]
        cos: torch.Tensor,      # [B, 1, S, hd], activation dtype
        sin: torch.Tensor,      # [B, 1, S, hd]
        w_slot: torch.Tensor,   # [B*S] slot each position writes to
        w_pos: torch.Tensor,    # [B*S] position it writes at; padding -> the scratch position
        slots: torch.Tensor,    # [B] slots to read
        mask: torch.Tensor,     # [B, 1, S, L] True = may attend
        cache_k: torch.Tensor,  # [slots, kv_heads, ctx_len + 1, hd], updated in place
        cache_v: torch.Tensor,
    ) -> torch.Tensor:
        b, s, _ = x.shape
        c = self.cfg
        q, k, v = self.qkv_proj(x).split(self.split, dim=-1)
        q = q.view(b, s, c.num_heads, c.head_dim)
        k = k.view(b, s, c.num_kv_heads, c.head_dim)
        if c.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # [B, heads, S, hd]
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        # Write before read: the window attends to its own keys through the cache.
        cache_k[w_slot, :, w_pos] = k.transpose(1, 2).reshape(b * s, c.num_kv_heads, c.head_dim)
        cache_v[w_slot, :, w_pos] = v.reshape(b * s, c.num_kv_heads, c.head_dim)
        length = mask.shape[-1]
        keys = cache_k[slots, :, :length]    # [B, kv_heads, L, hd]
        values = cache_v[slots, :, :length]
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask,
                                             enable_gqa=c.num_heads != c.num_kv_heads)
        return self.o_proj(out.transpose(1, 2).reshape(b, s, c.num_heads * c.head_dim))


class MLP(nn.Module):
    def __init__(self, cfg: LlamaFamilyConfig) -> None:
        super().__init__()
        self.intermediate = cfg.intermediate_size
        self.gate_up_proj = Proj(cfg.hidden_size, 2 * cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = Proj(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).split(self.intermediate, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LlamaFamilyConfig) -> None:
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Backbone(nn.Module):
    def __init__(self, cfg: LlamaFamilyConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers: list[DecoderLayer] = nn.ModuleList(  # type: ignore[assignment]  # typed items
            DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class LlamaFamilyModel(nn.Module):
    """Named like `*ForCausalLM` checkpoints: `model.*` and `lm_head` (after `fuse_state_dict`)."""

    def __init__(self, cfg: LlamaFamilyConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = Backbone(cfg)
        self.lm_head = Proj(cfg.hidden_size, cfg.vocab_size, False)

    def hidden_states(
        self,
        input_ids: torch.Tensor,     # [B, S], padding already replaced by a valid id
        position_ids: torch.Tensor,  # [B, S], -1 = padding
        slots: torch.Tensor,         # [B]
        cos_table: torch.Tensor,     # [ctx_len, hd] float32
        sin_table: torch.Tensor,
        caches: list[tuple[torch.Tensor, torch.Tensor]],  # [slots, kv, ctx_len + 1, hd] each
        kv_pos: torch.Tensor,        # [L] 0..L-1, the KV positions attended: L > every query
    ) -> torch.Tensor:               # position, L <= ctx_len; [B, S, D] before the final norm
        scratch = caches[0][0].shape[2] - 1   # = ctx_len: padding writes land here, never read
        q_pos = position_ids.clamp(min=0)
        x = self.model.embed_tokens(input_ids)
        cos = cos_table[q_pos].to(x.dtype).unsqueeze(1)  # [B, 1, S, hd]
        sin = sin_table[q_pos].to(x.dtype).unsqueeze(1)
        w_slot = slots[:, None].expand_as(position_ids).reshape(-1)                 # [B*S]
        w_pos = torch.where(position_ids >= 0, position_ids, scratch).reshape(-1)   # [B*S]
        kv, q = kv_pos[None, None, None, :], q_pos[:, None, :, None]
        mask = kv <= q                                                   # [B, 1, S, L]
        window = self.cfg.sliding_window
        if window is not None:
            # transformers' sliding_window_overlay: a query at p sees the W keys p-W+1..p, itself
            # included. A Python int: the mask stays one graph, no host sync.
            mask = mask & (kv > q - window)
        for layer, (ck, cv) in zip(self.model.layers, caches):
            h = layer.input_layernorm(x)
            x = x + layer.self_attn(h, cos, sin, w_slot, w_pos, slots, mask, ck, cv)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return x

    def pack_projections(self) -> None:
        """Every projection (lm_head too) packed for oneDNN: see packed_linear."""
        for module in self.modules():
            if isinstance(module, Proj):
                module.pack()
