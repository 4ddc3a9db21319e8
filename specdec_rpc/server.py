"""Server scaffolding shared by both services: a grpc.aio server with finite message limits
and keepalive, a readiness line on stdout, and a graceful stop on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from dataclasses import dataclass
from typing import Callable

import grpc

log = logging.getLogger(__name__)

READY_PREFIX = "specdec-ready"  # the line a launcher waits for: "specdec-ready <host:port>"


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"         # loopback by default: nothing is exposed unless asked
    port: int = 0                   # 0 = any free port (reported on the ready line)
    grace_s: float = 5.0            # in-flight steps may finish within this on shutdown
    max_message_mb: int = 16        # a window of k tokens is bytes; 16 MiB bounds abuse


def server_options(cfg: ServerConfig) -> list[tuple[str, int]]:
    limit = cfg.max_message_mb * 1024 * 1024
    return [
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
        # Generation streams can idle between rounds; keepalive finds dead peers so their slots free.
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.so_reuseport", 0),
    ]


async def serve(cfg: ServerConfig, register: Callable[[grpc.aio.Server], None],
                name: str) -> None:
    server = grpc.aio.server(options=server_options(cfg))
    register(server)
    port = server.add_insecure_port(f"{cfg.host}:{cfg.port}")
    if port == 0:
        raise RuntimeError(f"could not bind {cfg.host}:{cfg.port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    address = f"{cfg.host}:{port}"
    log.info("%s listening on %s", name, address)
    print(f"{READY_PREFIX} {address}", flush=True)
    await stop.wait()
    log.info("%s shutting down (grace %.1fs)", name, cfg.grace_s)
    await server.stop(cfg.grace_s)
    log.info("%s stopped", name)


def setup_logging(level: str) -> None:
    logging.basicConfig(stream=sys.stderr, level=level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
