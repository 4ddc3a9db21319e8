"""One call to generate (the verifier's Generate RPC): the round loop served by the verifier,
lossless against transformers for every method, stop strings, bad requests, and a cancelled
stream freeing its slot and proposer session.

One verifier process on the shipped target with its Turbo heads, --proposer at a draft-model
proposer service and one slot, serves every method here (the heads are only used by `turbo`)."""

from __future__ import annotations

import asyncio
import functools
import shutil
import socket
from contextlib import aclosing
from pathlib import Path

import grpc
import pytest
import torch

import verifier_service.__main__ as verifier_main
from client.api import SpecDecClient
from client.launcher import start_service
from client.links import ServiceError
from specdec.admission import Admission
from specdec.errors import InvalidRequest
from specdec.sampling import SamplingParams
from specdec.serving_generate import GenerateRequest
from specdec.stopping import FinishReason
from specdec_rpc.security import ServerSecurity
from specdec_rpc.server import ServerConfig
from specdec_rpc.v1 import specdec_pb2 as pb
from specdec_rpc.v1 import specdec_pb2_grpc as pb_grpc
from tests.conftest import start_proposer, start_verifier
from tests.tiny_models import greedy_reference

pytestmark = pytest.mark.slow  # services, compiling or a benchmark: `pytest -m "not slow"` skips it

MODELS = Path(__file__).resolve().parent.parent / "models"
CODE = "import os\n\n\ndef walk(top):\n    for name in os.listdir(top):\n"
NEW = 40
CTX = 128
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


@pytest.fixture(scope="module")
def shipped():
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(MODELS / "target")
    target = transformers.AutoModelForCausalLM.from_pretrained(MODELS / "target",
                                                               dtype=torch.float32).eval()
    return tok, target


@pytest.fixture(scope="module")
def draft_service():
    server, proposer = start_proposer(MODELS / "draft", slots=2)
    yield server, proposer
    server.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def chat_target(tmp_path_factory) -> Path:
    """The shipped target (which has no chat template) with a small one added."""
    from transformers import AutoTokenizer

    path = Path(shutil.copytree(MODELS / "target", tmp_path_factory.mktemp("chat") / "target"))
    tok = AutoTokenizer.from_pretrained(path)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def http_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def verifier(draft_service, chat_target, http_port):
    """The service as deployed: its own process, flags on the command line."""
    svc = start_service("verifier", "verifier_service", [
        "--model", str(chat_target), "--speculative-model-type", "turbo",
        "--proposer", draft_service[0].address, "--full-batch-size", "1", "--ctx-len", str(CTX),
        "--prefill-seq-len", "32", "--compile", "off", "--queue-timeout", "20",
        "--http-port", str(http_port)])
    yield svc.address
    svc.stop()


def generate(address: str, request: GenerateRequest):
    async def go():
        async with SpecDecClient(address) as client:
            pieces: list[str] = []
            out = await client.generate_text(request, pieces.append)
            return out, pieces
    return asyncio.run(go())


@pytest.mark.parametrize("method, k", [("none", 0), ("ngram", 3), ("draft", 4), ("turbo", 3),
                                       ("draft", 0)])
def test_generate_equals_transformers_greedy(verifier, shipped, method, k):
    tok, target = shipped
    ids = tok(CODE)["input_ids"]
    want = greedy_reference(target, ids, NEW)
    out, pieces = generate(verifier, GenerateRequest(CODE, method, k, max_new_tokens=NEW,
                                                     ignore_eos=True))
    assert out.tokens == want
    assert out.text == "".join(pieces) == tok.decode(want, skip_special_tokens=True)
    assert out.finish == FinishReason.LENGTH
    m = out.metrics
    assert (m.prompt_tokens, m.generated_tokens) == (len(ids), NEW)
    assert m.ttft_s > 0 and m.e2e_throughput > 0
    if method == "none":
        assert m.drafted == 0 and m.mean_accepted_tokens == 1.0
    elif method in ("draft", "turbo"):   # the trained proposers do agree with the target
        assert m.accepted > 0 and m.mean_accepted_tokens > 1.5, m
        assert len(m.k_histogram) == (k or 4) + 1
    else:   # prompt lookup found repeats in this code to draft from
        assert m.drafted > 0, m


def test_token_ids_and_adaptive_k_are_lossless(verifier, shipped):
    tok, target = shipped
    ids = tok("class Stack:\n    def __init__(self):\n")["input_ids"]
    out, _ = generate(verifier, GenerateRequest(tuple(ids), "draft", 4, adaptive_k=True,
                                                max_new_tokens=NEW, ignore_eos=True))
    assert out.tokens == greedy_reference(target, ids, NEW)


