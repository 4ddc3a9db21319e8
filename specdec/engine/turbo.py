"""Multi-projection ("Turbo") heads in QEfficient's format, evaluated on the target's hidden state.

Files beside the base checkpoint:
- speculator_config.json: turbo_num_heads (H), turbo_num_layers, optional model_type "turbo";
- speculator.safetensors: keys projections.{head}.{layer}.linear.{weight,bias}.
Head j is a stack of ResBlocks x + SiLU(Linear(x)) applied to the target's final (post-norm)
hidden state, read through the target's own lm_head; head j predicts the token j+1 steps after
the one the base head predicts.

Compatibility choice for turbo_num_layers > 1: QEfficient builds each head as
`Sequential(*[ResBlock(d)] * n)`, which repeats ONE module instance, so all layers of a head
share weights and the checkpoint's last layer entry wins at load time. We build the heads the
same way, so a checkpoint gives the same logits here as on Cloud AI 100 (a checkpoint trained
with distinct layers would be misread by QEfficient as well; tests/test_turbo.py pins this).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

CONFIG_FILE = "speculator_config.json"
WEIGHTS_FILE = "speculator.safetensors"


class NotATurboModel(ValueError):
    pass


@dataclass(frozen=True)
class TurboConfig:
    num_heads: int
    num_layers: int


class ResBlock(nn.Module):
    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, hidden_size)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.linear(x))


def read_turbo_config(path: Path) -> TurboConfig:
    file = path / CONFIG_FILE
    if not file.exists():
        raise NotATurboModel(f"{path} is not a Turbo model: it has no {CONFIG_FILE} (and "
                             f"{WEIGHTS_FILE}) beside its checkpoint")
    raw = json.loads(file.read_text())
    if raw.get("model_type", "turbo") != "turbo":
        raise NotATurboModel(f"{file}: model_type is {raw['model_type']!r}, expected 'turbo'")
    return TurboConfig(int(raw["turbo_num_heads"]), int(raw["turbo_num_layers"]))


def build_turbo_heads(hidden_size: int, cfg: TurboConfig) -> nn.ModuleList:
    """H heads of num_layers ResBlocks each, one shared instance per head (see above)."""
    return nn.ModuleList(nn.Sequential(*([ResBlock(hidden_size)] * cfg.num_layers))
                         for _ in range(cfg.num_heads))


def load_turbo_heads(path: Path, hidden_size: int) -> tuple[TurboConfig, nn.ModuleList]:
    from safetensors.torch import load_file

    cfg = read_turbo_config(path)
    heads = build_turbo_heads(hidden_size, cfg)
    state = {k.removeprefix("projections."): v for k, v in load_file(str(path / WEIGHTS_FILE)).items()}
    heads.load_state_dict(state, strict=True)
    return cfg, heads.eval()


def save_turbo_heads(path: Path, cfg: TurboConfig, heads: nn.ModuleList,
                     dtype: torch.dtype = torch.float16) -> None:
    """Write speculator_config.json + speculator.safetensors as QEfficient reads them (the
    training script's output; load_turbo_heads reads it back)."""
    from safetensors.torch import save_file

    state = {f"projections.{k}": v.detach().to(dtype).contiguous()
             for k, v in heads.state_dict().items()}
    save_file(state, str(path / WEIGHTS_FILE), metadata={"format": "pt"})
    (path / CONFIG_FILE).write_text(json.dumps(
        {"model_type": "turbo", "turbo_num_heads": cfg.num_heads,
         "turbo_num_layers": cfg.num_layers, "num_speculative_tokens": cfg.num_heads},
        indent=2) + "\n")
