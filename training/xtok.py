"""The cross-tokenizer draft's own tokenizer: Llama-2/SentencePiece-like, deliberately unlike the
target's byte-level BPE. `▁` stands for a space (Metaspace, prepended to the first piece only),
BPE over characters with byte fallback to the 256 `<0xNN>` tokens (so every string encodes),
`<unk>` `<s>` `</s>` at ids 0 1 2, `<s>` added in front by the post-processor, and the decoder
transformers' LlamaConverter builds (▁ -> space, byte fallback, fuse, strip the prepended space).

Unlike SentencePiece, pieces are cut before the BPE sees them (a run of spaces stays with the
word after it, a newline is its own piece): training on whole lines is slow and learns tokens
across words, and splitting every space apart would cost one token per indentation column."""

from __future__ import annotations

import json
import time
from pathlib import Path

UNK, BOS, EOS = "<unk>", "<s>", "</s>"
SPACE = "\u2581"  # ▁
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]
# A piece: spaces + a run of anything but space/newline, or a run of newlines, or trailing spaces.
PIECE = r" *[^ \n]+|\n+| +"


def _llama_pipeline(tok) -> None:
    """Pre-tokenizer, decoder and post-processor (the BPE model is set by the caller)."""
    from tokenizers import Regex, decoders, pre_tokenizers, processors

    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PIECE), behavior="isolated"),
        pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="first", split=False),
    ])
    tok.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(content=" ", left=1, right=0)])
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS}:0 $A:0", pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1",
                                                       special_tokens=[(BOS, 1)])


def train_xtok(texts: list[str], vocab_size: int, alphabet: int = 160):
    """BPE on the texts with the three specials and the 256 byte tokens at ids 0..258; the
    `alphabet` most frequent characters are symbols of their own, every other one falls back to
    its UTF-8 bytes (SentencePiece's character coverage)."""
    from tokenizers import Tokenizer, trainers
    from tokenizers import models as tk_models

    tok = Tokenizer(tk_models.BPE(unk_token=UNK))
    _llama_pipeline(tok)
    tok.post_processor = None  # the trainer must not see <s>
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[UNK, BOS, EOS, *BYTE_TOKENS],
                                  limit_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    # The trainer makes every special token an "added token" (matched in the raw text, dropped by
    # skip_special_tokens); the byte tokens must be ordinary vocabulary entries that the model's
    # byte fallback emits, as in Llama-2's tokenizer.json.
    spec = json.loads(tok.to_str())
    spec["added_tokens"] = [a for a in spec["added_tokens"] if a["content"] in (UNK, BOS, EOS)]
    spec["model"].update(byte_fallback=True, fuse_unk=True, unk_token=UNK)
    tok = Tokenizer.from_str(json.dumps(spec))
    _llama_pipeline(tok)
    assert [tok.token_to_id(t) for t in (UNK, BOS, EOS)] == [0, 1, 2]
    assert [tok.token_to_id(t) for t in BYTE_TOKENS] == list(range(3, 259))
    return tok


def round_trip_failures(tok, texts: list[tuple[str, str]]) -> list[str]:
    """Names of the texts whose decode(encode(text)) (no special tokens) is not the text."""
    encs = tok.encode_batch([t for _, t in texts], add_special_tokens=False)
    return [name for (name, t), e in zip(texts, encs) if tok.decode(e.ids, skip_special_tokens=False) != t]


def count_tokens(tok, texts: list[str]) -> int:
    return sum(len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False))


def save_xtok(tok, d: Path, max_positions: int) -> None:
    """tokenizer.json + tokenizer_config.json (+ special_tokens_map.json) that AutoTokenizer loads
    as a fast tokenizer adding <s> (the post-processor does: the generic class keeps tokenizer.json
    as it is, where transformers' LlamaTokenizer would rebuild its own pipeline)."""
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, unk_token=UNK, pad_token=EOS,
                                 model_max_length=max_positions, clean_up_tokenization_spaces=False,
                                 padding_side="left")
    hf.save_pretrained(d)
    tc = d / "tokenizer_config.json"
    cfg = json.loads(tc.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"  # v5 alias of TokenizersBackend; loads in 4.x too
    # As Llama-2's config says, for tools that read it (transformers 5 neither writes nor uses it here).
    cfg.update(add_bos_token=True, add_eos_token=False)
    tc.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    stm = d / "special_tokens_map.json"
    if not stm.exists():
        stm.write_text(json.dumps({"bos_token": BOS, "eos_token": EOS, "unk_token": UNK, "pad_token": EOS},
                                  indent=2) + "\n")


def build_xtok(train: list[tuple[str, str]], held: list[tuple[str, str]], vocab_size: int, target_tok) -> tuple:
    """Train, check the exact round trip on every held-out and training file (fails loudly), and
    compare its compression with the target's. -> (tok, stats)."""
    t = time.time()
    texts = [x for _, x in train]
    tok = train_xtok(texts, vocab_size)
    seconds = time.time() - t
    bad = round_trip_failures(tok, held + train)
    if bad:
        raise SystemExit(f"ERROR: the draft-xtok tokenizer does not round-trip {len(bad)} files: {bad[:5]}")
    nbytes = sum(len(x.encode()) for x in texts)
    stats = {"vocab_size": tok.get_vocab_size(), "train_seconds": seconds, "train_bytes": nbytes,
             "train_tokens": count_tokens(tok, texts), "target_train_tokens": count_tokens(target_tok, texts),
             "held_bytes": sum(len(x.encode()) for _, x in held),
             "held_tokens": count_tokens(tok, [x for _, x in held]),
             "round_trip_files": len(held) + len(train)}
    stats["bytes_per_token"] = nbytes / stats["train_tokens"]
    stats["target_bytes_per_token"] = nbytes / stats["target_train_tokens"]
    return tok, stats
