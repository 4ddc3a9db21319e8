"""The trained models shipped in models/: they load in transformers and in the torch executor
with the same logits, speculation with them is lossless, and the draft really agrees with the
target (a regression in training would show here)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import torch

from specdec.build import build_draft_proposer, build_verifier
from specdec.config import EngineConfig
from specdec.engine.torch_engine import TorchEngine
from specdec.generation import GenerationConfig, generate
from specdec.inprocess import InProcessProposerLink, InProcessVerifierLink
from tests.tiny_models import greedy_reference

MODELS = Path(__file__).resolve().parent.parent / "models"
CODE = "import os\n\n\ndef walk(top):\n    for name in os.listdir(top):\n"


@pytest.fixture(scope="module")
def shipped():
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(MODELS / "target")
    assert tok.get_vocab() == transformers.AutoTokenizer.from_pretrained(MODELS / "draft").get_vocab()
    target = transformers.AutoModelForCausalLM.from_pretrained(MODELS / "target", dtype=torch.float32).eval()
    return tok, target


def test_executor_matches_transformers_on_shipped_target(shipped):
    tok, target = shipped
    ids = tok(CODE)["input_ids"]
    engine = TorchEngine(EngineConfig(model=str(MODELS / "target"), ctx_len=128, full_batch_size=1))
    got = engine.run(np.array([ids]), np.arange(len(ids))[None], np.array([0]), len(ids))[0]
    with torch.no_grad():
        ref = target(torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(got, ref, atol=2e-3)


@pytest.mark.parametrize("method", ["draft", "turbo"])
def test_speculation_with_shipped_models(shipped, method):
    from dataclasses import replace

    tok, target = shipped
    ids = tok(CODE)["input_ids"]
    cfg = EngineConfig(model=str(MODELS / "target"), ctx_len=128, prefill_seq_len=32, full_batch_size=1)
    if method == "turbo":
        verifier, proposer, k = build_verifier(replace(cfg, turbo=True), (0,)), None, 4
    else:
        verifier, k = build_verifier(cfg, tuple(range(5))), 4
        proposer = build_draft_proposer(replace(cfg, model=str(MODELS / "draft")), k)

    async def go():
        v = InProcessVerifierLink(verifier)
        d = InProcessProposerLink(proposer) if proposer else None
        return await generate(ids, v, d, GenerationConfig(k, 48, True), 128)

    rec = asyncio.run(go())
    assert rec.tokens == greedy_reference(target, ids, 48)
    tokens_per_step = rec.step_tokens / rec.verify_steps
    # Trained draft: 3.3 tokens per step measured; self-distilled Turbo heads 2.6 on this prompt
    # (2.4 in the benchmark, models/README.md); the old heads gave 1.6.
    assert tokens_per_step > 2.0, tokens_per_step
