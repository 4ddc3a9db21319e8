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

from dataclasses import dataclass
from typing import Any

# Ids of context decoded together with new ids: enough to keep a space, a word piece or a
# multi-byte character that spans ids the way the whole sequence would decode it.
LOOK_BEHIND = 8
INCOMPLETE = "\ufffd"   # what a decoder makes of the bytes of an unfinished character


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
        left out of the text: the draft never saw their spelling."""
        text = self.target.decode(target_ids, skip_special_tokens=True)
        return self.draft.encode(text, add_special_tokens=True).ids

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

    def target_draft(self, target_ids: list[int], context: list[int], new: list[int]) -> list[int]:
        """The target ids of the text `new` adds after `context` (the draft's tokens for the text
        of `target_ids`); [] when that text cannot extend the target's ids (it would re-spell
        the target's last token: a draft continuing a word the target split otherwise)."""
        text, ends = self.draft_text(context, new)
        out: list[int] = []
        if text:
            tail = self.target.decode(target_ids[-LOOK_BEHIND:], skip_special_tokens=False)
            before = self.target.encode(tail, add_special_tokens=False).ids
            after = self.target.encode(tail + text, add_special_tokens=False).ids
            if after[:len(before)] != before:
                return []
            out = after[len(before):]
        if ends and self.target_eos is not None:
            out.append(self.target_eos)
        return out


    def aligned_draft(self, target_ids: list[int], context: list[int], new: list[int],
                      k: int) -> tuple[list[int], int]:
        """-> (up to k target ids, m): the target draft for the text of the longest new[:m]
        that ends where a target token ends (the text of all of `new` shows it: its target ids
        start with these), so the two vocabularies meet at the draft's end and an outcome of
        verifying it reads as one of the draft model's own (pre-drafting keys). Where no
        prefix ends so, the first k ids of the whole text that are known whole, and m = all."""
        whole = self.target_draft(target_ids, context, new)
        for m in range(len(new) - 1, 0, -1):   # all of `new` has nothing after it to show it ended
            part = self.target_draft(target_ids, context, new[:m])
            if len(part) <= k and part and whole[:len(part)] == part:
                return part, m
            if len(part) < k:
                break   # shorter prefixes give shorter drafts: take the whole text's instead
        return confirmed(whole, k), len(new)


def confirmed(draft: list[int], k: int) -> list[int]:
    """The first k of a translated draft whose last token is known to be whole: a (k+1)-th
    token proves the k-th ended; without one the last may be the start of a longer token the
    draft's text would have completed, so it is left out."""
    return draft[:k] if len(draft) > k else draft[:-1]
