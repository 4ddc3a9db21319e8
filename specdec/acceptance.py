"""Greedy acceptance, a pure function over arrays.

Glossary (after vLLM's RejectionSampler): the *draft* d1..dk are the proposer's guesses;
*accepted* drafts are the longest prefix the target agrees with; one more token always comes
from the target: the *correction* where a draft was rejected, or the *bonus* after all k were
accepted. So a step emits n = accepted + 1 tokens, 1 <= n <= k + 1.
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
