"""The torch executor's compiled steps: one `torch.compile` graph per specialization, like the
specializations of a QPC, built in the background while the engine serves eagerly, and cached on
disk by inductor.

Why compile: a small-batch step of a small model is bound by per-op dispatch in eager mode (one
layer issues ~30 ops at ~10-20 µs each), far above the time to read the weights. A captured graph
fuses the pointwise work and leaves the matmuls. On CPU inductor emits C++ (it needs a C++
compiler); on CUDA the graphs are replayed as CUDA graphs, with the KV cache at static addresses.
Where the compiler is missing or fails, the engine warns once and runs eager: slower, same numbers.

Why in the background: a specialization takes seconds to tens of seconds to build on a CPU, and a
service plans dozens (batch buckets x verify windows). The engine serves at once with its eager
step and switches each shape to its graph as that is built, the shapes its callers used most
first. On CPU a thread of its own compiles; on CUDA the engine thread compiles between batches
(`idle_step`), because CUDA graphs must be recorded on the thread that replays them (inductor's
graph trees are per thread: pytorch/pytorch#123177).

Why the weights are frozen into the graphs of small models only: freezing lets inductor prepack
each weight for its C++ GEMM, which pays where dispatch dominates, but each graph then holds a
copy of every weight besides the engine's own (shared between graphs: shared_constants), which
doubles a large model's memory. Above FREEZE_MAX_BYTES the graphs take the engine's weights as
inputs: no copy. `--compile auto` times the first graph built (the most used shape) against the
eager step and keeps compiling only when it pays (COMPILE_MIN_GAIN).
"""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
import threading
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from specdec.engine.shared_constants import ConstantPool, shared_constants
from specdec.engine.specializations import Specialization, by_size, fit, gather_index, pad_call

if TYPE_CHECKING:
    from specdec.engine.torch_engine import TorchEngine

log = logging.getLogger(__name__)

Step = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]

# On CPU the step is a chain of GEMVs (a few rows times each weight matrix): inductor's own C++
# GEMM, tuned per shape on weights frozen and packed at compile time, streams them faster than
# the MKL call (python -m bench.floor), and the C++ wrapper drops the Python launch code
# between kernels. The KV cache is not a parameter, so it stays a mutable input.
# weight_prepack off: oneDNN's prepacked weights are opaque tensors that inductor's on-disk
# cache cannot store, so with them every start compiled every graph again; steps of three rows
# or more reach oneDNN through packed_linear instead, where inductor's GEMM falls behind.
CPU_FROZEN_INDUCTOR = {"freezing": True, "max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN",
                       "cpp_wrapper": True, "cpp.weight_prepack": False}
# Graphs that read the engine's own weights (inputs, not constants): no copies, cacheable.
CPU_SHARED_INDUCTOR = {"cpp_wrapper": True}
# Weights up to this size are frozen into CPU graphs; the copy then costs at most this much
# memory, and such models are the ones bound by dispatch.
FREEZE_MAX_BYTES = 256 * 2**20
# --compile auto keeps compiling where the first graph is at least this much faster than eager.
COMPILE_MIN_GAIN = 0.10

# The attended KV length is a dynamic dimension of every CPU graph, rounded up to this many
# positions: a step reads and attends over the positions in use, not all of ctx_len. Each row's
# cache is gathered for attention, so its cost grows with the positions attended (python -m
# bench.concurrency times 8 rows). On CUDA the graphs keep ctx_len (a CUDA graph is
# recorded per shape, and the GPU reads a few hundred positions in no measurable time).
KV_BUCKET = 32

# Inductor's registries (config, constants) are process-wide: graphs are built one at a time.
_ONE_GRAPH_AT_A_TIME = threading.Lock()
# Graphs dynamo may hold per step code object (one engine's specializations: own_step) and in
# all (every engine's in the process); past its defaults (8, 256) it would fall back to eager.
RECOMPILE_LIMIT = 1024


