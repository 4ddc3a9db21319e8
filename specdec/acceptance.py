"""Greedy acceptance, a pure function over arrays: a step emits the accepted drafts and one
target token, the correction or the bonus (glossary: docs/architecture.md).
"""

from __future__ import annotations

import numpy as np


def greedy_accept(draft: np.ndarray, target_argmax: np.ndarray) -> int:
    """Number of accepted drafts.

    draft:         [k]   d1..dk
    target_argmax: [k+1] argmax of the target at the window [t, d1..dk]; entry i is the
                         target's choice for the position of d(i+1).
    Emitted tokens are target_argmax[:accepted + 1]: output equals plain greedy decoding.
    """
    k = draft.shape[0]
    assert target_argmax.shape == (k + 1,), (draft.shape, target_argmax.shape)
    matches = draft == target_argmax[:k]
    return int(np.cumprod(matches).sum()) if k else 0
