"""The torch executor's logits equal transformers' own model on the same checkpoint, across
chunked prefill, batched rows in different slots, -1 padding and writes after a rollback."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from specdec.config import EngineConfig
from specdec.engine.torch_engine import TorchEngine
from tests.tiny_models import TEST_DEVICE, VOCAB, hf_model, save_tiny

ATOL = 1e-4


def reference_logits(model, ids: list[int]) -> np.ndarray:
    """[len(ids), V] logits of transformers' model over the whole sequence at once."""
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


@pytest.fixture(scope="module", params=[
    ("llama", {}),
    ("llama", {"tie_word_embeddings": True, "attention_bias": True}),
    ("mistral", {}),
    ("qwen2", {}),
    ("qwen3", {}),
    ("qwen3", {"num_key_value_heads": 4, "tie_word_embeddings": True}),
], ids=["llama-gqa", "llama-tied-bias", "mistral", "qwen2-bias", "qwen3-qknorm", "qwen3-mha-tied"])
def checkpoint(request, tmp_path_factory):
    family, overrides = request.param
    path = save_tiny(tmp_path_factory.mktemp(family), family, **overrides)
    return path, hf_model(path)


def make_engine(path, **kw) -> TorchEngine:
    return TorchEngine(EngineConfig(model=str(path), **{"ctx_len": 64, "full_batch_size": 3,
                                                        "device": TEST_DEVICE,
                                                        "prefill_seq_len": 8, **kw}))


def run_row(engine, ids, start, slot, num_logits):
    pos = np.arange(start, start + len(ids))[None]
    return engine.run(np.array([ids]), pos, np.array([slot]), num_logits)[0]


def test_chunked_prefill_and_decode_match(checkpoint):
    path, model = checkpoint
    engine = make_engine(path)
    rng = np.random.default_rng(0)
    seq = rng.integers(2, VOCAB, size=30).tolist()
    ref = reference_logits(model, seq)
    # Prefill 21 tokens in chunks of 8 (the last chunk is short), then decode one by one.
    got = []
    for s in range(0, 21, 8):
        chunk = seq[s:min(s + 8, 21)]
        got.append(run_row(engine, chunk, s, slot=1, num_logits=len(chunk)))
    for p in range(21, 30):
        got.append(run_row(engine, [seq[p]], p, slot=1, num_logits=1))
    np.testing.assert_allclose(np.concatenate(got), ref, atol=ATOL)


def test_batched_slots_padding_and_num_logits(checkpoint):
    path, model = checkpoint
    engine = make_engine(path)
    rng = np.random.default_rng(1)
    a = rng.integers(2, VOCAB, size=7).tolist()
    b = rng.integers(2, VOCAB, size=4).tolist()
    # Two rows in slots 2 and 0; row b is padded with -1 after its 4 real tokens.
    ids = np.array([a, b + [-1, -1, -1]])
    pos = np.array([list(range(7)), list(range(4)) + [-1, -1, -1]])
    out = engine.run(ids, pos, np.array([2, 0]), num_logits=3)
    np.testing.assert_allclose(out[0], reference_logits(model, a)[4:7], atol=ATOL)
    np.testing.assert_allclose(out[1], reference_logits(model, b)[1:4], atol=ATOL)
    # The padded positions wrote nothing: slot 0 continues cleanly at position 4.
    nxt = run_row(engine, [5], 4, slot=0, num_logits=1)
    np.testing.assert_allclose(nxt[0], reference_logits(model, b + [5])[4], atol=ATOL)


def test_rollback_by_position(checkpoint):
    path, model = checkpoint
    engine = make_engine(path)
    prefix = [3, 4, 5, 6, 7, 8]
    run_row(engine, prefix, 0, slot=0, num_logits=1)
    # A rejected window writes positions 6..9; the next window rewrites from position 7.
    run_row(engine, [9, 10, 11, 12], 6, slot=0, num_logits=4)
    out = run_row(engine, [13, 14], 7, slot=0, num_logits=2)
    ref = reference_logits(model, prefix + [9, 13, 14])
    np.testing.assert_allclose(out, ref[7:9], atol=ATOL)


def test_slots_are_isolated(checkpoint):
    path, model = checkpoint
    engine = make_engine(path)
    run_row(engine, [20, 21, 22, 23], 0, slot=0, num_logits=1)
    out = run_row(engine, [30, 31], 0, slot=1, num_logits=2)
    np.testing.assert_allclose(out, reference_logits(model, [30, 31]), atol=ATOL)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_runs_close(tmp_path, dtype):
    path = save_tiny(tmp_path, "llama")
    engine = make_engine(path, dtype=dtype)
    seq = [5, 6, 7, 8, 9]
    out = run_row(engine, seq, 0, slot=0, num_logits=5)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, reference_logits(hf_model(path), seq), atol=0.15)


def test_bad_calls_are_refused(tmp_path):
    engine = make_engine(save_tiny(tmp_path, "llama"))
    with pytest.raises(ValueError, match="distinct"):
        engine.run(np.zeros((2, 1), np.int64), np.zeros((2, 1), np.int64), np.array([1, 1]), 1)
    with pytest.raises(ValueError, match="positions"):
        run_row(engine, [1], 64, slot=0, num_logits=1)
    with pytest.raises(ValueError, match="token ids"):
        run_row(engine, [VOCAB], 0, slot=0, num_logits=1)


def test_unsupported_architecture_is_named(tmp_path):
    import json

    path = save_tiny(tmp_path, "llama")
    cfg = json.loads((path / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="gpt2"):
        make_engine(path)