@dataclass
class CompiledSteps:
    """The specializations built so far; `specs` grows as the compiler builds them (a new tuple
    each time: the engine thread reads it without a lock)."""

    step: Step                                # the compiled engine.step
    ctx_len: int
    kv_bucket: int                            # 0: every step attends over all of ctx_len
    specs: tuple[Specialization, ...] = ()    # built, smallest first (specializations.by_size)
    shared: int = 0                           # constants shared with an earlier graph (CPU)

    def fit(self, batch: int, window: int, logits: int) -> Specialization | None:
        return fit(self.specs, batch, window, logits)

    def kv_len(self, needed: int) -> int:
        """KV positions a step attends over when its queries reach position needed - 1."""
        if not self.kv_bucket:
            return self.ctx_len
        return min(self.ctx_len, max(1, -(-needed // self.kv_bucket)) * self.kv_bucket)


def own_step(engine: TorchEngine) -> Step:
    """engine.step on a code object of this engine's own. Dynamo keeps its graphs per code
    object, and with the guards on module attributes dropped (see StepCompiler) a graph another
    engine built for the same input shapes would pass for this one's, computing with that
    engine's weights (engines of two models in one process, or an engine built where a freed
    one stood)."""
    step = type(engine).step
    own = types.FunctionType(step.__code__.replace(), step.__globals__, step.__name__,
                             step.__defaults__, step.__closure__)
    return types.MethodType(own, engine)


def weight_bytes(engine: TorchEngine) -> int:
    return sum(p.numel() * p.element_size() for p in engine.model.parameters())


@dataclass
class StepCompiler:
    """Builds an engine's planned specializations one at a time, most-used first, and adds each
    to `engine.compiled` when built. `auto`: stop, and run eager, where the first graph built
    (the most used shape) does not pay (COMPILE_MIN_GAIN)."""

    engine: TorchEngine
    planned: tuple[Specialization, ...]       # smallest first: the order among equally used ones
    cache_dir: Path | None
    auto: bool
    on_engine_thread: bool                    # CUDA: compile in idle_step on the engine thread
    uses: dict[Specialization, int] = field(default_factory=dict)   # eager calls each would hold
    built: list[Specialization] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    outcome: str = ""                         # what the compile came to, for logs and Info
    _owner: int | None = None                 # the thread that compiles (on_engine_thread)
    _stopped: bool = False                    # stop(): build no more
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _callbacks: list[Callable[[], None]] = field(default_factory=list)
    _pool: ConstantPool = field(default_factory=ConstantPool)
    _started: float = 0.0

    def __post_init__(self) -> None:
        engine = self.engine
        self.cuda = cuda = str(engine.device).startswith("cuda")
        if self.cache_dir is not None:
            # Inductor reads its cache location from the environment; a restart with the same
            # directory (and torch, model shapes) loads the graphs instead of compiling them.
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(self.cache_dir).expanduser() / "torch-inductor")
        self.frozen = not cuda and weight_bytes(engine) <= FREEZE_MAX_BYTES
        self.options = {} if cuda else CPU_FROZEN_INDUCTOR if self.frozen else CPU_SHARED_INDUCTOR
        if self.frozen:   # a third copy of the weights, as small as the frozen one (packed_linear)
            engine.model.pack_projections()
        if cuda:  # CUDA graphs replay fixed addresses: the cache and tables must not move
            for t in [engine.cos, engine.sin, *(x for kv in engine.caches for x in kv)]:
                torch._dynamo.mark_static_address(t)
        # Every call checks dynamo's guards of each cached specialization in turn until one
        # holds. Guards on the modules' attributes cannot fail here (the weights never change
        # after load): dropping them leaves the input shapes to pick the specialization, and
        # cuts the lookup by about three quarters (torch profiler on a step). CUDA adds
        # mode="reduce-overhead"'s one option (CUDA graphs): torch.compile takes a mode or
        # options, not both.
        options: dict[str, Any] = {"guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe}
        fn = torch.compile(own_step(engine), dynamic=False, fullgraph=True,
                           options={**options, "triton.cudagraphs": True} if cuda else options)
        kv_bucket = 0 if cuda or engine.ctx_len <= KV_BUCKET else KV_BUCKET
        self.steps = CompiledSteps(fn, engine.ctx_len, kv_bucket)

    def start(self) -> None:
        """Announce the plan; on CPU start the compiling thread (on CUDA, idle_step compiles)."""
        self._started = time.monotonic()
        log.info("compiling %d step specializations in the background (%s; weights %s), most "
                 "used first; serving with the eager step meanwhile", len(self.planned),
                 ", ".join(f"{s.batch}x{s.window}" for s in self.planned),
                 "frozen into the graphs" if self.frozen else "shared with the engine")
        if not self.on_engine_thread:
            threading.Thread(target=self._compile_all, name="compile", daemon=True).start()

    def note_use(self, batch: int, window: int, logits: int) -> None:
        """An eager call that a planned specialization would hold: that one goes sooner."""
        spec = fit(self.planned, batch, window, logits)
        if spec is not None and spec not in self.built:
            self.uses[spec] = self.uses.get(spec, 0) + 1

    def compile_on(self, thread_id: int) -> None:
        """CUDA: the engine thread (Batcher's) is the one that compiles, in idle_step, since
        it is the one that replays."""
        if self.on_engine_thread and self._owner is None:
            self._owner = thread_id

    def idle_step(self) -> bool:
        """On the engine thread between batches (CUDA): build one specialization; False when
        there is nothing to build here."""
        if not self.on_engine_thread or self.done.is_set() or self._owner != threading.get_ident():
            return False
        self._compile_next()
        return True

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until every planned specialization is built (or compiling was given up). On
        CUDA with no engine thread compiling, the caller's thread compiles: it is then the one
        that must call run() (CUDA graphs replay on the thread that recorded them)."""
        if self.on_engine_thread and self._owner in (None, threading.get_ident()):
            self._owner = threading.get_ident()
            while self._compile_next():
                pass
        return self.done.wait(timeout_s)

    def when_done(self, callback: Callable[[], None]) -> None:
        """callback() once compiling has ended (at once if it has), from the compiling thread."""
        with self._lock:
            if not self.done.is_set():
                self._callbacks.append(callback)
                return
        callback()

    def stop(self) -> None:
        """Build no more graphs; the one being built (if any) finishes first."""
        self._stopped = True

    def _compile_all(self) -> None:
        while self._compile_next():
            pass

    def _next(self) -> Specialization | None:
        pending = [s for s in self.planned if s not in self.built]
        if not pending:
            return None
        return max(pending, key=lambda s: (self.uses.get(s, 0), -self.planned.index(s)))

    def _compile_next(self) -> bool:
        """Build the next specialization; False when there is none left (or compiling ended)."""
        if self.done.is_set():
            return False
        if self._stopped:
            self._finish(f"compiling stopped after {len(self.built)} of {len(self.planned)} step "
                         "specializations: the engine is closing")
            return False
        spec = self._next()
        if spec is None:
            self._finish(f"compiled {len(self.built)} step specializations in "
                         f"{time.monotonic() - self._started:.1f} s")
            return False
        t0 = time.monotonic()
        try:
            with self._settings():
                warm_up(self.engine, self.steps.step, spec, self.steps.kv_bucket)
        except Exception as exc:  # no C++ compiler, an unsupported op, ...: eager still works
            log.warning("torch.compile is unavailable here (%s: %s); running the eager step "
                        "(slower, same results). Pass --compile off to skip trying.",
                        type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
            self.engine.compiled = None
            self._finish("torch.compile failed: eager")
            return False
        self.built.append(spec)
        self.steps.specs = by_size((*self.steps.specs, spec))
        self.steps.shared = self._pool.shared
        log.info("compiled step %d/%d: batch %d x window %d (%d logits) in %.1f s",
                 len(self.built), len(self.planned), spec.batch, spec.window, spec.logits,
                 time.monotonic() - t0)
        # auto: the first graph built decides whether compiling pays here at all
        return not (self.auto and len(self.built) == 1 and not self._pays(spec))

    @contextlib.contextmanager
    def _settings(self) -> Iterator[None]:
        """Inductor's settings and this engine's constant pool, around one graph.
        One graph at a time in the process: the settings are process-wide (inductor's config,
        its constant registry), and two engines may compile side by side."""
        # torch's config patches are per thread: the compiling thread sets its own.
        limits = torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT,
                                            accumulated_recompile_limit=RECOMPILE_LIMIT)
        with _ONE_GRAPH_AT_A_TIME, limits:
            if self.cuda:
                yield
                return
            with shared_constants(self._pool), torch._inductor.config.patch(self.options):
                yield

    def _pays(self, spec: Specialization) -> bool:
        """--compile auto: the built graph against the eager step at this shape (medians of
        interleaved calls). Where the gain is under COMPILE_MIN_GAIN, drop the graphs."""
        eager_s, compiled_s = time_step(self.engine, self.engine.step, self.steps.step, spec,
                                        self.steps.kv_len(1))
        gain = eager_s / compiled_s - 1
        if gain >= COMPILE_MIN_GAIN:
            log.info("--compile auto: the compiled step pays at batch %d x window %d (%.2f ms "
                     "vs %.2f ms eager, %+.0f%%): compiling the rest", spec.batch, spec.window,
                     compiled_s * 1e3, eager_s * 1e3, gain * 100)
            return True
        self.engine.compiled = None
        self._finish(f"--compile auto: compiling does not pay for this model (batch {spec.batch} "
                     f"x window {spec.window}: {compiled_s * 1e3:.2f} ms compiled vs "
                     f"{eager_s * 1e3:.2f} ms eager, {gain * 100:+.0f}%, under "
                     f"{COMPILE_MIN_GAIN:.0%}); running eager")
        return False

    def _finish(self, outcome: str) -> None:
        if self._pool.shared:
            outcome += f"; {self._pool.shared} constants ({self._pool.shared_bytes / 2**20:.0f} MB) shared"
        self.outcome = outcome
        log.info("%s", outcome)
        with self._lock:
            self.done.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()


def _padding_call(engine: TorchEngine, spec: Specialization) -> list[torch.Tensor]:
    """ids, pos, slots, gather of one all-padding call of this shape: it writes only the
    scratch position."""
    ids = np.zeros((1, 1), dtype=np.int64)
    pos = np.full((1, 1), -1, dtype=np.int64)
    ids, pos, slots = pad_call(spec, ids, pos, np.zeros(1, dtype=np.int64))
    arrays = (ids, pos, slots, gather_index(pos, spec.logits, spec.logits))
    return [torch.from_numpy(a).to(engine.device) for a in arrays]


def warm_up(engine: TorchEngine, fn: Step, spec: Specialization, kv_bucket: int) -> None:
    """Run one all-padding call of this shape: compiles it. kv_bucket > 0: the KV length is
    compiled as a dynamic dimension, kv_bucket..ctx_len."""
    kv_pos = engine.kv_positions[:]   # a view of its own: the mark below stays off the table
    if kv_bucket:
        torch._dynamo.mark_dynamic(kv_pos, 0, min=kv_bucket, max=engine.ctx_len)
    with torch.inference_mode():   # inputs made in it too: dynamo guards on their dispatch keys
        args = _padding_call(engine, spec)
        for _ in range(3 if str(engine.device).startswith("cuda") else 1):  # CUDA graphs record on a re-run
            fn(*args, kv_pos)


def time_step(engine: TorchEngine, eager: Step, compiled: Step, spec: Specialization,
              kv_len: int, calls: int = 7) -> tuple[float, float]:
    """Median seconds of an eager and a compiled call of this shape over kv_len positions,
    interleaved so that whatever else the machine does weighs on both alike."""
    times: tuple[list[float], list[float]] = ([], [])
    cuda = str(engine.device).startswith("cuda")
    with torch.inference_mode():
        args = [*_padding_call(engine, spec), engine.kv_positions[:kv_len]]
        for _ in range(calls):
            for fn, spent in ((eager, times[0]), (compiled, times[1])):
                t0 = time.perf_counter()
                fn(*args)
                if cuda:
                    torch.cuda.synchronize(engine.device)
                spent.append(time.perf_counter() - t0)
    return statistics.median(times[0]), statistics.median(times[1])
