"""The serving scaffolding both services share: a grpc.aio server with finite message limits
and keepalive, the standard health service, reflection, auth and metrics interceptors, TLS,
model loading behind NOT_SERVING, and a graceful drain on SIGTERM/SIGINT.

Life of a service:
  bind + start (health NOT_SERVING) -> load and warm up the model (Info and sessions answer
  UNAVAILABLE meanwhile) -> SERVING, print "specdec-ready HOST:PORT" -> ... SIGTERM ->
  NOT_SERVING, refuse new sessions, let in-flight steps finish and end every session with
  UNAVAILABLE (clients reconnect elsewhere) -> stop within the grace period -> close the engine
  -> exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from specdec.errors import START_ERRORS, exit_with
from specdec.flags import flag
from specdec_rpc.interceptors import AuthInterceptor, MetricsInterceptor, ParseInterceptor
from specdec_rpc.metrics import ServiceMetrics
from specdec_rpc.security import ServerSecurity

log = logging.getLogger(__name__)

LISTENING_PREFIX = "specdec-listening"  # "specdec-listening <host:port>": bound, model loading
READY_PREFIX = "specdec-ready"    # the line a launcher waits for: "specdec-ready <host:port>"
# "specdec-compiled <host:port>": the step graphs compiled after ready are done (or were skipped)
COMPILED_PREFIX = "specdec-compiled"
METRICS_PREFIX = "specdec-metrics"  # "specdec-metrics <host:port>" when metrics are served
MAX_MESSAGE_MB = 16  # both ends of a link: a window of k tokens is bytes; 16 MiB bounds abuse


@dataclass(frozen=True)
class ServerConfig:
    # Loopback by default: nothing is exposed unless asked.
    host: str = flag("127.0.0.1", help="bind address")
    port: int = flag(0, help="port; 0 picks a free one (reported on the ready line)")
    grace_s: float = flag(5.0, name="--grace",
                          help="on SIGTERM/SIGINT, seconds in-flight steps get before the server stops")
    max_message_mb: int = MAX_MESSAGE_MB
    parse_log_interval_s: float = 10.0  # at most one "unparseable request" log line this often
    metrics_port: int | None = flag(None, shown="off",
                                    help="serve Prometheus /metrics on this HTTP port (0 = any free)")
    security: ServerSecurity = field(default_factory=ServerSecurity)


def message_limits(mb: int = MAX_MESSAGE_MB) -> list[tuple[str, int]]:
    """The channel options that bound a message's size, for servers and clients alike."""
    limit = mb * 1024 * 1024
    return [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)]


def server_options(cfg: ServerConfig) -> list[tuple[str, int]]:
    return [
        *message_limits(cfg.max_message_mb),
        # Generation streams can idle between rounds; keepalive finds dead peers so their slots free.
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.so_reuseport", 0),
    ]


class Lifecycle:
    """Readiness and draining, shared by the server and the session runner."""

    def __init__(self, service_name: str) -> None:
        self.service_name = service_name
        self.health = health_aio.HealthServicer()
        self.ready = False
        self.draining = asyncio.Event()
        self._on_drain: list[Callable[[], None]] = []

    def on_drain(self, callback: Callable[[], None]) -> None:
        """callback() runs once, on the loop, when the drain starts."""
        self._on_drain.append(callback)

    def drain(self) -> None:
        self.draining.set()
        for callback in self._on_drain:
            callback()

    async def set_serving(self, serving: bool) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in ("", self.service_name):  # "" = the whole server
            await self.health.set(name, status)


