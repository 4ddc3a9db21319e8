"""Stop strings, pure functions: where a generated text must end, and how much of it may be
streamed before that is known. A stop string can span tokens and its first token can carry text
before it, so the cut is made in the text, and the tokens are cut after the one that completes
it (the text excludes it, as OpenAI's `stop`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from specdec.errors import InvalidRequest

MAX_STOP_STRINGS = 16      # per request; each is searched in every step's new text
MAX_STOP_CHARS = 256       # per stop string


@dataclass(frozen=True)
class StopCut:
    text_len: int     # characters of the text that may be emitted now
    tokens: int       # tokens those characters need (all of them, once stopped)
    stopped: bool     # a stop string was found: the text ends at text_len


def check_stop_strings(stops: Sequence[str]) -> tuple[str, ...]:
    """The stop strings of a request, or InvalidRequest: an empty one would stop at once."""
    if len(stops) > MAX_STOP_STRINGS:
        raise InvalidRequest(f"{len(stops)} stop strings: at most {MAX_STOP_STRINGS}")
    for s in stops:
        if not s:
            raise InvalidRequest("a stop string is empty: it would match before any text")
        if len(s) > MAX_STOP_CHARS:
            raise InvalidRequest(f"a stop string of {len(s)} characters: at most {MAX_STOP_CHARS}")
    return tuple(stops)


def earliest_stop(text: str, stops: Sequence[str], start: int = 0) -> tuple[int, int] | None:
    """(begin, end) of the stop string occurrence that begins first at or after `start` (the
    longest of those beginning there), or None."""
    best: tuple[int, int] | None = None
    for s in stops:
        i = text.find(s, start)
        if i >= 0 and (best is None or i < best[0] or (i == best[0] and i + len(s) > best[1])):
            best = (i, i + len(s))
    return best


def pending_len(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a stop string: text
    that could still turn out to be the start of one, so it is held back until resolved."""
    longest = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:n]):
                longest = n
                break
    return longest


def cut_at_stop_string(text: str, token_ends: Sequence[int], stops: Sequence[str],
                       start: int = 0, final: bool = False) -> StopCut:
    """Where the text so far may be emitted up to.

    text: everything generated so far; token_ends[i]: len(text) once token i was decoded
    (non-decreasing; a token inside an incomplete character adds nothing yet); start: text
    emitted already, which holds no stop string nor the start of one (it was cut here).
    final: the generation ended otherwise (EOS, length): nothing is held back any more.
    """
    found = earliest_stop(text, stops, start)
    if found is not None:
        begin, end = found
        tokens = next(i + 1 for i, e in enumerate(token_ends) if e >= end)
        return StopCut(begin, tokens, True)
    text_len = len(text) if final else len(text) - pending_len(text[start:], stops)
    # The tokens whose text is entirely out; a token straddling the held-back text waits.
    tokens = sum(1 for e in token_ends if e <= text_len) if not final else len(token_ends)
    return StopCut(text_len, tokens, False)
