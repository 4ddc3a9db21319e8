"""The OpenAI API's JSON <-> the one-call generation's domain objects (specdec.serving_generate),
as servicer.py translates protobuf: pure functions, no HTTP here (that is openai_http.py).

Supported: /v1/completions and /v1/chat/completions with model, prompt / messages, max_tokens
(chat: also max_completion_tokens), temperature (OpenAI's default 1: sampling), top_p, seed,
stop, stream (+ stream_options.include_usage), n = 1. Extensions: `speculation` =
{"method": "draft" | "ngram" | "turbo" | "none" (or QEfficient's names, specdec.method),
"k": int | "auto"} (default: the service's best method, every k it accepts) and `ignore_eos`
(as vLLM's). Fields that would change the output in ways not served (logprobs, echo,
penalties, logit_bias, best_of > 1, suffix) are refused, not ignored.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

from specdec.errors import InvalidRequest
from specdec.method import GENERATE_METHODS, Method
from specdec.metrics import generation_metrics
from specdec.sampling import SamplingParams
from specdec.serving_generate import Finished, GenerateRequest
from specdec.stopping import FinishReason

FINISH = {FinishReason.EOS: "stop", FinishReason.STOP: "stop", FinishReason.LENGTH: "length",
          FinishReason.CTX_LEN: "length"}
COMPLETION_MAX_TOKENS = 16   # OpenAI's default max_tokens for /v1/completions
# Refused when set to anything but what means "off": the output would not be what was asked.
UNSERVED: dict[str, tuple[Any, ...]] = {"logprobs": (None, False), "top_logprobs": (None, 0), "echo": (None, False),
            "presence_penalty": (None, 0, 0.0), "frequency_penalty": (None, 0, 0.0),
            "logit_bias": (None, {}), "best_of": (None, 1), "suffix": (None, ""), "tools": (None, []),
            "response_format": (None, {"type": "text"})}


@dataclass(frozen=True)
class ApiRequest:
    """One OpenAI request: what to generate and how to answer."""

    generate: GenerateRequest
    stream: bool
    include_usage: bool   # stream: a last chunk with the usage counts
    model: str


def _typed(body: dict, key: str, kinds: tuple[type, ...], default: Any) -> Any:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise InvalidRequest(f"'{key}' must be {names}")
    return value


def _ranged(body: dict, key: str, default: float, low: float, high: float,
            low_open: bool = False) -> float:
    value = float(_typed(body, key, (int, float), default))
    if not math.isfinite(value) or value > high or value < low or (low_open and value == low):
        raise InvalidRequest(f"'{key}' must be in {'(' if low_open else '['}{low:g}, {high:g}]")
    return value


def _speculation(body: dict, default_method: str) -> tuple[Method, int, bool]:
    spec = _typed(body, "speculation", (dict,), {})
    try:
        method = Method.parse(_typed(spec, "method", (str,), default_method), GENERATE_METHODS)
    except InvalidRequest as exc:
        raise InvalidRequest(f"'speculation.method': {exc}") from None
    k = spec.get("k", 0)
    if k == "auto":
        return method, 0, True
    if not isinstance(k, int) or isinstance(k, bool) or k < 0:
        raise InvalidRequest("'speculation.k' must be an integer >= 0 (0 = the largest) or \"auto\"")
    return method, k, False


def _stop(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        return (stop,)
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return tuple(stop)
    raise InvalidRequest("'stop' must be a string or a list of strings")


def _max_tokens(body: dict, key: str, default: int) -> int:
    value = _typed(body, key, (int,), default)
    if body.get(key) is not None and value < 1:
        raise InvalidRequest(f"'{key}' must be at least 1")
    return value


def _common(body: dict, prompt: str | tuple[int, ...], max_tokens: int, default_method: str
            ) -> ApiRequest:
    """max_tokens: 0 = no limit but ctx_len."""
    if not isinstance(body.get("model"), str):
        raise InvalidRequest("'model' is required (see /v1/models)")
    if _typed(body, "n", (int,), 1) != 1:
        raise InvalidRequest("'n' must be 1: one completion per request")
    for key, off in UNSERVED.items():
        if key in body and body[key] not in off:
            raise InvalidRequest(f"'{key}' is not supported by this server")
    seed = _typed(body, "seed", (int,), None)
    if seed is not None and seed < 0:
        raise InvalidRequest("'seed' must be >= 0")
    sampling = SamplingParams(_ranged(body, "temperature", 1.0, 0.0, 2.0), 0,
                              _ranged(body, "top_p", 1.0, 0.0, 1.0, low_open=True), seed)
    method, k, auto = _speculation(body, default_method)
    options = _typed(body, "stream_options", (dict,), {})
    return ApiRequest(
        GenerateRequest(prompt, method, k, auto, sampling, max_tokens, _stop(body),
                        bool(_typed(body, "ignore_eos", (bool,), False))),
        bool(_typed(body, "stream", (bool,), False)),
        bool(_typed(options, "include_usage", (bool,), False)), body["model"])


def completion_request(body: Any, default_method: str) -> ApiRequest:
    """/v1/completions: prompt is a string, a list of token ids, or a list of one of those."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]   # a batch of one
    if isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0
                                        for t in prompt):
        prompt = tuple(prompt)
    if not isinstance(prompt, (str, tuple)):
        raise InvalidRequest("'prompt' must be a string or a list of token ids (one prompt: n = 1)")
    return _common(body, prompt, _max_tokens(body, "max_tokens", COMPLETION_MAX_TOKENS),
                   default_method)


