"""Typed configuration passed down explicitly (no globals). Defaults follow QEfficient's
draft_based.py example: prefill chunks of 32 tokens, a context of 128 positions, k = 4.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from specdec.flags import flag

DTYPES = ("auto", "float32", "bfloat16", "float16")   # auto: specdec.engine.dtypes
COMPILE_MODES = ("auto", "on", "off")
# --executor qaic: where a compiled QPC runs. "device": QAICInferenceSession on Cloud AI 100;
# "onnxruntime": QEfficient's exported ONNX graph on the CPU behind the same session surface.
QAIC_SESSIONS = ("device", "onnxruntime")
EXECUTORS = ("torch", "qaic")  # torch: CPU/CUDA; qaic: Cloud AI 100 through QEfficient


@dataclass(frozen=True)
class EngineConfig:
    """What an executor needs to host one model."""

    # A local HF-format directory (or a hub id where a hub is reachable). No CLI default: a
    # service that needs one says so.
    model: str = flag(help="HF-format checkpoint directory (config.json + safetensors); the "
                           "proposer's --method ngram needs none", cli_default=None, shown="required")
    device: str = flag("cpu", cli_default=None, shown="from --device-group",
                       help="torch device: cpu or cuda:N")
    dtype: str = flag("auto", choices=DTYPES,
                      help="weights and compute; `auto`: the checkpoint's own where the device "
                           "computes it natively and (on a CPU) measurably faster, else float32; "
                           "the choice is logged")
    prefill_seq_len: int = flag(32, help="prefill chunk length (a QPC's prefill specialization)")
    ctx_len: int = flag(128, help="KV positions per session; a prompt must leave room to generate")
    full_batch_size: int = flag(4, help="concurrent sessions (KV slots)")
    turbo: bool = False           # also evaluate the Turbo heads beside the checkpoint
    # torch: compile one graph per step specialization, in the background. The library
    # defaults to eager (tests build many engines); the services decide, as a deployment wants.
    compile: str = flag("off", choices=COMPILE_MODES, cli_default="auto",
                        help="torch: compile one step graph per shape specialization (batch "
                             "bucket x window) in the background while serving eagerly, most "
                             "used shapes first, with progress in the log; `auto` times the "
                             "first graph against the eager step and stops where compiling gains "
                             "under 10%; a warning and the eager step where the compiler is "
                             "missing; `off` = eager")
    compile_dir: Path | None = flag(None, shown="the tool's cache",
                                    help="where compiled steps are cached: QPCs (qaic), inductor "
                                         "kernels (torch); an unchanged one is reused")
    cpu_cores: tuple[int, ...] = ()  # device "cpu": pin the process's threads here (() = all)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {COMPILE_MODES}, got {self.compile!r}")
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


@dataclass(frozen=True)
class QaicOptions:
    """Compile settings of one QPC (QEfficient's compile() arguments), for --executor qaic."""

    device_ids: tuple[int, ...] = (0,)   # the device group: num_devices = len(device_ids)
    # QEfficient's default; each service sets its own (verifier 11, proposer 5) so that the two
    # QPCs fit one card's 16 cores side by side.
    num_cores: int = flag(16, help="qaic: AI cores the QPC is compiled for")
    mxfp6_matmul: bool = flag(False, name="--mxfp6", help="qaic: compile matmuls as MXFP6")
    mxint8_kv_cache: bool = flag(False, help="qaic: keep the KV cache in MXINT8")
    aic_enable_depth_first: bool = True
    compile_dir: Path | None = None      # QPCs are cached here (--compile-dir: EngineConfig's)
    session: str = flag("device", name="--qaic-session", choices=QAIC_SESSIONS,
                        help="qaic: `device` runs the QPC with QAICInferenceSession on the card "
                             "group; `onnxruntime` runs QEfficient's exported ONNX graph "
                             "(`<model>/onnx/<role>.onnx`) on the CPU behind the same session "
                             "surface (needs the `onnx` extra)")
