"""Many replicas of one service behind one client: which replica a new session goes to
(docs/operations.md, "Scaling out"). A target is a comma list of `host:port` or
`dns:///name:port` (resolved to one replica per address, again every `refresh_s` and after a
loss). A new session goes to the least-loaded replica, round robin among equals; one that lost
or refused a session is skipped for `skip_s`, unless all are. A refusal for being full while
another replica is usable is raised as ServiceLost, so recovery reopens it on another replica.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from client.links import ServiceError, ServiceLost, service_error
from specdec.links import Reply, Wrapper

DNS_SCHEME = "dns:"


@dataclass(frozen=True)
class Endpoint:
    """One item of a target: a fixed address, or a dns name resolved to many."""

    host: str
    port: int | None   # None: a fixed address gRPC resolves itself (host holds host:port)
    dns: bool = False


def parse_target(target: str) -> list[Endpoint]:
    """"a:1, b:2" -> two fixed endpoints; "dns:///name:port" (or "dns:name:port") -> one name."""
    out = []
    for item in (s.strip() for s in target.split(",")):
        if not item:
            continue
        if not item.startswith(DNS_SCHEME):
            out.append(Endpoint(item, None))
            continue
        rest = item[len(DNS_SCHEME):]
        if rest.startswith("//"):   # dns://[authority]/host:port; the authority (a DNS server) is not supported
            authority, _, rest = rest[2:].partition("/")
            if authority:
                raise ValueError(f"{item}: a DNS server authority is not supported; use dns:///name:port")
        host, _, port = rest.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{item}: expected dns:///name:port")
        out.append(Endpoint(host.strip("[]"), int(port), dns=True))
    if not out:
        raise ValueError(f"no address in target {target!r}")
    return out


def format_address(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


async def resolve(endpoint: Endpoint) -> list[str]:
    """host:port of every address the endpoint's name has now (sorted, no duplicates)."""
    infos = await asyncio.get_running_loop().getaddrinfo(endpoint.host, endpoint.port,
                                                         type=socket.SOCK_STREAM)
    assert endpoint.port is not None, "only a dns endpoint is resolved here"
    return sorted({format_address(str(info[4][0]), endpoint.port) for info in infos})


@dataclass
class Replica:
    address: str
    channel: grpc.aio.Channel
    stub: Any                       # the service's stub on this channel
    open: int = 0                   # sessions this client has open on it
    served: int = 0                 # sessions opened on it, in total
    skip_until: float = 0.0         # time.monotonic() until which new sessions avoid it
    resolved: bool = True           # still among the target's addresses


def choose(replicas: Sequence[Replica], now: float, turn: int) -> int:
    """Index of the replica for a new session: among the usable ones (not skipped) the fewest
    open, ties taken round robin from index `turn`; when none is usable, the earliest skip end."""
    usable = [i for i, r in enumerate(replicas) if r.skip_until <= now]
    if not usable:
        return min(range(len(replicas)), key=lambda i: replicas[i].skip_until)
    least = min(replicas[i].open for i in usable)
    n = len(replicas)
    return min((i for i in usable if replicas[i].open == least), key=lambda i: (i - turn) % n)


class Lease:
    """One session's hold on one replica, from opening to the session's end."""

    def __init__(self, replicas: ReplicaSet, replica: Replica) -> None:
        self.replicas, self.replica = replicas, replica
        self.released = False
        replica.open += 1
        replica.served += 1

    @property
    def stub(self):
        return self.replica.stub

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.replica.open -= 1

    def failed(self, exc: ServiceError) -> ServiceError:
        """The error the generation should see for this session's failure (see module doc)."""
        if isinstance(exc, ServiceLost) or exc.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            self.replicas.skip(self.replica)
            self.release()
            if not isinstance(exc, ServiceLost) and self.replicas.has_usable():
                return ServiceLost(exc.service, exc.code,
                                   f"{exc.details} (replica {self.replica.address}; trying another)")
        return exc


