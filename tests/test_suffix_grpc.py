"""Suffix decoding end to end: greedy output over gRPC and with the client's local proposer
equals transformers' greedy output, and a repeated request is drafted from the global cache."""

from __future__ import annotations

import numpy as np
import pytest

from specdec.generation import GenerationConfig
from specdec.proposers.suffix import SuffixProposer
from specdec_rpc.metrics import ServiceMetrics
from specdec_rpc.v1 import specdec_pb2 as pb
from tests.conftest import CTX_LEN, HostedServer
from tests.grpc_client import generate_all, generate_one
from tests.test_prompt_lookup import pattern_prompts
from tests.tiny_models import VOCAB, greedy_reference

NEW = 40


def hosted(proposer: SuffixProposer, metrics: ServiceMetrics | None = None) -> HostedServer:
    info = pb.ModelInfo(model_id="suffix", ctx_len=CTX_LEN, max_k=proposer.max_k,
                        method=SuffixProposer.method)
    return HostedServer("proposer", proposer, info, metrics=metrics)


@pytest.mark.parametrize("mode", ["grpc", "local"])
def test_suffix_is_lossless(services, target_hf, mode):
    proposer = SuffixProposer(max_k=5, ctx_len=CTX_LEN, sessions=8)
    server = hosted(proposer) if mode == "grpc" else None
    try:
        records = generate_all(services["verifier"], server.address if server else None,
                               pattern_prompts(), GenerationConfig(5, NEW, ignore_eos=True),
                               concurrent=True, local_proposer=None if server else proposer)
    finally:
        if server:
            server.stop()
    for prompt, rec in zip(pattern_prompts(), records):
        assert rec.tokens == greedy_reference(target_hf, prompt, NEW)
    assert sum(r.accepted for r in records) > 0  # the tries did find real continuations
    # Every session closed into the global cache, concurrent ones included.
    assert len(proposer.cache) == len(pattern_prompts())


def test_repeated_request_is_drafted_from_the_global_cache(services, target_hf):
    # No pattern in the prompt: the first request's own trie has little to offer.
    prompt = np.random.default_rng(11).integers(2, VOCAB, size=12).tolist()
    proposer = SuffixProposer(max_k=5, ctx_len=CTX_LEN, sessions=2)
    metrics = ServiceMetrics()
    server = hosted(proposer, metrics)
    config = GenerationConfig(5, NEW, ignore_eos=True)
    try:
        first = generate_one(services["verifier"], server.address, prompt, config)
        wins_before = proposer.stats().global_drafts
        second = generate_one(services["verifier"], server.address, prompt, config)
    finally:
        server.stop()
    want = greedy_reference(target_hf, prompt, NEW)
    assert first.tokens == want and second.tokens == want
    assert wins_before == 0                  # the first request had no finished session to use
    assert proposer.stats().global_drafts > 0          # the second drew on the first's sequence ...
    assert second.accepted > first.accepted  # ... and those drafts were accepted
    # The first session's sequence is the second's future (all but the first's final round,
    # never synced to the proposer): most tokens come from accepted drafts (measured: 30 of 40
    # against 1 of 40 for the first request; a bonus token per verify step is the rest).
    assert second.accepted >= NEW // 2, (first.accepted, second.accepted)
    # The service exports the proposer's counts: cache hits, cache size, draft lengths.
    sample = metrics.registry.get_sample_value
    stats = proposer.stats()
    assert sample("specdec_suffix_drafts_total", {"source": "global"}) == stats.global_drafts
    assert sample("specdec_suffix_drafts_total", {"source": "session"}) == stats.session_drafts
    assert sample("specdec_suffix_proposals_total") == stats.proposals
    assert sample("specdec_suffix_cache_sequences") == 2
    assert sample("specdec_suffix_cache_tokens") == stats.cached_tokens > 2 * len(prompt)
    assert sample("specdec_draft_length_count") == sample("specdec_proposals_total")
    assert sample("specdec_draft_length_sum") == sample("specdec_proposed_tokens_total") > 0


@pytest.mark.slow  # a process of its own
def test_prompt_lookup_cli_with_suffix_local_and_service(tiny_pair, target_hf, tmp_path):
    """--method suffix through the client CLI: its local proposer, and a proposer service it
    starts with the suffix flags passed on."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    text = "t5 t6 t7 t8 t5 t6 t7 t8 t5 t6"
    for extra in (["--local-proposer"], []):
        out = tmp_path / "suffix.json"
        cmd = [sys.executable, "-m", "client.prompt_lookup", "--method", SuffixProposer.method,
               "--target-model-name", str(tiny_pair[0]), "--num-speculative-tokens", "3",
               "--prefill-seq-len", "8", "--ctx-len", "64", "--max-new-tokens", "16",
               "--ignore-eos-token", "--prompts", text, "--suffix-cache-requests", "4",
               "--max-spec-factor", "2", "--min-token-prob", "0.2",
               "--json", str(out), "--quiet-services", *extra]
        proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        doc = json.loads(out.read_text())
        item = doc["prompts"][0]
        assert item["generated_ids"] == greedy_reference(target_hf, item["prompt_ids"], 16)
        # Rounds by draft length add up to the rounds; the repeating prompt makes drafts.
        lengths = doc["totals"]["draft_length_histogram"]
        assert sum(lengths) == sum(doc["totals"]["k_histogram"]) and sum(lengths[1:]) > 0
        if extra:  # the client's own proposer reports its cache in the JSON
            assert doc["proposer"]["proposals"] > 0 and doc["proposer"]["cached_sequences"] >= 1
