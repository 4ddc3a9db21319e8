"""One call to generate, served where the target is: the verifier runs the round loop
(specdec.generation.generate) over an in-process link to its own verifier and a link to the
request's proposer, and streams the text (docs/architecture.md, "The round loop served by the
verifier").

    generator = OneCallGenerator(verifier, codec, draft=remote_proposer)
    async for event in generator.run(GenerateRequest("def f(x):", method="draft", k=4)):
        ...   # TextDelta per step, then one Finished
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

from specdec.adaptive_k import KEstimates
from specdec.build import build_proposer
from specdec.config import EngineConfig
from specdec.errors import InvalidRequest, NotReady, PreconditionFailed
from specdec.generation import GenerationConfig, GenerationRecord, ProposerLink, generate
from specdec.inprocess import InProcessProposerLink, InProcessVerifierLink
from specdec.links import replacing
from specdec.method import GENERATE_METHODS, Method
from specdec.proposers.base import Proposer
from specdec.recovery import LinkLost
from specdec.sampling import SamplingParams, Sparse
from specdec.sequence import check_token_ids
from specdec.stop_strings import check_stop_strings, cut_at_stop_string
from specdec.stopping import FinishReason, StopParams
from specdec.text_codec import TextCodec
from specdec.types import StepOutcome
from specdec.verifier import TargetVerifier

log = logging.getLogger(__name__)

DECODE_CONTEXT = 8   # ids before the new ones a detokenization decodes with (word boundaries)


@dataclass(frozen=True)
class GenerateRequest:
    prompt: str | tuple[int, ...]     # text (the target's tokenizer) or token ids
    method: str = Method.NONE         # a Method of GENERATE_METHODS, or an alias; "" = none
    k: int = 0                        # drafts per round; 0 = the largest the method accepts
    adaptive_k: bool = False          # k "auto": each round picks its k in 0..k
    sampling: SamplingParams = SamplingParams()
    max_new_tokens: int = 0           # 0 = until EOS, a stop string or ctx_len
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False


@dataclass(frozen=True)
class TextDelta:
    """What one step added: ids and the text they complete (held back while it could still
    start a stop string)."""

    tokens: list[int]
    text: str


@dataclass(frozen=True)
class Finished:
    finish: FinishReason
    prompt_tokens: int
    record: GenerationRecord          # tokens cut at the stop string, as the deltas were


@dataclass(frozen=True)
class ProposerInfo:
    fingerprint: str    # the proposer's tokenizer ("" = any: n-gram)
    max_k: int
    ctx_len: int        # the longest sequence its sessions hold


class ProposerLinkToClose(ProposerLink, Protocol):
    async def close(self) -> None: ...


class ProposerSource(Protocol):
    """Where a method's proposer sessions come from (client.api's RemoteProposer, or
    InProcessProposers); LinkLost while the proposer cannot be reached."""

    async def connect(self) -> ProposerInfo: ...

    async def open(self) -> ProposerLinkToClose: ...


class InProcessProposers:
    """Sessions on a proposer object of this process (prompt lookup in the verifier)."""

    def __init__(self, proposer: Proposer, ctx_len: int) -> None:
        self.proposer, self.proposer_ctx_len = proposer, ctx_len

    async def connect(self) -> ProposerInfo:
        return ProposerInfo(self.proposer.fingerprint, self.proposer.max_k, self.proposer_ctx_len)

    async def open(self) -> ProposerLinkToClose:
        return InProcessProposerLink(self.proposer)


class _Halted(Exception):
    """The caller went away: the generation ends after the step in progress."""


@dataclass
class _Text:
    """One generation's incremental text (TextCodec.detokenize), and how much was handed out."""

    codec: TextCodec | None           # None: the model has no tokenizer, ids only
    stops: tuple[str, ...]
    tokens: list[int] = field(default_factory=list)     # every id generated
    decoded: list[int] = field(default_factory=list)    # ids whose text is in `text`
    pending: list[int] = field(default_factory=list)    # ids ending inside a character
    text: str = ""
    token_ends: list[int] = field(default_factory=list)  # [i] len(text) once tokens[i] came
    sent_tokens: int = 0
    sent_text: int = 0

    def add(self, new: list[int], final: bool) -> tuple[TextDelta | None, int | None]:
        """-> (the delta to hand out, or None; with a stop string, how many of `new` to keep)."""
        before = len(self.tokens)
        for token in new:
            self.tokens.append(token)
            if self.codec is not None:
                self.pending.append(token)
                piece, n = self.codec.detokenize(self.pending, self.decoded[-DECODE_CONTEXT:], True)
                self.text += piece
                self.decoded += self.pending[:n]
                del self.pending[:n]
            self.token_ends.append(len(self.text))
        cut = cut_at_stop_string(self.text, self.token_ends, self.stops, self.sent_text, final)
        delta = TextDelta(self.tokens[self.sent_tokens:cut.tokens], self.text[self.sent_text:cut.text_len])
        self.sent_tokens, self.sent_text = cut.tokens, cut.text_len
        keep = cut.tokens - before if cut.stopped else None
        return (delta if delta.tokens or delta.text else None), keep


