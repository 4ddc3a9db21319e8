"""bench.scale's passes over the services: a verifier and a draft == target proposer started,
timed to ready and to compiled, decoding the prompts over gRPC, and their peak RSS read."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.__main__ import run_grpc, service_flags, start_proposer, start_verifier
from bench.measure import measured_in_turn
from client.launcher import ServiceProcess, wait_all_ready
from specdec.generation import GenerationConfig, GenerationRecord
from specdec.method import Method
from specdec.metrics import BatchMetrics, generation_metrics

K = 4                   # drafts per round of the speculative row
T0 = time.monotonic()


def say(msg: str) -> None:
    print(f"[bench.scale {time.monotonic() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


@dataclass
class Pass:
    """One set of services' figures. startup: per start, service -> (ready s, compiled s)."""

    startup: list[dict[str, tuple[float, float]]]
    peak_rss_mb: dict[str, float]                 # the services that served the rows
    first_peak_rss_mb: dict[str, float]           # the first start's (compiling), after compiled
    target_only: tuple[list[GenerationRecord], BatchMetrics]
    speculative: tuple[list[GenerationRecord], BatchMetrics]
    ttft_s: float


def peak_rss_mb(pid: int) -> float:
    """VmHWM (the process's peak resident set) in MiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


def start_pair(args: argparse.Namespace, compile_dir: Path) -> list[ServiceProcess]:
    """A verifier and a draft == target proposer, started side by side (each on its own cores),
    once both have printed their compiled line (start_verifier/start_proposer wait for it)."""
    _, v_flags, p_flags = service_flags(args, K, [0, K])
    extra = ["--compile-dir", str(compile_dir)]
    services = [start_verifier(args, [*v_flags, *extra], wait=False),
                start_proposer(args, [*p_flags, *extra], Method.DRAFT, pre_draft_branches=0, wait=False)]
    try:
        wait_all_ready(services)
    except BaseException:
        for svc in services:
            svc.stop()
        raise
    return services


def startup_s(svc: ServiceProcess) -> tuple[float, float]:
    """(ready, compiled) seconds after the process started."""
    assert svc.ready_at is not None and svc.compiled_at is not None  # start_pair waited for both
    return svc.ready_at - svc.started_at, svc.compiled_at - svc.started_at


def run_pass(args: argparse.Namespace, compile_dir: Path, starts: int, prompts: list[list[int]],
             long_prompt: list[int]) -> Pass:
    """Start the pair `starts` times with one --compile-dir; the last start serves the rows."""
    startup, first_rss = [], {}
    for i in range(starts):
        say(f"--compile {args.compile}: start {i + 1} of {starts}")
        services = start_pair(args, compile_dir)
        startup.append({s.name: startup_s(s) for s in services})
        say("  " + ", ".join(f"{n} ready {r:.1f}s, compiled {c:.1f}s" for n, (r, c) in startup[-1].items()))
        if i < starts - 1:
            first_rss = {s.name: peak_rss_mb(s.proc.pid) for s in services}
            for svc in services:
                svc.stop()
    try:
        verifier, proposer = (s.address for s in services)
        warm = prompts[:1]

        def row(label: str, drafts: str | None, k: int):
            config = GenerationConfig(k, args.max_new_tokens, ignore_eos=True)
            return label, lambda warmup: run_grpc_sync(verifier, drafts, warm if warmup else prompts, config)

        target_only, speculative = measured_in_turn(
            [row(f"target-only, gRPC, --compile {args.compile}", None, 0),
             row(f"draft == target k = {K}, gRPC, --compile {args.compile}", proposer, K)], args.repeats)
        say(f"  TTFT of a {len(long_prompt)}-token prompt, target-only")
        first = GenerationConfig(0, 1, ignore_eos=True)   # the first run warms the long prefill
        records = run_grpc_sync(verifier, None, [long_prompt] * (1 + args.repeats), first)[1:]
        ttft = statistics.median(generation_metrics(r).ttft_s for r in records)
        rss = {s.name: peak_rss_mb(s.proc.pid) for s in services}
    finally:
        for svc in services:
            svc.stop()
    return Pass(startup, rss, first_rss or rss, target_only, speculative, ttft)


def run_grpc_sync(verifier: str, proposer: str | None, prompts: list[list[int]],
                  config: GenerationConfig) -> list[GenerationRecord]:
    return asyncio.run(run_grpc(verifier, proposer, prompts, config))
