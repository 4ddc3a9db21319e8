"""The Node.js example clients (examples/node) end to end, on real services: generate.mjs (one
Generate call: the verifier runs the round loop) and round_loop.mjs (the loop in Node, over
Sessions). Their ids equal transformers' greedy output for the draft model, prompt lookup and
Turbo (the round loop's also the Python client's); generate.mjs streams the text and stops at a
stop string; both speak mutual TLS with a token. Needs `node`, and `npm ci` in examples/node
(scripts/setup.sh runs it)."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from transformers import AutoTokenizer

import verifier_service.__main__ as verifier_main
from client.launcher import start_service
from specdec.generation import GenerationConfig
from tests.conftest import start_verifier
from tests.grpc_client import generate_one
from tests.test_operations import certs  # noqa: F401  (fixture)
from tests.test_prompt_lookup import ngram_service  # noqa: F401  (fixture)
from tests.test_turbo import turbo_service, turbo_target  # noqa: F401  (fixtures)
from tests.tiny_models import greedy_reference

NODE_EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "node"
ONE_CALL, ROUND_LOOP = "generate.mjs", "round_loop.mjs"
NODE = shutil.which("node")
NEW = 24
# Repeats, so prompt lookup finds continuations in the context.
PROMPT = "t5 t6 t7 t8 t9 t5 t6 t7 t8 t9 t5 t6"

pytestmark = [pytest.mark.slow,  # services: `pytest -m "not slow"` skips it
              pytest.mark.skipif(NODE is None, reason="node is not installed: the Node.js example "
                                 "clients (examples/node) cannot run on this machine")]


def run_node(script: str, *args: str, expect_ok: bool = True) -> subprocess.CompletedProcess:
    if not (NODE_EXAMPLES / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.fail("examples/node/node_modules is missing: run `npm ci` in examples/node "
                    "(scripts/setup.sh does where npm is installed)")
    proc = subprocess.run([str(NODE), str(NODE_EXAMPLES / script), *args], capture_output=True,
                          text=True, timeout=120)
    if expect_ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def node_json(script: str, verifier: str, k: int | str, *extra: str) -> dict:
    """The script's --json output for PROMPT, NEW tokens, EOS ignored."""
    args = ["--verifier", verifier, "--prompt", PROMPT, "--max-new-tokens", str(NEW),
            "--num-speculative-tokens", str(k), "--ignore-eos", "--json", *extra]
    return json.loads(run_node(script, *args).stdout)


def node_generate(verifier: str, proposer: str | None, k: int, *extra: str) -> dict:
    return node_json(ROUND_LOOP, verifier, k, *extra, *(["--proposer", proposer] if proposer else []))


def python_generate(verifier: str, proposer: str | None, prompt: list[int], k: int) -> list[int]:
    return generate_one(verifier, proposer, prompt, GenerationConfig(k, NEW, ignore_eos=True)).tokens


@pytest.fixture(scope="module")
def tok(tiny_pair):
    return AutoTokenizer.from_pretrained(tiny_pair[0])


