"""A lean llama-family forward (Llama, Mistral, Qwen2, Qwen3) over a slot-indexed KV cache.

Parameter names follow the HF checkpoints, so a safetensors state dict loads as it is. The
numerics follow `transformers`' eager implementation (RMSNorm in float32, RoPE tables in float32
cast to the activation dtype), which the tests compare against.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from specdec.engine.checkpoint import LlamaFamilyConfig


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


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: LlamaFamilyConfig) -> None:
        super().__init__()
        self.cfg = cfg
        h, kv, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, h * d, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.hidden_size, kv * d, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.hidden_size, kv * d, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(h * d, cfg.hidden_size, bias=cfg.o_bias)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(d, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(d, cfg.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,        # [B, S, D]
        cos: torch.Tensor,      # [B, 1, S, hd], activation dtype
        sin: torch.Tensor,      # [B, 1, S, hd]
        write: tuple[torch.Tensor, torch.Tensor, torch.Tensor],  # (valid [B,S], slot [N], pos [N])
        slots: torch.Tensor,    # [B] slots to read
        mask: torch.Tensor,     # [B, 1, S, L] True = may attend
        cache_k: torch.Tensor,  # [slots, kv_heads, ctx_len, hd], updated in place
        cache_v: torch.Tensor,
    ) -> torch.Tensor:
        b, s, _ = x.shape
        c = self.cfg
        q = self.q_proj(x).view(b, s, c.num_heads, c.head_dim)
        k = self.k_proj(x).view(b, s, c.num_kv_heads, c.head_dim)
        v = self.v_proj(x).view(b, s, c.num_kv_heads, c.head_dim)
        if c.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, heads, S, hd]
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        # Write before read: the window attends to its own keys through the cache, and a
        # padded position (-1) writes nothing.
        valid, w_slot, w_pos = write
        cache_k[w_slot, :, w_pos] = k.transpose(1, 2)[valid]  # [N, kv_heads, hd]
        cache_v[w_slot, :, w_pos] = v.transpose(1, 2)[valid]
        length = mask.shape[-1]
        keys = cache_k[slots, :, :length]    # [B, kv_heads, L, hd]
        values = cache_v[slots, :, :length]
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask,
                                             enable_gqa=c.num_heads != c.num_kv_heads)
        return self.o_proj(out.transpose(1, 2).reshape(b, s, c.num_heads * c.head_dim))


class MLP(nn.Module):
    def __init__(self, cfg: LlamaFamilyConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


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
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class LlamaFamilyModel(nn.Module):
    """Named like `*ForCausalLM` checkpoints: `model.*` and `lm_head`."""

    def __init__(self, cfg: LlamaFamilyConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def hidden_states(
        self,
        input_ids: torch.Tensor,     # [B, S], padding already replaced by a valid id
        position_ids: torch.Tensor,  # [B, S], -1 = padding
        slots: torch.Tensor,         # [B]
        cos_table: torch.Tensor,     # [ctx_len, hd] float32
        sin_table: torch.Tensor,
        caches: list[tuple[torch.Tensor, torch.Tensor]],
    ) -> torch.Tensor:               # [B, S, D] before the final norm
        valid = position_ids >= 0
        q_pos = position_ids.clamp(min=0)
        x = self.model.embed_tokens(input_ids)
        cos = cos_table[q_pos].to(x.dtype).unsqueeze(1)  # [B, 1, S, hd]
        sin = sin_table[q_pos].to(x.dtype).unsqueeze(1)
        write = (valid, slots[:, None].expand_as(position_ids)[valid], position_ids[valid])
        # Only positions up to the furthest query can be seen; read no further.
        length = int(q_pos.max()) + 1
        kv_pos = torch.arange(length, device=x.device)
        mask = (kv_pos[None, None, None, :] <= q_pos[:, None, :, None])  # [B, 1, S, L]
        for layer, (ck, cv) in zip(self.model.layers, caches):
            h = layer.input_layernorm(x)
            x = x + layer.self_attn(h, cos, sin, write, slots, mask, ck, cv)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return x

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., D] pre-norm hidden states -> [..., V] float32 logits."""
        return self.lm_head(self.model.norm(hidden)).float()
