"""Corpus (the interpreter's standard library sources), held-out split, tokenizer, windows."""

from __future__ import annotations

import hashlib
import json
import sysconfig
from pathlib import Path

import numpy as np
import torch

EOT = "<|endoftext|>"
EXCLUDED_DIRS = {
    "site-packages", "test", "tests", "idlelib", "lib2to3", "turtledemo", "ensurepip",
    "pydoc_data", "__pycache__", "__phello__",
}


def is_heldout(rel: str, mod: int) -> bool:
    return int(hashlib.sha1(rel.encode("utf-8")).hexdigest(), 16) % mod == 0


def collect_corpus(stdlib: str | None, max_file_bytes: int, max_files: int, heldout_mod: int):
    """-> (root, train [(relpath, text)], held [(relpath, text)], files skipped for size)."""
    root = Path(stdlib or sysconfig.get_paths()["stdlib"]).resolve()
    files = []
    skipped_big = 0
    for p in root.rglob("*.py"):
        rel = p.relative_to(root).as_posix()
        if any(part in EXCLUDED_DIRS for part in rel.split("/")[:-1]) or not p.is_file():
            continue
        if p.stat().st_size > max_file_bytes:
            skipped_big += 1
            continue
        files.append(rel)
    files.sort()
    if max_files:
        files = files[:max_files]
    train: list[tuple[str, str]] = []
    held: list[tuple[str, str]] = []
    for rel in files:
        text = (root / rel).read_text(encoding="utf-8", errors="replace")
        if text.strip():
            (held if is_heldout(rel, heldout_mod) else train).append((rel, text))
    return root, train, held, skipped_big


def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors, trainers
    from tokenizers import models as tk_models

    tok = Tokenizer(tk_models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[EOT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tok


def load_tokenizer(model_dir: Path):
    """The raw `tokenizers` object of a saved model directory (heads-only runs reuse it)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(model_dir / "tokenizer.json"))


def save_tokenizer(tok, d: Path, max_positions: int) -> None:
    from transformers import PreTrainedTokenizerFast

    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT,
                                     unk_token=EOT, pad_token=EOT, model_max_length=max_positions,
                                     clean_up_tokenization_spaces=False, add_prefix_space=False)
    hf_tok.save_pretrained(d)
    # transformers 5 writes its new class name "TokenizersBackend"; "PreTrainedTokenizerFast" is an alias of it
    # in v5 and also loads with transformers 4.x.
    tc = d / "tokenizer_config.json"
    cfg = json.loads(tc.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    tc.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    stm = d / "special_tokens_map.json"
    if not stm.exists():  # transformers 5 no longer writes it; keep it for older loaders
        stm.write_text(json.dumps({"bos_token": EOT, "eos_token": EOT, "unk_token": EOT,
                                   "pad_token": EOT}, indent=2) + "\n")


def token_stream(tok, texts: list[str], eot_id: int) -> torch.Tensor:
    """<|endoftext|> + text per file, concatenated: [T] int32."""
    encs = tok.encode_batch(texts, add_special_tokens=False)
    return torch.from_numpy(np.concatenate([np.asarray([eot_id] + e.ids, dtype=np.int32) for e in encs]))


class Windows:
    """Epoch-shuffled, non-overlapping seq_len windows over a token stream (per-epoch offset)."""

    def __init__(self, stream: torch.Tensor, seq_len: int, seed: int) -> None:
        self.stream, self.seq_len = stream, seq_len
        self.g = torch.Generator().manual_seed(seed)
        self.epoch, self.pos = -1, 0
        self._new_epoch()

    def _new_epoch(self) -> None:
        self.epoch += 1
        off = int(torch.randint(0, self.seq_len, (1,), generator=self.g)) if self.epoch > 0 else 0
        n = (len(self.stream) - off) // self.seq_len
        self.starts = off + torch.arange(n) * self.seq_len
        self.order = torch.randperm(n, generator=self.g)
        self.pos = 0

    def batch(self, bs: int) -> torch.Tensor:
        if self.pos + bs > len(self.order):
            self._new_epoch()
        idx = self.starts[self.order[self.pos: self.pos + bs]]
        self.pos += bs
        return torch.stack([self.stream[i: i + self.seq_len] for i in idx.tolist()]).long()


def pick_prompts(tok, held: list[tuple[str, str]], n: int, plen: int, seed: int):
    """Line-aligned prompts from the middle third of held-out files (deterministic)."""
    rng = np.random.default_rng(seed)
    cands = [(rel, t) for rel, t in held if len(t) > 4000]
    prompts = []
    for i in rng.permutation(len(cands)):
        rel, text = cands[i]
        lines = text.splitlines(keepends=True)
        start = len(lines) // 3 + int(rng.integers(0, max(1, len(lines) // 3)))
        ids = tok.encode("".join(lines[start:]), add_special_tokens=False).ids
        if len(ids) >= plen:
            prompts.append((rel, ids[:plen]))
        if len(prompts) >= n:
            break
    return prompts
