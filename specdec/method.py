"""Which proposer drafts: one name per method, in code, flags, JSON, ModelInfo and metrics.

The values are the wire's (`--method`, `ModelInfo.method`, Generate's and the OpenAI API's
`method`); `Method.parse` also takes QEfficient's names for them (its example scripts'
`draft_based`, `prompt_lookup`, `multi_projection`, and the older `pld`, `multiprojs`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Collection
from enum import StrEnum

from specdec.errors import InvalidRequest, bounded


class Method(StrEnum):
    DRAFT = "draft"     # a draft model (QEfficient's draft_based)
    NGRAM = "ngram"     # n-gram prompt lookup (QEfficient's prompt_lookup)
    SUFFIX = "suffix"   # suffix decoding (Arctic Inference's): this and finished sessions' tries
    TURBO = "turbo"     # Turbo heads inside the verifier's forward (QEfficient's multi_projection)
    NONE = "none"       # target-only (Generate)

    def __repr__(self) -> str:   # as argparse and error messages quote a value: 'draft'
        return repr(self.value)

    @classmethod
    def parse(cls, text: str, allowed: Collection[Method] = ()) -> Method:
        """A method's name or alias (any case, `_` or `-`), one of `allowed` (default: any);
        InvalidRequest naming the valid ones otherwise."""
        key = text.strip().lower().replace("_", "-")
        method = ALIASES.get(key) or next((m for m in cls if m.value == key), None)
        allowed = tuple(allowed) or tuple(cls)
        if method is None or method not in allowed:
            aliases = ", ".join(f"{a} = {m}" for a, m in ALIASES.items() if m in allowed)
            what = "unknown method" if method is None else "not served here: method"
            raise InvalidRequest(f"{what} {bounded(text)!r}: one of {', '.join(allowed)}"
                                 + (f" (or QEfficient's names: {aliases})" if aliases else ""))
        return method


ALIASES = {"draft-based": Method.DRAFT, "prompt-lookup": Method.NGRAM, "pld": Method.NGRAM,
           "multi-projection": Method.TURBO, "multiprojs": Method.TURBO}
PROPOSER_METHODS = (Method.DRAFT, Method.NGRAM, Method.SUFFIX)   # what a proposer service hosts
GENERATE_METHODS = (Method.NONE, Method.DRAFT, Method.NGRAM, Method.TURBO)  # the verifier's loop


def method_arg(allowed: Collection[Method]) -> Callable[[str], Method]:
    """An argparse type: a method of `allowed` by name or alias, argparse's message otherwise."""
    def method(text: str) -> Method:
        try:
            return Method.parse(text, allowed)
        except InvalidRequest as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return method
