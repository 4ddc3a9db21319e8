"""The whole life of a service that hosts one backend (a verifier or a proposer): metrics,
session runner and servicer wired together, the backend built (and warmed up) behind
NOT_SERVING, freed after the drain. Each service's __main__ only says what to build."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

import grpc

from specdec.backend import Backend
from specdec_rpc.metrics import ServiceMetrics
from specdec_rpc.server import Lifecycle, ServerConfig, serve
from specdec_rpc.sessions import AttachedBackend, SessionPolicy, SessionRunner
from specdec_rpc.v1 import specdec_pb2 as pb


async def host_backend(server: ServerConfig, name: str, service_name: str,
                       servicer_cls: type[AttachedBackend],
                       add_servicer: Callable[[AttachedBackend, grpc.aio.Server], None],
                       observe: Callable[[ServiceMetrics], Callable[[Any, Any], None]],
                       build: Callable[[], tuple[Backend, pb.ModelInfo]],
                       sessions: SessionPolicy, stop: asyncio.Event | None = None,
                       on_ready: Callable[[str], None] | None = None,
                       metrics: ServiceMetrics | None = None) -> bool:
    """build() -> (backend, ModelInfo), blocking; observe picks the metrics' per-step hook.
    stop, on_ready: see serve() (a service leaves them None: signals stop it); metrics: a
    caller that reads them in-process passes its own. Returns serve()'s answer: False when
    stopped before the model loaded."""
    lifecycle = Lifecycle(service_name)
    metrics = metrics or ServiceMetrics()
    servicer = servicer_cls(SessionRunner(sessions, lifecycle, observe(metrics)))

    def load() -> None:
        backend, info = build()
        servicer.attach(backend, info)
        metrics.track_pool(lambda: backend.pool.in_use, lambda: backend.pool.waiting)

    def close() -> None:
        servicer.backend.close()

    return await serve(server, name, service_name, lifecycle, metrics,
                       lambda s: add_servicer(servicer, s), load, close, stop, on_ready)
