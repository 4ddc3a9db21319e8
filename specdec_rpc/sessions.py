"""The life of one session stream, shared by both servicers.

A session lives exactly as long as its stream: the slot is taken when the stream opens (waiting
in the bounded admission queue if all are taken) and freed when it ends, whether it completes,
errs, is cancelled, breaks, or goes idle past the timeout. A slot whose step is still running
on the engine is freed when that step finishes, never before, so a new session can't share a
batch row with the old one's last step.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

import grpc

from specdec.errors import SessionIdle
from specdec_rpc.status import abort_with


@dataclass(frozen=True)
class SessionPolicy:
    idle_timeout_s: float = 60.0   # a stream silent this long is closed and its slot freed


def _close_when_done(future: asyncio.Future, close: Callable[[Any], None]) -> None:
    def done(f: asyncio.Future) -> None:
        if not f.cancelled() and f.exception() is None:
            close(f.result())
    future.add_done_callback(done)


class SessionRunner:
    def __init__(self, executor: ThreadPoolExecutor, policy: SessionPolicy) -> None:
        self.executor = executor  # domain calls block (admission wait, engine rows): run them here
        self.policy = policy

    async def run(self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext,
                  open_session: Callable[[], Any],
                  close_session: Callable[[Any], None],
                  step: Callable[[Any, Any], Any]) -> AsyncIterator[Any]:
        loop = asyncio.get_running_loop()
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
            while True:
                try:
                    request = await asyncio.wait_for(anext(requests, None), self.policy.idle_timeout_s)
                except asyncio.TimeoutError:
                    raise SessionIdle(
                        f"session idle for more than {self.policy.idle_timeout_s:g}s: closed and "
                        "its slot freed; open a new session and resend the sequence (start = 0)"
                    ) from None
                if request is None:  # the client half-closed: the session ends normally
                    return
                running = loop.run_in_executor(self.executor, step, session, request)
                reply = await asyncio.shield(running)
                running = None
                yield reply
        except Exception as exc:
            await abort_with(context, exc)
        finally:
            if running is not None and not running.done():
                running.add_done_callback(lambda _: close_session(session))
            else:
                close_session(session)
