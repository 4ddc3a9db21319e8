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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

import grpc

from specdec.errors import NotReady, SessionIdle
from specdec.flags import flag
from specdec.slots import Admission
from specdec_rpc.server import Lifecycle
from specdec_rpc.status import abort_with


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


def _close_when_done(future: asyncio.Future, close: Callable[[Any], None]) -> None:
    def done(f: asyncio.Future) -> None:
        if not f.cancelled() and f.exception() is None:
            close(f.result())
    future.add_done_callback(done)


class SessionRunner:
    def __init__(self, executor: ThreadPoolExecutor, policy: SessionPolicy,
                 lifecycle: Lifecycle, on_step: Callable[[Any, Any], None] | None = None) -> None:
        self.executor = executor  # domain calls block (admission wait, engine rows): run them here
        self.policy = policy
        self.lifecycle = lifecycle
        self.on_step = on_step    # (request, reply) -> None, e.g. metrics

    def check_ready(self) -> None:
        if self.lifecycle.draining.is_set():
            raise NotReady("service is draining (shutting down): open the session elsewhere or "
                           "retry when it is back")
        if not self.lifecycle.ready:
            raise NotReady("service is loading its model; retry shortly (health: NOT_SERVING)")

    async def _next(self, requests: AsyncIterator[Any], first: bool = False) -> Any:
        """The next request, None at half-close; raises when idle too long or draining."""
        timeout = self.policy.first_message_timeout_s if first else self.policy.idle_timeout_s
        read = asyncio.ensure_future(anext(requests, None))
        drain = asyncio.ensure_future(self.lifecycle.draining.wait())
        try:
            done, _ = await asyncio.wait({read, drain}, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when the stream is cancelled while waiting: leave no task behind
            drain.cancel()
            if not read.done():
                read.cancel()
        if read in done:
            return read.result()
        if drain in done:
            raise NotReady("service is draining: the session ended after its last step; "
                           "reconnect and resend the sequence (start = 0)")
        if first:
            raise SessionIdle(f"no first message within {timeout:g}s of opening the stream: "
                              "closed; send the Prefill as soon as the stream is open")
        raise SessionIdle(f"session idle for more than {timeout:g}s: closed and "
                          "its slot freed; open a new session and resend the sequence (start = 0)")

    async def run(self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext,
                  open_session: Callable[[], Any], close_session: Callable[[Any], None],
                  step: Callable[[Any, Any], Any],
                  check_first: Callable[[Any], None] = lambda request: None,
                  after_reply: Callable[[Any], None] | None = None) -> AsyncIterator[Any]:
        """check_first(request) raises when the first request can't start a session, before
        a slot is taken for it. after_reply(session) runs once each reply is handed to grpc,
        not awaited: the proposer pre-drafts there while the client has the verifier check
        the draft."""
        loop = asyncio.get_running_loop()
        try:
            self.check_ready()
            request = await self._next(requests, first=True)  # no slot held while waiting
            if request is None:
                return  # opened and half-closed without a message: nothing to do
            check_first(request)
        except Exception as exc:
            await abort_with(context, exc)
        opening = loop.run_in_executor(self.executor, open_session)
        try:
            session = await asyncio.shield(opening)
        except asyncio.CancelledError:
            _close_when_done(opening, close_session)  # the stream went away while queued
            raise
        except Exception as exc:
            await abort_with(context, exc)
        running: asyncio.Future | None = None
        try:
            while request is not None:
                running = loop.run_in_executor(self.executor, step, session, request)
                reply = await asyncio.shield(running)
                running = None
                if self.on_step:
                    self.on_step(request, reply)
                yield reply
                if after_reply is not None:
                    loop.run_in_executor(self.executor, after_reply, session)
                request = await self._next(requests)
        except Exception as exc:
            await abort_with(context, exc)
        finally:
            if running is not None and not running.done():
                running.add_done_callback(lambda _: close_session(session))
            else:
                close_session(session)


def session_runner(slots: int, admission: Admission, policy: SessionPolicy, lifecycle: Lifecycle,
                   on_step: Callable[[Any, Any], None] | None) -> SessionRunner:
    # Every open or queued session may block one thread (admission wait, engine row), and a
    # proposer session a second one while it pre-drafts (after_reply).
    workers = 2 * slots + admission.max_waiting + 4
    return SessionRunner(ThreadPoolExecutor(workers, thread_name_prefix="session"), policy,
                         lifecycle, on_step)


class AttachedBackend:
    """Servicer base: registered before the model loads, handed the loaded backend (verifier or
    proposer) and its Info by `attach`; until then every call answers UNAVAILABLE."""

    def __init__(self, runner: SessionRunner) -> None:
        self.runner = runner
        self.backend: Any = None
        self.info: Any = None

    def attach(self, backend: Any, info: Any) -> None:
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

    def _after_reply(self) -> Callable[[Any], None] | None:
        return None

    def _step(self, session: Any, request: Any) -> Any:
        raise NotImplementedError
