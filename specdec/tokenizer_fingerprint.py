"""A short hash that is equal for two tokenizers exactly when their token ids mean the same
strings, so a proposer and a verifier with different vocabularies are refused before they
produce garbage."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def load_tokenizer(model_dir: Path) -> Any:
    """The checkpoint's transformers tokenizer; None when it ships no tokenizer files."""
    if not any((model_dir / f).exists() for f in TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


def tokenizer_fingerprint(model_dir: Path, vocab_size: int) -> str:
    """sha256 of the id -> token table (plus special tokens), 16 hex digits; "vocab-<V>" for a
    checkpoint without tokenizer files (only the vocab size is known)."""
    tok = load_tokenizer(model_dir)
    if tok is None:
        return f"vocab-{vocab_size}"
    table = sorted((i, t) for t, i in tok.get_vocab().items())
    blob = json.dumps({"vocab": table, "special": sorted(map(str, tok.all_special_tokens))})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
