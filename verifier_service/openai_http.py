"""The OpenAI API over HTTP on the verifier (--http-port): aiohttp on the service's own event loop
(grpc.aio's), calling the same domain function as the Generate RPC
(specdec.serving_generate.OneCallGenerator.run). Thin, as the servicer: JSON in
(openai_api.py), delegate, JSON or server-sent events out; errors in OpenAI's shape, with the
statuses of specdec_rpc.status; the service's bearer token and TLS certificate apply here too.

    GET  /v1/models             the one model served
    POST /v1/completions        prompt -> text (stream: SSE chunks, then `data: [DONE]`)
    POST /v1/chat/completions   messages -> the model's chat template -> text
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import Any

from aiohttp import web

from specdec.chat_template import chat_prompt_ids
from specdec.errors import InvalidRequest, NotReady
from specdec.serving_generate import Finished, OneCallGenerator, TextDelta
from specdec_rpc.security import AUTH_HEADER, ServerSecurity, token_matches
from specdec_rpc.status import http_status_for
from verifier_service.openai_api import (
    ApiRequest,
    Reply,
    chat_request,
    completion_request,
    error_body,
    with_prompt,
)
from verifier_service.servicer import VerifierServicer

log = logging.getLogger(__name__)
HTTP_PREFIX = "specdec-openai"   # "specdec-openai http://HOST:PORT/v1" once it listens
MAX_BODY_BYTES = 4 * 1024 * 1024


def _error(status: int, kind: str, message: str, code: str | None = None) -> web.Response:
    return web.json_response(error_body(kind, message, code), status=status)


def _sse(payload: dict) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()


class OpenAIServer:
    def __init__(self, host: str, port: int, security: ServerSecurity, grace_s: float) -> None:
        self.host, self.port, self.security, self.grace_s = host, port, security, grace_s
        self.servicer: VerifierServicer | None = None   # set when the service builds it
        self.runner: web.AppRunner | None = None
        self.stopping: asyncio.Future | None = None
        app = web.Application(middlewares=[self._guard], client_max_size=MAX_BODY_BYTES)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat)
        self.app = app

    def _ssl(self) -> ssl.SSLContext | None:
        s = self.security
        if s.tls_cert is None or s.tls_key is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(s.tls_cert, s.tls_key)
        if s.tls_client_ca is not None:
            context.load_verify_locations(s.tls_client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    async def start(self) -> str:
        """Listen (before the model is loaded: requests get 503 until it is); -> the base URL."""
        self.runner = web.AppRunner(self.app, handle_signals=False, access_log=None,
                                    shutdown_timeout=self.grace_s)
        await self.runner.setup()
        context = self._ssl()
        site = web.TCPSite(self.runner, self.host, self.port, ssl_context=context)
        await site.start()
        url = f"{'https' if context else 'http'}://{self.host}:{self.port}/v1"
        log.info("OpenAI API on %s", url)
        print(f"{HTTP_PREFIX} {url}", flush=True)
        return url

    async def stop(self) -> None:
        """Stop listening and give the requests in progress the grace period (as the drain gives
        sessions); called at the drain and again at the end, which waits for the first."""
        self.drain_started()
        if self.stopping is not None:
            await asyncio.shield(self.stopping)

    def drain_started(self) -> None:
        """The service drains: stop listening now, not after the gRPC server stopped."""
        if self.runner is not None and self.stopping is None:
            self.stopping = asyncio.ensure_future(self.runner.cleanup())

    def _generator(self) -> tuple[VerifierServicer, OneCallGenerator]:
        if self.servicer is None:
            raise NotReady("service is starting")
        self.servicer.runner.check_ready()   # loading or draining: 503
        assert self.servicer.generator is not None, "ready before the model was attached"
        return self.servicer, self.servicer.generator

    @web.middleware
    async def _guard(self, request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        """The token check, and every error as OpenAI's JSON."""
        token = self.security.auth_token
        if token and not token_matches([(AUTH_HEADER, request.headers.get("Authorization", ""))], token):
            return _error(401, "invalid_request_error", "missing or wrong token: send "
                          "'Authorization: Bearer <token>'", "invalid_api_key")
        try:
            return await handler(request)
        except web.HTTPException as exc:   # no such route, method not allowed
            return _error(exc.status, "invalid_request_error", exc.reason)
        except Exception as exc:
            status, kind, message = http_status_for(exc)
            return _error(status, kind, message)

    async def _models(self, request: web.Request) -> web.Response:
        servicer, _ = self._generator()
        return web.json_response({"object": "list", "data": [
            {"id": servicer.info.model_id, "object": "model", "created": 0, "owned_by": "specdec"}]})

    async def _body(self, request: web.Request) -> Any:
        try:
            return await request.json()
        except ValueError:
            raise InvalidRequest("the request body is not JSON") from None

    def _check_model(self, servicer: VerifierServicer, api: ApiRequest) -> web.Response | None:
        if api.model != servicer.info.model_id:
            return _error(404, "invalid_request_error", f"model {api.model[:64]!r} is not served "
                          f"here (see /v1/models)", "model_not_found")
        return None

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        servicer, generator = self._generator()
        api = completion_request(await self._body(request), generator.default_method())
        return self._check_model(servicer, api) or await self._answer(request, generator, api, chat=False)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        servicer, generator = self._generator()
        api, messages = chat_request(await self._body(request), generator.default_method())
        refused = self._check_model(servicer, api)
        if refused is not None:
            return refused
        codec = servicer.text
        assert codec is not None  # attached with the backend
        prompt = await asyncio.to_thread(chat_prompt_ids, codec, messages)
        return await self._answer(request, generator, with_prompt(api, prompt), chat=True)

    async def _answer(self, request: web.Request, generator: OneCallGenerator, api: ApiRequest,
                      chat: bool) -> web.StreamResponse:
        reply = Reply.new(api.model, chat)
        # aclosing: a client that goes away mid-stream ends the generation after its step
        async with aclosing(generator.run(api.generate)) as events:
            # The request's faults come before its first event: answered as JSON errors, not SSE
            event = await anext(events)
            if not api.stream:
                text = []
                while isinstance(event, TextDelta):
                    text.append(event.text)
                    event = await anext(events)
                return web.json_response(reply.whole("".join(text), event))
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                                   "Cache-Control": "no-cache"})
            await response.prepare(request)
            try:
                while isinstance(event, TextDelta):
                    if event.text:
                        await response.write(_sse(reply.chunk(event.text)))
                    event = await anext(events)
                assert isinstance(event, Finished)
                await response.write(_sse(reply.last_chunk(event)))
                if api.include_usage:
                    await response.write(_sse(reply.usage_chunk(event)))
            except (ConnectionError, asyncio.CancelledError):
                raise   # the client is gone: aclosing ends the generation
            except Exception as exc:   # the headers are sent: the error goes as an event
                status, kind, message = http_status_for(exc)
                await response.write(_sse(error_body(kind, message)))
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return response
