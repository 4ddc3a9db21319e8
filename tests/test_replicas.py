"""A client that knows many replicas (client.replicas): targets, the choice of replica, DNS
names, refusals for being full, and, with real processes, a replica killed mid-run."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from client.api import SpecDecClient
from client.launcher import start_service
from client.links import ServiceError
from client.replicas import Endpoint, Replica, ReplicaSet, choose, parse_target
from specdec.generation import GenerationConfig
from specdec.recovery import RecoveryPolicy
from specdec_rpc.v1 import specdec_pb2 as pb
from specdec_rpc.v1 import specdec_pb2_grpc as pb_grpc
from tests.conftest import start_verifier
from tests.test_operations import SMALL, scrape
from tests.tiny_models import greedy_reference

pytestmark = pytest.mark.slow  # services, compiling or a benchmark: `pytest -m "not slow"` skips it


def test_targets_are_address_lists_or_dns_names():
    assert parse_target("10.0.0.1:50051, 10.0.0.2:50051") == [
        Endpoint("10.0.0.1:50051", None), Endpoint("10.0.0.2:50051", None)]
    assert parse_target("dns:///specdec-verifier.ns.svc.cluster.local:50051") == [
        Endpoint("specdec-verifier.ns.svc.cluster.local", 50051, dns=True)]
    assert parse_target("dns:v:1,127.0.0.1:2") == [Endpoint("v", 1, dns=True),
                                                   Endpoint("127.0.0.1:2", None)]
    assert parse_target("dns:///[::1]:7") == [Endpoint("::1", 7, dns=True)]
    for bad in ("", " , ", "dns:///name", "dns:///name:http", "dns://8.8.8.8/name:1"):
        with pytest.raises(ValueError):
            parse_target(bad)


def replicas(*opens: int, skipped: dict[int, float] | None = None) -> list[Replica]:
    return [Replica(f"r{i}", None, None, open=n, skip_until=(skipped or {}).get(i, 0.0))
            for i, n in enumerate(opens)]


def test_choice_is_least_loaded_then_round_robin_and_skips_refusing_replicas():
    assert choose(replicas(2, 1, 3), now=10, turn=0) == 1             # fewest open
    assert [choose(replicas(0, 0, 0), 10, t) for t in range(4)] == [0, 1, 2, 0]
    assert choose(replicas(1, 0, 0), 10, turn=0) == 1                 # ties from turn on
    assert choose(replicas(0, 5, 0, skipped={0: 11}), 10, turn=0) == 2  # 0 skipped until 11
    assert choose(replicas(0, 5, skipped={0: 9}), 10, turn=0) == 0    # skip over: back in
    # Every replica skipped: still try one, the one whose skip ends first.
    assert choose(replicas(0, 0, skipped={0: 30, 1: 20}), 10, turn=0) == 1


def run_client(target: str, proposer: str | None, jobs, **kw):
    """Generate every (prompt, config) concurrently; also return the client's replica set."""
    async def go():
        async with SpecDecClient(target, proposer, **kw) as client:
            records = await asyncio.gather(*(client.generate(p, c) for p, c in jobs))
            return records, client.verifier
    return asyncio.run(go())


def test_a_dns_target_resolves_to_the_replicas_behind_the_name(services, target_hf):
    port = services["verifier"].rsplit(":", 1)[1]
    prompt = [5, 6, 7, 8]
    (rec,), vset = run_client(f"dns:///localhost:{port}", services["proposer"],
                              [(prompt, GenerationConfig(3, 12, True))])
    assert rec.tokens == greedy_reference(target_hf, prompt, 12)
    assert f"127.0.0.1:{port}" in vset.replicas
    assert sum(r.served for r in vset.replicas.values()) == 1


def test_a_name_that_does_not_resolve_is_unavailable_not_a_crash():
    async def go():
        s = ReplicaSet("dns:///no-such-host.invalid:1", pb_grpc.VerifierStub,
                       lambda a, o: grpc.aio.insecure_channel(a, options=o), [], "verifier")
        try:
            await s.lease()
        finally:
            await s.close()
    with pytest.raises(ServiceError) as err:
        asyncio.run(go())
    assert err.value.code == grpc.StatusCode.UNAVAILABLE and "no-such-host" in str(err.value)


def test_a_full_replica_is_skipped_for_the_next_session(tiny_pair, target_hf, services):
    """Replica A has one slot (and no queue), taken by another client: it refuses with
    RESOURCE_EXHAUSTED. The session it refused is re-prefilled on B, losslessly; the next
    session goes straight to B, though round robin alone would have sent it to A."""
    a_server, _ = start_verifier(tiny_pair[0], slots=1)
    b_server, _ = start_verifier(tiny_pair[0], slots=2)
    prompt, new = [9, 8, 7, 6, 5], 10

    async def go():
        async with grpc.aio.insecure_channel(a_server.address) as ch:
            holder = pb_grpc.VerifierStub(ch).Session()
            await holder.write(pb.VerifierRequest(prefill=pb.Prefill(tokens=[5, 6, 7])))
            await holder.read()   # A's only slot is now taken
            async with SpecDecClient(f"{a_server.address},{b_server.address}",
                                     services["proposer"]) as client:
                client.verifier.skip_s = 120   # however slow this machine, A stays skipped
                first = await client.generate(prompt, GenerationConfig(2, new, True))
                second = await client.generate(prompt, GenerationConfig(2, new, True))
                served = {a: r.served for a, r in client.verifier.replicas.items()}
            holder.cancel()
            return first, second, served

    try:
        first, second, served = asyncio.run(go())
    finally:
        a_server.stop()
        b_server.stop()
    want = greedy_reference(target_hf, prompt, new)
    assert first.tokens == want and second.tokens == want
    assert first.recoveries == 1 and second.recoveries == 0
    assert served == {a_server.address: 1, b_server.address: 2}


