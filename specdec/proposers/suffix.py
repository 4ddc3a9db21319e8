"""The suffix-decoding proposer (Arctic Inference's; docs/architecture.md): a suffix trie per
session over its prompt and output, and a global one over finished sessions (SuffixCache); each
round the candidate with the higher expected accepted tokens (Arctic's score) wins. A session
joins the global cache when it closes, never while it runs: its own future is no evidence about
itself. Sync is the n-gram proposer's; a sync that rewrites held tokens rebuilds the trie.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from specdec.admission import Admission
from specdec.method import Method
from specdec.proposers.ngram import LookupProposer, TokenHistory
from specdec.proposers.suffix_cache import SuffixCache
from specdec.proposers.suffix_trie import Candidate, SpecParams, SuffixTrie

# Longest suffix matched (Arctic's default max tree depth): longer matches rarely differ in
# what they predict, and the tries hold up to this + max_k nodes per token.
MAX_MATCH = 24
# Memory bounds the cache, not speed: unique text takes up to depth trie nodes per token, so
# 100 finished 3,000-token sessions can hold gigabytes (stats().cached_tokens). Arctic keeps
# 10,000 in compressed suffix trees; compressing single-occurrence chains would allow as many.
DEFAULT_CACHE_REQUESTS = 100


@dataclass(frozen=True)
class SuffixOptions:
    cache_requests: int = DEFAULT_CACHE_REQUESTS  # finished sessions the global cache holds
    params: SpecParams = field(default_factory=SpecParams)


@dataclass(frozen=True)
class SuffixStats:
    """Since the proposer started; the service exports them (specdec_suffix_* metrics)."""

    proposals: int         # proposer steps that asked for k > 0 tokens
    session_drafts: int    # ... answered from the session's own trie
    global_drafts: int     # ... answered from the global cache: cache hits
    cached_sequences: int  # finished sessions in the global cache
    cached_tokens: int     # their tokens


class SuffixSession(TokenHistory):
    def __init__(self, ctx_len: int, ticket: int, depth: int) -> None:
        super().__init__(ctx_len, ticket)
        self.trie = SuffixTrie(depth)

    def sync(self, start: int, tokens: list[int]) -> None:
        old = self.length
        overlap = max(0, min(old, start + len(tokens)) - start)
        unchanged = self.buf[start:start + overlap].tolist() == tokens[:overlap]
        super().sync(start, tokens)  # validates start and ctx_len
        if unchanged and self.length >= old:
            self.trie.extend(tokens[old - start:])
        else:  # a rewrite of held tokens (a client resending from an earlier start): rare
            self.trie = SuffixTrie(self.trie.depth)
            self.trie.extend(self.view().tolist())


class SuffixProposer(LookupProposer[SuffixSession]):
    method = Method.SUFFIX

    def __init__(self, max_k: int, ctx_len: int, sessions: int,
                 options: SuffixOptions = SuffixOptions(),
                 admission: Admission = Admission()) -> None:
        if options.params.max_spec_factor <= 0:
            raise ValueError("max_spec_factor must be > 0")
        if not 0 <= options.params.min_token_prob <= 1:
            raise ValueError("min_token_prob must be in 0..1")
        super().__init__(max_k, ctx_len, sessions, admission)
        self.params = options.params
        self.depth = MAX_MATCH + max(max_k, 1)  # a full-length match still has k tokens below it
        # Shared by every session. Safe without a lock: sessions are coroutines on one event
        # loop, and neither propose nor close_session awaits between reading and updating it.
        self.cache = SuffixCache(options.cache_requests, self.depth)
        self.proposals = self.session_drafts = self.global_drafts = 0

    def stats(self) -> SuffixStats:
        return SuffixStats(self.proposals, self.session_drafts, self.global_drafts,
                           len(self.cache), self.cache.tokens)

    async def open_session(self) -> SuffixSession:
        return SuffixSession(self.ctx_len, await self.pool.acquire(), self.depth)

    async def close_session(self, session: SuffixSession) -> None:
        self.cache.add(session.view().tolist())
        await super().close_session(session)

    def lookup(self, session: SuffixSession, k: int) -> list[int]:
        context = session.view()[-MAX_MATCH:].tolist()
        best, cached = choose(session.trie.propose(context, MAX_MATCH, k, self.params),
                              self.cache.trie.propose(context, MAX_MATCH, k, self.params))
        self.proposals += 1
        if best.tokens and cached:
            self.global_drafts += 1
            self.cache.touch(best.node)
        elif best.tokens:
            self.session_drafts += 1
        return best.tokens


def choose(local: Candidate, cached: Candidate) -> tuple[Candidate, bool]:
    """The candidate with the higher score, and whether it is the global cache's; the session's
    own on a tie (its context is the more specific evidence)."""
    return (cached, True) if cached.score > local.score else (local, False)