class ReplicaSet:
    def __init__(self, target: str, stub_cls: type, channel: Callable[[str, list], grpc.aio.Channel],
                 options: list[tuple[str, Any]], service: str, skip_s: float = 5.0,
                 refresh_s: float = 5.0) -> None:
        """channel(address, options): a new channel (ClientSecurity.channel); service names the
        service in errors."""
        self.target, self.endpoints = target, parse_target(target)
        self.stub_cls, self._channel, self.options, self.service = stub_cls, channel, options, service
        self.skip_s, self.refresh_s = skip_s, refresh_s
        self.replicas: dict[str, Replica] = {}
        self._turn = 0
        self._resolved_at: float | None = None
        self._error = ""               # why the last resolution failed, for the error message
        self._lock = asyncio.Lock()
        for e in self.endpoints:
            if not e.dns:
                self._add(e.host, e)

    def _add(self, address: str, endpoint: Endpoint) -> None:
        # TLS to a pod address still checks the certificate against the name that was asked for.
        options = self.options + ([("grpc.ssl_target_name_override", endpoint.host)] if endpoint.dns else [])
        channel = self._channel(address, options)
        self.replicas[address] = Replica(address, channel, self.stub_cls(channel))

    async def refresh(self) -> None:
        """Resolve the dns names again: new addresses join, vanished ones stop getting sessions
        (and their channels close once no session of ours is left on them)."""
        async with self._lock:
            if not self._stale():
                return
            seen: set[str] = set()
            for e in (e for e in self.endpoints if e.dns):
                try:
                    addresses, self._error = await resolve(e), ""
                except OSError as exc:   # unresolvable for now: keep what we had
                    self._error = f"{e.host}: {exc}"
                    addresses = [a for a, r in self.replicas.items() if r.resolved]
                for address in addresses:
                    seen.add(address)
                    if address not in self.replicas:
                        self._add(address, e)
            fixed = {e.host for e in self.endpoints if not e.dns}
            for address, r in list(self.replicas.items()):
                r.resolved = address in seen or address in fixed
                if not r.resolved and r.open == 0:
                    del self.replicas[address]
                    await r.channel.close()
            self._resolved_at = time.monotonic()

    def _stale(self) -> bool:
        return any(e.dns for e in self.endpoints) and (
            self._resolved_at is None or time.monotonic() - self._resolved_at >= self.refresh_s)

    def _live(self) -> list[Replica]:
        return [r for r in self.replicas.values() if r.resolved]

    async def _live_now(self) -> list[Replica]:
        if self._stale():
            await self.refresh()
        live = self._live()
        if not live:
            raise ServiceLost(self.service, grpc.StatusCode.UNAVAILABLE,
                              f"no replica found for {self.target}"
                              + (f" ({self._error})" if self._error else ""))
        return live

    async def lease(self) -> Lease:
        """Pick the replica for a new session and hold it until the lease is released."""
        live = await self._live_now()
        i = choose(live, time.monotonic(), self._turn % len(live))
        self._turn = i + 1
        return Lease(self, live[i])

    def skip(self, replica: Replica) -> None:
        replica.skip_until = time.monotonic() + self.skip_s
        self._resolved_at = None   # a lost pod may have been replaced: resolve again

    def has_usable(self) -> bool:
        now = time.monotonic()
        return any(r.skip_until <= now for r in self._live())

    async def first_answer(self, call: Callable[[Any], Awaitable]):
        """call(stub) on every replica at once; the first success wins, the rest are cancelled.
        When all fail, the first replica's error is raised, as this service's ServiceError."""
        live = await self._live_now()
        tasks = [asyncio.ensure_future(call(r.stub)) for r in live]
        try:
            for done in asyncio.as_completed(tasks):
                try:
                    return await done
                except grpc.aio.AioRpcError:
                    continue
            try:
                return tasks[0].result()   # every one failed: the first replica's error
            except grpc.aio.AioRpcError as exc:
                raise service_error(self.service, exc.code(), exc.details() or "") from exc
        finally:
            for t in tasks:
                t.cancel()

    async def close(self) -> None:
        for r in self.replicas.values():
            await r.channel.close()


class LeasedLink(Wrapper):
    """A link whose session holds a lease: its failures and its end go back to the replica set."""

    def __init__(self, link, lease: Lease) -> None:
        super().__init__(link)
        self.lease = lease

    async def _step(self, call: Awaitable[Reply]) -> Reply:
        try:
            return await call
        except ServiceError as exc:
            moved = self.lease.failed(exc)
            if moved is exc:
                raise
            raise moved from exc

    async def close(self) -> None:
        try:
            await self.link.close()
        finally:
            self.lease.release()