class _TextLink:
    """A verifier link that turns each step's tokens into text before the loop commits them,
    and ends the generation at a stop string (STOP) or once the caller is gone (halted)."""

    def __init__(self, link: InProcessVerifierLink, text: _Text,
                 emit: Callable[[TextDelta], None]) -> None:
        self.link, self.text, self.emit = link, text, emit
        self.halted = False

    async def prefill(self, start: int, tokens: list[int], params: StopParams,
                      draft_fingerprint: str, sampling: SamplingParams) -> StepOutcome:
        return self._after(await self.link.prefill(start, tokens, params, draft_fingerprint, sampling))

    async def verify(self, draft: list[int], draft_probs: list[Sparse] | None) -> StepOutcome:
        return self._after(await self.link.verify(draft, draft_probs))

    def _after(self, step: StepOutcome) -> StepOutcome:
        if self.halted:
            raise _Halted()
        delta, keep = self.text.add(step.tokens, final=bool(step.finish))
        if delta is not None:
            self.emit(delta)
        if keep is None:
            return step
        return replace(step, tokens=step.tokens[:keep], finish=FinishReason.STOP)


class OneCallGenerator:
    """The verifier's Generate: requests in, text out, the round loop in between."""

    def __init__(self, verifier: TargetVerifier, codec: TextCodec | None,
                 draft: ProposerSource | None) -> None:
        """Prompt lookup in this process, the draft model from `draft` (a proposer service).
        codec: the target's tokenizer, None if none."""
        self.verifier = verifier
        self.codec = codec if codec is not None and codec.tokenizer is not None else None
        engine = verifier.engine
        self.ctx_len = engine.ctx_len
        # A generation opens its proposer session while its verifier session may still wait
        # for a slot: one n-gram session per slot and per queue place (a token history each).
        sessions = engine.slots + verifier.pool.admission.max_waiting
        ngram = build_proposer(Method.NGRAM, EngineConfig(model="", ctx_len=engine.ctx_len,
                                                   full_batch_size=sessions), verifier.max_k)
        # A source per method served besides target-only and Turbo
        self.proposers: dict[Method, ProposerSource] = {Method.NGRAM: InProcessProposers(ngram, engine.ctx_len)}
        if draft is not None:
            self.proposers[Method.DRAFT] = draft
        # k auto: what rounds cost and yield here, per method, carried across requests
        self.k_estimates = {m: KEstimates() for m in GENERATE_METHODS}
        self._running: set[asyncio.Task] = set()   # generations whose caller may be gone

    def default_method(self) -> Method:
        """For a request that names no method (the OpenAI API): draft, else Turbo, else ngram."""
        if Method.DRAFT in self.proposers:
            return Method.DRAFT
        return Method.TURBO if self.verifier.engine.num_heads else Method.NGRAM

    async def _prompt(self, request: GenerateRequest) -> list[int]:
        if isinstance(request.prompt, str):
            if not request.prompt:
                raise InvalidRequest("empty prompt: send some text or token ids")
            if self.codec is None:
                raise PreconditionFailed("this model has no tokenizer files: send token ids")
            ids, _ = await asyncio.to_thread(self.codec.tokenize, request.prompt)
        else:
            ids = list(request.prompt)
        if not ids:
            raise InvalidRequest("empty prompt: send some text or token ids")
        check_token_ids(ids, self.verifier.engine.vocab_size)
        if len(ids) >= self.ctx_len:
            raise InvalidRequest(f"prompt of {len(ids)} tokens leaves no room to generate within "
                                 f"ctx_len {self.ctx_len}")
        return ids

    async def _proposer(self, method: Method) -> tuple[ProposerSource | None, ProposerInfo | None]:
        """The method's source and its info; info None: unreachable now (target-only rounds
        until a new session opens, as the client does)."""
        if method in (Method.NONE, Method.TURBO):
            if method == Method.TURBO and not self.verifier.engine.num_heads:
                raise PreconditionFailed("method turbo: this verifier has no Turbo heads (start it "
                                         "with --speculative-model-type turbo)")
            return None, None
        source = self.proposers.get(method)
        if source is None:
            raise PreconditionFailed(f"method {method}: this verifier has no such proposer"
                                     + (" (start it with --proposer ADDR)" if method == Method.DRAFT else ""))
        try:
            return source, self._paired(await source.connect())
        except LinkLost as exc:
            log.warning("proposer for %s unreachable, generating target-only for now: %s", method, exc)
            return source, None

    def _paired(self, info: ProposerInfo) -> ProposerInfo:
        """info, once its tokenizer is known to be the target's (its ids mean the same text)."""
        if info.fingerprint and info.fingerprint != self.verifier.fingerprint:
            raise PreconditionFailed(f"the proposer's tokenizer ({info.fingerprint}) differs from the "
                                     f"target's ({self.verifier.fingerprint}): start that proposer with "
                                     f"--target-model-name <this target's checkpoint> to translate, "
                                     f"or fix --proposer")
        return info

    async def _open_paired(self, source: ProposerSource) -> ProposerLinkToClose:
        """A new session on `source`, its tokenizer checked (it may have been unreachable when
        the generation began)."""
        self._paired(await source.connect())
        return await source.open()

    def _k(self, request: GenerateRequest, method: Method, info: ProposerInfo | None) -> int:
        if method == Method.NONE:
            return 0
        limit = self.verifier.max_k if info is None else min(self.verifier.max_k, info.max_k)
        if request.k > limit or request.k < 0:
            raise InvalidRequest(f"k {request.k} is out of range for method {method}: 1..{limit} "
                                 "(0 = the largest)")
        return request.k or limit

    async def run(self, request: GenerateRequest) -> AsyncGenerator[TextDelta | Finished, None]:
        method = Method.parse(request.method, GENERATE_METHODS) if request.method else Method.NONE
        stops = check_stop_strings(request.stop)
        if stops and self.codec is None:
            raise PreconditionFailed("stop strings need the model's tokenizer, which it has none of")
        request.sampling.validate()
        prompt = await self._prompt(request)
        source, info = await self._proposer(method)
        k = self._k(request, method, info)
        config = GenerationConfig(k, request.max_new_tokens, request.ignore_eos, request.sampling,
                                  adaptive_k=request.adaptive_k and k > 0)
        queue: asyncio.Queue[TextDelta | Finished | BaseException] = asyncio.Queue()
        verifier = _TextLink(InProcessVerifierLink(self.verifier), _Text(self.codec, stops), queue.put_nowait)
        task = asyncio.ensure_future(self._generate(prompt, verifier, source, info, config,
                                                    method, queue))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        task.add_done_callback(lambda t: _say_cancelled(t, queue))
        try:
            while not isinstance(event := await queue.get(), Finished):
                if isinstance(event, BaseException):
                    raise event
                yield event
            yield event
        finally:
            if not task.done():   # the caller went away (a cancelled stream)
                verifier.halted = True
                if verifier.link.session is None:   # still waiting for a slot: nothing runs
                    task.cancel()

    async def _generate(self, prompt: list[int], verifier: _TextLink, source: ProposerSource | None,
                        info: ProposerInfo | None, config: GenerationConfig, method: Method,
                        queue: asyncio.Queue) -> None:
        """The round loop, its links closed however it ends (the slot and the proposer session
        freed); its end or its error goes to the queue."""
        links: dict[str, InProcessVerifierLink | ProposerLinkToClose] = {"verifier": verifier.link}
        proposer: ProposerLinkToClose | None = None
        reopen = None
        try:
            if source is not None and config.num_speculative_tokens:
                if info is not None:
                    try:
                        proposer = links["proposer"] = await source.open()
                    except LinkLost:
                        proposer = None
                reopen = replacing(links, "proposer", lambda: self._open_paired(source))
                if proposer is None:   # the loop's recovery retries later; lossless meanwhile
                    proposer = _Lost()
            # A proposer holding less context than the target drafts while the sequence fits
            # it; the round loop then asks for no more drafts (k = 0 rounds), losslessly.
            ctx_len = min(self.ctx_len, info.ctx_len) if info is not None else self.ctx_len
            record = await generate(prompt, verifier, proposer, config, ctx_len,
                                    info.fingerprint if info else "", reopen_proposer=reopen,
                                    k_estimates=self.k_estimates[method])
            queue.put_nowait(Finished(record.finish, len(prompt), record))
        except _Halted:
            pass
        except Exception as exc:
            queue.put_nowait(exc)
        finally:
            for link in links.values():
                await link.close()


def _say_cancelled(task: asyncio.Task, queue: asyncio.Queue) -> None:
    """A generation cancelled from outside (the loop closing) tells its caller, who would wait."""
    if task.cancelled():
        queue.put_nowait(NotReady("the service is stopping: the generation was cancelled"))


class _Lost:
    """A proposer link lost from the start: the loop goes target-only and retries later."""

    async def propose(self, *args, **kwargs):
        raise LinkLost("proposer unreachable")

    async def close(self) -> None:
        pass
