"""Register tiles for inductor's C++ GEMM on AVX-512: at most 12 accumulators per micro-kernel.

Why: a decode step multiplies a few rows (window x batch) by each weight matrix. Inductor's
FP32 micro-kernel keeps a BLOCK_M x BLOCK_N tile of C in vector registers; with its stock AVX-512
tiles (8 x 48, 8 x 32, 16 x 16) a GEMM of 5 or more rows builds 15-24 accumulators, and the
compiled kernel runs at about half speed past 12 (register spills, presumably: 32 vector registers
hold the tile, a row of B and the broadcast of A). Measured on the shipped target's gate/up GEMM
([M, 320] x [320, 1728], one core, µs per call including ~45 µs of launch):

    rows M          1    4    5    8   16   32
    stock tiles    60   87  160  236  436  859
    4 x 48 tile    59   87  101  137  242  448   (inductor picks it unless 6 divides M and 4 not)

so a 5-token verify window (k = 4) cost ~1.5x a 4-token one, where the extra row should cost
~1/4 more. These tiles hold 12 accumulators at most (4 rows x 3 vectors, 6 rows x 2). Only the
tile shape changes: each output element still sums over K in the same order, so results are
unchanged. AVX2 tiles already stay within 12 and are left alone.

The tiles are inductor's registry of micro-kernel configs, a private structure: where it is not
as expected (another torch), nothing is changed and the stock tiles are used. Inductor's graph
cache does not key on that registry, so the patch also adds a no-op graph pass whose uuid names
the tiles: a graph compiled with the stock tiles is not reused under these, nor the other way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

import torch
import torch._inductor.custom_graph_pass

log = logging.getLogger(__name__)

SMALL_TILES = ((4, 48, 1), (6, 32, 1))  # (block_m, block_n, block_k): 12 zmm accumulators each


def _float32_avx512(configs: list[Any], mg: Any) -> list[Any]:
    return [c for c in configs if c.vec_isa_cls is mg.VecAVX512 and c.input_dtype == torch.float32
            and c.input2_dtype == torch.float32 and c.output_dtype == torch.float32]


class _TileSalt(torch._inductor.custom_graph_pass.CustomGraphPass):
    """A graph pass that does nothing; its uuid puts the tiles into inductor's cache key."""

    def __call__(self, graph: torch.fx.graph.Graph) -> None:
        pass

    def uuid(self) -> str:
        return f"specdec-cpu-gemm-tiles-{SMALL_TILES}"


@contextlib.contextmanager
def small_gemm_tiles() -> Iterator[dict[str, Any]]:
    """While open, inductor builds AVX-512 FP32 GEMMs with SMALL_TILES. Yields the inductor
    config entries to patch in with it (the cache salt); {} where the registry is not as
    expected. The stock tiles are restored on exit, since the registry is process-wide."""
    try:
        # Import order matters: imported cold, the registry's module hits a circular import.
        import torch._inductor.select_algorithm  # noqa: F401
        from torch._inductor.codegen import cpp_micro_gemm as mg
        configs = mg.micro_gemm_configs[mg.CppMicroGemmFP32Vec]
        stock = _float32_avx512(configs, mg)
        mine = [dataclasses.replace(stock[0], register_blocking=mg.GemmBlocking(*t))
                for t in SMALL_TILES]
    except (ImportError, AttributeError, KeyError, IndexError, TypeError) as exc:
        log.info("inductor's GEMM tile registry is not as expected (%s: %s); stock tiles",
                 type(exc).__name__, exc)
        yield {}
        return
    saved = list(configs)
    configs[:] = [c for c in configs if c not in stock] + mine
    try:
        yield {"post_grad_custom_post_pass": _TileSalt()}
    finally:
        configs[:] = saved
