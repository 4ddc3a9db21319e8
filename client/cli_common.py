"""Flags, service start-up and output shared by the client's command-line entry points."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, TypeVar

from client.api import SpecDecClient
from client.compare import format_comparison
from client.launcher import QUIET_TIMEOUT_S, ServiceProcess, ServiceStartError, start_service, wait_all_ready
from client.links import ServiceError
from specdec import tokenizer_fingerprint
from specdec.config import EngineConfig, QaicOptions
from specdec.cpu_cores import available_cores, split_cores
from specdec.engine.hub import resolve_model_path
from specdec.errors import START_ERRORS, InvalidRequest, exit_with
from specdec.flags import add_flag, add_flags, declared, to_argv
from specdec.generation import GenerationConfig, GenerationRecord
from specdec.method import Method
from specdec.metrics import batch_metrics, drafted_at_of, format_metrics, generation_metrics
from specdec.proposers.base import Proposer
from specdec.recovery import RecoveryPolicy
from specdec.sampling import SamplingParams
from specdec.service_config import ServiceOptions, VerifierOptions
from specdec.serving_generate import GenerateRequest
from specdec.stopping import FinishReason
from specdec_rpc.security import ClientSecurity

AUTO = "auto"     # --num-speculative-tokens auto: k adapts each round (specdec.adaptive_k)
AUTO_MAX_K: int = ServiceOptions.max_k  # ... up to this k in services the client starts: their --max-k default

T = TypeVar("T")
# The services a CLI starts, by name ("verifier", "proposer": python -m <name>_service): their flags
Services = dict[str, list[str]]

# Standard-library-style Python, the shipped models' domain, chosen so that greedy decoding does
# not fall into a repetition loop ("def fibonacci(n):\n" gives "#\n#\n..." from the target).
DEFAULT_PROMPTS = ["import os\n\n\ndef list_files(path):\n",
                   "def read_config(path):\n    with open(path) as f:\n"]


def add_common_args(p: argparse.ArgumentParser, prefill_seq_len: int = 32, ctx_len: int = 128) -> None:
    """Flags every client CLI takes. Those it passes on to the services it starts are the
    services' own declarations (specdec.flags), with the client's defaults: the two engine
    sizes follow each QEfficient example."""
    p.add_argument("--prompts", action="append", default=None,
                   help="prompt text; repeat the flag for several prompts")
    p.add_argument("--prefill-bsz", type=int, default=1,
                   help="prompts run at a time when --full-batch-size is not set (default: 1)")
    for field in declared(GenerationConfig):
        if field != "draft_top_m":   # the draft model's: client.draft_based declares it
            add_flag(p, GenerationConfig, field)
    add_flags(p, SamplingParams)
    p.add_argument("--verifier", default=None, metavar="ADDR",
                   help="verifier host:port, a comma list of replicas, or dns:///name:port "
                        "(one replica per address); default: start one as a subprocess")
    p.add_argument("--proposer", default=None, metavar="ADDR",
                   help="proposer host:port, a comma list of replicas, or dns:///name:port; "
                        "default: start one as a subprocess")
    p.add_argument("--json", type=Path, default=None, metavar="PATH",
                   help="write prompts, generated ids, text and metrics as JSON")
    p.add_argument("--quiet-services", action="store_true",
                   help="do not echo the started services' logs")
    p.add_argument("--compare-target-only", action="store_true",
                   help="then decode the same prompts target-only (k = 0) on the same services and "
                        "print both times, the speedup and whether the outputs are identical")
    p.add_argument("--server-side", action="store_true",
                   help="one Generate call per prompt: the verifier runs the round loop (a draft "
                        "model on its own --proposer, which a verifier started here is given; "
                        "prompt lookup inside it; Turbo with its heads)")
    e = p.add_argument_group("services the client starts")
    add_flag(e, EngineConfig, "prefill_seq_len", default=prefill_seq_len)
    add_flag(e, EngineConfig, "ctx_len", default=ctx_len)
    add_flag(e, EngineConfig, "full_batch_size", default=None, shown="--prefill-bsz")
    add_flag(e, EngineConfig, "dtype")
    add_flag(e, ServiceOptions, "executor")
    add_flag(e, EngineConfig, "compile", default=None, shown="the services' own")
    add_flag(e, EngineConfig, "compile_dir")
    add_flag(e, QaicOptions, "num_cores", default=11, prefix="verifier: ")
    add_flag(e, QaicOptions, "num_cores", name="--draft-num-cores", default=5, prefix="proposer: ")
    add_flags(e, QaicOptions, skip=("num_cores",))
    c = p.add_argument_group("connection (services given by address)")
    add_flags(c, ClientSecurity, defaults={"auth_token": os.environ.get("SPECDEC_AUTH_TOKEN")})
    c.add_argument("--step-timeout", type=float, default=60.0,
                   help="deadline of each service step, seconds (default: 60)")
    add_flags(c, RecoveryPolicy)


def k_or_auto(parse: Callable[[str], T]) -> Callable[[str], T | str]:
    """An argparse type: `auto`, or what `parse` makes of the text."""
    def convert(text: str) -> T | str:
        return AUTO if text.strip().lower() == AUTO else parse(text)
    convert.__name__ = parse.__name__  # argparse names the type in its error message
    return convert


def concurrency(args: argparse.Namespace) -> int:
    return max(1, args.full_batch_size or args.prefill_bsz)


def engine_args(args: argparse.Namespace, model: str, device_group: str | None, max_k: int,
                draft: bool = False) -> list[str]:
    """Pass the client's engine flags on to a service it starts, under the service's own flag
    declarations (device_group None: the service's default)."""
    engine = {"model": model, "dtype": args.dtype, "prefill_seq_len": args.prefill_seq_len,
              "ctx_len": args.ctx_len, "full_batch_size": concurrency(args),
              "compile": args.compile, "compile_dir": args.compile_dir}
    service = {"max_k": max_k, "executor": args.executor, "device_group": device_group}
    out = [a for f, v in engine.items() for a in to_argv(EngineConfig, f, v)]
    out += [a for f, v in service.items() for a in to_argv(ServiceOptions, f, v)]
    if args.executor == "qaic":
        qaic = {"num_cores": args.draft_num_cores if draft else args.num_cores,
                "mxfp6_matmul": args.mxfp6, "mxint8_kv_cache": args.mxint8_kv_cache,
                "session": args.qaic_session}
        out += [a for f, v in qaic.items() for a in to_argv(QaicOptions, f, v)]
    return out


def service_device_groups(args: argparse.Namespace, target: str | None,
                          draft: str | None) -> tuple[str | None, str | None]:
    """Device groups for a verifier and a proposer started side by side. Given ones are kept;
    on a CPU-only torch host the others get disjoint cores (a core each on two cores), so the
    two services never compete for one, as on separate cards."""
    if args.executor != "torch" or (target and draft):
        return target, draft
    import torch

    if torch.cuda.is_available():
        return target, draft
    verifier_cores, proposer_cores = split_cores(available_cores())
    return target or verifier_cores, draft or proposer_cores


def generation_config(args: argparse.Namespace, k: int, auto: bool, **more: Any) -> GenerationConfig:
    """The common flags' GenerationConfig; a bad sampling flag ends the process with its line."""
    sampling = SamplingParams(args.temperature, args.top_k, args.top_p, args.seed)
    try:
        sampling.validate()
    except InvalidRequest as exc:
        exit_with(exc)
    return GenerationConfig(k, args.max_new_tokens, args.ignore_eos_token, sampling, adaptive_k=auto, **more)


def load_tokenizer(model: str) -> Any:
    """The tokenizer of a checkpoint directory or hub id, found as the services find their
    models (resolve_model_path, the tokenizer's files only)."""
    tok = tokenizer_fingerprint.load_tokenizer(resolve_model_path(model, weights=False))
    if tok is None:
        raise FileNotFoundError(f"model {model!r} has no tokenizer files (any of "
                                f"{', '.join(tokenizer_fingerprint.TOKENIZER_FILES)}), which the "
                                "client encodes prompts with")
    return tok


def client_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"security": ClientSecurity(args.tls_ca, args.tls_cert, args.tls_key, args.auth_token),
            "step_timeout_s": args.step_timeout,
            "recovery": RecoveryPolicy(deadline_s=args.recovery_deadline)}


