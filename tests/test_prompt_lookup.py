"""Prompt lookup end to end: lossless over gRPC and with the client's local proposer, window
padding (multi-K), and QEfficient's PLD position bug (qefficient.md §9.1) absent."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from specdec.build import build_verifier
from specdec.generation import GenerationConfig, generate
from specdec.inprocess import InProcessProposerLink, InProcessVerifierLink
from specdec.proposers.ngram import NgramProposer
from specdec_rpc.v1 import specdec_pb2 as pb
from tests.conftest import CTX_LEN, HostedServer, engine_config, start_verifier
from tests.grpc_client import generate_all
from tests.tiny_models import VOCAB, greedy_reference

NEW = 40


def pattern_prompts() -> list[list[int]]:
    rng = np.random.default_rng(3)
    out = []
    for n, reps in ((3, 4), (5, 3), (4, 2), (7, 2)):
        unit = rng.integers(2, VOCAB, size=n).tolist()
        out.append((unit * reps)[:-1])  # end inside the pattern: lookups have something to find
    return out


@pytest.fixture(scope="module")
def ngram_service():
    proposer = NgramProposer(max_k=8, max_ngram_size=3, ctx_len=CTX_LEN, sessions=8)
    info = pb.ModelInfo(model_id="ngram", ctx_len=CTX_LEN, max_k=8, method="ngram")
    server = HostedServer("proposer", proposer, info)
    yield server.address
    server.stop()


@pytest.mark.parametrize("mode", ["grpc", "local"])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_prompt_lookup_is_lossless(services, ngram_service, target_hf, mode, k):
    local = NgramProposer(k, 3, CTX_LEN, 8) if mode == "local" else None
    records = generate_all(services["verifier"], ngram_service if mode == "grpc" else None,
                           pattern_prompts(), GenerationConfig(k, NEW, ignore_eos=True),
                           concurrent=True, local_proposer=local)
    for prompt, rec in zip(pattern_prompts(), records):
        assert rec.tokens == greedy_reference(target_hf, prompt, NEW)
    assert sum(r.accepted for r in records) > 0  # the lookups did find real continuations


def test_window_sizes_pad_with_minus_one(tiny_pair, ngram_service, target_hf):
    """Multi-K: with windows {0, 3} every draft of 1..3 tokens runs padded in the 3-window."""
    v_server, verifier = start_verifier(tiny_pair[0], window_sizes=(0, 3))
    calls = []
    run = verifier.engine.run

    def recording_run(ids, pos, slots, num_logits):
        calls.append((ids.shape[1], num_logits))
        return run(ids, pos, slots, num_logits)

    verifier.engine.run = recording_run
    try:
        records = generate_all(v_server.address, ngram_service, pattern_prompts(),
                               GenerationConfig(3, NEW, ignore_eos=True), concurrent=True)
    finally:
        v_server.stop()
    for prompt, rec in zip(pattern_prompts(), records):
        assert rec.tokens == greedy_reference(target_hf, prompt, NEW)
    # Verify windows keep every logit (num_logits == S); only the windows K+1 = 1 or 4 ran.
    windows = {s for s, n in calls if n == s}
    assert windows == {1, 4}, windows


class RecordingProposer:
    """Delegates to a real proposer link and records each draft's length."""

    def __init__(self, link):
        self.link, self.lengths = link, []

    async def propose(self, start, tokens, k, sampling, top_m):
        out = await self.link.propose(start, tokens, k, sampling, top_m)
        if k:  # k = 0 only syncs
            self.lengths.append((len(out.draft), k))
        return out


def test_partial_then_full_proposal_writes_at_right_positions(tiny_pair, target_hf):
    """QEfficient computes next positions as old + n, turning the -1 of a partial proposal's
    unfilled slots into 0..K, so a following full proposal overwrites the prompt's KV. Here
    positions always come from the session's own length: replaying every engine write into a
    shadow KV map must leave exactly the final sequence."""
    verifier = build_verifier(engine_config(tiny_pair[0]), tuple(range(6)))
    writes: dict[int, dict[int, int]] = {}
    run = verifier.engine.run

    def recording_run(ids, pos, slots, num_logits):
        for row, slot in enumerate(slots.tolist()):
            for tok, p in zip(ids[row].tolist(), pos[row].tolist()):
                if p >= 0:
                    writes.setdefault(slot, {})[p] = tok
        return run(ids, pos, slots, num_logits)

    verifier.engine.run = recording_run
    seen_partial_then_full = False
    for prompt in pattern_prompts():
        writes.clear()
        vlink = InProcessVerifierLink(verifier)
        plink = RecordingProposer(InProcessProposerLink(NgramProposer(5, 3, CTX_LEN, 1)))
        rec = asyncio.run(generate(prompt, vlink, plink, GenerationConfig(5, NEW, True), CTX_LEN))
        asyncio.run(vlink.close())
        assert rec.tokens == greedy_reference(target_hf, prompt, NEW)
        seq = prompt + rec.tokens
        shadow = writes[vlink.session.seq.slot]
        assert [shadow[p] for p in range(len(seq) - 1)] == seq[:-1]
        assert max(shadow) < CTX_LEN
        for (a, ka), (b, kb) in zip(plink.lengths, plink.lengths[1:]):
            seen_partial_then_full |= 0 < a < ka and b == kb
    assert seen_partial_then_full, "the prompts must produce a partial then a full proposal"


@pytest.mark.slow  # a process of its own
def test_prompt_lookup_cli_local_and_service(tiny_pair, target_hf, tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    text = "t5 t6 t7 t8 t5 t6 t7 t8 t5 t6"
    for extra in (["--local-proposer"], []):
        out = tmp_path / "pld.json"
        cmd = [sys.executable, "-m", "client.prompt_lookup", "--target-model-name", str(tiny_pair[0]),
               "--num-speculative-tokens", "0,3", "--prefill-seq-len", "8", "--ctx-len", "64",
               "--max-new-tokens", "16", "--ignore-eos-token", "--prompts", text,
               "--json", str(out), "--quiet-services", *extra]
        proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        item = json.loads(out.read_text())["prompts"][0]
        assert item["generated_ids"] == greedy_reference(target_hf, item["prompt_ids"], 16)
