"""The life of one session stream, shared by both servicers.

A session lives exactly as long as its stream, but holds a slot only from its first message on:
a stream that opens and sends nothing holds no slot and no place in the admission queue, and
is closed after `first_message_timeout_s`, so silent streams can't squat the slots. At the
first message the slot is taken (waiting in the bounded admission queue if all are taken) and
it is freed when the stream ends, whether it completes, errs, is cancelled, breaks, goes idle
past the timeout, or the service drains. A slot whose step is still running on the engine is
freed when that step finishes, never before, so a new session can't share a batch row with the
old one's last step.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc

from specdec.backend import Backend
from specdec.errors import NotReady, SessionIdle
from specdec.flags import flag
from specdec_rpc.server import Lifecycle
from specdec_rpc.status import abort_with
from specdec_rpc.v1 import specdec_pb2 as pb

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SessionPolicy:
    idle_timeout_s: float = flag(120.0, name="--idle-timeout",
                                 help="seconds a session may send nothing before it is closed "
                                      "(DEADLINE_EXCEEDED) and its slot freed")
    first_message_timeout_s: float = flag(
        5.0, name="--first-message-timeout",
        help="seconds a new stream may take to send its first message, else it is closed "
             "(DEADLINE_EXCEEDED); the slot is taken at that first message, so a stream that "
             "sends nothing holds no slot and no queue place")


class SessionRunner:
    """Runs every session stream as coroutines on the server's event loop: the admission wait,
    each step and the pre-draft after it are awaited there, and only the engine calls inside
    them run on the engine's own thread (specdec.batching). No thread per session."""

    def __init__(self, policy: SessionPolicy, lifecycle: Lifecycle,
                 on_step: Callable[[Any, Any], None] | None = None) -> None:
        self.policy = policy
        self.lifecycle = lifecycle
        self.on_step = on_step    # (request, reply) -> None, e.g. metrics
        self._background: set[asyncio.Task] = set()  # pre-drafts and closes: kept referenced
        self._reading: set[asyncio.Timeout] = set()   # deadlines of the reads now waiting
        lifecycle.on_drain(self._end_reads)

    def check_ready(self) -> None:
        if self.lifecycle.draining.is_set():
            raise NotReady("service is draining (shutting down): open the session elsewhere or "
                           "retry when it is back")
        if not self.lifecycle.ready:
            raise NotReady("service is loading its model; retry shortly (health: NOT_SERVING)")

    async def _next(self, requests: AsyncIterator[Any], first: bool = False) -> Any:
        """The next request, None at half-close; raises when idle too long or draining.

        Read in the stream's own task under a deadline (asyncio.timeout): no task or wait per
        message. A drain moves the deadline of every read in progress to now (_end_reads)."""
        timeout = self.policy.first_message_timeout_s if first else self.policy.idle_timeout_s
        if not self.lifecycle.draining.is_set():
            try:
                async with asyncio.timeout(timeout) as deadline:
                    self._reading.add(deadline)
                    try:
                        return await anext(requests, None)
                    finally:
                        self._reading.discard(deadline)
            except TimeoutError:
                pass
        if self.lifecycle.draining.is_set():
            raise NotReady("service is draining: the session ended after its last step; "
                           "reconnect and resend the sequence (start = 0)")
        if first:
            raise SessionIdle(f"no first message within {timeout:g}s of opening the stream: "
                              "closed; send the Prefill as soon as the stream is open")
        raise SessionIdle(f"session idle for more than {timeout:g}s: closed and "
                          "its slot freed; open a new session and resend the sequence (start = 0)")

    def _end_reads(self) -> None:
        """At the drain: every session waiting for its next message stops waiting now."""
        for deadline in self._reading:
            if not deadline.expired():  # one already expiring ends its read anyway
                deadline.reschedule(0)  # a deadline in the past expires at the loop's next turn

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._settled)
        return task

    def _settled(self, task: asyncio.Task) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:  # a bug: say so, serve on
            log.error("background session work failed", exc_info=task.exception())

    async def _close_after(self, session: Any, close_session: Callable[[Any], Awaitable[None]],
                           in_flight: list[asyncio.Future]) -> None:
        """Free the session once its step and pre-draft are done: a slot whose rows are still
        on the engine must not go to a new session, which could share a batch with them."""
        pending = [f for f in in_flight if not f.done()]
        if pending:
            await asyncio.wait(pending)
        for f in in_flight:  # a step left behind by a cancelled stream: its error is spent
            if not f.cancelled():
                f.exception()
        await close_session(session)

    async def run(self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext,
                  open_session: Callable[[], Awaitable[Any]],
                  close_session: Callable[[Any], Awaitable[None]],
                  step: Callable[[Any, Any], Awaitable[Any]],
                  check_first: Callable[[Any], None] = lambda request: None,
                  after_reply: Callable[[Any], Awaitable[None]] | None = None
                  ) -> AsyncIterator[Any]:
        """check_first(request) raises when the first request can't start a session, before
        a slot is taken for it. after_reply(session) starts once each reply is handed to grpc,
        not awaited: the proposer pre-drafts there while the client has the verifier check
        the draft."""
        try:
            self.check_ready()
            request = await self._next(requests, first=True)  # no slot held while waiting
            if request is None:
                return  # opened and half-closed without a message: nothing to do
            check_first(request)
            # A stream cancelled while queued cancels the wait: the pool passes on a slot it
            # was handed meanwhile (specdec.admission).
            session = await open_session()
        except Exception as exc:
            await abort_with(context, exc)
        running: asyncio.Future | None = None
        pre_draft: asyncio.Future | None = None
        try:
            while request is not None:
                # A task of its own, shielded: a cancelled stream leaves its step to finish.
                running = asyncio.ensure_future(step(session, request))
                reply = await asyncio.shield(running)
                if self.on_step:
                    self.on_step(request, reply)
                yield reply
                if after_reply is not None:
                    pre_draft = self._spawn(after_reply(session))
                request = await self._next(requests)
        except Exception as exc:
            await abort_with(context, exc)
        finally:  # not awaited here: a generator being closed may not await
            self._spawn(self._close_after(session, close_session,
                                          [f for f in (running, pre_draft) if f is not None]))


