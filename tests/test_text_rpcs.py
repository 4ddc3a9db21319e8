"""Tokenize/Detokenize: the target's tokenizer over gRPC, incremental detokenization of
byte-level pieces split inside characters, and bad input as INVALID_ARGUMENT."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest

from client.api import SpecDecClient
from client.launcher import start_service
from client.links import ServiceError
from specdec.text_codec import TEXT_BYTES_PER_POSITION, TextCodec
from specdec_rpc.v1 import specdec_pb2 as pb
from specdec_rpc.v1 import specdec_pb2_grpc as pb_grpc
from tests.conftest import CTX_LEN, start_verifier
from tests.tiny_models import VOCAB, save_tiny

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "models" / "target"
# Accents, CJK and an emoji: byte-level BPE splits these characters over several ids.
TEXT = "def greet(name):\n    return f'héllo {name} 漢字 🙂'\n"


@pytest.fixture(scope="module")
def shipped_codec() -> TextCodec:
    vocab = json.loads((TARGET / "config.json").read_text())["vocab_size"]
    return TextCodec.load(TARGET, vocab, ctx_len=256)


def stream_text(codec: TextCodec, ids: list[int], chunk: int) -> tuple[str, int]:
    """Detokenize ids `chunk` at a time as a streaming client does; -> (text, calls that held
    ids back because they ended inside a character)."""
    out, printed, pending, held_back = "", [], [], 0
    for i in range(0, len(ids), chunk):
        pending += ids[i:i + chunk]
        text, n = codec.detokenize(pending, printed[-8:])
        out += text
        held_back += n < len(pending)
        printed += pending[:n]
        del pending[:n]
    return out, held_back


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_incremental_detokenization_rebuilds_split_characters(shipped_codec, chunk):
    ids, _ = shipped_codec.tokenize(TEXT)
    assert shipped_codec.tokenizer.decode(ids) == TEXT
    text, held_back = stream_text(shipped_codec, ids, chunk)
    assert text == TEXT
    if chunk == 1:
        assert held_back > 0  # some character really was split over ids
        # Without the prefix and the hold-back, the pieces alone do not make the text.
        assert "".join(shipped_codec.tokenizer.decode([i]) for i in ids) != TEXT


def test_tokenize_and_detokenize_over_grpc(services, tiny_pair):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_pair[0])

    async def go():
        async with SpecDecClient(services["verifier"]) as client:
            ids = await client.tokenize("t5 t6 t7 t8")
            return ids, await client.detokenize(ids[2:], ids[:2]), await client.detokenize(ids)

    ids, (tail, n), (whole, m) = asyncio.run(go())
    assert ids == tok("t5 t6 t7 t8")["input_ids"] == [5, 6, 7, 8]
    assert (tail, n) == (tok.decode(ids)[len(tok.decode(ids[:2])):], 2)
    assert (whole, m) == ("t5 t6 t7 t8", 4)


@pytest.mark.parametrize("method, request_, match", [
    ("Detokenize", pb.DetokenizeRequest(ids=[5, VOCAB]), "out of range"),
    ("Detokenize", pb.DetokenizeRequest(ids=[5] * (CTX_LEN - 3), prefix_ids=[6] * 4), "ctx_len"),
    ("Tokenize", pb.TokenizeRequest(text="t5 " * (TEXT_BYTES_PER_POSITION * CTX_LEN // 3 + 1)),
     "could never fit"),
])
def test_bad_text_requests_are_invalid_argument(services, method, request_, match):
    async def go():
        async with grpc.aio.insecure_channel(services["verifier"]) as ch:
            return await getattr(pb_grpc.VerifierStub(ch), method)(request_)

    with pytest.raises(grpc.aio.AioRpcError) as err:
        asyncio.run(go())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and match in err.value.details()


def test_model_without_tokenizer_is_failed_precondition(tmp_path):
    server, _ = start_verifier(save_tiny(tmp_path / "bare", "llama"))

    async def go():
        async with SpecDecClient(server.address) as client:
            return await client.tokenize("t5")

    try:
        with pytest.raises(ServiceError) as err:
            asyncio.run(go())
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "no tokenizer" in err.value.details
    finally:
        server.stop()


@pytest.mark.slow  # a process of its own
def test_undecodable_requests_are_invalid_argument(tiny_pair):
    """Bytes that do not parse (here: invalid UTF-8 in TokenizeRequest.text, which no protobuf
    library lets a caller build, so they are sent raw) are the caller's error, on every RPC."""
    svc = start_service("verifier", "verifier_service",
                        ["--model", str(tiny_pair[0]), "--ctx-len", "96", "--max-k", "4"])

    async def go():
        async with grpc.aio.insecure_channel(svc.address) as ch:
            raw = {"request_serializer": bytes, "response_deserializer": bytes}
            out = []
            try:  # field 1 (text), length 2, bytes that are not UTF-8
                await ch.unary_unary("/specdec.v1.Verifier/Tokenize", **raw)(b"\x0a\x02\xff\xfe")
            except grpc.aio.AioRpcError as exc:
                out.append(exc)
            call = ch.stream_stream("/specdec.v1.Verifier/Session", **raw)()
            await call.write(b"\x0a\x05\x12\x01")  # a Prefill whose length runs past the bytes
            out.append(await call.code())
            ok = await pb_grpc.VerifierStub(ch).Tokenize(pb.TokenizeRequest(text="t5 t6"))
            return out, list(ok.ids)

    try:
        (tokenize_err, session_code), ids = asyncio.run(go())
        assert tokenize_err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid protobuf message" in tokenize_err.details()
        assert session_code == grpc.StatusCode.INVALID_ARGUMENT
        assert ids == [5, 6]  # and the service goes on serving
    finally:
        assert svc.stop() == 0
