"""Typed configuration passed down explicitly (no globals).

Defaults follow QEfficient's draft_based.py example: prefill chunks of 32 tokens, a context of
128 positions, k = 4.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DTYPES = ("float32", "bfloat16", "float16")
# --executor qaic: where a compiled QPC runs. "device": QAICInferenceSession on Cloud AI 100;
# "onnxruntime": QEfficient's exported ONNX graph on the CPU behind the same session surface.
QAIC_SESSIONS = ("device", "onnxruntime")


@dataclass(frozen=True)
class EngineConfig:
    """What an executor needs to host one model."""

    model: str                    # local HF-format directory (or a hub id where a hub is reachable)
    device: str = "cpu"           # "cpu" or "cuda:N"
    dtype: str = "float32"        # one of DTYPES
    prefill_seq_len: int = 32     # prefill chunk length (a QPC's prefill specialization)
    ctx_len: int = 128            # KV positions per slot
    full_batch_size: int = 4      # KV slots = concurrent sessions
    turbo: bool = False           # also evaluate the Turbo heads beside the checkpoint
    # torch: compile one graph per step specialization at load (the services default to on;
    # off = eager). compile_dir: where compiled artifacts are cached (None: the tool's default).
    compile: bool = False
    compile_dir: Path | None = None
    cpu_cores: tuple[int, ...] = ()  # device "cpu": pin the process's threads here (() = all)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.prefill_seq_len < 1 or self.ctx_len < 2 or self.full_batch_size < 1:
            raise ValueError(
                "prefill_seq_len >= 1, ctx_len >= 2 and full_batch_size >= 1 are required, got "
                f"{self.prefill_seq_len}, {self.ctx_len}, {self.full_batch_size}"
            )


def parse_device_group(device_group: str) -> tuple[int, ...]:
    """"0,1" -> (0, 1)."""
    ids = [s.strip() for s in device_group.split(",") if s.strip()]
    if not ids or not all(s.isdigit() for s in ids):
        raise ValueError(f"a device group is a comma list of device ids, got {device_group!r}")
    return tuple(int(s) for s in ids)


def device_for_group(device_group: str, cuda_available: bool) -> str:
    """Torch device for a QEfficient-style device group ("0" or "0,1"): the first id on CUDA
    where CUDA exists, else the CPU, whose cores the group then names (specdec.cpu_cores).
    (The Cloud AI 100 executor maps the whole group onto cards.)"""
    ids = parse_device_group(device_group)
    return f"cuda:{ids[0]}" if cuda_available else "cpu"
