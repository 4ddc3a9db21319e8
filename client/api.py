"""Client library: generate from token ids against a verifier and a proposer.

    async with SpecDecClient("127.0.0.1:50051", "127.0.0.1:50052") as client:
        record = await client.generate(prompt_ids, GenerationConfig(num_speculative_tokens=4))
        async for tokens in client.stream(prompt_ids, config): ...

Or one call, the round loop run by the verifier itself (its Generate RPC; no proposer address
here: the verifier's own --proposer):

    async with SpecDecClient("127.0.0.1:50051") as client:
        out = await client.generate_text(GenerateRequest("def f(x):", method="draft", k=4))

A lost proposer or verifier does not lose the generation (specdec.recovery).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import grpc

from client.links import GrpcProposerLink, GrpcVerifierLink, ServiceError, service_error
from client.replicas import LeasedLink, ReplicaSet
from specdec.adaptive_k import KEstimates
from specdec.errors import PreconditionFailed
from specdec.generation import GenerationConfig, GenerationRecord, ProposerLink, generate
from specdec.inprocess import InProcessProposerLink
from specdec.links import Reply, Wrapper, replacing
from specdec.method import Method
from specdec.proposers.base import Proposer
from specdec.recovery import Busy, LinkLost, RecoveryPolicy
from specdec.serving_generate import GenerateRequest, ProposerInfo
from specdec.stopping import FinishReason
from specdec_rpc.generate_convert import generate_request_to_pb
from specdec_rpc.security import ClientSecurity, speaks_tls
from specdec_rpc.server import message_limits
from specdec_rpc.v1 import specdec_pb2 as pb
from specdec_rpc.v1 import specdec_pb2_grpc as pb_grpc

log = logging.getLogger("client")

# Same message limits as the servers; reconnect quickly to a restarted service (gRPC's default
# backoff grows to 120 s, far past any useful recovery deadline).
CHANNEL_OPTIONS = message_limits() + [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


@dataclass(frozen=True)
class GeneratedText:
    """What one Generate call returned: the text, its ids, why it ended, and the verifier's
    metrics of the generation (TTFT, throughput, acceptance)."""

    text: str
    tokens: list[int]
    finish: FinishReason
    metrics: pb.GenerateMetrics


class Link(Protocol):
    """A session link this client opened, and closes when the generation ends."""

    async def close(self) -> None: ...


async def open_session(replicas: ReplicaSet, link: Callable, security: ClientSecurity,
                       timeout_s: float, step_timeout_s: float) -> LeasedLink:
    """A session stream on the replica a new lease picks, as `link`, holding the lease."""
    lease = await replicas.lease()
    stub = lease.stub

    async def probe() -> tuple[grpc.StatusCode, str]:
        """The service's answer to an Info call: what a session stream whose own status was
        lost would have been told (see links._StreamLink)."""
        try:
            await stub.Info(pb.InfoRequest(), timeout=timeout_s, metadata=security.metadata())
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or ""
        return grpc.StatusCode.OK, ""

    return LeasedLink(link(stub.Session(metadata=security.metadata()), step_timeout_s, probe), lease)


class SpecDecClient:
    def __init__(self, verifier: str, proposer: str | None = None, timeout_s: float = 30.0,
                 local_proposer: Proposer | None = None,
                 security: ClientSecurity = ClientSecurity(), step_timeout_s: float = 60.0,
                 recovery: RecoveryPolicy = RecoveryPolicy(),
                 k_estimates: KEstimates | None = None) -> None:
        """verifier, proposer: an address, a comma list of replicas, or dns:///name:port
        (client.replicas). local_proposer: a proposer object run inside the client instead
        (e.g. prompt lookup). timeout_s bounds Info calls, step_timeout_s every session step.
        k_estimates: k auto's estimates to start from (None: none yet)."""
        self.security = security
        self.verifier = ReplicaSet(verifier, pb_grpc.VerifierStub, security.channel,
                                   CHANNEL_OPTIONS, "verifier")
        self.proposer: ReplicaSet | None = None
        if proposer:
            self.proposer = ReplicaSet(proposer, pb_grpc.ProposerStub, security.channel,
                                       CHANNEL_OPTIONS, "proposer")
        self.local_proposer = local_proposer
        self.timeout_s, self.step_timeout_s, self.recovery = timeout_s, step_timeout_s, recovery
        self.verifier_info: pb.ModelInfo | None = None
        self.proposer_info: pb.ModelInfo | None = None
        # --num-speculative-tokens auto: what rounds on these services yield and cost, carried
        # from one generation to the next (and shared by concurrent ones)
        self.k_estimates = KEstimates() if k_estimates is None else k_estimates

    async def __aenter__(self) -> SpecDecClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _info(self, replicas: ReplicaSet, service: str) -> pb.ModelInfo:
        if self.security.tls_ca is None:
            for address in list(replicas.replicas)[:1]:
                if await asyncio.to_thread(speaks_tls, address):
                    # grpc would say "Socket closed", or wait for readiness until the timeout.
                    raise ServiceError(service, grpc.StatusCode.FAILED_PRECONDITION,
                                       f"{address} serves TLS but this client connects without "
                                       "it: pass --tls-ca (and --tls-cert/--tls-key where the "
                                       "service requires client certificates)")
        return await replicas.first_answer(lambda stub: stub.Info(
            pb.InfoRequest(), timeout=self.timeout_s, wait_for_ready=True,
            metadata=self.security.metadata()))

    async def connect(self) -> None:
        """Fetch both Infos and check that the pair can work together."""
        self.verifier_info = await self._info(self.verifier, "verifier")
        if self.proposer is not None:
            self.proposer_info = await self._info(self.proposer, "proposer")
            v, p = self.verifier_info, self.proposer_info
            # An empty fingerprint (n-gram) means the proposer works with any tokenizer.
            if p.tokenizer_fingerprint and p.tokenizer_fingerprint != v.tokenizer_fingerprint:
                raise ServiceError("client", grpc.StatusCode.FAILED_PRECONDITION,
                                   f"proposer {p.model_id} and verifier {v.model_id} use different "
                                   f"tokenizers ({p.tokenizer_fingerprint} != {v.tokenizer_fingerprint}): "
                                   f"start the proposer with --target-model-name <the target's "
                                   f"checkpoint> and it translates its drafts")
            if p.draft_tokenizer_fingerprint:
                log.info("proposer %s drafts with a tokenizer of its own (%s) and translates its "
                         "drafts to the target's (%s)", p.model_id, p.draft_tokenizer_fingerprint,
                         v.tokenizer_fingerprint)

    async def tokenize(self, text: str) -> list[int]:
        """The target's tokenizer on the verifier, for a client that has none of its own."""
        return list((await self.verifier.first_answer(lambda stub: stub.Tokenize(
            pb.TokenizeRequest(text=text), timeout=self.timeout_s,
            metadata=self.security.metadata()))).ids)

    async def detokenize(self, ids: list[int], prefix_ids: Sequence[int] = ()) -> tuple[str, int]:
        """(text that ids add after prefix_ids, how many of ids it covers); see the proto."""
        reply = await self.verifier.first_answer(lambda stub: stub.Detokenize(
            pb.DetokenizeRequest(ids=ids, prefix_ids=prefix_ids, skip_special_tokens=True),
            timeout=self.timeout_s, metadata=self.security.metadata()))
        return reply.text, reply.num_ids

    async def close(self) -> None:
        for replicas in (self.verifier, self.proposer):
            if replicas is not None:
                await replicas.close()

    def max_k(self) -> int:
        """Largest k both services accept."""
        assert self.verifier_info is not None, "connect() first"
        if self.verifier_info.method == Method.TURBO:  # the verifier drafts with its own heads
            return self.verifier_info.max_k
        if self.local_proposer is not None:
            return min(self.verifier_info.max_k, self.local_proposer.max_k)
        if self.proposer_info is None:
            return 0
        return min(self.verifier_info.max_k, self.proposer_info.max_k)

    async def _open_verifier(self) -> LeasedLink:
        return await open_session(self.verifier, GrpcVerifierLink, self.security,
                                  self.timeout_s, self.step_timeout_s)

    async def _open_proposer(self) -> LeasedLink:
        assert self.proposer is not None, "a proposer address was given"
        return await open_session(self.proposer, GrpcProposerLink, self.security,
                                  self.timeout_s, self.step_timeout_s)

    async def generate(self, prompt: list[int], config: GenerationConfig,
                       on_tokens=None) -> GenerationRecord:
        if self.verifier_info is None:
            await self.connect()
        info = self.verifier_info
        assert info is not None
        if config.adaptive_k:  # auto: up to the largest k both services accept
            config = replace(config, num_speculative_tokens=min(config.num_speculative_tokens,
                                                                self.max_k()))
        if config.num_speculative_tokens > self.max_k():
            raise ValueError(f"num_speculative_tokens {config.num_speculative_tokens} exceeds what "
                             f"the services accept ({self.max_k()})")
        # One open link per service: a reopen closes the lost link it replaces.
        verifier = await self._open_verifier()
        links: dict[str, Link] = {"verifier": verifier}
        plink: ProposerLink | None = None
        fingerprint, reopen_proposer = "", None
        if config.num_speculative_tokens and self.local_proposer is not None:
            plink = links["proposer"] = InProcessProposerLink(self.local_proposer)
            fingerprint = self.local_proposer.fingerprint
        elif (config.num_speculative_tokens and self.proposer is not None
              and self.proposer_info is not None and info.method != Method.TURBO):
            plink = links["proposer"] = await self._open_proposer()
            fingerprint = self.proposer_info.tokenizer_fingerprint
            reopen_proposer = replacing(links, "proposer", self._open_proposer)
        try:
            return await generate(prompt, verifier, plink, config, info.ctx_len, fingerprint,
                                  on_tokens,
                                  reopen_verifier=replacing(links, "verifier", self._open_verifier),
                                  reopen_proposer=reopen_proposer, policy=self.recovery,
                                  k_estimates=self.k_estimates)
        finally:
            for link in links.values():
                await link.close()

    async def stream(self, prompt: list[int], config: GenerationConfig) -> AsyncIterator[list[int]]:
        """Yield each step's tokens as they are accepted."""
        queue: asyncio.Queue = asyncio.Queue()
        task = asyncio.create_task(self.generate(prompt, config, queue.put_nowait))
        task.add_done_callback(lambda _: queue.put_nowait(None))
        try:
            while (tokens := await queue.get()) is not None:
                yield tokens
            await task  # re-raise a failure of the generation
        finally:
            task.cancel()

    async def stream_text(self, request: GenerateRequest) -> AsyncIterator[pb.GenerateReply]:
        """The verifier's Generate: its replies as they come (text per step, then the last one
        with finish_reason and metrics). Leaving the loop early cancels the call (at once under
        contextlib.aclosing), which frees the verifier's slot and the proposer session."""
        lease = await self.verifier.lease()
        call = lease.stub.Generate(generate_request_to_pb(request), metadata=self.security.metadata())
        try:
            async for reply in call:
                yield reply
        except grpc.aio.AioRpcError as exc:
            raise service_error("verifier", exc.code(), exc.details() or "") from exc
        finally:
            call.cancel()
            lease.release()

    async def generate_text(self, request: GenerateRequest,
                            on_text: Callable[[str], None] | None = None) -> GeneratedText:
        """One call to generate (stream_text, collected); on_text(piece) as each piece comes."""
        text, tokens = [], []
        last = pb.GenerateReply()
        async for last in self.stream_text(request):
            tokens += last.tokens
            if last.text:
                text.append(last.text)
                if on_text is not None:
                    on_text(last.text)
        return GeneratedText("".join(text), tokens, FinishReason(last.finish_reason), last.metrics)


