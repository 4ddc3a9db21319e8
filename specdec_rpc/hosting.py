"""The whole life of a service that hosts one backend (a verifier or a proposer): metrics,
session runner and servicer wired together, the backend built (and warmed up) behind
NOT_SERVING, freed after the drain. Each service's __main__ only says what to build."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc

from specdec.backend import Backend
from specdec.engine.contract import CompilesInBackground
from specdec.proposers.suffix import SuffixProposer
from specdec_rpc.metrics import ServiceMetrics
from specdec_rpc.server import COMPILED_PREFIX, Lifecycle, ServerConfig, serve
from specdec_rpc.sessions import AttachedBackend, SessionPolicy, SessionRunner
from specdec_rpc.v1 import specdec_pb2 as pb


async def host_backend(server: ServerConfig, name: str, service_name: str,
                       servicer_cls: Callable[[SessionRunner], AttachedBackend],
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
        if isinstance(backend, SuffixProposer):
            metrics.track_suffix(backend.stats)

    def close() -> None:
        servicer.backend.close()

    def ready(address: str) -> None:
        # A torch engine compiles its steps after it is ready (compiled.py): the line says
        # when they are all built, for a launcher that times steady state. Others: at once.
        engine = getattr(servicer.backend, "engine", None)
        announce = lambda: print(f"{COMPILED_PREFIX} {address}", flush=True)
        if isinstance(engine, CompilesInBackground):
            engine.when_compiled(announce)
        else:
            announce()
        if on_ready is not None:
            on_ready(address)

    return await serve(server, name, service_name, lifecycle, metrics,
                       lambda s: add_servicer(servicer, s), load, close, stop, ready)
