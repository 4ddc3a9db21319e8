"""Prompt lookup (n-gram) proposer: propose the tokens that followed an earlier occurrence of
the sequence's last n tokens. No model, no device.

Which match wins, and why: for n from max_ngram_size down to 1 (longer n-grams are more
specific, so they are tried first), look for earlier occurrences of the last n tokens. The
self-match (the suffix itself) is excluded. Among the occurrences of the first n that has any,
the **most recent one whose continuation has all k tokens** wins: recent context predicts the
next tokens best (the current loop iteration, the current block of a repeated pattern). When
no occurrence has k tokens after it (all are near the end), the one with the longest
continuation wins, and the proposal is partial (fewer than k tokens).

QEfficient's `find_candidate_pred_tokens` (and HF's prompt lookup) instead keep the earliest
match; `test_most_recent_full_match_wins` in tests/test_ngram.py shows where they differ.
"""

from __future__ import annotations

import numpy as np


def propose_ngram(history: np.ndarray, max_ngram_size: int, k: int,
                  min_ngram_size: int = 1) -> np.ndarray:
    """history: [T] int64 token ids (prompt + generated). Returns [m] int64, 0 <= m <= k.

    Example: history = [1 2 3 4 2 3], max_ngram_size = 2, k = 3. The suffix [2 3] occurred at
    position 1; it was followed by [4 2 3], so the proposal is [4 2 3].
    """
    t = history.shape[0]
    if k <= 0:
        return history[:0]
    for n in range(min(max_ngram_size, t - 1), min_ngram_size - 1, -1):
        suffix = history[t - n:]
        # windows[i] = history[i:i+n]; an occurrence at i < t - n is not the suffix itself.
        windows = np.lib.stride_tricks.sliding_window_view(history[:t - 1], n)
        starts = np.flatnonzero((windows == suffix).all(axis=1))
        starts = starts[starts < t - n]
        if starts.size == 0:
            continue
        follow = starts + n                       # where each continuation begins
        full = follow[t - follow >= k]
        begin = int(full[-1]) if full.size else int(follow[0])
        return history[begin:begin + k]
    return history[:0]
