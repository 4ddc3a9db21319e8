"""Bad input gets a clear status, the session's slot is freed, and the service keeps serving."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from client.api import SpecDecClient
from client.links import ServiceError
from specdec.generation import GenerationConfig
from specdec_rpc.v1 import specdec_pb2 as pb
from specdec_rpc.v1 import specdec_pb2_grpc as pb_grpc
from tests.conftest import CTX_LEN, MAX_K, start_proposer, start_verifier
from tests.grpc_client import generate_one
from tests.tiny_models import VOCAB, greedy_reference, save_word_tokenizer

PROMPT = [5, 6, 7, 8, 9, 10]


async def session_steps(address: str, stub_cls, requests: list) -> list:
    """Send requests on one stream; return the replies, then raise the stream's error if any."""
    async with grpc.aio.insecure_channel(address) as ch:
        call = stub_cls(ch).Session()
        replies = []
        for req in requests:
            await call.write(req)
            replies.append(await call.read())
        await call.done_writing()
        return replies


def expect_status(address, stub_cls, requests, code, match):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        asyncio.run(session_steps(address, stub_cls, requests))
    assert err.value.code() == code, err.value.details()
    assert match in err.value.details()


def prefill(tokens, **kw):
    return pb.VerifierRequest(prefill=pb.Prefill(start=0, tokens=tokens, **kw))


def verify(draft):
    return pb.VerifierRequest(verify=pb.Verify(draft_tokens=draft))


def wait_free(pool, timeout=5.0):
    deadline = time.monotonic() + timeout
    while pool.in_use and time.monotonic() < deadline:
        time.sleep(0.02)
    return pool.in_use


def assert_still_serves(services, target_hf):
    rec = generate_one(services["verifier"], services["proposer"], PROMPT, GenerationConfig(3, 10, True))
    assert rec.tokens == greedy_reference(target_hf, PROMPT, 10)
    assert wait_free(services["verifier_obj"].pool) == 0
    assert wait_free(services["proposer_obj"].pool) == 0


@pytest.mark.parametrize("requests_, code, match", [
    ([prefill(PROMPT + [VOCAB])], grpc.StatusCode.INVALID_ARGUMENT, "out of range"),
    ([prefill(list(range(2, 2 + CTX_LEN)))], grpc.StatusCode.INVALID_ARGUMENT, "ctx_len"),
    ([prefill([])], grpc.StatusCode.INVALID_ARGUMENT, "at least one token"),
    ([verify([3, 4])], grpc.StatusCode.FAILED_PRECONDITION, "before prefill"),
    ([prefill(PROMPT), verify(list(range(2, 3 + MAX_K)))], grpc.StatusCode.INVALID_ARGUMENT, "max k"),
    ([prefill(PROMPT), verify([3, VOCAB + 5])], grpc.StatusCode.INVALID_ARGUMENT, "out of range"),
    ([prefill(PROMPT, draft_tokenizer_fingerprint="0123456789abcdef")],
     grpc.StatusCode.FAILED_PRECONDITION, "tokenizer"),
    ([pb.VerifierRequest()], grpc.StatusCode.INVALID_ARGUMENT, "empty"),
    ([prefill(PROMPT, sampling=pb.SamplingParams(temperature=-1))],
     grpc.StatusCode.INVALID_ARGUMENT, "temperature"),
    ([prefill(PROMPT, sampling=pb.SamplingParams(temperature=float("nan")))],
     grpc.StatusCode.INVALID_ARGUMENT, "temperature"),
    ([prefill(PROMPT, sampling=pb.SamplingParams(temperature=1, top_p=1.5))],
     grpc.StatusCode.INVALID_ARGUMENT, "top_p"),
    ([prefill(PROMPT, sampling=pb.SamplingParams(temperature=1)),
      pb.VerifierRequest(verify=pb.Verify(draft_tokens=[3, 4], draft_probs=[
          pb.TokenDistribution(token_ids=[3], probs=[1.0])]))],
     grpc.StatusCode.INVALID_ARGUMENT, "distributions"),
    ([prefill(PROMPT, sampling=pb.SamplingParams(temperature=1)),
      pb.VerifierRequest(verify=pb.Verify(draft_tokens=[3], draft_probs=[
          pb.TokenDistribution(token_ids=[4], probs=[1.0])]))],
     grpc.StatusCode.INVALID_ARGUMENT, "probability 0"),
    # Issue 15: [d, d] with q = [0.5, 0.0] densified to q(d) = 0, and p/q = NaN was accepted.
    ([prefill(PROMPT, sampling=pb.SamplingParams(temperature=1, top_k=1)),
      pb.VerifierRequest(verify=pb.Verify(draft_tokens=[3], draft_probs=[
          pb.TokenDistribution(token_ids=[3, 3], probs=[0.5, 0.0])]))],
     grpc.StatusCode.INVALID_ARGUMENT, "twice"),
    # CI flake: a sampled prefill that drew EOS answered this with FAILED_PRECONDITION. The
    # request's own fault comes first, whatever state the session is in.
    ([prefill(PROMPT, max_new_tokens=1, sampling=pb.SamplingParams(temperature=1)),
      pb.VerifierRequest(verify=pb.Verify(draft_tokens=[3], draft_probs=[
          pb.TokenDistribution(token_ids=[4], probs=[1.0])]))],
     grpc.StatusCode.INVALID_ARGUMENT, "probability 0"),
    ([prefill(PROMPT, max_new_tokens=1), verify([3])],
     grpc.StatusCode.FAILED_PRECONDITION, "already finished"),
], ids=["token-over-vocab", "prompt-over-ctx", "empty-prompt", "step-before-prefill",
        "k-over-max", "draft-over-vocab", "tokenizer-mismatch", "empty-request",
        "negative-temperature", "nan-temperature", "top-p-over-1", "probs-count", "probs-miss-draft",
        "probs-duplicate-ids", "bad-probs-after-finish", "verify-after-finish"])
