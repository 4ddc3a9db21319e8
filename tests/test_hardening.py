"""Faults a hostile client and unusual models found (issue 15), one test each: start-up warm-up,
slot squatting, the rejection rule, garbage bytes, a full proposer, refusals, echoed fields,
plaintext against TLS, auth scheme case, metrics of reflection streams, in-process slot waits."""

from __future__ import annotations

import asyncio
import logging
import time

import grpc
import numpy as np
import pytest

from client.api import SpecDecClient
from client.links import ServiceError, ServiceLost
from specdec.admission import Admission
from specdec.build import build_verifier
from specdec.errors import InvalidRequest
from specdec.generation import GenerationConfig
from specdec.inprocess import InProcessVerifierLink
from specdec.recovery import LinkLost, RecoveryPolicy
from specdec.sampling import (
    SamplingParams,
    acceptance_probability,
    check_proposals,
    rejection_sample,
)
from specdec.stopping import StopParams
from specdec.warm_up import warm_up_verifier
from specdec_rpc.metrics import ServiceMetrics
from specdec_rpc.parsing import RateLimitedLog
from specdec_rpc.security import ServerSecurity, token_matches
from specdec_rpc.server import ServerConfig
from specdec_rpc.status import MAX_DETAILS
from specdec_rpc.v1 import specdec_pb2 as pb
from specdec_rpc.v1 import specdec_pb2_grpc as pb_grpc
from tests.conftest import MAX_K, engine_config, start_proposer, start_verifier
from tests.test_bad_input import PROMPT, prefill, wait_free
from tests.tiny_models import greedy_reference

# 1. Start-up crash --------------------------------------------------------------------------

def test_warm_up_does_not_depend_on_what_the_model_says(tiny_pair):
    """A model whose EOS is exactly what it emits after token 0 (as a random Qwen2 with EOS id
    0 did): the warm-up prefill finishes the session, and the warm-up verify used to raise."""
    verifier = build_verifier(engine_config(tiny_pair[0], slots=1), tuple(range(MAX_K + 1)))

    async def first_token() -> int:
        session = await verifier.open_session()
        try:
            return (await verifier.prefill(session, 0, [0], StopParams(ignore_eos=True))).tokens[0]
        finally:
            await verifier.close_session(session)
    verifier.eos_token_ids = (asyncio.run(first_token()),)
    asyncio.run(warm_up_verifier(verifier))  # raised PreconditionFailed "session already finished (EOS)"
    assert verifier.pool.in_use == 0
    verifier.batcher.close()


# 2. Slot squatting ---------------------------------------------------------------------------

@pytest.mark.parametrize("service", ["verifier", "proposer"])
def test_silent_streams_hold_no_slot_and_are_closed(tiny_pair, service):
    """One slot, no admission queue, three streams that never send: a real session still gets
    the slot at once, and the silent streams end with DEADLINE_EXCEEDED."""
    no_queue = Admission(max_waiting=0, wait_s=0.0)
    if service == "verifier":
        server, backend = start_verifier(tiny_pair[0], slots=1, admission=no_queue,
                                         first_message_timeout_s=0.5)
        stub_cls, first = pb_grpc.VerifierStub, prefill(PROMPT)
    else:
        server, backend = start_proposer(tiny_pair[1], slots=1, admission=no_queue,
                                         first_message_timeout_s=0.5)
        stub_cls, first = pb_grpc.ProposerStub, pb.ProposeRequest(start=0, tokens=PROMPT, k=2)
    try:
        async def go():
            async with grpc.aio.insecure_channel(server.address) as ch:
                stub = stub_cls(ch)
                await ch.channel_ready()
                silent = [stub.Session() for _ in range(3)]
                await asyncio.sleep(0.2)  # let the server see the silent streams open first
                call = stub.Session()
                await call.write(first)
                reply = await call.read()           # was RESOURCE_EXHAUSTED: slots squatted
                await call.done_writing()
                assert await call.read() is grpc.aio.EOF
                codes = [(await s.code(), await s.details()) for s in silent]
                return reply, codes
        reply, codes = asyncio.run(go())
        assert reply is not None
        for code, details in codes:
            assert code == grpc.StatusCode.DEADLINE_EXCEEDED and "first message" in details
        assert wait_free(backend.pool) == 0
    finally:
        server.stop()


def test_a_verify_first_is_refused_without_taking_a_slot(tiny_pair):
    server, verifier = start_verifier(tiny_pair[0], slots=1,
                                      admission=Admission(max_waiting=0, wait_s=0.0))
    try:
        async def go():
            async with grpc.aio.insecure_channel(server.address) as ch:
                stub = pb_grpc.VerifierStub(ch)
                holder = stub.Session()
                await holder.write(prefill(PROMPT))
                await holder.read()                 # the only slot is now taken
                bad = stub.Session()
                await bad.write(pb.VerifierRequest(verify=pb.Verify(draft_tokens=[3])))
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await bad.read()
                holder.cancel()
                return err.value.code()
        # Not RESOURCE_EXHAUSTED: the verify is refused for what it is, before any slot wait.
        assert asyncio.run(go()) == grpc.StatusCode.FAILED_PRECONDITION
        assert wait_free(verifier.pool) == 0
    finally:
        server.stop()


