"""A depth-bounded suffix trie with occurrence counts, the core of suffix decoding (Arctic
Inference's, arXiv 2411.04975): find the longest suffix of the current sequence that occurred
before, and propose its most frequent continuation.

It holds every substring of length <= depth of the sequences added; a node's count is how many
times its substring occurs, its children the tokens that followed an occurrence, so a
sequence's own final suffix adds no child (a match never counts the self-match). An append
touches the <= depth substrings ending at it: O(depth) per token, no rebuild per round; every
operation is a dict walk of <= depth steps, simpler than a suffix tree.

Nodes are ids into a list of token -> child dicts and an array of counts, not an object each:
dicts of ints are invisible to the garbage collector, and tens of thousands of node objects per
session made full collections pause the event loop (`python -m bench.suffix`).
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass

ROOT = 0  # the node of the empty string


@dataclass(frozen=True)
class SpecParams:
    """How a match becomes a draft (Arctic's names)."""

    max_spec_factor: float = 1.0  # draft at most factor x match length tokens
    min_token_prob: float = 0.1   # stop once the path's empirical probability falls below this


@dataclass(frozen=True)
class Candidate:
    tokens: list[int]
    match_len: int
    score: float  # expected accepted tokens under the counts: the sum of path probabilities
    node: int = ROOT  # where the draft's path ends: its tag names the sequence it came from


NO_CANDIDATE = Candidate([], 0, 0.0)


class SuffixTrie:
    def __init__(self, depth: int) -> None:
        if depth < 2:
            raise ValueError("depth must be >= 2 (a match of 1 and a token to propose)")
        self.depth = depth
        self.children: list[dict[int, int]] = [{}]  # [node] token -> child node
        self.counts = array("q", [0])                # [node] occurrences of its substring
        # [node] the tag of the last sequence appended through it: the global cache tags each
        # sequence with its key, to know which one a draft used (SuffixCache.touch).
        self.tags = array("q", [0])
        self.tag = 0                                 # what append() writes to tags
        self._free: list[int] = []                   # ids of removed nodes, reused first
        # Nodes of the substrings that end at the last appended token, lengths 1..depth - 1:
        # the ones the next appended token extends.
        self._open: list[int] = []

    def _new_node(self) -> int:
        if self._free:
            return self._free.pop()  # its dict is empty and its count 0 (see _drop)
        self.children.append({})
        self.counts.append(0)
        self.tags.append(0)
        return len(self.counts) - 1

    def append(self, token: int) -> None:
        """One more token of the sequence being built (the session's, or one being added)."""
        extended = [ROOT, *self._open]
        self._open = []
        for parent in extended:
            child = self.children[parent].get(token)
            if child is None:
                child = self.children[parent][token] = self._new_node()
            self.counts[child] += 1
            self.tags[child] = self.tag
            if len(self._open) < self.depth - 1:
                self._open.append(child)

    def extend(self, tokens: list[int]) -> None:
        for t in tokens:
            self.append(t)

    def end_sequence(self) -> None:
        """The next append starts a new sequence: no substring spans the two."""
        self._open = []

    def add_sequence(self, tokens: list[int], tag: int = 0) -> None:
        self.tag = tag
        self.end_sequence()
        self.extend(tokens)
        self.end_sequence()

    def remove_sequence(self, tokens: list[int]) -> None:
        """Undo add_sequence(tokens): every substring occurrence loses its count; nodes no
        occurrence reaches any more are dropped, so an evicted sequence leaves nothing."""
        for start in range(len(tokens)):
            node = ROOT
            for t in tokens[start:start + self.depth]:
                child = self.children[node][t]
                self.counts[child] -= 1
                if self.counts[child] == 0:
                    del self.children[node][t]
                    self._drop(child)
                    break
                node = child

    def _drop(self, node: int) -> None:
        """Free a node and what is below it: all of it counted only the occurrences removed."""
        stack = [node]
        while stack:
            n = stack.pop()
            stack.extend(self.children[n].values())
            self.children[n].clear()
            self.counts[n] = 0
            self._free.append(n)

    def node_of(self, tokens: list[int]) -> int | None:
        node = ROOT
        for t in tokens:
            child = self.children[node].get(t)
            if child is None:
                return None
            node = child
        return node

    def longest_match(self, context: list[int], max_len: int) -> tuple[int, int]:
        """The longest suffix of context (<= max_len, < depth) that occurred with a continuation,
        and its node; (ROOT, 0) when none. Binary search: a suffix of length m that occurred
        followed by a token implies the same for its suffix of length m - 1."""
        lo, hi = 0, min(max_len, len(context), self.depth - 1)
        best = ROOT
        while lo < hi:
            mid = (lo + hi + 1) // 2
            node = self.node_of(context[len(context) - mid:])
            if node is not None and self.children[node]:
                lo, best = mid, node
            else:
                hi = mid - 1
        return best, lo

    def propose(self, context: list[int], max_match: int, k: int,
                params: SpecParams) -> Candidate:
        """The most frequent continuation of context's longest match, up to
        min(k, factor x match length) tokens, while its probability stays >= min_token_prob."""
        node, m = self.longest_match(context, max_match)
        limit = min(k, int(params.max_spec_factor * m))
        counts = self.counts
        tokens: list[int] = []
        prob, score = 1.0, 0.0
        while len(tokens) < limit and self.children[node]:
            options = self.children[node]
            total = sum(counts[c] for c in options.values())
            # Most frequent next token; ties to the smaller id, so drafts are reproducible.
            token, child = max(options.items(), key=lambda kv: (counts[kv[1]], -kv[0]))
            prob *= counts[child] / total
            if prob < params.min_token_prob:
                break
            tokens.append(token)
            score += prob
            node = child
        return Candidate(tokens, m, score, node) if tokens else NO_CANDIDATE
