"""Suffix decoding's core on hand-written sequences: matching, frequency, draft length,
eviction, and when a session's tokens reach the global cache."""

from __future__ import annotations

import asyncio

import pytest

from specdec.proposers.suffix import SuffixOptions, SuffixProposer, SuffixSession, SuffixStats
from specdec.proposers.suffix_cache import SuffixCache
from specdec.proposers.suffix_trie import ROOT, SpecParams, SuffixTrie

LOOSE = SpecParams(max_spec_factor=8.0, min_token_prob=0.0)


def trie_of(*sequences: list[int], depth: int = 8) -> SuffixTrie:
    trie = SuffixTrie(depth)
    for s in sequences:
        trie.add_sequence(s)
    return trie


def shape(trie: SuffixTrie, node: int = ROOT) -> dict:
    """The trie as nested dicts of (count, children), whatever ids its nodes got."""
    return {t: (trie.counts[c], shape(trie, c)) for t, c in sorted(trie.children[node].items())}


def test_longest_match_and_continuation():
    trie = trie_of([1, 2, 3, 4, 1, 2])
    node, m = trie.longest_match([1, 2], 8)
    assert m == 2 and list(trie.children[node]) == [3]
    assert trie.propose([1, 2], 8, 5, LOOSE).tokens == [3, 4, 1, 2]


def test_self_match_is_no_match():
    # [5 6 7] occurs only as itself: nothing followed any of its suffixes.
    assert trie_of([5, 6, 7]).propose([5, 6, 7], 8, 3, LOOSE).tokens == []
    assert trie_of().propose([1, 2], 8, 3, LOOSE).tokens == []


def test_longest_match_beats_more_frequent_shorter_one():
    # After [1] came 6 twice, but after [7 1] came 5.
    seq = [7, 1, 5, 3, 1, 6, 3, 1, 6, 7, 1]
    assert trie_of(seq).propose(seq, 8, 1, LOOSE).tokens == [5]
    assert trie_of(seq).propose(seq, 1, 1, LOOSE).tokens == [6]  # max match 1: only [1]


def test_most_frequent_continuation_and_min_token_prob():
    trie = trie_of([9, 1, 2], [9, 1, 2], [9, 3, 4])
    cand = trie.propose([0, 9], 8, 2, SpecParams(max_spec_factor=2.0, min_token_prob=0.0))
    assert cand.tokens == [1, 2] and cand.match_len == 1
    assert cand.score == pytest.approx(2 / 3 + 2 / 3)
    # The path's probability is 2/3: under a 0.7 floor nothing is proposed.
    assert trie.propose([0, 9], 8, 2, SpecParams(2.0, 0.7)).tokens == []


def test_probability_is_a_product_along_the_path():
    # [1] -> 2 always; [1 2] -> 3 or 4 half the time each: 1.0 then 0.5.
    trie = trie_of([1, 2, 3], [1, 2, 4])
    assert trie.propose([1], 8, 3, SpecParams(8.0, 0.6)).tokens == [2]
    assert trie.propose([1], 8, 3, SpecParams(8.0, 0.5)).tokens == [2, 3]


@pytest.mark.parametrize("factor, k, want", [(1.0, 8, 4), (0.5, 8, 2), (2.0, 8, 6), (2.0, 3, 3)])
def test_draft_length_from_match_length(factor, k, want):
    unit = [10, 11, 12, 13, 14, 15, 16, 17, 18, 19]
    trie = trie_of(unit, depth=16)
    node, m = trie.longest_match([99, 10, 11, 12, 13], 16)
    assert m == 4
    cand = trie.propose([99, 10, 11, 12, 13], 16, k, SpecParams(factor, 0.0))
    assert cand.tokens == unit[4:4 + want]


def test_depth_bounds_the_match():
    seq = list(range(1, 20))
    trie = trie_of(seq, depth=4)
    _, m = trie.longest_match(seq[:10], 100)
    assert m == 3  # depth - 1: one level left for the continuation


def test_remove_undoes_add_exactly():
    a, b = [1, 2, 3, 1, 2, 4], [2, 3, 1, 5]
    trie = trie_of(a, b)
    trie.remove_sequence(a)
    assert shape(trie) == shape(trie_of(b))
    trie.remove_sequence(b)
    assert trie.children[ROOT] == {}


def test_cache_evicts_least_recently_added():
    a, b, c = [1, 2, 3, 4], [5, 6, 7, 8], [1, 2, 9, 9]
    cache = SuffixCache(2, depth=8)
    for s in (a, b, c):
        cache.add(s)
    assert (len(cache), cache.tokens) == (2, 8)
    assert shape(cache.trie) == shape(trie_of(b, c))
    assert cache.trie.propose([1, 2], 8, 2, LOOSE).tokens == [9, 9]  # a's [3 4] is gone
    cache.add([5])  # teaches nothing: not kept, evicts nothing
    assert (len(cache), cache.tokens) == (2, 8)
    off = SuffixCache(0, depth=8)
    off.add(a)
    assert len(off) == 0 and off.trie.children[ROOT] == {}


