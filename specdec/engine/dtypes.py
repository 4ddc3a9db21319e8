"""Which dtype an engine computes in: `--dtype auto` keeps the checkpoint's own where the device
computes it natively and fast, as transformers' `dtype="auto"` keeps it; float32 otherwise.

CUDA computes bfloat16 and float16 natively. A CPU does where its ISA has the instructions
(AVX512-BF16 or AMX for bfloat16, AMX-FP16 for float16), and even then the choice is measured:
a decode step is a chain of GEMVs, and a half-width weight only pays where the kernel for it
streams faster than the float32 one (a GEMV of the model's own shape, timed at start-up).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
HALF_MIN_SPEEDUP = 1.10   # a half-width GEMV must be this much faster than float32 to be chosen


def choose_dtype(requested: str, checkpoint: str | None, device: str,
                 native: Callable[[str], bool], faster: Callable[[str], bool]) -> tuple[str, str]:
    """(dtype, why). requested: a DTYPES name or "auto"; checkpoint: config.json's dtype;
    native(dtype): the device computes it natively; faster(dtype): it measures faster than
    float32 here (asked only on a CPU that computes it natively)."""
    if requested != "auto":
        return requested, "as requested"
    if checkpoint not in TORCH_DTYPES or checkpoint == "float32":
        return "float32", f"the checkpoint's dtype is {checkpoint or 'not given'}"
    if not native(checkpoint):
        return "float32", f"the checkpoint is {checkpoint}, which {device} does not compute natively"
    if device.startswith("cuda"):
        return checkpoint, f"the checkpoint's own, native on {device}"
    if not faster(checkpoint):
        return "float32", f"the checkpoint is {checkpoint}, but it measured no faster than float32 here"
    return checkpoint, "the checkpoint's own, native on this CPU and measured faster than float32"


def natively_computed(device: str, dtype: str) -> bool:
    if device.startswith("cuda"):
        return dtype != "bfloat16" or torch.cuda.is_bf16_supported()
    cpu = torch.cpu
    if dtype == "bfloat16":
        return bool(cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())
    return dtype == "float16" and bool(cpu._is_amx_fp16_supported())


def gemv_faster(dtype: str, hidden: int, intermediate: int, calls: int = 9) -> bool:
    """A [1, hidden] x [hidden, intermediate] GEMV (the MLP's shape) in `dtype` against float32,
    medians of interleaved calls, on the calling thread's cores."""
    x32, w32 = torch.randn(1, hidden), torch.randn(hidden, intermediate)
    pairs = ((x32, w32), (x32.to(TORCH_DTYPES[dtype]), w32.to(TORCH_DTYPES[dtype])))
    times: tuple[list[float], list[float]] = ([], [])
    with torch.inference_mode():
        for i in range(calls + 2):   # the first two warm up
            for (x, w), spent in zip(pairs, times):
                t0 = time.perf_counter()
                x @ w
                if i >= 2:
                    spent.append(time.perf_counter() - t0)
    return statistics.median(times[0]) >= HALF_MIN_SPEEDUP * statistics.median(times[1])
