"""One copy of each frozen weight across an engine's compiled graphs.

Why: on CPU, inductor freezes the weights into each compiled graph and prepacks them for its
C++ GEMM (compiled.CPU_FROZEN_INDUCTOR), so every specialization held a copy of every weight of its
own. A call at another specialization than the engine's last then read its copy cold (`python
-m bench.floor --compile on --full-batch-size 1` times windows alone and called in turn): every
round of `--num-speculative-tokens auto` that explores or trims its window paid that, as does a
batch whose rows move between batch buckets. The packing is deterministic, so the graphs'
packed weights are equal tensor for tensor: while an engine compiles, a constant equal to one
that an earlier graph registered is replaced by it, and a verifier holds one copy, not one per
window.

Constants are read-only (freezing inlines only parameters that are never mutated), so sharing
one changes no result. The hook is inductor's registry of a graph's constants
(GraphLowering.allocate_non_dup_const_name), a private method: where it is not as expected,
nothing is shared. A graph that inductor loads from its on-disk cache instead of
lowering it keeps constants of its own.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

log = logging.getLogger(__name__)

Layout = tuple[torch.device, torch.dtype, tuple[int, ...], tuple[int, ...], int]


@dataclass
class ConstantPool:
    """The constants registered so far, by layout; `share` returns the pooled equal one."""

    by_layout: dict[Layout, list[torch.Tensor]] = field(default_factory=dict)
    shared: int = 0          # constants replaced by a pooled one
    shared_bytes: int = 0    # ... and the bytes they would have held

    def share(self, data: Any) -> Any:
        """`data`, or a pooled tensor equal to it (same layout, same values)."""
        if type(data) not in (torch.Tensor, torch.nn.Parameter) or data.layout != torch.strided \
                or data.is_mkldnn:
            return data
        key = (data.device, data.dtype, tuple(data.size()), tuple(data.stride()), data.storage_offset())
        pooled = self.by_layout.setdefault(key, [])
        for other in pooled:
            if other is data:
                return data
            if torch.equal(other, data):
                self.shared += 1
                self.shared_bytes += data.numel() * data.element_size()
                return other
        pooled.append(data)
        return data


@contextlib.contextmanager
def shared_constants(pool: ConstantPool | None = None) -> Iterator[ConstantPool]:
    """While open, graphs compiled in this process share their equal constants with `pool`
    (a new one by default; an engine that builds its graphs one at a time passes its own)."""
    pool = pool if pool is not None else ConstantPool()
    try:
        from torch._inductor.graph import GraphLowering
        original = GraphLowering.allocate_non_dup_const_name
    except (ImportError, AttributeError) as exc:
        log.info("inductor's constant registry is not as expected (%s: %s); each compiled graph "
                 "keeps its own weights", type(exc).__name__, exc)
        yield pool
        return

    def allocate(self: Any, name: str | None, data: torch.Tensor) -> str:
        return original(self, name, pool.share(data))

    GraphLowering.allocate_non_dup_const_name = allocate  # type: ignore[method-assign]
    try:
        yield pool
    finally:
        GraphLowering.allocate_non_dup_const_name = original  # type: ignore[method-assign]
