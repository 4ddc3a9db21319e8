"""A hostile client against both services, run as real processes: generated requests (any
field values, any order) and raw bytes. Every reply must be OK or a documented status, the
services must stay SERVING with no slot leaked, and a well-behaved client generating all the
while must stay lossless. A few hundred cases, derandomized so CI runs the same ones."""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.api import SpecDecClient
from client.launcher import start_service
from specdec.generation import GenerationConfig
from specdec_rpc.healthcheck import check
from specdec_rpc.v1 import specdec_pb2 as pb
from specdec_rpc.v1 import specdec_pb2_grpc as pb_grpc
from tests.test_operations import SMALL, scrape
from tests.tiny_models import VOCAB, greedy_reference

pytestmark = pytest.mark.slow  # services, compiling or a benchmark: `pytest -m "not slow"` skips it

# What a request can get besides OK (docs/operations.md, "Errors"); INTERNAL and UNKNOWN would be bugs.
DOCUMENTED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
              grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE,
              grpc.StatusCode.DEADLINE_EXCEEDED}
HOSTILE = settings(derandomize=True, database=None, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
GOOD_PROMPTS = [[5, 6, 7, 8], [9, 10, 11], [12, 13, 14, 15, 16], [20, 21]]
GOOD_NEW = 12

U32 = 2**32 - 1
token = st.one_of(st.integers(0, VOCAB + 4), st.integers(0, U32))
tokens = st.lists(token, max_size=24) | st.lists(st.integers(0, VOCAB - 1), min_size=80, max_size=120)
f32 = st.floats(width=32)
sampling = st.builds(pb.SamplingParams, temperature=st.sampled_from([0.0, 1.0]) | f32,
                     top_k=st.integers(0, 4) | st.integers(0, U32),
                     top_p=st.sampled_from([0.0, 0.5, 1.0]) | f32,
                     seed=st.none() | st.integers(0, 2**64 - 1))
distribution = st.builds(pb.TokenDistribution, token_ids=st.lists(token, max_size=4),
                         probs=st.lists(st.sampled_from([0.0, 0.5, 1.0]) | f32, max_size=4))
prefill = st.builds(pb.Prefill, start=st.integers(0, 8) | st.integers(0, U32), tokens=tokens,
                    max_new_tokens=st.integers(0, 8) | st.integers(0, U32),
                    ignore_eos=st.booleans(),
                    draft_tokenizer_fingerprint=st.sampled_from(["", "0" * 16]) | st.text(max_size=40),
                    sampling=sampling)
verify = st.builds(pb.Verify, draft_tokens=st.lists(token, max_size=10),
                   draft_probs=st.lists(distribution, max_size=10))
verifier_request = st.one_of(st.builds(pb.VerifierRequest, prefill=prefill),
                             st.builds(pb.VerifierRequest, verify=verify),
                             st.just(pb.VerifierRequest()))
propose_request = st.builds(pb.ProposeRequest, start=st.integers(0, 8) | st.integers(0, U32),
                            tokens=tokens, k=st.integers(0, 10) | st.integers(0, U32),
                            sampling=sampling, top_m=st.integers(0, 20) | st.integers(0, U32))


class GoodClient:
    """Generates greedily, over and over, while the hostile tests run."""

    def __init__(self, verifier: str, proposer: str) -> None:
        self.results: list[tuple[int, list[int]]] = []
        self.errors: list[BaseException] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run(verifier, proposer)),
                                       daemon=True)
        self.thread.start()

    async def _run(self, verifier: str, proposer: str) -> None:
        async with SpecDecClient(verifier, proposer) as client:
            i = 0
            while not self.stop.is_set():
                prompt = GOOD_PROMPTS[i % len(GOOD_PROMPTS)]
                try:
                    rec = await client.generate(prompt, GenerationConfig(3, GOOD_NEW, True))
                    self.results.append((i % len(GOOD_PROMPTS), rec.tokens))
                except Exception as exc:  # any failure of the good client is a finding
                    self.errors.append(exc)
                i += 1

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(120)


@pytest.fixture(scope="module")
def hostile_target(tiny_pair):
    common = [*SMALL, "--metrics-port", "0", "--full-batch-size", "4", "--max-queue", "8",
              "--queue-timeout", "5", "--first-message-timeout", "2"]
    v = start_service("verifier", "verifier_service", ["--model", str(tiny_pair[0]), *common])
    p = start_service("proposer", "proposer_service", ["--model", str(tiny_pair[1]), *common])
    good = GoodClient(v.address, p.address)
    channels = {"verifier": grpc.insecure_channel(v.address),
                "proposer": grpc.insecure_channel(p.address)}
    yield {"verifier": v, "proposer": p, "good": good, "channels": channels}
    good.finish()
    for ch in channels.values():
        ch.close()
    assert v.stop() == 0 and p.stop() == 0


def outcome(replies) -> grpc.StatusCode:
    """Drain a response iterator; OK or the status it ended with."""
    try:
        for _ in replies:
            pass
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def assert_documented(code: grpc.StatusCode) -> None:
    assert code == grpc.StatusCode.OK or code in DOCUMENTED, code


@settings(HOSTILE, max_examples=200)
@given(requests=st.lists(verifier_request, min_size=1, max_size=3))
def test_generated_verifier_requests(hostile_target, requests):
    stub = pb_grpc.VerifierStub(hostile_target["channels"]["verifier"])
    assert_documented(outcome(stub.Session(iter(requests), timeout=30)))


@settings(HOSTILE, max_examples=150)
@given(requests=st.lists(propose_request, min_size=1, max_size=3))
def test_generated_proposer_requests(hostile_target, requests):
    stub = pb_grpc.ProposerStub(hostile_target["channels"]["proposer"])
    assert_documented(outcome(stub.Session(iter(requests), timeout=30)))


@settings(HOSTILE, max_examples=100)
@given(service=st.sampled_from(["verifier", "proposer"]), unary=st.booleans(),
       messages=st.lists(st.binary(max_size=48), min_size=1, max_size=3))
def test_raw_bytes(hostile_target, service, unary, messages):
    ch = hostile_target["channels"][service]
    name = "Verifier" if service == "verifier" else "Proposer"
    if unary:
        try:
            ch.unary_unary(f"/specdec.v1.{name}/Info")(messages[0], timeout=30)
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code = exc.code()
    else:
        code = outcome(ch.stream_stream(f"/specdec.v1.{name}/Session")(iter(messages), timeout=30))
    assert_documented(code)


def test_services_serve_on_and_the_good_client_stayed_lossless(hostile_target, target_hf):
    good = hostile_target["good"]
    while not good.results and not good.errors and good.thread.is_alive():
        time.sleep(0.1)  # at least one good generation ran alongside the hostile ones
    good.finish()
    assert not good.errors, good.errors[:3]
    assert good.results
    expected = [greedy_reference(target_hf, p, GOOD_NEW) for p in GOOD_PROMPTS]
    for i, got in good.results:
        assert got == expected[i]
    for name in ("verifier", "proposer"):
        svc = hostile_target[name]
        assert check(svc.address) == "SERVING"
        deadline = time.monotonic() + 30
        while scrape(svc.metrics_address)["specdec_slots_in_use"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert scrape(svc.metrics_address)["specdec_slots_in_use"] == 0
        assert not [line for line in svc.stderr_tail if "Traceback" in line or "INTERNAL" in line]