async def _run(addresses: dict[str, str | None], prompts: list[list[int]], config: GenerationConfig,
               width: int, options: dict[str, Any], local_proposer: Proposer | None = None,
               server_side: Method | None = None) -> list[GenerationRecord]:
    """Every prompt, `width` at a time, the i-th seeded seed + i: by this client's round loop,
    or (server_side: the method) as one Generate call each on the verifier."""
    verifier = addresses["verifier"]
    assert verifier is not None, "run_cli starts a verifier for a missing address first"
    # Channels belong to the event loop they are created in: make them inside it.
    client = SpecDecClient(verifier, None if server_side else addresses.get("proposer"),
                           local_proposer=local_proposer, **options)
    gate = asyncio.Semaphore(width)

    async def one(i: int, ids: list[int]) -> GenerationRecord:
        s = config.sampling
        seeded = replace(config, sampling=replace(s, seed=None if s.seed is None else s.seed + i))
        async with gate:
            if server_side is None:
                return await client.generate(ids, seeded)
            return await generate_record(client, generate_request(ids, server_side, seeded))

    async with client:
        return await asyncio.gather(*(one(i, ids) for i, ids in enumerate(prompts)))


async def generate_record(client: SpecDecClient, request: GenerateRequest) -> GenerationRecord:
    """One Generate call as the record the client's own loop would have made: tokens and times
    seen here, counts from the verifier's final metrics."""
    rec = GenerationRecord(len(request.prompt), t_start=time.perf_counter())
    last = None
    async for last in client.stream_text(request):
        if last.tokens and not rec.tokens:
            rec.t_first = time.perf_counter()
        rec.tokens += last.tokens
    rec.t_end = time.perf_counter()
    assert last is not None, "Generate ends with a reply that holds its finish reason"
    m = last.metrics
    rec.finish = FinishReason(last.finish_reason)
    rec.k_histogram = list(m.k_histogram)
    rec.verify_steps = sum(rec.k_histogram)
    rec.step_tokens = round(m.mean_accepted_tokens * rec.verify_steps)
    rec.drafted, rec.accepted = m.drafted, m.accepted
    # Per draft position, so the draft lengths and acceptance by position come out as the
    # client's own loop would have counted them.
    rec.drafted_at = drafted_at_of(list(m.draft_length_histogram))
    rec.accepted_at = [round(p * d) for p, d in zip(m.acceptance_by_position, rec.drafted_at)]
    rec.pre_draft_hits, rec.recoveries = m.pre_draft_hits, m.recoveries
    return rec