class RemoteProposer:
    """Sessions on a proposer service for the verifier's Generate (a serving_generate
    ProposerSource), with this client's links, leases and recovery. Channels are made at first
    use, on the loop that uses them."""

    def __init__(self, address: str, security: ClientSecurity = ClientSecurity(),
                 timeout_s: float = 10.0, step_timeout_s: float = 60.0) -> None:
        self.address, self.security = address, security
        self.timeout_s, self.step_timeout_s = timeout_s, step_timeout_s
        self.replicas: ReplicaSet | None = None
        self.info: ProposerInfo | None = None

    def _replicas(self) -> ReplicaSet:
        if self.replicas is None:
            self.replicas = ReplicaSet(self.address, pb_grpc.ProposerStub, self.security.channel,
                                       CHANNEL_OPTIONS, "proposer")
        return self.replicas

    async def connect(self) -> ProposerInfo:
        """The proposer's Info (asked until one answer came); ServiceLost while unreachable."""
        if self.info is None:
            info = await self._replicas().first_answer(lambda stub: stub.Info(
                pb.InfoRequest(), timeout=self.timeout_s, metadata=self.security.metadata()))
            self.info = ProposerInfo(info.tokenizer_fingerprint, info.max_k, info.ctx_len)
        return self.info

    async def open(self) -> _Refusals:
        return _Refusals(await open_session(self._replicas(), GrpcProposerLink, self.security,
                                            self.timeout_s, self.step_timeout_s))

    async def close(self) -> None:
        if self.replicas is not None:
            await self.replicas.close()


class _Refusals(Wrapper):
    """A proposer link whose service's final answers (a refusal, not a lost or full session)
    become the domain error of the process hosting the round loop: the Generate caller is told
    FAILED_PRECONDITION with the proposer's own words, not INTERNAL."""

    async def _step(self, call: Awaitable[Reply]) -> Reply:
        try:
            return await call
        except ServiceError as exc:
            if isinstance(exc, (LinkLost, Busy)):
                raise   # the round loop goes on target-only and retries later
            raise PreconditionFailed(f"the proposer service refused a step: {exc}") from exc
