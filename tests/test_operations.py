"""Operating the services as real processes: health, reflection, metrics, drain on SIGTERM,
TLS and token auth, environment configuration, recovery from a lost service, and compose."""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
import yaml

from client.api import SpecDecClient
from client.launcher import start_service
from specdec.generation import GenerationConfig
from specdec.recovery import RecoveryPolicy
from specdec_rpc.healthcheck import check
from specdec_rpc.security import ClientSecurity
from specdec_rpc.server import LISTENING_PREFIX
from specdec_rpc.v1 import specdec_pb2 as pb
from specdec_rpc.v1 import specdec_pb2_grpc as pb_grpc
from tests.conftest import start_verifier
from tests.grpc_client import generate_one
from tests.tiny_models import greedy_reference

pytestmark = pytest.mark.slow  # services, compiling or a benchmark: `pytest -m "not slow"` skips it

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--ctx-len", "96", "--prefill-seq-len", "8", "--max-k", "4"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_health_goes_not_serving_to_serving_and_reflection_lists_services(tiny_pair):
    svc = start_service("verifier", "verifier_service", ["--model", str(tiny_pair[0]), *SMALL],
                        wait_for=LISTENING_PREFIX)
    try:
        seen = [check(svc.address, timeout_s=2)]
        deadline = time.monotonic() + 120
        while seen[-1] != "SERVING" and time.monotonic() < deadline:
            time.sleep(0.05)
            seen.append(check(svc.address, timeout_s=2))
        assert seen[0] == "NOT_SERVING" and seen[-1] == "SERVING", seen
        assert check(svc.address, "specdec.v1.Verifier") == "SERVING"
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

        with grpc.insecure_channel(svc.address) as ch:
            stub = reflection_pb2_grpc.ServerReflectionStub(ch)
            reply = next(stub.ServerReflectionInfo(iter(
                [reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in reply.list_services_response.service}
        assert {"specdec.v1.Verifier", "grpc.health.v1.Health"} <= names
        # The healthcheck CLI the compose file runs agrees.
        cli = subprocess.run(["python", "-m", "specdec_rpc.healthcheck", svc.address],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert cli.returncode == 0 and cli.stdout.strip() == "SERVING"
    finally:
        assert svc.stop() == 0


def scrape(address: str) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://{address}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_metrics_count_spec_decoding(tiny_pair, target_hf):
    v = start_service("verifier", "verifier_service",
                      ["--model", str(tiny_pair[0]), "--metrics-port", "0", *SMALL])
    p = start_service("proposer", "proposer_service",
                      ["--model", str(tiny_pair[1]), "--metrics-port", "0", *SMALL])
    try:
        before = scrape(v.metrics_address)
        prompt = [5, 6, 7, 8, 9]

        rec = generate_one(v.address, p.address, prompt, GenerationConfig(3, 20, True))
        assert rec.tokens == greedy_reference(target_hf, prompt, 20)
        # The client is done when it has read the last reply; the server records the stream's
        # end a moment later. Wait for it (bounded) instead of assuming the order.
        session_ok = 'specdec_rpc_total{code="OK",method="Session"}'
        deadline = time.monotonic() + 30
        while True:
            after, proposer = scrape(v.metrics_address), scrape(p.metrics_address)
            if after.get(session_ok, 0) > before.get(session_ok, 0) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        delta = lambda k: after.get(k, 0) - before.get(k, 0)
        assert delta("specdec_verify_steps_total") == rec.verify_steps
        assert delta("specdec_drafted_tokens_total") == rec.drafted
        assert delta("specdec_accepted_tokens_total") == rec.accepted
        assert delta('specdec_drafted_by_position_total{position="1"}') > 0
        assert delta('specdec_rpc_total{code="OK",method="Session"}') == 1
        assert delta('specdec_rpc_total{code="OK",method="Info"}') >= 1
        assert proposer["specdec_proposals_total"] > 0
        assert after["specdec_slots_in_use"] == 0 and "specdec_sessions_open" in after
    finally:
        v.stop()
        p.stop()


def test_sigterm_lets_the_in_flight_step_finish_and_exits_zero(tiny_pair):
    svc = start_service("verifier", "verifier_service",
                        ["--model", str(tiny_pair[0]), "--ctx-len", "512", "--prefill-seq-len", "4",
                         "--grace", "5"])

    async def go():
        async with grpc.aio.insecure_channel(svc.address) as ch:
            call = pb_grpc.VerifierStub(ch).Session()
            # A long chunked prefill (100 chunks) is in flight when SIGTERM arrives.
            await call.write(pb.VerifierRequest(prefill=pb.Prefill(tokens=[5, 6, 7] * 130)))
            await asyncio.sleep(0.01)
            svc.proc.send_signal(signal.SIGTERM)
            t0 = time.monotonic()
            reply = await call.read()
            with pytest.raises(grpc.aio.AioRpcError):  # then the service ends the session
                await call.read()
            return reply, await call.code(), await call.details(), t0

    reply, code, details, t0 = asyncio.run(go())
    assert len(reply.tokens) == 1 and reply.sequence_len == 391   # the step completed
    assert code == grpc.StatusCode.UNAVAILABLE and "draining" in details
    assert svc.proc.wait(10) == 0 and time.monotonic() - t0 < 5 + 2


def test_a_drain_ends_a_session_waiting_for_its_next_message(tiny_pair):
    """The drain (here: the in-process server's stop event, as SIGTERM in a service) ends a
    session that is between steps with UNAVAILABLE at once, not at its idle timeout (600 s)
    nor cancelled by the server's stop."""
    server, _ = start_verifier(tiny_pair[0], slots=1, idle_timeout_s=600.0)
    try:
        async def go():
            async with grpc.aio.insecure_channel(server.address) as ch:
                call = pb_grpc.VerifierStub(ch).Session()
                await call.write(pb.VerifierRequest(prefill=pb.Prefill(tokens=[5, 6, 7])))
                reply = await call.read()
                await asyncio.to_thread(server.stop)   # the session now waits for a message
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call.read()
                return reply, err.value
        reply, err = asyncio.run(go())
    finally:
        server.stop()
    assert len(reply.tokens) == 1
    assert err.code() == grpc.StatusCode.UNAVAILABLE and "draining" in err.details()


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    d = tmp_path_factory.mktemp("certs")

    def run(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=specdec-test-ca")
    for name in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={name}")
        (d / f"{name}.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
    return d


def test_mutual_tls_and_token(tiny_pair, target_hf, certs):
    token = "s3cret-token"
    svc = start_service("verifier", "verifier_service",
                        ["--model", str(tiny_pair[0]), *SMALL, "--tls-cert", str(certs / "server.pem"),
                         "--tls-key", str(certs / "server.key"),
                         "--tls-client-ca", str(certs / "ca.pem")],
                        env={"SPECDEC_AUTH_TOKEN": token})
    prompt = [9, 8, 7]

    def attempt(security: ClientSecurity):
        async def go():
            client = SpecDecClient(svc.address, security=security, timeout_s=5)
            try:
                return await client.generate(prompt, GenerationConfig(0, 6, True))
            finally:
                await client.close()
        return asyncio.run(go())

    ca, cert, key = certs / "ca.pem", certs / "client.pem", certs / "client.key"
    try:
        assert "***" in "\n".join(svc.stderr_tail) and token not in "\n".join(svc.stderr_tail)
        with pytest.raises(Exception):  # noqa: B017  no client certificate: refused, as one error or another by grpc version
            attempt(ClientSecurity(tls_ca=ca, auth_token=token))
        for wrong in (None, "guess"):
            with pytest.raises(Exception) as err:
                attempt(ClientSecurity(ca, cert, key, wrong))
            assert "UNAUTHENTICATED" in str(err.value)
        rec = attempt(ClientSecurity(ca, cert, key, token))
        assert rec.tokens == greedy_reference(target_hf, prompt, 6)
    finally:
        assert svc.stop() == 0


def test_a_mutual_tls_verifier_drafts_on_its_mutual_tls_proposer(tiny_pair, target_hf, certs):
    """Generate with method draft where both services require client certificates: the verifier
    calls its --proposer over TLS with its own certificate (ServerSecurity.as_client); a
    plaintext call would be refused, and the generation would go on target-only, drafting
    nothing."""
    from specdec.serving_generate import GenerateRequest

    token = "s3cret-token"
    mtls = ["--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server.key"),
            "--tls-client-ca", str(certs / "ca.pem")]
    env = {"SPECDEC_AUTH_TOKEN": token}
    proposer = start_service("proposer", "proposer_service",
                             ["--method", "draft", "--model", str(tiny_pair[1]), *SMALL, *mtls], env=env)
    verifier = None
    try:
        verifier = start_service("verifier", "verifier_service",
                                 ["--model", str(tiny_pair[0]), *SMALL, *mtls, "--proposer",
                                  proposer.address], env=env)
        prompt = (9, 8, 7, 6)

        async def go():
            security = ClientSecurity(certs / "ca.pem", certs / "client.pem", certs / "client.key", token)
            async with SpecDecClient(verifier.address, security=security, timeout_s=10) as client:
                return await client.generate_text(GenerateRequest(prompt, "draft", 3, max_new_tokens=12,
                                                                  ignore_eos=True))

        out = asyncio.run(go())
        assert out.tokens == greedy_reference(target_hf, list(prompt), 12)
        assert out.metrics.drafted > 0   # the proposer was reached: drafts were verified
    finally:
        if verifier is not None:
            assert verifier.stop() == 0
        assert proposer.stop() == 0


def test_tls_service_plaintext_client_and_mtls_probe(tiny_pair, certs):
    """A plaintext client against a TLS service fails at once naming TLS (it got "Socket
    closed" or waited ~30 s for DEADLINE_EXCEEDED), and the health probe can present a client
    certificate, so it reports a healthy mutual-TLS service as SERVING."""
    svc = start_service("verifier", "verifier_service",
                        ["--model", str(tiny_pair[0]), *SMALL, "--tls-cert", str(certs / "server.pem"),
                         "--tls-key", str(certs / "server.key"),
                         "--tls-client-ca", str(certs / "ca.pem")])
    try:
        async def plaintext():
            client = SpecDecClient(svc.address, timeout_s=120)  # the refusal must not wait for it
            try:
                await client.connect()
            finally:
                await client.close()
        from client.links import ServiceError

        with pytest.raises(ServiceError) as err:
            asyncio.run(plaintext())
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION and "TLS" in err.value.details
        host_port = svc.address
        tls = ["--tls-ca", str(certs / "ca.pem")]
        mtls = [*tls, "--tls-cert", str(certs / "client.pem"), "--tls-key", str(certs / "client.key")]
        probe = lambda *extra: subprocess.run(
            [sys.executable, "-m", "specdec_rpc.healthcheck", host_port, *extra], cwd=ROOT,
            capture_output=True, text=True, timeout=60)
        refused = probe(*tls)                                  # no client certificate
        assert refused.returncode == 1 and refused.stdout.strip() == "UNAVAILABLE"
        ok = probe(*mtls)
        assert ok.returncode == 0 and ok.stdout.strip() == "SERVING"
    finally:
        assert svc.stop() == 0


def test_sigterm_while_the_model_loads_exits_promptly(tiny_pair, tmp_path):
    """A load that does not end (config.json is a FIFO nobody writes: the read blocks, as a
    long load or QPC compile would): SIGTERM must still stop the service."""
    import os

    model = shutil.copytree(tiny_pair[0], tmp_path / "model")
    (model / "config.json").unlink()
    os.mkfifo(model / "config.json")
    svc = start_service("verifier", "verifier_service", ["--model", str(model), *SMALL],
                        wait_for=LISTENING_PREFIX)
    try:
        assert check(svc.address, timeout_s=5) == "NOT_SERVING"   # loading
        svc.proc.send_signal(signal.SIGTERM)
        assert svc.proc.wait(30) == 0   # without the fix, it waits for the load forever
    finally:
        if svc.proc.poll() is None:
            svc.proc.kill()
            svc.proc.wait()


def test_every_flag_is_an_environment_variable(tiny_pair):
    svc = start_service("verifier", "verifier_service", [],
                        env={"SPECDEC_MODEL": str(tiny_pair[0]), "SPECDEC_CTX_LEN": "77",
                             "SPECDEC_MAX_K": "3", "SPECDEC_FULL_BATCH_SIZE": "2"})
    try:
        async def info():
            async with grpc.aio.insecure_channel(svc.address) as ch:
                return await pb_grpc.VerifierStub(ch).Info(pb.InfoRequest())
        got = asyncio.run(info())
        assert (got.ctx_len, got.max_k, got.full_batch_size) == (77, 3, 2)
        assert any('"ctx_len": 77' in line for line in svc.stderr_tail)  # typed config printed
    finally:
        svc.stop()


def test_generation_survives_losing_the_proposer_and_a_verifier_restart(tiny_pair, target_hf):
    """Kill the proposer (SIGKILL) and then kill and restart the verifier on its port, both in
    the middle of one generation: it completes with exactly the greedy tokens."""
    vport = free_port()
    vargs = ["--model", str(tiny_pair[0]), *SMALL]
    verifier = start_service("verifier", "verifier_service", vargs, port=vport)
    proposer = start_service("proposer", "proposer_service", ["--model", str(tiny_pair[1]), *SMALL])
    restarted = []
    prompt, new = [11, 12, 13, 14], 60

    def on_tokens(tokens):
        on_tokens.count += len(tokens)
        if on_tokens.count >= 10 and proposer.proc.poll() is None:
            proposer.proc.kill()
        if on_tokens.count >= 30 and not restarted:
            verifier.proc.kill()
            verifier.proc.wait()
            restarted.append(start_service("verifier", "verifier_service", vargs, port=vport))
    on_tokens.count = 0

    async def go():
        client = SpecDecClient(verifier.address, proposer.address, step_timeout_s=10,
                               recovery=RecoveryPolicy(deadline_s=120, proposer_retry_s=0.5))
        try:
            await client.connect()
            return await client.generate(prompt, GenerationConfig(3, new, True), on_tokens)
        finally:
            await client.close()

    try:
        rec = asyncio.run(go())
    finally:
        proposer.stop()
        for svc in [verifier, *restarted]:
            svc.stop()
    assert restarted, "the verifier was not restarted mid-generation"
    assert rec.tokens == greedy_reference(target_hf, prompt, new)
    assert rec.recoveries >= 2


def compose_schema() -> dict:
    import json
    from importlib import resources

    files = resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads(files.joinpath("compose-spec.json").read_text())


@pytest.mark.parametrize("name", ["docker-compose.yml", "docker-compose.qaic.yml"])
def test_compose_files_follow_the_compose_specification(name):
    import jsonschema

    doc = yaml.safe_load((ROOT / name).read_text())
    jsonschema.validate(doc, compose_schema())


def test_compose_runs_the_entry_points_the_tests_start():
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = doc["services"]
    assert services["verifier"]["command"] == ["python", "-m", "verifier_service"]
    assert services["proposer"]["command"] == ["python", "-m", "proposer_service"]
    for name, svc in services.items():
        port = svc["environment"]["SPECDEC_PORT"]
        assert svc["healthcheck"]["test"] == ["CMD", "python", "-m", "specdec_rpc.healthcheck",
                                              f"127.0.0.1:{port}"]
        model = svc["environment"]["SPECDEC_MODEL"]
        assert (ROOT / model.removeprefix("/app/")).is_dir(), f"{name}: {model} is not shipped"
    # The variables the compose file sets are flags the services really have.
    from proposer_service.config import parser as proposer_parser
    from specdec_rpc.service_cli import env_var
    from verifier_service.config import parser as verifier_parser

    for name, make in (("verifier", verifier_parser), ("proposer", proposer_parser)):
        known = {env_var(a) for a in make()._actions} - {None}
        assert set(services[name]["environment"]) <= known, name
