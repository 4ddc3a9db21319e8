"""Generating over gRPC from a test: the client library against services at addresses."""

from __future__ import annotations

import asyncio
from typing import Any

from client.api import SpecDecClient
from specdec.generation import GenerationConfig, GenerationRecord


def generate_all(verifier: str, proposer: str | None, prompts: list[list[int]],
                 config: GenerationConfig, concurrent: bool = False,
                 **client: Any) -> list[GenerationRecord]:
    """One client, the prompts one after another, or as concurrent sessions whose steps
    interleave on the services; client: SpecDecClient's keyword arguments."""
    async def go() -> list[GenerationRecord]:
        async with SpecDecClient(verifier, proposer, **client) as c:
            if concurrent:
                return list(await asyncio.gather(*(c.generate(p, config) for p in prompts)))
            return [await c.generate(p, config) for p in prompts]
    return asyncio.run(go())


def generate_one(verifier: str, proposer: str | None, prompt: list[int],
                 config: GenerationConfig, **client: Any) -> GenerationRecord:
    return generate_all(verifier, proposer, [prompt], config, **client)[0]
