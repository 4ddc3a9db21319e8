"""Drafts across vocabularies: a draft model whose tokenizer is not the target's (TinyLlama's
32,000-token SentencePiece vocabulary for Llama-3's 128,256-token byte-level one) drafts in its
own tokens, and the two meet in text.

- The target's sequence is decoded to text and encoded with the draft's tokenizer: the draft's
  context (`draft_context`). Only its changed tail is fed to the draft model (the proposer
  syncs the common prefix), so the re-encoding is what keeps the draft's view canonical.
- The draft's new tokens are decoded to text and encoded with the target's tokenizer after a
  look-behind of the target's last ids (`target_draft`), so a piece that continues a word or
  a space joins it as the target's tokenizer would join it.

Nothing here decides what is emitted: a translated draft is a guess in target ids like any
other, checked by the verifier, so a bad translation costs acceptance, never correctness. It
carries no q in the target's vocabulary, so a sampling verifier checks it as a deterministic
draft (q one-hot), which keeps the rejection rule exact.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any

from specdec.sequence import common_prefix_len

# Ids of context decoded together with new ids: enough to keep a space, a word piece or a
# multi-byte character that spans ids the way the whole sequence would decode it.
LOOK_BEHIND = 8
INCOMPLETE = "\ufffd"   # what a decoder makes of the bytes of an unfinished character
# Re-encoding a session's text starts this many characters before where it changed, after a
# look-behind of as many again that is encoded and dropped: a merge or a space rule that spans
# the change comes out as encoding the whole text would make it.
RE_ENCODE_CHARS = 32
# Trailing spaces the draft's context leaves out: both kinds of tokenizer join a space to the
# word after it ("▁return", "Ġreturn"), so a text that ends in spaces (an indentation the target
# emitted as a token of its own) would end the draft's context on a piece it never saw there;
# the draft writes them again with the word, and they are taken off its text (`healed`).
TRAILING = " \t"
# A boundary to spell a draft's text after, when it cannot follow the target's last token.
ANCHOR = "\n"


@dataclass(frozen=True)
class Translation:
    """The target's and the draft's tokenizers (`tokenizers.Tokenizer`, the Rust backend a
    transformers fast tokenizer wraps: a call costs microseconds, not the wrapper's tens)."""

    target: Any
    draft: Any
    target_eos: int | None      # what a draft's end-of-text becomes
    draft_specials: frozenset[int]
    draft_eos: int | None

    @classmethod
    def of(cls, target_tokenizer: Any, draft_tokenizer: Any) -> Translation:
        """From two transformers fast tokenizers."""
        return cls(target_tokenizer.backend_tokenizer, draft_tokenizer.backend_tokenizer,
                   target_tokenizer.eos_token_id, frozenset(draft_tokenizer.all_special_ids),
                   draft_tokenizer.eos_token_id)

    def draft_context(self, target_ids: list[int]) -> list[int]:
        """The draft's tokens for the text of `target_ids`, with the draft's own BOS where its
        tokenizer adds one (the context it was trained on). The target's special tokens are
        left out of the text: the draft never saw their spelling; so are trailing spaces
        (TRAILING), which the draft writes again."""
        text = self.target.decode(target_ids, skip_special_tokens=True)
        return self.draft.encode(text.rstrip(TRAILING), add_special_tokens=True).ids

    def draft_text(self, context: list[int], new: list[int]) -> tuple[str, bool]:
        """-> (the text `new` draft tokens add after `context`, whether they end the text).
        Cut at the first special token; trailing bytes of an unfinished character dropped."""
        cut = next((i for i, t in enumerate(new) if t in self.draft_specials), len(new))
        ends = cut < len(new) and new[cut] == self.draft_eos
        head = context[-LOOK_BEHIND:]
        before = self.draft.decode(head, skip_special_tokens=True)
        after = self.draft.decode(head + new[:cut], skip_special_tokens=True)
        # A decoder that is not prefix-stable (a leading-space rule) falls back to the new ids alone.
        text = after[len(before):] if after.startswith(before) else \
            self.draft.decode(new[:cut], skip_special_tokens=True)
        return text.rstrip(INCOMPLETE), ends

    def target_draft(self, target_ids: list[int], context: list[int], new: list[int],
                     healed: str = "") -> list[int]:
        """The target ids of the text `new` adds after `context` (the draft's tokens for the text
        of `target_ids`, less its trailing spaces `healed`, which that text must start with:
        [] where it does not, or where it has no target spelling after the target's ids)."""
        text, ends = self.draft_text(context, new)
        if not text.startswith(healed):
            return []
        text = text[len(healed):]
        out = self._spelt_after(target_ids, text) if text else []
        if out is None:
            return []
        if ends and self.target_eos is not None:
            out.append(self.target_eos)
        return out

    def _spelt_after(self, target_ids: list[int], text: str) -> list[int] | None:
        """`text` in target ids after `target_ids`: as the target's tokenizer spells it after a
        look-behind of their text, so a piece that continues a word or a space joins it; where
        that would re-spell the target's last token (the target split a word otherwise, and goes
        on from its own split), spelt on its own after a boundary; None if neither works."""
        tail = self.target.decode(target_ids[-LOOK_BEHIND:], skip_special_tokens=False)
        before = self.target.encode(tail, add_special_tokens=False).ids
        after = self.target.encode(tail + text, add_special_tokens=False).ids
        if after[:len(before)] == before:
            return after[len(before):]
        alone = self.target.encode(ANCHOR + text, add_special_tokens=False)
        i = next((i for i, (s, _) in enumerate(alone.offsets) if s >= len(ANCHOR)), None)
        if i is None or alone.offsets[i][0] != len(ANCHOR) or (i and alone.offsets[i - 1][1] > len(ANCHOR)):
            return None
        return alone.ids[i:]

    def aligned_draft(self, target_ids: list[int], context: list[int], new: list[int],
                      k: int, healed: str = "") -> tuple[list[int], int]:
        """-> (up to k target ids, m): the target draft for the text of the longest new[:m]
        that ends where a target token ends (the text of all of `new` shows it: its target ids
        start with these), so the two vocabularies meet at the draft's end and an outcome of
        verifying it reads as one of the draft model's own (pre-drafting keys). Where no
        prefix ends so, the first k ids of the whole text that are known whole, and m = all."""
        whole = self.target_draft(target_ids, context, new, healed)
        for m in range(len(new) - 1, 0, -1):   # all of `new` has nothing after it to show it ended
            part = self.target_draft(target_ids, context, new[:m], healed)
            if len(part) <= k and part and whole[:len(part)] == part:
                return part, m
            if len(part) < k:
                break   # shorter prefixes give shorter drafts: take the whole text's instead
        return confirmed(whole, k), len(new)


    def continued_text(self, old: list[int], old_text: str, new: list[int]) -> str:
        """The text of old + new, from old's text: only the new ids and a look-behind decoded."""
        head = old[-LOOK_BEHIND:]
        before = self.target.decode(head, skip_special_tokens=True)
        after = self.target.decode(head + new, skip_special_tokens=True)
        if old and after.startswith(before) and not before.endswith(INCOMPLETE):
            return old_text + after[len(before):]
        return self.target.decode(old + new, skip_special_tokens=True)


@dataclass
class DraftContext:
    """A session's draft context kept between requests (Translation.draft_context, made
    incrementally): a request decodes only the target ids after those it shares with the last
    and re-encodes only the text near where it changed, where doing the whole sequence would
    cost time in proportion to its length every round."""

    target: list[int] = field(default_factory=list)   # the target ids described
    text: str = ""                                     # their text, special tokens left out
    healed: str = ""                                   # its trailing spaces, which ids leave out
    ids: list[int] = field(default_factory=list)       # the draft's tokens for the rest, BOS first
    starts: list[int] = field(default_factory=list)    # the character each of ids starts at

    def update(self, tr: Translation, target: list[int]) -> list[int]:
        p = common_prefix_len(self.target, target)
        if p == len(self.target):
            text = tr.continued_text(self.target, self.text, target[p:])
        else:
            text = tr.target.decode(target, skip_special_tokens=True)
        kept = text.rstrip(TRAILING)
        self._encode(tr.draft, kept)
        self.target, self.text, self.healed = list(target), text, text[len(kept):]
        return self.ids

    def _encode(self, draft: Any, text: str) -> None:
        encoded = self.text[:len(self.text) - len(self.healed)]
        changed = common_prefix_len(encoded, text)   # type: ignore[arg-type]  # str slices compare alike
        j = bisect_right(self.starts, changed - RE_ENCODE_CHARS) - 1   # a token well before it
        start = self.starts[j] - RE_ENCODE_CHARS if j > 1 else -1
        if start >= 0:
            enc = draft.encode(text[start:], add_special_tokens=False)
            i = next((i for i, (s, _) in enumerate(enc.offsets) if s >= RE_ENCODE_CHARS), None)
            # The look-behind's tokens must end where token j starts, and token j must start again.
            if i and enc.offsets[i][0] == RE_ENCODE_CHARS and enc.offsets[i - 1][1] <= RE_ENCODE_CHARS:
                self.ids = self.ids[:j] + enc.ids[i:]
                self.starts = self.starts[:j] + [s + start for s, _ in enc.offsets[i:]]
                return
        enc = draft.encode(text, add_special_tokens=True)
        self.ids, self.starts = enc.ids, [s for s, _ in enc.offsets]


def confirmed(draft: list[int], k: int) -> list[int]:
    """The first k of a translated draft whose last token is known to be whole: a (k+1)-th
    token proves the k-th ended; without one the last may be the start of a longer token the
    draft's text would have completed, so it is left out."""
    return draft[:k] if len(draft) > k else draft[:-1]