def test_stop_string_ends_the_text_before_it(verifier, shipped):
    tok, target = shipped
    ids = tok(CODE)["input_ids"]
    want = greedy_reference(target, ids, NEW)
    text = tok.decode(want, skip_special_tokens=True)
    # A stop string from the middle of the output, spanning a token boundary
    ends = [len(tok.decode(want[:i + 1], skip_special_tokens=True)) for i in range(len(want))]
    edge = next(e for e in ends if 10 <= e < len(text) - 5)
    stop = text[edge - 3:edge + 3]
    out, pieces = generate(verifier, GenerateRequest(CODE, "draft", 4, max_new_tokens=NEW,
                                                     stop=("no such text", stop), ignore_eos=True))
    assert out.finish == FinishReason.STOP
    assert out.text == "".join(pieces) == text[:text.index(stop)]
    # The tokens through the one that completed the stop string: a prefix of the greedy output
    assert out.tokens == want[:len(out.tokens)]
    assert tok.decode(out.tokens, skip_special_tokens=True).startswith(text[:text.index(stop)] + stop)
    assert stop not in tok.decode(out.tokens[:-1], skip_special_tokens=True)
    assert out.metrics.generated_tokens == len(out.tokens)


@pytest.mark.parametrize("request_, match", [
    (GenerateRequest(""), "empty prompt"),
    (GenerateRequest((), "none"), "empty prompt"),
    (GenerateRequest(CODE, "draft", 5), "out of range"),
    (GenerateRequest(CODE, "beam"), "unknown method"),
    (GenerateRequest((5, 4096)), "out of range"),
    (GenerateRequest((5,) * CTX), "ctx_len"),
    (GenerateRequest(CODE, stop=("",)), "stop string is empty"),
])
def test_bad_requests_are_invalid_argument(verifier, request_, match):
    with pytest.raises(ServiceError, match=match) as err:
        generate(verifier, request_)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_methods_the_verifier_cannot_serve_fail_precondition(services):
    """The tiny verifier of conftest: no --proposer, no Turbo heads."""
    for method, match in (("draft", "--proposer"), ("turbo", "--speculative-model-type turbo")):
        with pytest.raises(ServiceError, match=match) as err:
            generate(services["verifier"], GenerateRequest((5, 6, 7), method))
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION


def test_cancelled_stream_frees_the_slot_and_the_proposer_session(verifier, draft_service):
    proposer = draft_service[1]
    long = GenerateRequest(CODE, "draft", 4, max_new_tokens=100, ignore_eos=True)

    async def go():
        async with SpecDecClient(verifier) as client:
            whole = await client.generate_text(long)   # how long the cancelled one would run
            first = None
            async for reply in client.stream_text(long):
                first = reply
                break   # cancels the call mid-generation
            assert first is not None and first.tokens and not first.finish_reason
            # One slot: this is served only once the cancelled generation freed it
            out = await asyncio.wait_for(client.generate_text(
                GenerateRequest(CODE, "none", max_new_tokens=3, ignore_eos=True)), 15)
            return whole, out

    whole, out = asyncio.run(go())
    assert out.finish == FinishReason.LENGTH and len(out.tokens) == 3
    # Its wait for the slot (in its TTFT) was the cancelled generation's step in progress, not
    # the rest of that generation
    assert whole.metrics.generated_tokens > 80
    assert out.metrics.ttft_s < whole.metrics.e2e_time_s / 2, (out.metrics, whole.metrics)
    for _ in range(50):   # the proposer session ends when the verifier closes its stream
        if proposer.pool.in_use == 0:
            break
        asyncio.run(asyncio.sleep(0.1))
    assert proposer.pool.in_use == 0


def test_unreachable_proposer_goes_on_target_only(tiny_pair, target_hf, monkeypatch):
    """--proposer at a port where nothing listens: method draft is still served, losslessly."""
    monkeypatch.setattr(verifier_main, "host", functools.partial(verifier_main.host,
                                                                 proposer="127.0.0.1:9"))
    server, _ = start_verifier(tiny_pair[0])
    try:
        prompt = [5, 9, 11, 7, 30]
        out, _ = generate(server.address, GenerateRequest(tuple(prompt), "draft", 3,
                                                          max_new_tokens=12, ignore_eos=True))
    finally:
        server.stop()
    assert out.tokens == greedy_reference(target_hf, prompt, 12)
    assert out.metrics.drafted == 0 and out.metrics.recoveries >= 1