B = TypeVar("B", bound=Backend)


class AttachedBackend(Generic[B]):
    """Servicer base: registered before the model loads, handed the loaded backend (verifier or
    proposer) and its Info by `attach`; until then every call answers UNAVAILABLE (the runner's
    readiness check comes first, so nothing reads the attributes before they are set)."""

    backend: B
    info: pb.ModelInfo

    def __init__(self, runner: SessionRunner) -> None:
        self.runner = runner

    def attach(self, backend: B, info: pb.ModelInfo) -> None:
        self.backend, self.info = backend, info

    async def Info(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._unary(context, lambda: self.info)

    async def _unary(self, context: grpc.aio.ServicerContext, call: Callable[[], Any]) -> Any:
        """A unary RPC's domain call: UNAVAILABLE until loaded, run off the event loop (it may
        take a while, sessions keep stepping), its errors mapped to status codes."""
        try:
            self.runner.check_ready()
            return await asyncio.to_thread(call)
        except Exception as exc:
            await abort_with(context, exc)

    async def Session(self, requests: AsyncIterator[Any],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        # An async generator itself, so grpc.aio serves it as a streaming handler.
        async for reply in self.runner.run(requests, context, lambda: self.backend.open_session(),
                                           lambda s: self.backend.close_session(s), self._step,
                                           self._check_first, self._after_reply()):
            yield reply

    def _check_first(self, request: Any) -> None:
        """Raise when `request` can't open a session (checked before a slot is taken)."""

    def _after_reply(self) -> Callable[[Any], Awaitable[None]] | None:
        return None

    async def _step(self, session: Any, request: Any) -> Any:
        raise NotImplementedError
