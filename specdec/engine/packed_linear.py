"""oneDNN-packed projections for the compiled CPU steps of three or more rows.

Why: a verify window or a prefill chunk multiplies a few rows by each weight matrix. Inductor's
own C++ GEMM (compiled.py) is the fastest at one or two rows, but from three rows on it runs far
below the core's rate, where oneDNN's kernels on a weight packed for them once at load keep
close to it (`python -m bench.turbo_cost` times each window). The window's cost over a one-row
step is what every draft must beat, so this is what makes speculation pay on a CPU.

Why a custom op: inductor lowers oneDNN's linear only on weights frozen into the graph as packed
tensors, which its on-disk cache cannot store (every start would compile again). Here the packed
weight stays outside the graph, named by a key: the graph calls `specdec::packed_linear(x, key)`,
an opaque op, and stays cacheable. The key is the weight's content hash, so a restart (or a
second engine of the same checkpoint) finds the same graph in the cache, and an engine of other
weights a graph of its own. The registry is process-wide because the op's implementation can
only reach its weight through the key; an entry lives as long as a module holds its PackedWeight.
"""

from __future__ import annotations

import hashlib
import weakref
from dataclasses import dataclass

import torch

# Rows (batch x window) from which the compiled step multiplies through oneDNN. Two rows gain
# nothing over inductor's GEMM, one row loses (oneDNN's call costs more than the GEMV).
MIN_ROWS = 3
# The row count oneDNN lays the packed weight out for; any count works, and from 5 to 16 rows
# the layouts measure the same.
PACKED_FOR_ROWS = 16


@dataclass(eq=False)
class PackedWeight:
    key: str
    out_features: int
    tensor: torch.Tensor   # oneDNN's opaque layout of the [out, in] weight


_REGISTRY: weakref.WeakValueDictionary[str, PackedWeight] = weakref.WeakValueDictionary()


def available(weight: torch.Tensor) -> bool:
    """oneDNN serves this weight here: float32 on a CPU with oneDNN built in."""
    return weight.device.type == "cpu" and weight.dtype == torch.float32 \
        and torch.backends.mkldnn.is_available()


def pack(weight_t: torch.Tensor) -> PackedWeight:
    """The [in, out] weight packed for oneDNN, shared with any module of the same weight."""
    w = weight_t.detach()
    digest = hashlib.blake2b(w.contiguous().numpy().data, digest_size=16).hexdigest()
    key = f"{tuple(w.shape)}:{digest}"
    found = _REGISTRY.get(key)
    if found is None:
        packed = torch.ops.mkldnn._reorder_linear_weight(w.t().contiguous(), PACKED_FOR_ROWS)
        found = _REGISTRY[key] = PackedWeight(key, w.shape[1], packed)
    return found


@torch.library.custom_op("specdec::packed_linear", mutates_args=())
def packed_linear(x: torch.Tensor, key: str) -> torch.Tensor:
    """[..., in] @ the packed weight -> [..., out]."""
    packed = _REGISTRY[key]
    y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]), packed.tensor, None, "none", [], "")
    return y.reshape(*x.shape[:-1], packed.out_features)


@packed_linear.register_fake
def _(x: torch.Tensor, key: str) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], _REGISTRY[key].out_features)