def test_verifier_rejects(services, target_hf, requests_, code, match):
    expect_status(services["verifier"], pb_grpc.VerifierStub, requests_, code, match)
    assert_still_serves(services, target_hf)


@pytest.mark.parametrize("request_, code, match", [
    (pb.ProposeRequest(start=0, tokens=PROMPT, k=MAX_K + 1), grpc.StatusCode.INVALID_ARGUMENT, "max k"),
    (pb.ProposeRequest(start=0, tokens=[VOCAB], k=2), grpc.StatusCode.INVALID_ARGUMENT, "out of range"),
    (pb.ProposeRequest(start=3, tokens=[4], k=2), grpc.StatusCode.FAILED_PRECONDITION, "beyond"),
    (pb.ProposeRequest(start=0, tokens=[], k=2), grpc.StatusCode.FAILED_PRECONDITION, "nothing to draft"),
    (pb.ProposeRequest(start=0, tokens=PROMPT, k=2, top_m=4,
                       sampling=pb.SamplingParams(temperature=1, top_k=0, top_p=2)),
     grpc.StatusCode.INVALID_ARGUMENT, "top_p"),
], ids=["k-over-max", "token-over-vocab", "start-beyond-held", "no-context", "bad-sampling"])
def test_proposer_rejects(services, target_hf, request_, code, match):
    expect_status(services["proposer"], pb_grpc.ProposerStub, [request_], code, match)
    assert_still_serves(services, target_hf)


def test_client_refuses_mismatched_tokenizers(tiny_pair, tmp_path, target_hf):
    import shutil

    other = shutil.copytree(tiny_pair[1], tmp_path / "draft")
    save_word_tokenizer(other, prefix="w")  # same ids, other strings
    v_server, _ = start_verifier(tiny_pair[0])
    p_server, _ = start_proposer(other)
    try:
        async def go():
            async with SpecDecClient(v_server.address, p_server.address):
                pass
        with pytest.raises(ServiceError) as err:
            asyncio.run(go())
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        v_server.stop()
        p_server.stop()


def test_slots_exhaust_and_free_on_close_and_break(tiny_pair):
    v_server, verifier = start_verifier(tiny_pair[0], slots=2)
    try:
        async def go():
            async with grpc.aio.insecure_channel(v_server.address) as ch:
                stub = pb_grpc.VerifierStub(ch)
                a, b = stub.Session(), stub.Session()
                for call in (a, b):
                    await call.write(prefill(PROMPT))
                    assert len((await call.read()).tokens) == 1
                c = stub.Session()
                with pytest.raises(grpc.aio.AioRpcError):
                    await c.write(prefill(PROMPT))
                    await c.read()
                assert await c.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "full-batch-size" in await c.details()
                a.cancel()                 # a broken stream frees its slot ...
                await b.done_writing()     # ... and so does a closed one
                assert await b.read() is grpc.aio.EOF
            return verifier.pool.in_use

        asyncio.run(go())
        assert wait_free(verifier.pool) == 0
        # Recovered: new sessions get slots again.
        asyncio.run(session_steps(v_server.address, pb_grpc.VerifierStub, [prefill(PROMPT)]))
        asyncio.run(session_steps(v_server.address, pb_grpc.VerifierStub, [prefill(PROMPT)]))
        assert wait_free(verifier.pool) == 0
    finally:
        v_server.stop()