def generate_request(prompt: list[int], method: Method, config: GenerationConfig) -> GenerateRequest:
    """The Generate call that decodes `prompt` as `config` says, with `method`'s proposer:
    target-only where k is 0; k auto as k 0, the largest the verifier accepts, chosen per round."""
    k = config.num_speculative_tokens
    return GenerateRequest(tuple(prompt), method if k else Method.NONE, 0 if config.adaptive_k else k,
                           config.adaptive_k, config.sampling, config.max_new_tokens,
                           ignore_eos=config.ignore_eos)


def _wait_listening(svc: ServiceProcess) -> str:
    """The address of a service that is starting: known once it is bound, before it loads."""
    while not svc.address:
        svc.check_start()
        time.sleep(0.05)
    return svc.address


def _start_services(args: argparse.Namespace, services: Services,
                    addresses: dict[str, str | None], stack: ExitStack) -> dict[str, ServiceProcess]:
    """Start the services that have no address, stopped when `stack` closes, all at once (the
    verifier last: with --server-side it is given the proposer's address, known once bound), and
    fill in their addresses; one that cannot start ends the process with its one line."""
    started: dict[str, ServiceProcess] = {}
    try:
        for key in sorted(services, key=lambda name: name == "verifier"):
            if addresses.get(key) is not None:
                continue
            extra: list[str] = []
            if key == "verifier" and args.server_side and "proposer" in services:
                if "proposer" in started:
                    addresses["proposer"] = _wait_listening(started["proposer"])
                extra = to_argv(VerifierOptions, "proposer", addresses["proposer"])
            print(f"starting {key} ...", file=sys.stderr, flush=True)
            started[key] = start_service(key, f"{key}_service", [*services[key], *extra],
                                         echo_stderr=not args.quiet_services, wait=False)
            stack.callback(started[key].stop)
        wait_all_ready(list(started.values()))
    except ServiceStartError as exc:
        stack.close()   # the others stopped first: the error is the last line
        exit_with(exc)
    for key, svc in started.items():
        addresses[key] = svc.address
        print(f"{svc.name} ready on {svc.address}", file=sys.stderr, flush=True)
    return started


