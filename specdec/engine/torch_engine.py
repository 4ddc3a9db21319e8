"""The torch executor: the lean llama-family forward behind the engine contract, on CPU or CUDA."""

from __future__ import annotations

import logging

import numpy as np
import torch

from specdec.config import EngineConfig
from specdec.engine.checkpoint import LlamaFamilyConfig, load_state_dict, read_config, resolve_model_path
from specdec.engine.llama import LlamaFamilyModel, rope_inv_freq
from specdec.engine.turbo import load_turbo_heads

log = logging.getLogger(__name__)

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_model(cfg: LlamaFamilyConfig, state: dict[str, torch.Tensor], dtype: torch.dtype,
                device: str) -> LlamaFamilyModel:
    """Instantiate without allocating random weights, then adopt the checkpoint's tensors."""
    with torch.device("meta"):
        model = LlamaFamilyModel(cfg)
    state = {k: v for k, v in state.items() if not k.endswith("rotary_emb.inv_freq")}
    if cfg.tie_word_embeddings or "lm_head.weight" not in state:
        # Tied checkpoints omit lm_head; an untied one without it is refused below.
        if not cfg.tie_word_embeddings:
            raise ValueError("checkpoint has no lm_head.weight and tie_word_embeddings is false")
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise ValueError(f"checkpoint does not fit the {cfg.model_type} layout: missing "
                         f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    model = model.to(device=device, dtype=dtype)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.eval()


class TorchEngine:
    """Engine contract on torch. Not thread-safe: callers serialise `run` (the services do)."""

    def __init__(self, config: EngineConfig) -> None:
        path = resolve_model_path(config.model)
        self.model_config = read_config(path)
        mc = self.model_config
        if mc.sliding_window is not None and config.ctx_len > mc.sliding_window:
            raise ValueError(f"ctx_len {config.ctx_len} exceeds the model's sliding window "
                             f"{mc.sliding_window}, which the torch executor does not implement")
        self.path = path
        self.device = config.device
        self.dtype = TORCH_DTYPES[config.dtype]
        self.vocab_size = mc.vocab_size
        self.ctx_len = config.ctx_len
        self.slots = config.full_batch_size
        self.prefill_seq_len = config.prefill_seq_len
        self.eos_token_ids = mc.eos_token_ids
        self.model = build_model(mc, load_state_dict(path), self.dtype, config.device)
        self.turbo_heads = None
        self.num_heads = 0  # Turbo heads H; run() returns [B, N, H+1, V] when H > 0
        if config.turbo:
            turbo, heads = load_turbo_heads(path, mc.hidden_size)
            self.turbo_heads = heads.to(device=config.device, dtype=self.dtype)
            self.num_heads = turbo.num_heads
        positions = torch.arange(config.ctx_len, dtype=torch.float32)
        freqs = torch.outer(positions, rope_inv_freq(mc))
        emb = torch.cat((freqs, freqs), dim=-1)   # [ctx_len, hd], float32 as in transformers
        self.cos = emb.cos().to(config.device)
        self.sin = emb.sin().to(config.device)
        shape = (self.slots, mc.num_kv_heads, config.ctx_len, mc.head_dim)
        self.caches = [
            (torch.zeros(shape, dtype=self.dtype, device=config.device),
             torch.zeros(shape, dtype=self.dtype, device=config.device))
            for _ in range(mc.num_layers)
        ]
        log.info("loaded %s (%s, %d layers, vocab %d) on %s as %s; KV %d slots x %d positions",
                 path, mc.model_type, mc.num_layers, mc.vocab_size, config.device, config.dtype,
                 self.slots, config.ctx_len)

    def _check(self, input_ids: np.ndarray, position_ids: np.ndarray, batch_index: np.ndarray,
               num_logits: int) -> None:
        # Callers are the project's own session code, which validates user input first: a
        # failure here is a bug, hence plain ValueError (mapped to INTERNAL).
        if input_ids.ndim != 2 or input_ids.shape != position_ids.shape:
            raise ValueError(f"input_ids {input_ids.shape} and position_ids {position_ids.shape} "
                             "must both be [B, S]")
        if batch_index.shape != (input_ids.shape[0],):
            raise ValueError(f"batch_index must be [B], got {batch_index.shape}")
        if len(set(batch_index.tolist())) != len(batch_index) or batch_index.min() < 0 \
                or batch_index.max() >= self.slots:
            raise ValueError(f"batch_index {batch_index.tolist()} must be distinct slots < {self.slots}")
        if not 1 <= num_logits <= input_ids.shape[1]:
            raise ValueError(f"num_logits {num_logits} must be in 1..{input_ids.shape[1]}")
        if position_ids.max() >= self.ctx_len or position_ids.min() < -1:
            raise ValueError(f"positions must be in -1..{self.ctx_len - 1}")
        real = input_ids[position_ids >= 0]
        if real.size and (real.min() < 0 or real.max() >= self.vocab_size):
            raise ValueError(f"token ids must be in 0..{self.vocab_size - 1}")

    @torch.inference_mode()
    def hidden(self, input_ids: np.ndarray, position_ids: np.ndarray, batch_index: np.ndarray,
               num_logits: int) -> torch.Tensor:
        """Pre-norm hidden states of the last num_logits real positions: [B, num_logits, D]."""
        self._check(input_ids, position_ids, batch_index, num_logits)
        dev = self.device
        pos = torch.as_tensor(position_ids, dtype=torch.int64, device=dev)
        ids = torch.as_tensor(input_ids, dtype=torch.int64, device=dev).masked_fill(pos < 0, 0)
        slots = torch.as_tensor(batch_index, dtype=torch.int64, device=dev)
        h = self.model.hidden_states(ids, pos, slots, self.cos, self.sin, self.caches)
        # As QEfficient's filter_hidden_states: the window of num_logits positions that ends at
        # the row's largest position (its last real token); padding sits after it.
        last = pos.argmax(dim=1)                                       # [B]
        lower = (last - num_logits + 1).clamp(min=0)
        idx = lower[:, None] + torch.arange(num_logits, device=dev)    # [B, N]
        return h.gather(1, idx[:, :, None].expand(-1, -1, h.shape[-1]))

    def run(self, input_ids: np.ndarray, position_ids: np.ndarray, batch_index: np.ndarray,
            num_logits: int) -> np.ndarray:
        """[B, num_logits, V] float32; with Turbo heads [B, num_logits, H+1, V], index 0 = base."""
        with torch.inference_mode():
            h = self.hidden(input_ids, position_ids, batch_index, num_logits)
            if self.turbo_heads is None:
                return self.model.logits(h).cpu().numpy()
            normed = self.model.model.norm(h)                                    # [B, N, D]
            stacked = torch.stack([normed, *(head(normed) for head in self.turbo_heads)], dim=2)
            return self.model.lm_head(stacked).float().cpu().numpy()            # [B, N, H+1, V]
