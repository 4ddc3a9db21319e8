"""Links that call the verifier and proposer objects directly, without gRPC: the in-process
baseline of the benchmark, and the reference the gRPC path is compared against."""

from __future__ import annotations

import asyncio
from typing import Any

from specdec.proposers.base import Proposer
from specdec.sampling import SamplingParams, Sparse
from specdec.stopping import StopParams
from specdec.types import Proposal, StepOutcome
from specdec.verifier import TargetVerifier


class InProcessVerifierLink:
    """The session (a slot) is opened at the first step, in a thread: acquiring a slot may
    wait in the admission queue, which must not block the event loop."""

    def __init__(self, verifier: TargetVerifier) -> None:
        self.verifier = verifier
        self.session = None

    async def _session(self):
        if self.session is None:
            self.session = await asyncio.to_thread(self.verifier.open_session)
        return self.session

    async def prefill(self, start: int, tokens: list[int], params: StopParams,
                      draft_fingerprint: str, sampling: SamplingParams) -> StepOutcome:
        session = await self._session()
        return await asyncio.to_thread(self.verifier.prefill, session, start, tokens, params,
                                       draft_fingerprint, sampling)

    async def verify(self, draft: list[int], draft_probs: list[Sparse] | None) -> StepOutcome:
        session = await self._session()
        return await asyncio.to_thread(self.verifier.verify, session, draft, draft_probs)

    async def close(self) -> None:
        if self.session is not None:
            self.verifier.close_session(self.session)


class InProcessProposerLink:
    """Like InProcessVerifierLink: the session is opened at the first step, in a thread."""

    def __init__(self, proposer: Proposer) -> None:
        self.proposer = proposer
        self.session: Any = None  # the proposer's own session type

    async def propose(self, start: int, tokens: list[int], k: int, sampling: SamplingParams,
                      top_m: int, return_branches: bool = False) -> Proposal:
        if self.session is None:
            self.session = await asyncio.to_thread(self.proposer.open_session)
        proposal = await asyncio.to_thread(self.proposer.propose, self.session, start, tokens, k,
                                           sampling, top_m, return_branches)
        # As the proposer service does after replying: not awaited, it overlaps the verify.
        asyncio.get_running_loop().run_in_executor(None, self.proposer.after_reply, self.session)
        return proposal

    async def close(self) -> None:
        if self.session is not None:
            self.proposer.close_session(self.session)
