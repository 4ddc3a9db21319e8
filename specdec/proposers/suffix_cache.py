"""The global suffix cache: one trie over the token sequences of finished sessions, bounded to
the `capacity` most recently finished (the oldest is removed from the trie when one more
arrives), so a proposer learns from the requests it has served in bounded memory."""

from __future__ import annotations

from collections import OrderedDict

from specdec.proposers.suffix_trie import SuffixTrie


class SuffixCache:
    def __init__(self, capacity: int, depth: int) -> None:
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        self.capacity = capacity
        self.trie = SuffixTrie(depth)
        self._sequences: OrderedDict[int, list[int]] = OrderedDict()
        self._next_key = 0
        self.tokens = 0  # in the cached sequences: what the trie's size grows with

    def __len__(self) -> int:
        return len(self._sequences)

    def add(self, tokens: list[int]) -> None:
        """A finished session's sequence; evicts the least recently added past capacity.
        O(depth) per token either way (add, evict), on the caller's thread. A sequence of one
        token has nothing that follows anything, so it is not kept (the service's warm-up
        session is one: it must not take a place in the cache)."""
        if self.capacity == 0 or len(tokens) < 2:
            return
        self._sequences[self._next_key] = tokens
        self._next_key += 1
        self.trie.add_sequence(tokens)
        self.tokens += len(tokens)
        while len(self._sequences) > self.capacity:
            _, old = self._sequences.popitem(last=False)
            self.trie.remove_sequence(old)
            self.tokens -= len(old)