def chat_request(body: Any, default_method: str) -> tuple[ApiRequest, list]:
    """/v1/chat/completions -> (the request with an empty prompt, the messages): the prompt
    comes from the model's chat template (specdec.chat_template), applied by the caller."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise InvalidRequest("'messages' must be a list of {role, content} objects")
    # No limit but ctx_len by default, as OpenAI's chat; max_completion_tokens is its new name.
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    return _common(body, (), _max_tokens(body, key, 0), default_method), messages


def with_prompt(request: ApiRequest, prompt: tuple[int, ...]) -> ApiRequest:
    return replace(request, generate=replace(request.generate, prompt=prompt))


@dataclass(frozen=True)
class Reply:
    """The fields every response and chunk of one request share."""

    id: str
    created: int
    model: str
    chat: bool

    @classmethod
    def new(cls, model: str, chat: bool) -> Reply:
        prefix = "chatcmpl-" if chat else "cmpl-"
        return cls(prefix + uuid.uuid4().hex, int(time.time()), model, chat)

    def _head(self, chunk: bool) -> dict:
        kind = ("chat.completion.chunk" if chunk else "chat.completion") if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def _choice(self, text: str | None, finish: str | None, chunk: bool) -> dict:
        if not self.chat:
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        if chunk:
            delta = {} if text is None else {"role": "assistant", "content": text}
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"index": 0, "message": {"role": "assistant", "content": text},
                "logprobs": None, "finish_reason": finish}

    def whole(self, text: str, done: Finished) -> dict:
        """The response of a request that did not stream."""
        return {**self._head(False), "choices": [self._choice(text, FINISH[done.finish], False)],
                "usage": usage(done), "specdec_metrics": metrics(done)}

    def chunk(self, text: str) -> dict:
        return {**self._head(True), "choices": [self._choice(text, None, True)]}

    def last_chunk(self, done: Finished) -> dict:
        return {**self._head(True), "choices": [self._choice(None, FINISH[done.finish], True)],
                "specdec_metrics": metrics(done)}

    def usage_chunk(self, done: Finished) -> dict:
        return {**self._head(True), "choices": [], "usage": usage(done)}


def usage(done: Finished) -> dict:
    n = len(done.record.tokens)
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": n,
            "total_tokens": done.prompt_tokens + n}


def metrics(done: Finished) -> dict:
    """The extension every final answer carries: the speculation's own metrics."""
    m = generation_metrics(done.record)
    return {"ttft_s": m.ttft_s, "e2e_time_s": m.e2e_time_s, "e2e_throughput": m.e2e_throughput,
            "decode_throughput": m.decode_throughput,
            "mean_accepted_tokens": m.mean_accepted_tokens, "drafted": m.drafted,
            "accepted": m.accepted, "acceptance_rate": m.acceptance_rate}


def error_body(kind: str, message: str, code: str | None = None) -> dict:
    """OpenAI's error shape."""
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}