@pytest.fixture(scope="module")
def one_call_verifier(tiny_pair, services):
    """The tiny target's verifier with --proposer at the draft-model proposer service, so that
    Generate serves method draft (and ngram, in-process)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(verifier_main, "host", functools.partial(verifier_main.host,
                                                            proposer=services["proposer"]))
        server, _ = start_verifier(tiny_pair[0])
    yield server.address
    server.stop()


@pytest.mark.parametrize("method, k", [("draft", 4), ("ngram", 3), ("turbo", 3), ("none", 0)])
def test_one_call_client_is_lossless(method, k, one_call_verifier, turbo_service, target_hf,  # noqa: F811
                                     tok):
    verifier = turbo_service[0] if method == "turbo" else one_call_verifier
    out = node_json(ONE_CALL, verifier, k, "--method", method)
    prompt = tok(PROMPT)["input_ids"]
    expected = greedy_reference(target_hf, prompt, NEW)
    assert out["ids"] == expected
    assert out["text"] == tok.decode(expected, skip_special_tokens=True)
    assert out["finish_reason"] == "LENGTH"
    m = out["metrics"]
    assert (m["prompt_tokens"], m["generated_tokens"]) == (len(prompt), NEW)
    assert 0 < m["ttft_s"] <= m["e2e_time_s"] <= out["client_e2e_time_s"]
    if method == "none":
        assert m["drafted"] == 0 and m["mean_accepted_tokens"] == 1.0
    else:   # drafts were really accepted: speculation ran in the verifier's loop
        assert m["drafted"] > 0 and m["mean_accepted_tokens"] > 1.0


def test_one_call_client_streams_text_and_ends_at_a_stop_string(one_call_verifier, target_hf, tok):
    text = tok.decode(greedy_reference(target_hf, tok(PROMPT)["input_ids"], NEW), skip_special_tokens=True)
    stop = text[len(text) // 2:len(text) // 2 + 3]
    proc = run_node(ONE_CALL, "--verifier", one_call_verifier, "--prompt", PROMPT, "--method", "draft",
                    "--num-speculative-tokens", "auto", "--max-new-tokens", str(NEW), "--ignore-eos",
                    "--stop", "no such text", "--stop", stop)
    assert proc.stdout == PROMPT + text[:text.index(stop)]   # the prompt, then the text as it came
    assert "finish: STOP" in proc.stderr and "mean accepted tokens" in proc.stderr, proc.stderr


def test_one_call_client_reports_the_services_refusal(services):
    """A verifier without --proposer cannot serve method draft: the service's own words."""
    proc = run_node(ONE_CALL, "--verifier", services["verifier"], "--prompt", PROMPT, "--method", "draft",
                    "--json", expect_ok=False)
    assert proc.returncode == 1 and "FAILED_PRECONDITION" in proc.stderr and "--proposer" in proc.stderr


@pytest.mark.parametrize("method", ["draft", "ngram", "turbo"])
def test_round_loop_client_is_lossless_and_equals_the_python_client(
        method, services, ngram_service, turbo_service, target_hf, tok):  # noqa: F811
    verifier, proposer, k = {
        "draft": (services["verifier"], services["proposer"], 4),
        "ngram": (services["verifier"], ngram_service, 3),
        "turbo": (turbo_service[0], None, 3),
    }[method]
    out = node_generate(verifier, proposer, k)
    assert out["prompt_ids"] == tok(PROMPT)["input_ids"]       # Tokenize = the target's tokenizer
    expected = greedy_reference(target_hf, out["prompt_ids"], NEW)
    assert out["ids"] == expected
    assert out["ids"] == python_generate(verifier, proposer, out["prompt_ids"], k)
    assert out["text"] == tok.decode(expected, skip_special_tokens=True)
    assert out["finish_reason"] == "LENGTH" and out["drafted"] > 0
    assert out["mean_accepted_tokens"] > 1.0  # drafts were really accepted: speculation ran


@pytest.mark.parametrize("script", [ONE_CALL, ROUND_LOOP])
def test_node_clients_with_mutual_tls_and_token(script, tiny_pair, target_hf, tok, certs):  # noqa: F811
    token = "n0de-token"
    svc = start_service("verifier", "verifier_service",
                        ["--model", str(tiny_pair[0]), "--ctx-len", "96", "--max-k", "4",
                         "--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server.key"),
                         "--tls-client-ca", str(certs / "ca.pem")],
                        env={"SPECDEC_AUTH_TOKEN": token})
    tls = ["--tls-ca", str(certs / "ca.pem"), "--tls-cert", str(certs / "client.pem"),
           "--tls-key", str(certs / "client.key")]
    try:
        out = node_json(script, svc.address, 0, *tls, "--auth-token", token)
        assert out["ids"] == greedy_reference(target_hf, tok(PROMPT)["input_ids"], NEW)
        # target-only (generate.mjs: method none by default): one token per step
        assert out.get("metrics", out)["mean_accepted_tokens"] == 1.0
        denied = run_node(script, "--verifier", svc.address, "--prompt", PROMPT, "--max-new-tokens", "4",
                          "--num-speculative-tokens", "0", "--json", *tls, "--auth-token", "guess",
                          expect_ok=False)
        assert denied.returncode == 1 and "UNAUTHENTICATED" in denied.stderr
    finally:
        assert svc.stop() == 0
