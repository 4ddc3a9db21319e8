"""The Node.js client (examples/node) end to end: over the same services, its ids equal the
Python client's and transformers' greedy output for the draft model, prompt lookup and Turbo;
and it speaks mutual TLS with a token. Needs `node`, and `npm ci` in examples/node (scripts/setup.sh
runs it)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from client.launcher import start_service
from specdec.generation import GenerationConfig
from tests.grpc_client import generate_one
from tests.test_operations import certs  # noqa: F401  (fixture)
from tests.test_prompt_lookup import ngram_service  # noqa: F401  (fixture)
from tests.test_turbo import turbo_service, turbo_target  # noqa: F401  (fixtures)
from tests.tiny_models import greedy_reference

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "examples" / "node" / "generate.mjs"
NODE = shutil.which("node")
NEW = 24
# Repeats, so prompt lookup finds continuations in the context.
PROMPT = "t5 t6 t7 t8 t9 t5 t6 t7 t8 t9 t5 t6"

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed: the Node.js example "
                                "client (examples/node) cannot run on this machine")


def run_node(*args: str, expect_ok: bool = True) -> subprocess.CompletedProcess:
    if not (CLIENT.parent / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.fail("examples/node/node_modules is missing: run `npm ci` in examples/node "
                    "(scripts/setup.sh does where npm is installed)")
    proc = subprocess.run([NODE, str(CLIENT), *args], capture_output=True, text=True, timeout=120)
    if expect_ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def node_generate(verifier: str, proposer: str | None, k: int, *extra: str) -> dict:
    args = ["--verifier", verifier, "--prompt", PROMPT, "--max-new-tokens", str(NEW),
            "--num-speculative-tokens", str(k), "--ignore-eos", "--json", *extra]
    return json.loads(run_node(*args, *(["--proposer", proposer] if proposer else [])).stdout)


def python_generate(verifier: str, proposer: str | None, prompt: list[int], k: int) -> list[int]:
    return generate_one(verifier, proposer, prompt, GenerationConfig(k, NEW, ignore_eos=True)).tokens


@pytest.mark.parametrize("method", ["draft", "ngram", "turbo"])
def test_node_client_is_lossless_and_equals_the_python_client(
        method, services, ngram_service, turbo_service, target_hf, tiny_pair):  # noqa: F811
    verifier, proposer, k = {
        "draft": (services["verifier"], services["proposer"], 4),
        "ngram": (services["verifier"], ngram_service, 3),
        "turbo": (turbo_service[0], None, 3),
    }[method]
    out = node_generate(verifier, proposer, k)
    tok = AutoTokenizer.from_pretrained(tiny_pair[0])
    assert out["prompt_ids"] == tok(PROMPT)["input_ids"]       # Tokenize = the target's tokenizer
    expected = greedy_reference(target_hf, out["prompt_ids"], NEW)
    assert out["ids"] == expected
    assert out["ids"] == python_generate(verifier, proposer, out["prompt_ids"], k)
    assert out["text"] == tok.decode(expected, skip_special_tokens=True)
    assert out["finish_reason"] == "LENGTH" and out["drafted"] > 0
    assert out["mean_accepted_tokens"] > 1.0  # drafts were really accepted: speculation ran


def test_node_client_with_mutual_tls_and_token(tiny_pair, target_hf, certs):  # noqa: F811
    token = "n0de-token"
    svc = start_service("verifier", "verifier_service",
                        ["--model", str(tiny_pair[0]), "--ctx-len", "96", "--max-k", "4",
                         "--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server.key"),
                         "--tls-client-ca", str(certs / "ca.pem")],
                        env={"SPECDEC_AUTH_TOKEN": token})
    tls = ["--tls-ca", str(certs / "ca.pem"), "--tls-cert", str(certs / "client.pem"),
           "--tls-key", str(certs / "client.key")]
    try:
        out = node_generate(svc.address, None, 0, *tls, "--auth-token", token)
        assert out["ids"] == greedy_reference(target_hf, out["prompt_ids"], NEW)
        assert out["mean_accepted_tokens"] == 1.0  # target-only: one token per step
        denied = run_node("--verifier", svc.address, "--prompt", PROMPT, "--max-new-tokens", "4",
                          "--num-speculative-tokens", "0", "--json", *tls, "--auth-token", "guess",
                          expect_ok=False)
        assert denied.returncode == 1 and "UNAUTHENTICATED" in denied.stderr
    finally:
        assert svc.stop() == 0