# 3. Rejection-rule bypass --------------------------------------------------------------------

def test_duplicate_ids_in_a_draft_distribution_are_invalid():
    with pytest.raises(InvalidRequest, match="twice"):
        check_proposals([3], [(np.array([3, 3]), np.array([0.5, 0.0]))], vocab=8)


def test_acceptance_never_takes_a_token_the_target_excludes():
    """q(d) = 0 (what [d, d] with [0.5, 0.0] densified to) and p(d) = 0 (top_k 1 elsewhere):
    p/q is NaN, and min(1, NaN) = 1 accepted d every time."""
    assert acceptance_probability(0.0, 0.0) == 0.0
    assert acceptance_probability(float("nan"), 0.5) == 0.0
    assert acceptance_probability(0.5, float("inf")) == 0.0
    assert acceptance_probability(0.2, 0.4) == pytest.approx(0.5)
    p = np.zeros((2, 8))
    p[:, 5] = 1.0                                     # the target allows only token 5
    rng = np.random.default_rng(0)
    for _ in range(200):
        accepted, nxt = rejection_sample([3], [(np.array([3, 3]), np.array([0.5, 0.0]))], p, rng)
        assert (accepted, nxt) == (0, 5)


# 4. Unparseable requests -----------------------------------------------------------------------

def test_rate_limited_log_keeps_one_line_per_interval(caplog):
    now = [0.0]
    log = RateLimitedLog(logging.getLogger("t.ratelimit"), interval_s=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, "t.ratelimit"):
        assert [log.warning("x") for _ in range(5)] == [True, False, False, False, False]
        now[0] = 10.0
        assert log.warning("x")
    lines = [r.getMessage() for r in caplog.records if r.name == "t.ratelimit"]
    assert lines == ["x", "x (and 4 more like it in the last 10s)"]


def test_garbage_bytes_are_invalid_argument_and_one_log_line(tiny_pair, caplog):
    server, backend = start_verifier(tiny_pair[0],
                                     server=ServerConfig(grace_s=0.0, parse_log_interval_s=3600))
    garbage = b"\xff\xff\xff\xff"  # a field tag that never ends: no protobuf message
    try:
        async def go():
            async with grpc.aio.insecure_channel(server.address) as ch:
                session = ch.stream_stream("/specdec.v1.Verifier/Session")
                info_call = ch.unary_unary("/specdec.v1.Verifier/Info")
                codes = []
                for _ in range(60):
                    call = session()
                    await call.write(garbage)
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await call.read()
                    codes.append((err.value.code(), err.value.details()))
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await info_call(garbage)
                codes.append((err.value.code(), err.value.details()))
                return codes
        with caplog.at_level(logging.WARNING):
            codes = asyncio.run(go())
        for code, details in codes:
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "not a valid protobuf" in details
        ours = [r for r in caplog.records if "unparseable request" in r.getMessage()]
        assert len(ours) == 1                                     # 61 garbage requests
        assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
        assert wait_free(backend.pool) == 0
    finally:
        server.stop()


# 5 and 12c. A full proposer; one proposer link at a time ---------------------------------

class CountingClient(SpecDecClient):
    """Counts the proposer links open at once (a real client; only the counting is added)."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.opened = self.open_now = self.most_open = 0

    async def _open_proposer(self):
        link = await super()._open_proposer()
        self.opened += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        close = link.close

        async def counted_close():
            self.open_now -= 1
            await close()
        link.close = counted_close
        return link


def test_full_proposer_means_target_only_not_failure(tiny_pair, target_hf, services):
    p_server, proposer = start_proposer(tiny_pair[1], slots=1,
                                        admission=Admission(max_waiting=0, wait_s=0.0))
    try:
        async def go():
            async with grpc.aio.insecure_channel(p_server.address) as ch:
                holder = pb_grpc.ProposerStub(ch).Session()
                await holder.write(pb.ProposeRequest(start=0, tokens=[5, 6], k=0))
                await holder.read()                # the proposer's only slot is taken
                client = CountingClient(services["verifier"], p_server.address,
                                        recovery=RecoveryPolicy(proposer_retry_s=0.0))
                try:
                    rec = await client.generate(PROMPT, GenerationConfig(3, 24, True))
                finally:
                    await client.close()
                holder.cancel()
                return rec, client
        rec, client = asyncio.run(go())
        assert rec.tokens == greedy_reference(target_hf, PROMPT, 24)  # was RESOURCE_EXHAUSTED
        assert rec.drafted == 0 and client.opened >= 3   # retried every round, always refused
        assert client.most_open == 1                     # each retry closed the refused link
        assert wait_free(proposer.pool) == 0
    finally:
        p_server.stop()


# 6. Refusals are final, decided by code ------------------------------------------------------

def test_a_refusal_racing_the_first_write_is_still_a_refusal(tiny_pair):
    """The service refuses the stream at open (here: a wrong token) while our write is under way:
    grpc then reports its own INTERNAL "Internal error from Core" for the write, and the
    refusal is lost. Blocking the client's loop for a moment makes that race certain."""
    server, _ = start_verifier(tiny_pair[0], server=ServerConfig(
        grace_s=0.0, security=ServerSecurity(auth_token="right-token")))
    try:
        async def go():
            client = SpecDecClient(server.address, timeout_s=10)
            try:
                link = await client._open_verifier()     # no token: refused at open
                await asyncio.sleep(0)
                time.sleep(0.2)                           # the refusal arrives meanwhile
                with pytest.raises(ServiceError) as err:
                    await link.prefill(0, PROMPT, StopParams(), "", SamplingParams())
                await link.close()
                return err.value
            finally:
                await client.close()
        err = asyncio.run(go())
        assert err.code == grpc.StatusCode.UNAUTHENTICATED and not isinstance(err, LinkLost)
    finally:
        server.stop()


