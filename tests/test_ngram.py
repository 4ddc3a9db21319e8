"""The n-gram proposer on hand-written arrays."""

from __future__ import annotations

import numpy as np
import pytest

from specdec.proposers.ngram import propose_ngram


def ngram(history, max_n=3, k=3):
    return propose_ngram(np.array(history, dtype=np.int64), max_n, k).tolist()


def test_no_match():
    assert ngram([1, 2, 3, 4, 5]) == []
    assert ngram([7]) == []
    assert ngram([]) == []


def test_docstring_example():
    assert ngram([1, 2, 3, 4, 2, 3], max_n=2, k=3) == [4, 2, 3]


def test_self_match_excluded():
    # The suffix [5, 6] occurs only as itself: nothing to propose.
    assert ngram([1, 2, 5, 6], max_n=2) == []


def test_partial_continuation():
    # [8, 9] occurred once, followed by only two tokens before the end.
    assert ngram([1, 8, 9, 4, 8, 9], max_n=2, k=5) == [4, 8, 9]
    assert ngram([3, 8, 9, 8, 9], max_n=2, k=4) == [8, 9]


def test_longer_ngrams_win():
    # Unigram [3] last followed by 7; the trigram [1 2 3] says 4.
    history = [1, 2, 3, 4, 9, 3, 7, 1, 2, 3]
    assert ngram(history, max_n=3, k=1) == [4]
    assert ngram(history, max_n=1, k=1) == [7]


def test_most_recent_full_match_wins():
    # [5] was followed by 1 1 1 earlier and by 2 2 2 more recently.
    history = [5, 1, 1, 1, 5, 2, 2, 2, 5]
    assert ngram(history, max_n=1, k=3) == [2, 2, 2]
    # When the recent ones are too close to the end, the full earlier one wins over partials.
    assert ngram([5, 1, 1, 1, 5, 2, 5], max_n=1, k=3) == [1, 1, 1]


@pytest.mark.parametrize("k", [0, 1, 4])
def test_length_bounded_by_k(k):
    history = [1, 2, 3, 4, 5, 6, 1, 2]
    assert ngram(history, max_n=2, k=k) == [3, 4, 5, 6][:k]


def test_min_ngram_size():
    history = [4, 7, 1, 9, 7]
    assert ngram(history, max_n=2, k=2) == [1, 9]
    assert propose_ngram(np.array(history), 2, 2, min_ngram_size=2).tolist() == []