def test_generate_and_http_need_the_token_when_the_service_has_one(tiny_pair, monkeypatch):
    import openai

    port = free_port()
    monkeypatch.setattr(verifier_main, "host", functools.partial(verifier_main.host, http_port=port))
    server, _ = start_verifier(tiny_pair[0], server=ServerConfig(
        grace_s=0.0, security=ServerSecurity(auth_token="s3cret")))

    async def call(metadata):
        async with grpc.aio.insecure_channel(server.address) as ch:
            stub = pb_grpc.VerifierStub(ch)
            req = pb.GenerateRequest(token_ids=pb.TokenIds(ids=[5, 6]), max_new_tokens=2)
            return [r async for r in stub.Generate(req, metadata=metadata)]

    def http(token):
        with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=token, max_retries=0) as c:
            model = c.models.list().data[0].id
            return c.completions.create(model=model, prompt=[5, 6], max_tokens=2, temperature=0)

    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            asyncio.run(call(()))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        replies = asyncio.run(call((("authorization", "Bearer s3cret"),)))
        with pytest.raises(openai.AuthenticationError):
            http("wrong")
        completion = http("s3cret")
    finally:
        server.stop()
    assert replies[-1].finish_reason == pb.FINISH_REASON_LENGTH
    assert sum(len(r.tokens) for r in replies) == 2
    assert completion.usage is not None and completion.usage.completion_tokens == 2


def test_unparseable_generate_request_is_invalid_argument(verifier):
    async def go():
        async with grpc.aio.insecure_channel(verifier) as ch:
            call = ch.unary_stream("/specdec.v1.Verifier/Generate", request_serializer=bytes,
                                   response_deserializer=bytes)
            return [r async for r in call(b"\x0a\x02\xff\xfe")]   # text: bytes that are not UTF-8

    with pytest.raises(grpc.aio.AioRpcError) as err:
        asyncio.run(go())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_seeded_sampling_repeats_and_differs_from_greedy(verifier, shipped):
    tok, target = shipped
    ids = tok(CODE)["input_ids"]
    request = GenerateRequest(CODE, "draft", 4, sampling=SamplingParams(temperature=1.5, seed=3),
                              max_new_tokens=NEW, ignore_eos=True)
    first, _ = generate(verifier, request)
    again, _ = generate(verifier, request)
    assert first.tokens == again.tokens and len(first.tokens) == NEW
    assert first.tokens != greedy_reference(target, ids, NEW)


# ---------------------------------------------------------------------------------------------
# The OpenAI API over HTTP (--http-port), with the official SDK as the client


@pytest.fixture(scope="module")
def openai_client(verifier, http_port, chat_target):
    import openai

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{http_port}/v1", api_key="none", max_retries=0)
    yield client, str(chat_target)
    client.close()


GREEDY = {"temperature": 0, "extra_body": {"ignore_eos": True, "speculation": {"method": "draft", "k": 4}}}


def test_openai_models_lists_the_target(openai_client):
    client, model = openai_client
    assert [m.id for m in client.models.list().data] == [model]


@pytest.mark.parametrize("stream", [False, True])
def test_openai_completions_equal_transformers_greedy(openai_client, shipped, stream):
    client, model = openai_client
    tok, target = shipped
    ids = tok(CODE)["input_ids"]
    want = tok.decode(greedy_reference(target, ids, NEW), skip_special_tokens=True)
    if not stream:
        out = client.completions.create(model=model, prompt=CODE, max_tokens=NEW, **GREEDY)
        assert out.choices[0].text == want and out.choices[0].finish_reason == "length"
        usage = out.usage
    else:
        chunks = list(client.completions.create(model=model, prompt=CODE, max_tokens=NEW, stream=True,
                                                stream_options={"include_usage": True}, **GREEDY))
        assert "".join(c.choices[0].text for c in chunks if c.choices) == want
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
        usage = chunks[-1].usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (len(ids), NEW)


@pytest.mark.parametrize("stream", [False, True])
def test_openai_chat_equals_transformers_greedy(openai_client, shipped, stream):
    client, model = openai_client
    tok, target = shipped
    messages = [{"role": "system", "content": "You write Python."},
                {"role": "user", "content": "def fib(n):"}]
    text = "<|system|>\nYou write Python.\n<|user|>\ndef fib(n):\n<|assistant|>\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    want = tok.decode(greedy_reference(target, ids, NEW), skip_special_tokens=True)
    if not stream:
        out = client.chat.completions.create(model=model, messages=messages, max_tokens=NEW, **GREEDY)
        assert out.choices[0].message.content == want
        assert out.choices[0].finish_reason == "length"
        assert out.usage is not None and out.usage.prompt_tokens == len(ids)
    else:
        chunks = list(client.chat.completions.create(model=model, messages=messages, max_tokens=NEW,
                                                     stream=True, **GREEDY))
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == want
        assert chunks[-1].choices[0].finish_reason == "length"


