"""The floor of a round's protocol cost: bare grpc.aio bidirectional streams on loopback.

    python -m bench.echo --host 127.0.0.1 --port 0     # an echo server (prints its ready line)

A round of speculative decoding is two stream exchanges in sequence (propose, then verify),
each with a service process of its own. `floor_ms` does the same against two echo servers,
with raw bytes (no protobuf, no servicer, no engine): what grpc.aio in Python costs on this
machine before any of our code runs. bench.overhead reports it beside the measured overhead.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import AsyncIterator

import grpc

from specdec_rpc.server import READY_PREFIX

METHOD = "/bench.Echo/Session"
PAYLOAD = bytes(32)  # about a Verify of k = 4 drafts on the wire


async def _echo(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
                ) -> AsyncIterator[bytes]:
    async for request in requests:
        yield request


async def serve(host: str, port: int) -> None:
    server = grpc.aio.server()
    handler = grpc.stream_stream_rpc_method_handler(_echo)  # no (de)serializers: bytes
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("bench.Echo", {"Session": handler}),))
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    print(f"{READY_PREFIX} {host}:{bound}", flush=True)
    await server.wait_for_termination()   # until SIGTERM ends the process


async def floor_ms(addresses: tuple[str, str], rounds: int, warm_up: int = 100,
                   idle_s: tuple[float, float] = (0.0, 0.0)) -> float:
    """Median ms of one exchange on each of two streams in sequence, as a round does.
    idle_s: seconds every process sleeps before each exchange, untimed (in a real round each
    service idles while the other's engine runs, and waking from idle costs time)."""
    async with grpc.aio.insecure_channel(addresses[0]) as a, \
            grpc.aio.insecure_channel(addresses[1]) as b:
        calls = [a.stream_stream(METHOD)(), b.stream_stream(METHOD)()]
        times = []
        for i in range(warm_up + rounds):
            elapsed = 0
            for call, idle in zip(calls, idle_s):
                if idle:
                    await asyncio.sleep(idle)
                t0 = time.perf_counter_ns()
                await call.write(PAYLOAD)
                await call.read()
                elapsed += time.perf_counter_ns() - t0
            if i >= warm_up:
                times.append(elapsed)
        for call in calls:
            await call.done_writing()
        return statistics.median(times) / 1e6


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="bench.echo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args()
    asyncio.run(serve(args.host, args.port))