def show_client_log() -> None:
    """The client library's log (what a user should know of the pair, e.g. that its drafts are
    translated) on stderr, as the CLI's own messages."""
    client_log = logging.getLogger("client")
    if not client_log.handlers:
        client_log.addHandler(logging.StreamHandler(sys.stderr))
        client_log.setLevel(logging.INFO)


def run_cli(args: argparse.Namespace, tokenizer_model: str, services: Services,
            addresses: dict[str, str | None], config: GenerationConfig,
            default_prompts: list[str] = DEFAULT_PROMPTS, local_proposer: Proposer | None = None,
            method: Method = Method.DRAFT) -> int:
    """Start whatever services have no address, generate every prompt, print and save. A model
    that cannot be loaded, here or in a service started here, ends the process with its one
    line (exit_with). method: Generate's, for --server-side (draft, ngram, turbo)."""
    show_client_log()
    try:
        tok = load_tokenizer(tokenizer_model)
    except START_ERRORS as exc:
        exit_with(exc)
    texts = args.prompts or default_prompts
    prompts = [tok(t)["input_ids"] for t in texts]
    if args.server_side and addresses["verifier"] is not None:
        if addresses.get("proposer") is not None:
            exit_with(InvalidRequest("--server-side with --verifier: the verifier drafts on its own "
                                     "--proposer; drop --proposer here"))
        services = {"verifier": services["verifier"]}   # none to start for it
    with ExitStack() as stack:
        started = _start_services(args, services, addresses, stack)
        if args.compare_target_only and started:
            # Timings are compared: the services' step graphs, compiled in the background
            # after ready, must all be in use first (a start with a warm cache is quick).
            print("waiting for the services' compiled steps (--compile off skips them) ...",
                  file=sys.stderr, flush=True)
            for svc in started.values():
                svc.wait_compiled(QUIET_TIMEOUT_S)

        def run(config: GenerationConfig, proposer: Proposer | None) -> list[GenerationRecord]:
            return asyncio.run(_run(addresses, prompts, config, concurrency(args), client_options(args),
                                    proposer, method if args.server_side else None))

        try:
            records = run(config, local_proposer)
            baseline = run(replace(config, num_speculative_tokens=0, adaptive_k=False), None) \
                if args.compare_target_only else None
        except (ServiceError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    stats = getattr(local_proposer, "stats", None)  # a suffix proposer's cache hits and size
    report(args, tok, texts, prompts, records, baseline,
           asdict(stats()) if stats is not None else None)
    return 0


def report(args: argparse.Namespace, tok: Any, texts: list[str], prompts: list[list[int]],
           records: list[GenerationRecord],
           target_only: list[GenerationRecord] | None = None,
           proposer_stats: dict | None = None) -> None:
    out = []
    for text, ids, rec in zip(texts, prompts, records):
        gen = tok.decode(rec.tokens, skip_special_tokens=True)
        print(f"\n=== prompt: {text!r}\n{text}{gen}\n--- ({len(rec.tokens)} tokens, "
              f"finish: {rec.finish.name})")
        out.append({"prompt": text, "prompt_ids": ids, "generated_ids": rec.tokens,
                    "text": gen, "finish_reason": rec.finish.name,
                    "metrics": generation_metrics(rec).as_dict()})
    totals = batch_metrics(records)
    print("\n" + format_metrics(totals))
    doc: dict[str, Any] = {"prompts": out, "totals": totals.as_dict()}
    if proposer_stats is not None:  # a proposer run in the client (--local-proposer)
        print("Proposer: " + ", ".join(f"{k} = {v}" for k, v in proposer_stats.items()))
        doc["proposer"] = proposer_stats
    if target_only is not None:
        print("\n" + format_comparison(records, target_only, args.temperature == 0))
        doc["target_only"] = {"generated_ids": [r.tokens for r in target_only],
                              "totals": batch_metrics(target_only).as_dict()}
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2))
        print(f"wrote {args.json}", file=sys.stderr)
