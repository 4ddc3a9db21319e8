"""Verify-window sizes: QEfficient compiles one decode specialization per k in
--num-speculative-tokens (e.g. "0,3"); a step runs in the smallest compiled window that holds
its draft, padded with -1. Torch runs any size, so its set is every k up to max_k."""

from __future__ import annotations


def parse_sizes(text: str) -> tuple[int, ...]:
    """"0,3" -> (0, 3): sorted, distinct, non-negative."""
    try:
        sizes = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        raise ValueError(f"expected a comma list of integers, got {text!r}") from None
    if not sizes or sizes[0] < 0:
        raise ValueError(f"expected non-negative integers, got {text!r}")
    return tuple(sizes)


def select_window(num_drafts: int, sizes: tuple[int, ...]) -> int:
    """Smallest k in sizes with k >= num_drafts (sizes sorted ascending)."""
    for k in sizes:
        if k >= num_drafts:
            return k
    raise ValueError(f"no window holds {num_drafts} drafts (sizes {sizes})")