def test_when_every_replica_is_full_the_refusal_reaches_the_caller(tiny_pair, services):
    a_server, _ = start_verifier(tiny_pair[0], slots=1)
    b_server, _ = start_verifier(tiny_pair[0], slots=1)

    async def go():
        holders = []
        for server in (a_server, b_server):
            ch = grpc.aio.insecure_channel(server.address)
            call = pb_grpc.VerifierStub(ch).Session()
            await call.write(pb.VerifierRequest(prefill=pb.Prefill(tokens=[5, 6, 7])))
            await call.read()
            holders.append((ch, call))
        try:
            async with SpecDecClient(f"{a_server.address},{b_server.address}") as client:
                await client.generate([5, 6], GenerationConfig(0, 4, True))
        finally:
            for ch, call in holders:
                call.cancel()
                await ch.close()

    try:
        with pytest.raises(ServiceError) as err:
            asyncio.run(go())
    finally:
        a_server.stop()
        b_server.stop()
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_sessions_spread_over_replicas_and_survive_a_killed_verifier(tiny_pair, target_hf):
    """2 verifier and 2 proposer processes, 8 concurrent sessions; one verifier is killed
    (SIGKILL) mid-run. Every output equals transformers' greedy output, and each replica's
    own metrics show it served sessions."""
    vargs = ["--model", str(tiny_pair[0]), "--full-batch-size", "8", "--metrics-port", "0", *SMALL]
    pargs = ["--model", str(tiny_pair[1]), "--full-batch-size", "8", "--metrics-port", "0", *SMALL]
    with ThreadPoolExecutor(4) as pool:   # the four load their models concurrently
        starting = [pool.submit(start_service, name, module, args)
                    for name, module, args in (("verifier-a", "verifier_service", vargs),
                                               ("verifier-b", "verifier_service", vargs),
                                               ("proposer-a", "proposer_service", pargs),
                                               ("proposer-b", "proposer_service", pargs))]
    started = [f.result() for f in starting if f.exception() is None]
    if len(started) < 4:
        for svc in started:
            svc.stop()
        raise next(f.exception() for f in starting if f.exception() is not None)
    procs = started
    va, vb, pa, pb_ = procs
    prompts = [[3 + i, 14, 15 + 2 * i, 9, 26 - i][: 3 + i % 3] for i in range(8)]
    new = 24
    emitted, kill_now = [0], threading.Event()
    victim: dict[str, float] = {}

    def on_tokens(tokens):
        emitted[0] += len(tokens)
        if emitted[0] >= 48:   # about a quarter of the run: every session is under way
            kill_now.set()

    async def kill_mid_run():
        while not kill_now.is_set():
            await asyncio.sleep(0.01)
        victim.update(await asyncio.to_thread(scrape, va.metrics_address))
        va.proc.kill()

    async def go():
        async with SpecDecClient(f"{va.address},{vb.address}", f"{pa.address},{pb_.address}",
                                 # Generous: only the killed replica should lose sessions,
                                 # however loaded this machine is.
                                 step_timeout_s=120, recovery=RecoveryPolicy(deadline_s=120)) as c:
            c.verifier.skip_s = 120   # the dead replica is not tried again in this run
            killer = asyncio.ensure_future(kill_mid_run())
            records = await asyncio.gather(*(c.generate(p, GenerationConfig(3, new, True), on_tokens)
                                             for p in prompts))
            await killer
            served = {a: r.served for s in (c.verifier, c.proposer) for a, r in s.replicas.items()}
            return records, served

    try:
        records, served = asyncio.run(go())
        survivor, proposers = scrape(vb.metrics_address), [scrape(p.metrics_address) for p in (pa, pb_)]
    finally:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda svc: svc.stop(), procs))
    for prompt, rec in zip(prompts, records):
        assert rec.tokens == greedy_reference(target_hf, prompt, new), prompt
    assert va.proc.returncode == -9, "the verifier was not killed"
    assert emitted[0] == 8 * new
    # Sessions were spread evenly: each replica opened 4 of the 8 (the client's count)...
    assert served == {va.address: 4, vb.address: 4 + sum(r.recoveries > 0 for r in records),
                      pa.address: 4, pb_.address: 4}, ([r.recoveries for r in records], served)
    # ... and the replicas' own metrics agree: the killed one was serving sessions when it died,
    # and they moved to the survivor, which ended its own 4 and every moved one.
    assert victim["specdec_sessions_open"] > 0 and victim["specdec_verify_steps_total"] > 0
    moved = sum(r.recoveries > 0 for r in records)
    assert moved >= 1 and all(r.recoveries <= 1 for r in records)
    sessions_ended = sum(v for k, v in survivor.items()
                         if k.startswith("specdec_rpc_total") and 'method="Session"' in k)
    assert sessions_ended == 4 + moved and survivor["specdec_verify_steps_total"] > 0
    assert all(p["specdec_proposals_total"] > 0 for p in proposers)