def test_a_sequence_drafted_from_is_kept_over_a_newer_unused_one():
    a, b, c = [1, 2, 3, 4], [5, 6, 7, 8], [10, 11, 12, 13]
    cache = SuffixCache(2, depth=8)
    cache.add(a)
    cache.add(b)
    used = cache.trie.propose([1, 2], 8, 2, LOOSE)
    assert used.tokens == [3, 4]
    cache.touch(used.node)  # a is now the most recently used: b leaves when c arrives
    cache.add(c)
    assert shape(cache.trie) == shape(trie_of(a, c))
    # Without the touch, a (the oldest) would have left instead.
    plain = SuffixCache(2, depth=8)
    for s in (a, b, c):
        plain.add(s)
    assert shape(plain.trie) == shape(trie_of(b, c))


def test_the_proposer_touches_the_cached_sequence_it_drafts_from():
    proposer = SuffixProposer(max_k=2, ctx_len=64, sessions=1,
                              options=SuffixOptions(cache_requests=3, params=LOOSE))
    a, b, c = [30, 31, 32, 33], [40, 41, 42, 43], [50, 51, 52, 53]

    async def finished(tokens: list[int], ask: list[int] | None = None) -> list[int]:
        s = await proposer.open_session()
        draft = (await proposer.propose(s, 0, ask or tokens, 2)).draft
        await proposer.close_session(s)
        return draft

    async def go() -> list[int]:
        await finished(a)
        await finished(b)
        drafted = await finished([30, 31], ask=[30, 31])  # drafts from a, then is cached
        await finished(c)  # the fourth: evicts b, the least recently used, not a
        return drafted

    assert asyncio.run(go()) == [32, 33]
    assert proposer.cache.trie.node_of([31, 32, 33]) is not None
    assert proposer.cache.trie.node_of([41, 42]) is None


def test_session_appends_equal_a_rebuild_and_rewrites_rebuild():
    tokens = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2, 3, 8, 4]
    s = SuffixSession(64, 0, depth=6)
    s.sync(0, tokens[:5])
    s.sync(5, tokens[5:12])
    s.sync(12, tokens[12:])
    s.sync(3, tokens[3:])  # a resend of held tokens: nothing counted twice
    assert shape(s.trie) == shape(trie_of(tokens, depth=6))
    s.sync(10, [7, 7])     # a rewrite: positions >= 10 replaced
    assert shape(s.trie) == shape(trie_of(tokens[:10] + [7, 7], depth=6))


def test_a_session_enters_the_global_cache_only_when_it_closes():
    proposer = SuffixProposer(max_k=4, ctx_len=64, sessions=2, options=SuffixOptions(params=LOOSE))
    first = [40, 41, 42, 43, 44, 45, 46, 47]

    async def go() -> tuple[list[int], list[int], SuffixStats]:
        a = await proposer.open_session()
        await proposer.propose(a, 0, first, 4)
        b = await proposer.open_session()
        while_open = (await proposer.propose(b, 0, [40, 41], 4)).draft
        await proposer.close_session(a)
        after_close = (await proposer.propose(b, 2, [], 4)).draft
        await proposer.close_session(b)
        return while_open, after_close, proposer.stats()

    while_open, after_close, stats = asyncio.run(go())
    assert while_open == []
    assert after_close == [42, 43, 44, 45]  # factor 8 x match 2, capped by k = 4
    # Three proposals, one drafted from the cache; both sessions (8 + 2 tokens) now cached.
    assert stats == SuffixStats(proposals=3, session_drafts=0, global_drafts=1,
                                cached_sequences=2, cached_tokens=10)


def test_k_zero_and_k_bound():
    proposer = SuffixProposer(max_k=2, ctx_len=16, sessions=1)

    async def go() -> list[int]:
        s = await proposer.open_session()
        assert (await proposer.propose(s, 0, [1, 2, 1], 0)).draft == []
        with pytest.raises(Exception, match="outside"):
            await proposer.propose(s, 3, [], 3)
        return (await proposer.propose(s, 3, [], 2)).draft

    assert asyncio.run(go()) == [2]  # match [1], factor 1: one token


def test_evicted_nodes_are_reused_so_memory_stays_bounded():
    cache = SuffixCache(1, depth=4)
    for i in range(50):
        cache.add([100 * i + j for j in range(10)])
    # One sequence of 10 distinct tokens holds 10 + 9 + 8 + 7 nodes; while the next is added
    # the evicted one still holds its 34: never more than two sequences' worth plus the root.
    assert len(cache.trie.counts) <= 1 + 2 * 34
    assert sum(1 for c in cache.trie.counts if c) == 34


def test_service_flags_build_the_suffix_proposer():
    from proposer_service.config import from_args
    from specdec.build import build_proposer
    from specdec.service_config import suffix_options

    cfg = from_args(["--method", "suffix", "--suffix-cache-requests", "7", "--max-spec-factor", "2.5",
                     "--min-token-prob", "0.3"])
    assert suffix_options(cfg) == SuffixOptions(7, SpecParams(2.5, 0.3))
    proposer = build_proposer(cfg.method, cfg.engine, cfg.max_k, suffix=suffix_options(cfg))
    assert isinstance(proposer, SuffixProposer)
    assert (proposer.cache.capacity, proposer.params, proposer.max_k) == (7, SpecParams(2.5, 0.3), 8)
    for bad in (["--min-token-prob", "1.5"], ["--max-spec-factor", "0"], ["--suffix-cache-requests", "-1"]):
        with pytest.raises(SystemExit):
            from_args(["--method", "suffix", *bad])