def test_openai_stop_and_turbo_extension(openai_client, shipped):
    client, model = openai_client
    tok, target = shipped
    want = tok.decode(greedy_reference(target, tok(CODE)["input_ids"], NEW), skip_special_tokens=True)
    stop = want[12:16]
    out = client.completions.create(model=model, prompt=CODE, max_tokens=NEW, temperature=0,
                                    stop=[stop], extra_body={"speculation": {"method": "turbo",
                                                                            "k": "auto"}})
    assert out.choices[0].text == want[:want.index(stop)]
    assert out.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("kwargs, error, match", [
    ({"n": 2}, "BadRequestError", "'n' must be 1"),
    ({"extra_body": {"speculation": {"method": "beam"}}}, "BadRequestError", "speculation.method"),
    ({"max_tokens": CTX * 2, "prompt": "x" * 10_000}, "BadRequestError", "ctx_len|could never fit"),
    ({"model": "gpt-4"}, "NotFoundError", "not served"),
])
def test_openai_bad_requests_get_openai_errors(openai_client, kwargs, error, match):
    import openai

    client, model = openai_client
    with pytest.raises(getattr(openai, error), match=match) as err:
        client.completions.create(**{"model": model, "prompt": CODE, **kwargs})
    body = err.value.body
    assert isinstance(body, dict) and body["type"] == "invalid_request_error" and body["message"]


def test_openai_stream_closed_by_the_client_frees_the_slot(openai_client, verifier):
    client, model = openai_client
    body = {"temperature": 0, "extra_body": {"ignore_eos": True, "speculation": {"method": "none"}}}
    whole = client.completions.create(model=model, prompt=CODE, max_tokens=90, **body)
    stream = client.completions.create(model=model, prompt=CODE, max_tokens=90, stream=True, **body)
    assert next(iter(stream)).choices[0].text   # generating
    stream.close()   # the client goes away mid-generation
    out, _ = generate(verifier, GenerateRequest(CODE, "none", max_new_tokens=3, ignore_eos=True))
    assert len(out.tokens) == 3
    # One slot: it waited for the step in progress, not for the rest of the closed generation
    assert out.metrics.ttft_s < whole.model_extra["specdec_metrics"]["e2e_time_s"] / 2


def test_openai_fields_become_the_generate_request():
    """The translation alone (pure): OpenAI's defaults, the extensions, and what is refused."""
    from verifier_service.openai_api import chat_request, completion_request

    api = completion_request({"model": "m", "prompt": [[5, 6, 7]]}, "draft")
    assert api.generate == GenerateRequest((5, 6, 7), "draft", 0, False, SamplingParams(1.0), 16)
    api = completion_request({"model": "m", "prompt": "x", "temperature": 0, "top_p": 0.5, "seed": 4,
                              "stop": "\n", "stream": True, "stream_options": {"include_usage": True},
                              "speculation": {"method": "ngram", "k": "auto"}}, "draft")
    assert api.generate == GenerateRequest("x", "ngram", 0, True, SamplingParams(0.0, 0, 0.5, 4), 16,
                                           ("\n",))
    assert api.stream and api.include_usage
    chat, messages = chat_request({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                   "max_completion_tokens": 7}, "turbo")
    assert (chat.generate.max_new_tokens, chat.generate.method, messages[0]["content"]) == (7, "turbo", "hi")
    assert chat_request({"model": "m", "messages": []}, "turbo")[0].generate.max_new_tokens == 0
    for body in ({"model": "m", "prompt": "x", "logprobs": 2}, {"model": "m", "prompt": "x", "temperature": 3},
                 {"model": "m", "prompt": "x", "max_tokens": 0}, {"prompt": "x"}, [1, 2],
                 {"model": "m", "prompt": [[1], [2]]}, {"model": "m", "prompt": "x", "speculation": {"k": -1}}):
        with pytest.raises(InvalidRequest):
            completion_request(body, "draft")


def test_cancel_while_queued_frees_the_queue_place(shipped):
    """One slot, held by a running generation; a second one waits for it and is cancelled:
    it leaves the queue at once, while the first still runs (it did not wait for the slot)."""
    tok, _ = shipped
    server, hosted = start_verifier(MODELS / "target", slots=1, admission=Admission(4, 20.0))
    pool = hosted.pool
    prompt = tuple(tok(CODE)["input_ids"])

    async def until(condition, seconds: float = 2.0) -> bool:
        for _ in range(int(seconds * 100)):
            if condition():
                return True
            await asyncio.sleep(0.01)
        return False

    async def go():
        async with SpecDecClient(server.address) as client:
            running = client.stream_text(GenerateRequest(prompt, max_new_tokens=70, ignore_eos=True))
            async with aclosing(running):
                assert not (await anext(running)).finish_reason   # it holds the slot
                queued = asyncio.create_task(client.generate_text(GenerateRequest(prompt, max_new_tokens=2)))
                assert await until(lambda: pool.waiting == 1)
                queued.cancel()
                assert await until(lambda: pool.waiting == 0, 0.3)
                assert pool.in_use == 1   # the first one still runs
            # and its own cancel frees the slot
            assert await until(lambda: pool.in_use == 0)

    try:
        asyncio.run(go())
    finally:
        server.stop()
