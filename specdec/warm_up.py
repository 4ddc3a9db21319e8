"""Warm-up before a service reports SERVING: one short session through every kind of step, so
the first client does not pay lazy initialisation (allocator growth, first-call dispatch, a
compiled step's first run). Coroutines, like the sessions they warm: a service runs them
with asyncio.run on its model-load thread."""

from __future__ import annotations

from specdec.proposers.base import Proposer
from specdec.stopping import StopParams
from specdec.verifier import TargetVerifier


async def warm_up_verifier(verifier: TargetVerifier) -> None:
    """One prefill and one verify window, EOS ignored (a model may end after token 0)."""
    session = await verifier.open_session()
    try:
        await verifier.prefill(session, 0, [0], StopParams(max_new_tokens=0, ignore_eos=True), "")
        await verifier.verify(session, [0] * min(verifier.max_k, verifier.engine.ctx_len - 2))
    finally:
        await verifier.close_session(session)


async def warm_up_proposer(proposer: Proposer) -> None:
    """A sync and a short draft."""
    session = await proposer.open_session()
    try:
        await proposer.propose(session, 0, [0], min(proposer.max_k, 2))
    finally:
        await proposer.close_session(session)
