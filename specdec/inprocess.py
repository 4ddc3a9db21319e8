"""Links that call the verifier and proposer objects directly, without gRPC: the benchmark's
in-process baseline, and the reference the gRPC path is compared against. They await the domain
coroutines on the caller's loop; engine calls run on each engine's thread, as in the services.
"""

from __future__ import annotations

import asyncio
from typing import Any

from specdec.proposers.base import Proposer
from specdec.sampling import SamplingParams, Sparse
from specdec.stopping import StopParams
from specdec.types import Proposal, StepOutcome
from specdec.verifier import TargetVerifier


class InProcessVerifierLink:
    """The session (a slot) is opened at the first step: it may wait in the admission queue."""

    def __init__(self, verifier: TargetVerifier) -> None:
        self.verifier = verifier
        self.session: Any = None

    async def _session(self) -> Any:
        if self.session is None:
            self.session = await self.verifier.open_session()
        return self.session

    async def prefill(self, start: int, tokens: list[int], params: StopParams,
                      draft_fingerprint: str, sampling: SamplingParams) -> StepOutcome:
        session = await self._session()
        return await self.verifier.prefill(session, start, tokens, params, draft_fingerprint,
                                           sampling)

    async def verify(self, draft: list[int], draft_probs: list[Sparse] | None) -> StepOutcome:
        session = await self._session()
        return await self.verifier.verify(session, draft, draft_probs)

    async def close(self) -> None:
        if self.session is not None:
            await self.verifier.close_session(self.session)


class InProcessProposerLink:
    """Like InProcessVerifierLink: the session is opened at the first step."""

    def __init__(self, proposer: Proposer) -> None:
        self.proposer = proposer
        self.session: Any = None  # the proposer's own session type
        self.pre_draft: asyncio.Task | None = None  # referenced, so the loop does not drop it

    async def propose(self, start: int, tokens: list[int], k: int, sampling: SamplingParams,
                      top_m: int) -> Proposal:
        if self.session is None:
            self.session = await self.proposer.open_session()
        proposal = await self.proposer.propose(self.session, start, tokens, k, sampling, top_m)
        # As the proposer service does after replying: not awaited, it overlaps the verify.
        self.pre_draft = asyncio.ensure_future(self.proposer.after_reply(self.session))
        return proposal

    async def close(self) -> None:
        if self.session is not None:
            await self.proposer.close_session(self.session)  # after a running pre-draft