async def serve(cfg: ServerConfig, name: str, service_full_name: str, lifecycle: Lifecycle,
                metrics: ServiceMetrics, register: Callable[[grpc.aio.Server], None],
                load: Callable[[], None], close: Callable[[], None],
                stop: asyncio.Event | None = None,
                on_ready: Callable[[str], None] | None = None) -> bool:
    """load(): blocking model load + warm-up (run in a thread); close(): free the engine.
    stop: set it to drain and stop; None = SIGTERM/SIGINT do (the service's main thread).
    on_ready(host:port) runs once the model is loaded, where the ready line is printed (a
    caller hosting the service in-process, as the tests do, learns its port there).
    Returns False when stopped before the load finished (see run_service)."""
    interceptors = [MetricsInterceptor(metrics), ParseInterceptor(cfg.parse_log_interval_s)]
    if cfg.security.auth_token:
        interceptors.insert(0, AuthInterceptor(cfg.security.auth_token))
    server = grpc.aio.server(options=server_options(cfg), interceptors=interceptors)
    register(server)
    health_pb2_grpc.add_HealthServicer_to_server(lifecycle.health, server)
    reflection.enable_server_reflection(
        (service_full_name, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME), server)
    creds = cfg.security.credentials()
    address = f"{cfg.host}:{cfg.port}"
    port = server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
    if port == 0:
        raise RuntimeError(f"could not bind {address}")
    await lifecycle.set_serving(False)
    await server.start()
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    address = f"{cfg.host}:{port}"
    log.info("%s listening on %s (%s), loading the model", name, address, "TLS" if creds else "insecure")
    print(f"{LISTENING_PREFIX} {address}", flush=True)
    if cfg.metrics_port is not None:
        mport = metrics.serve(cfg.metrics_port, cfg.host)
        log.info("%s metrics on http://%s:%d/metrics", name, cfg.host, mport)
        print(f"{METRICS_PREFIX} {cfg.host}:{mport}", flush=True)
    loading = _load_in_thread(load)
    await asyncio.wait({loading, asyncio.ensure_future(stop.wait())},
                       return_when=asyncio.FIRST_COMPLETED)
    if loading.done():
        error = loading.exception()
        if error is not None:
            # Stopped here, on its loop: a grpc.aio server left to the garbage collector schedules
            # its shutdown on the closed loop ("Event loop is closed", "coroutine
            # 'AioServer.shutdown' was never awaited") after run_service printed the error.
            await server.stop(None)
            raise error  # run_service turns it into one line and the exit code
        lifecycle.ready = True
        await lifecycle.set_serving(True)
        log.info("%s ready", name)
        print(f"{READY_PREFIX} {address}", flush=True)
        if on_ready is not None:
            on_ready(address)
        await stop.wait()
    log.info("%s draining (grace %.1fs)", name, cfg.grace_s)
    await lifecycle.set_serving(False)
    lifecycle.drain()
    await server.stop(cfg.grace_s)
    if loading.done():
        close()
        log.info("%s stopped", name)
        return True
    log.info("%s stopped while loading its model; exiting without waiting for the load", name)
    return False


def _load_in_thread(load: Callable[[], None]) -> asyncio.Future:
    """Run the blocking load on a daemon thread of its own. Not the loop's default executor:
    at exit asyncio.run waits for that executor's threads without bound, so a SIGTERM during a
    long load or QPC compile would not stop the service until the load ended."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if not future.done():
            future.set_exception(error) if error is not None else future.set_result(None)

    def run() -> None:
        error = None
        try:
            load()
        except BaseException as exc:  # handed to the loop, which re-raises it in serve()
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is closed: the service stopped loading
            loop.call_soon_threadsafe(settle, error)

    threading.Thread(target=run, name="model-load", daemon=True).start()
    return future


def run_service(main: Callable[[], Coroutine[Any, Any, bool]]) -> None:
    """main() -> False when the service stopped before its model loaded: the load thread may
    still be running (reading weights, compiling), and the process exits now without it."""
    try:
        loaded = asyncio.run(main())
    except START_ERRORS as exc:   # a model that is not there or not supported, a bad setting
        exit_with(exc)
    if loaded is False:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # a graceful stop: the interpreter's shutdown would wait on the load


def setup_logging(level: str) -> None:
    logging.basicConfig(stream=sys.stderr, level=level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
