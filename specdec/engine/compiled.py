"""The torch executor's compiled steps: one `torch.compile` graph per specialization, built at
warm-up like the specializations of a QPC, and cached on disk by inductor.

Why: a small-batch step of a small model is bound by per-op dispatch in eager mode (one layer
issues ~30 ops at ~10-20 µs each), far above the time to read the weights. A captured graph fuses
the pointwise work and leaves the matmuls. On CPU inductor emits C++ (it needs a C++ compiler); on
CUDA the graphs are replayed as CUDA graphs, with the KV cache at static addresses. Where the
compiler is missing or fails, the engine warns once and runs eager: slower, same numbers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from specdec.engine.cpu_gemm_tiles import small_gemm_tiles
from specdec.engine.shared_constants import ConstantPool, shared_constants
from specdec.engine.specializations import Specialization, by_size, fit, gather_index, pad_call

if TYPE_CHECKING:
    from specdec.engine.torch_engine import TorchEngine

log = logging.getLogger(__name__)

# On CPU the step is a chain of GEMVs (a few rows times each weight matrix): inductor's own C++
# GEMM, tuned per shape on weights frozen and prepacked at compile time, streams them faster
# than the MKL call (measured on the shipped target, one core: 4.5 -> 3.0 ms per step), and the
# C++ wrapper drops the Python launch code between kernels. The KV cache is not a parameter, so
# it stays a mutable input. Its register tiles are narrowed while compiling (cpu_gemm_tiles).
CPU_INDUCTOR = {"freezing": True, "max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN",
                "cpp_wrapper": True}


# The attended KV length is a dynamic dimension of every CPU graph, rounded up to this many
# positions: a step reads and attends over the positions in use, not all of ctx_len. Each row's
# cache is gathered for attention, so at 8 rows the shipped draft's step costs 0.69 ms over 256
# positions and 0.54 ms over 64 (one core). On CUDA the graphs keep ctx_len (a CUDA graph is
# recorded per shape, and the GPU reads a few hundred positions in no measurable time).
KV_BUCKET = 32


@dataclass
class CompiledSteps:
    specs: tuple[Specialization, ...]         # smallest first (specializations.by_size)
    step: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]  # the compiled engine.step
    ctx_len: int
    kv_bucket: int                            # 0: every step attends over all of ctx_len
    shared: int = 0                           # constants shared with an earlier graph (CPU)

    def fit(self, batch: int, window: int, logits: int) -> Specialization | None:
        return fit(self.specs, batch, window, logits)

    def kv_len(self, needed: int) -> int:
        """KV positions a step attends over when its queries reach position needed - 1."""
        if not self.kv_bucket:
            return self.ctx_len
        return min(self.ctx_len, max(1, -(-needed // self.kv_bucket)) * self.kv_bucket)


def compile_steps(engine: TorchEngine, specs: tuple[Specialization, ...],
                  cache_dir: Path | None) -> CompiledSteps | None:
    """Compile engine.step for every specialization (progress in the log); None where
    torch.compile is unavailable, after a warning: the engine then runs eager."""
    if cache_dir is not None:
        # Inductor reads its cache location from the environment; a restart with the same
        # directory (and torch, model shapes) loads the kernels instead of recompiling them.
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(cache_dir).expanduser() / "torch-inductor")
    cuda = str(engine.device).startswith("cuda")
    kv_bucket = 0 if cuda or engine.ctx_len <= KV_BUCKET else KV_BUCKET
    if cuda:  # CUDA graphs replay fixed addresses: the cache and tables must not move
        for t in [engine.cos, engine.sin, *(x for kv in engine.caches for x in kv)]:
            torch._dynamo.mark_static_address(t)
    # Every call checks dynamo's guards of each cached specialization in turn until one holds.
    # Guards on the modules' attributes cannot fail here (the weights never change after load;
    # on CPU they are frozen into the graph): dropping them leaves the input shapes to pick the
    # specialization, and cuts the lookup from ~0.2 ms to ~0.05 ms a call (torch profiler,
    # the Turbo target's step). CUDA adds mode="reduce-overhead"'s one option (CUDA graphs):
    # torch.compile takes a mode or options, not both.
    options: dict[str, str | int | bool | Callable[..., Any]] = {
        "guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe}
    fn = torch.compile(engine.step, dynamic=False, fullgraph=True,
                       options={**options, "triton.cudagraphs": True} if cuda else options)
    # Each specialization of each engine in this process is one entry in the compile cache of
    # the same step function; dynamo would fall back to eager past its default limit (8).
    dynamo = torch._dynamo.config
    dynamo.recompile_limit += len(specs)
    dynamo.accumulated_recompile_limit += len(specs)
    started = time.monotonic()
    tiles: contextlib.AbstractContextManager[dict[str, Any]] = \
        contextlib.nullcontext({}) if cuda else small_gemm_tiles()
    # CPU graphs hold the frozen weights: one copy for all of them (shared_constants).
    constants: contextlib.AbstractContextManager[ConstantPool] = \
        contextlib.nullcontext(ConstantPool()) if cuda else shared_constants()
    try:
        with tiles as salt, constants as pool, \
                torch._inductor.config.patch({} if cuda else {**CPU_INDUCTOR, **salt}):
            for i, spec in enumerate(specs, 1):
                t0 = time.monotonic()
                warm_up(engine, fn, spec, kv_bucket)
                log.info("compiled step %d/%d: batch %d x window %d (%d logits) in %.1f s",
                         i, len(specs), spec.batch, spec.window, spec.logits,
                         time.monotonic() - t0)
    except Exception as exc:  # no C++ compiler, an unsupported op, ...: eager still works
        log.warning("torch.compile is unavailable here (%s: %s); running the eager step "
                    "(slower, same results). Pass --compile off to skip trying.",
                    type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        return None
    log.info("compiled %d step specializations in %.1f s; %d constants (%.0f MB) shared "
             "between them", len(specs), time.monotonic() - started, pool.shared,
             pool.shared_bytes / 2**20)
    return CompiledSteps(by_size(specs), fn, engine.ctx_len, kv_bucket, pool.shared)


def warm_up(engine: TorchEngine, fn: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]],
            spec: Specialization, kv_bucket: int) -> None:
    """Run one all-padding call of this shape: compiles it, and writes only scratch positions.
    kv_bucket > 0: the KV length is compiled as a dynamic dimension, kv_bucket..ctx_len."""
    ids = np.zeros((1, 1), dtype=np.int64)
    pos = np.full((1, 1), -1, dtype=np.int64)
    ids, pos, slots = pad_call(spec, ids, pos, np.zeros(1, dtype=np.int64))
    dev = engine.device
    kv_pos = engine.kv_positions[:]   # a view of its own: the mark below stays off the table
    if kv_bucket:
        torch._dynamo.mark_dynamic(kv_pos, 0, min=kv_bucket, max=engine.ctx_len)
    with torch.inference_mode():
        for _ in range(3 if str(dev).startswith("cuda") else 1):  # CUDA graphs record on a re-run
            fn(torch.from_numpy(ids).to(dev), torch.from_numpy(pos).to(dev),
               torch.from_numpy(slots).to(dev),
               torch.from_numpy(gather_index(pos, spec.logits, spec.logits)).to(dev), kv_pos)
