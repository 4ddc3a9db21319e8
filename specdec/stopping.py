"""Stop conditions, a pure function: EOS, max_new_tokens, ctx_len. (Stop strings are text:
specdec.stop_strings, applied where the text is, by the one-call generation.)"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class FinishReason(enum.IntEnum):
    # Values equal the wire enum's (specdec.v1.FinishReason).
    NONE = 0
    EOS = 1
    LENGTH = 2
    CTX_LEN = 3
    STOP = 4      # a stop string ended the text (specdec.stop_strings)


@dataclass(frozen=True)
class StopParams:
    max_new_tokens: int = 0     # tokens the session may still emit; 0 = bounded by ctx_len only
    ignore_eos: bool = False


def cut_at_stop(candidates: list[int], emitted: int, seq_len: int, params: StopParams,
                eos_ids: tuple[int, ...], ctx_len: int) -> tuple[list[int], FinishReason]:
    """Keep the prefix of `candidates` that may be emitted, and say whether the session ends
    (emitted: tokens emitted before; seq_len: before appending). An EOS is kept and ends it."""
    limit = ctx_len - seq_len
    if params.max_new_tokens:
        limit = min(limit, params.max_new_tokens - emitted)
    kept = candidates[:max(limit, 0)]
    if not params.ignore_eos:
        for i, tok in enumerate(kept):
            if tok in eos_ids:
                return kept[:i + 1], FinishReason.EOS
    if params.max_new_tokens and emitted + len(kept) >= params.max_new_tokens:
        return kept, FinishReason.LENGTH
    if seq_len + len(kept) >= ctx_len:
        return kept, FinishReason.CTX_LEN
    return kept, FinishReason.NONE
