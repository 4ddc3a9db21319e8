"""The global suffix cache: one trie over the token sequences of finished sessions, bounded to
`capacity` sequences, least recently used out, so a proposer learns from the requests it has
served in bounded memory. A sequence is used when it is added and when a draft is taken from
it: a task that keeps coming back keeps its place however many others pass through."""

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
        """A finished session's sequence; evicts the least recently used past capacity. A
        one-token sequence (the service's warm-up session) predicts nothing and is not kept."""
        if self.capacity == 0 or len(tokens) < 2:
            return
        self._sequences[self._next_key] = tokens
        self._next_key += 1
        self.trie.add_sequence(tokens, tag=self._next_key - 1)
        self.tokens += len(tokens)
        while len(self._sequences) > self.capacity:
            _, old = self._sequences.popitem(last=False)
            self.trie.remove_sequence(old)
            self.tokens -= len(old)

    def touch(self, node: int) -> None:
        """A draft was taken from the path ending at `node`: the sequence that last passed
        through it becomes the most recently used (approximate where several share the path; a
        no-op where that one was evicted since)."""
        key = self.trie.tags[node]
        if key in self._sequences:
            self._sequences.move_to_end(key)
