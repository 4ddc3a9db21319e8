"""Client library: generate from token ids (or text) against a verifier and a proposer.

    async with SpecDecClient("127.0.0.1:50051", "127.0.0.1:50052") as client:
        record = await client.generate(prompt_ids, GenerationConfig(num_speculative_tokens=4))
        async for tokens in client.stream(prompt_ids, config): ...
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import grpc

from client.links import GrpcProposerLink, GrpcVerifierLink, ServiceError
from specdec.inprocess import InProcessProposerLink
from specdec.proposers.base import Proposer
from specdec.generation import GenerationConfig, GenerationRecord, generate
from specdec_rpc.server import server_options, ServerConfig
from specdec_rpc.v1 import specdec_pb2 as pb
from specdec_rpc.v1 import specdec_pb2_grpc as pb_grpc


class SpecDecClient:
    def __init__(self, verifier: str, proposer: str | None = None, timeout_s: float = 30.0,
                 local_proposer: Proposer | None = None) -> None:
        """local_proposer: a proposer object run inside the client (no proposer round trip),
        e.g. prompt lookup; used instead of a proposer address."""
        opts = server_options(ServerConfig())[:2]  # same message limits as the servers
        self._channels = [grpc.aio.insecure_channel(verifier, options=opts)]
        self.verifier = pb_grpc.VerifierStub(self._channels[0])
        self.proposer = None
        if proposer:
            self._channels.append(grpc.aio.insecure_channel(proposer, options=opts))
            self.proposer = pb_grpc.ProposerStub(self._channels[1])
        self.local_proposer = local_proposer
        self.timeout_s = timeout_s
        self.verifier_info: pb.ModelInfo | None = None
        self.proposer_info: pb.ModelInfo | None = None

    async def __aenter__(self) -> "SpecDecClient":
        await self.connect()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def connect(self) -> None:
        """Fetch both Infos and check that the pair can work together."""
        self.verifier_info = await self.verifier.Info(pb.InfoRequest(), timeout=self.timeout_s,
                                                      wait_for_ready=True)
        if self.proposer is not None:
            self.proposer_info = await self.proposer.Info(pb.InfoRequest(), timeout=self.timeout_s,
                                                          wait_for_ready=True)
            v, p = self.verifier_info, self.proposer_info
            # An empty fingerprint (n-gram) means the proposer works with any tokenizer.
            if p.tokenizer_fingerprint and p.tokenizer_fingerprint != v.tokenizer_fingerprint:
                raise ServiceError("client", grpc.StatusCode.FAILED_PRECONDITION,
                                   f"proposer {p.model_id} and verifier {v.model_id} use different "
                                   f"tokenizers ({p.tokenizer_fingerprint} != {v.tokenizer_fingerprint})")

    async def close(self) -> None:
        for ch in self._channels:
            await ch.close()

    def max_k(self) -> int:
        """Largest k both services accept."""
        assert self.verifier_info is not None, "connect() first"
        if self.verifier_info.method == "turbo":  # the verifier drafts with its own heads
            return self.verifier_info.max_k
        if self.local_proposer is not None:
            return min(self.verifier_info.max_k, self.local_proposer.max_k)
        if self.proposer_info is None:
            return 0
        return min(self.verifier_info.max_k, self.proposer_info.max_k)

    async def generate(self, prompt: list[int], config: GenerationConfig,
                       on_tokens=None) -> GenerationRecord:
        if self.verifier_info is None:
            await self.connect()
        if config.num_speculative_tokens > self.max_k():
            raise ValueError(f"num_speculative_tokens {config.num_speculative_tokens} exceeds what "
                             f"the services accept ({self.max_k()})")
        vlink = GrpcVerifierLink(self.verifier.Session())
        plink, fingerprint = None, ""
        if config.num_speculative_tokens and self.local_proposer is not None:
            plink, fingerprint = InProcessProposerLink(self.local_proposer), self.local_proposer.fingerprint
        elif (config.num_speculative_tokens and self.proposer is not None
              and self.verifier_info.method != "turbo"):
            plink = GrpcProposerLink(self.proposer.Session())
            fingerprint = self.proposer_info.tokenizer_fingerprint
        try:
            return await generate(prompt, vlink, plink, config, self.verifier_info.ctx_len,
                                  fingerprint, on_tokens)
        finally:
            await vlink.close()
            if plink is not None:
                await plink.close()

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
