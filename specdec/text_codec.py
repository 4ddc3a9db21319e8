"""The target's tokenizer behind the Tokenize/Detokenize RPCs, so a client in any language needs
nothing but the protos: the wire itself carries token ids only."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from specdec.errors import InvalidRequest, PreconditionFailed
from specdec.sequence import check_token_ids
from specdec.tokenizer_fingerprint import load_tokenizer

# The longest prompt a session can hold is ctx_len tokens; text longer than this many UTF-8
# bytes per position could never become one, so it is refused before any work is done.
TEXT_BYTES_PER_POSITION = 32
# A UTF-8 character is at most 4 bytes and a byte-level piece carries at least one, so an
# incomplete character at the end of a text spans at most the last 3 ids.
MAX_SPLIT_IDS = 3
INCOMPLETE = "\ufffd"  # what a decoder makes of the bytes of an incomplete character


class TextCodec:
    def __init__(self, tokenizer: Any, vocab_size: int, ctx_len: int) -> None:
        self.tokenizer = tokenizer  # a transformers tokenizer, or None: the checkpoint has none
        self.vocab_size, self.ctx_len = vocab_size, ctx_len
        # A fast tokenizer is not safe to call from several threads at once ("Already borrowed").
        self.lock = threading.Lock()

    @classmethod
    def load(cls, model_dir: Path, vocab_size: int, ctx_len: int) -> TextCodec:
        return cls(load_tokenizer(model_dir), vocab_size, ctx_len)

    def _require(self) -> Any:
        if self.tokenizer is None:
            raise PreconditionFailed("this model has no tokenizer files (tokenizer.json, ...): "
                                     "tokenize on the client and send token ids")
        return self.tokenizer

    def tokenize(self, text: str, add_special_tokens: bool = True) -> tuple[list[int], bool]:
        """-> (ids, whether the tokenizer added special tokens such as BOS)."""
        tok = self._require()
        limit = TEXT_BYTES_PER_POSITION * self.ctx_len
        if len(text.encode()) > limit:
            raise InvalidRequest(f"text of more than {limit} bytes ({TEXT_BYTES_PER_POSITION} per "
                                 f"ctx_len position): it could never fit in ctx_len {self.ctx_len}")
        with self.lock:
            ids = tok(text, add_special_tokens=add_special_tokens)["input_ids"]
            added = add_special_tokens and tok.num_special_tokens_to_add() > 0
        return ids, added

    def detokenize(self, ids: list[int], prefix_ids: list[int],
                   skip_special_tokens: bool = False) -> tuple[str, int]:
        """-> (the text `ids` add after `prefix_ids`, how many of `ids` it covers). Decoded with
        the prefix, which keeps the spaces and characters byte-level pieces split across ids;
        trailing ids that end inside a character are left out until the ids that complete it."""
        tok = self._require()
        if len(prefix_ids) + len(ids) > self.ctx_len:
            raise InvalidRequest(f"{len(prefix_ids) + len(ids)} ids to decode: more than ctx_len "
                                 f"{self.ctx_len}, the longest sequence a session holds")
        check_token_ids(prefix_ids + ids, self.vocab_size)
        with self.lock:
            head = tok.decode(prefix_ids, skip_special_tokens=skip_special_tokens)
            full = text = tok.decode(prefix_ids + ids, skip_special_tokens=skip_special_tokens)
            n = len(ids)
            while text.endswith(INCOMPLETE) and n > max(len(ids) - MAX_SPLIT_IDS, 0):
                n -= 1
                text = tok.decode(prefix_ids + ids[:n], skip_special_tokens=skip_special_tokens)
        if text.endswith(INCOMPLETE):  # no complete text within reach: the character is real
            n, text = len(ids), full
        return text[len(head):], n