def test_a_refused_session_is_not_retried(tiny_pair):
    v_server, verifier = start_verifier(tiny_pair[0], slots=1,
                                        admission=Admission(max_waiting=0, wait_s=0.0))
    try:
        async def go():
            async with grpc.aio.insecure_channel(v_server.address) as ch:
                holder = pb_grpc.VerifierStub(ch).Session()
                await holder.write(prefill(PROMPT))
                await holder.read()
                opened = []

                class Counting(SpecDecClient):
                    async def _open_verifier(self):
                        opened.append(1)
                        return await super()._open_verifier()

                client = Counting(v_server.address)
                try:
                    with pytest.raises(ServiceError) as err:
                        await client.generate(PROMPT, GenerationConfig(0, 4, True))
                finally:
                    await client.close()
                holder.cancel()
                return err.value, len(opened)
        err, opened = asyncio.run(go())
        assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED and opened == 1
        assert not isinstance(err, ServiceLost)
    finally:
        v_server.stop()


# 7. Bounded echo -------------------------------------------------------------------------------

def test_a_huge_fingerprint_is_not_echoed_in_full(services):
    async def go():
        async with grpc.aio.insecure_channel(services["verifier"]) as ch:
            call = pb_grpc.VerifierStub(ch).Session()
            await call.write(prefill(PROMPT, draft_tokenizer_fingerprint="f" * 20_000))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call.read()
            return err.value
    err = asyncio.run(go())
    # Was RESOURCE_EXHAUSTED: the 20 KB status message overflowed the metadata limit.
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "tokenizer" in err.details()
    assert len(err.details()) <= MAX_DETAILS and "20000 characters" in err.details()


# 10. Auth scheme case ----------------------------------------------------------------------------

@pytest.mark.parametrize("value, ok", [("Bearer tok", True), ("bearer tok", True),
                                       ("BEARER tok", True), ("Basic tok", False),
                                       ("bearer other", False), ("bearertok", False)])
def test_bearer_scheme_is_case_insensitive(value, ok):
    assert token_matches((("authorization", value),), "tok") is ok


# 12a. Reflection streams are no sessions ---------------------------------------------------------

def test_reflection_streams_do_not_count_as_sessions(tiny_pair):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    metrics = ServiceMetrics()
    server, _ = start_verifier(tiny_pair[0], metrics=metrics)
    try:
        async def go():
            async with grpc.aio.insecure_channel(server.address) as ch:
                call = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo()
                await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
                await call.read()
                open_now = metrics.registry.get_sample_value("specdec_sessions_open")
                call.cancel()
                return open_now
        assert asyncio.run(go()) == 0
    finally:
        server.stop()


# 12d. In-process links wait for a slot off the event loop -------------------------------------

def test_in_process_link_waits_for_a_slot_without_blocking_the_loop(tiny_pair):
    verifier = build_verifier(engine_config(tiny_pair[0], slots=1), tuple(range(MAX_K + 1)),
                              admission=Admission(max_waiting=1, wait_s=30.0))

    async def go():
        first = InProcessVerifierLink(verifier)
        await first.prefill(0, PROMPT, StopParams(), "", SamplingParams())
        second = InProcessVerifierLink(verifier)        # used to block the loop in acquire
        waiting = asyncio.ensure_future(second.prefill(0, PROMPT, StopParams(), "",
                                                       SamplingParams()))
        await asyncio.sleep(0.05)
        await first.close()                              # runs only if the loop is free
        out = await waiting
        await second.close()
        return out
    assert len(asyncio.run(go()).tokens) == 1
    assert verifier.pool.in_use == 0
    verifier.batcher.close()


# 12b. OpenMP's wait policy is set by the entry points, before torch loads ---------------------

def test_entry_points_set_the_omp_wait_policy_before_torch_and_the_library_does_not():
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    probe = ("import os, sys; import {module}; "
             "print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)")

    def run(module: str) -> str:
        return subprocess.run([sys.executable, "-c", probe.format(module=module)], env=env,
                              capture_output=True, text=True, timeout=120, check=True).stdout.strip()
    assert run("specdec") == "None False"            # importing the library sets nothing
    for entry in ("verifier_service", "proposer_service", "bench"):
        assert run(entry) == "PASSIVE False"         # set, and torch not loaded yet
