"""The report's matrix: each method x k over gRPC, and the transformers peers, on one set of
prompts, in one process run. The rows come from the benchmark's own pieces (bench.__main__:
its service flags and starts, `run_grpc`; bench.measure, `measured_in_turn`; bench.peers,
`measured_peer`)."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from bench.__main__ import run_grpc, service_flags, start_proposer, start_verifier
from bench.auto_k import AUTO, summary
from bench.measure import measured_in_turn
from bench.peers import hf_assisted, hf_generate, hf_prompt_lookup, load_hf, measured_peer
from bench.rows import (
    AUTO_OF,
    GENERATE,
    PEER_OF,
    PRE_DRAFTING,
    TARGET_ONLY,
    Row,
    peer_row,
    service_row,
    target_round_ms,
)
from specdec.adaptive_k import KEstimates
from specdec.engine.turbo import read_turbo_config
from specdec.generation import GenerationConfig, GenerationRecord
from specdec.method import Method
from specdec.metrics import batch_metrics


@dataclass(frozen=True)
class Plan:
    ks: tuple[int, ...]         # fixed k for the draft model and prompt lookup (and the peers)
    k: int                      # the headline k: pre-drafting runs at it, the headline shows it
    auto_max_k: int             # k auto picks from 0..this each round
    pre_draft_branches: int
    # Every gRPC row is measured in turn this many times and shows its median repeat
    # (bench.measure.measured_in_turn): a shared CPU drifts by 10-20% between rows measured
    # once each, which is as much as k auto and the best fixed k differ by.
    repeats: int = 1


class GrpcRun(NamedTuple):
    """A row over gRPC: its mode (bench.rows), the services by name, its generation config."""

    mode: str
    verifier: str
    proposer: str | None
    config: GenerationConfig

    @property
    def label(self) -> str:
        k = self.config.num_speculative_tokens
        return self.mode if self.mode in (TARGET_ONLY, PRE_DRAFTING, *AUTO_OF.values()) else f"{self.mode} k={k}"


def grpc_runs(plan: Plan, heads: int, new: int) -> list[GrpcRun]:
    """The rows over gRPC, in the order they are shown (k auto after the fixed-k methods)."""
    def fixed(k: int) -> GenerationConfig:
        return GenerationConfig(k, new, ignore_eos=True)

    auto = GenerationConfig(plan.auto_max_k, new, ignore_eos=True, adaptive_k=True)
    # Turbo at each k up to its heads: a round verifies the first k guesses (a smaller window
    # can cost less per token than all H: `python -m bench.turbo_cost`).
    turbo_ks = sorted({*(k for k in plan.ks if k <= heads), min(plan.k, heads)})
    return [GrpcRun(TARGET_ONLY, "plain", None, fixed(0)),
            *(GrpcRun(m, "plain", m, fixed(k)) for m in AUTO_OF for k in plan.ks),
            *(GrpcRun(Method.TURBO, Method.TURBO, None, fixed(k)) for k in turbo_ks),
            GrpcRun(PRE_DRAFTING, "plain", "pre", fixed(plan.k)),
            *(GrpcRun(mode, "plain", m, auto) for m, mode in AUTO_OF.items())]


def steps(plan: Plan, heads: int) -> int:
    """Progress-bar steps of `run_matrix`: service start, each gRPC row's repeats, peers."""
    return 1 + len(grpc_runs(plan, heads, 0)) * plan.repeats + (1 + 2 * len(plan.ks))


def run_matrix(args: argparse.Namespace, plan: Plan, prompts: list[list[int]],
               tick: Callable[[str], None]) -> tuple[list[Row], list[list[int]]]:
    """args: the benchmark's flags (bench.__main__.parse_args). Returns the rows and target-only's
    tokens over gRPC, which every row's are compared with."""
    heads = read_turbo_config(Path(args.target_model)).num_heads
    max_k = max(*plan.ks, plan.auto_max_k, heads)
    windows = sorted({0, *plan.ks, *range(plan.auto_max_k + 1)})
    _, v_flags, p_flags = service_flags(args, max_k, windows)
    # All at once: they load and compile side by side, each on its own cores. Compiling 6 windows
    # can take several minutes on a busy 2-core machine; each service logs every step it
    # compiled, which keeps its start-up deadline (client.launcher) from running out.
    services = {"plain": start_verifier(args, v_flags, wait=False),
                # On the plain verifier's cores, as every row it is compared with.
                Method.TURBO: start_verifier(args, [*v_flags, "--window-sizes", f"0,{heads}"], turbo=True,
                                        wait=False),
                Method.DRAFT: start_proposer(args, p_flags, Method.DRAFT, wait=False),
                "pre": start_proposer(args, p_flags, Method.DRAFT, plan.pre_draft_branches, wait=False),
                Method.NGRAM: start_proposer(args, p_flags, Method.NGRAM, wait=False)}
    runs = grpc_runs(plan, heads, args.max_new_tokens)

    per_repeat: dict[str, list[float]] = {}   # label -> tokens/s of each repeat, in turn order

    def run(row: GrpcRun):
        # k auto's estimates live as long as a client or the verifier's Generate: the row's
        # warm-up and repeats share one set, so its start-up sweep is paid once, as theirs is.
        estimates = KEstimates() if row.config.adaptive_k else None

        def once(warmup: bool) -> list[GenerationRecord]:
            records = asyncio.run(run_grpc(services[row.verifier].address,
                                           services[row.proposer].address if row.proposer else None,
                                           prompts[:1] if warmup else prompts, row.config, estimates))
            if not warmup:
                per_repeat.setdefault(row.label, []).append(batch_metrics(records).e2e_throughput)
                tick(row.label)
            return records
        return row.label, once

    try:
        for svc in services.values():
            svc.wait_ready()
        tick("services ready")
        measured = [records for records, _ in measured_in_turn([run(r) for r in runs], plan.repeats)]
    finally:
        for svc in services.values():
            svc.stop()
    ref, t_ms = [r.tokens for r in measured[0]], target_round_ms(measured[0])   # target-only first
    rows: list[Row] = []
    for row, records in zip(runs, measured):
        k = row.config.num_speculative_tokens
        if row.config.adaptive_k:
            method = next(m for m, mode in AUTO_OF.items() if mode == row.mode)
            fixed = {r.label: r.config.num_speculative_tokens for r in runs
                     if r.mode == TARGET_ONLY or (r.mode == method and r.config.num_speculative_tokens
                                                  <= plan.auto_max_k)}
            rows.append(auto_row(method, plan, records, ref, fixed,
                                 {**{label: per_repeat[label] for label in fixed}, AUTO: per_repeat[row.label]}))
        elif row.mode == PRE_DRAFTING:
            hits = batch_metrics(records).pre_draft_hit_rate
            rows.append(service_row(row.mode, k, records, ref, note=f"{plan.pre_draft_branches} branches, "
                                    f"{hits:.0%} of drafts pre-drafted"))
        else:
            rows.append(service_row(row.mode, k, records, ref, t_ms if k else None))
    return rows + run_peers(args, plan, prompts, ref, tick), ref


def auto_row(method: Method, plan: Plan, records: list[GenerationRecord], reference: list[list[int]],
             fixed: dict[str, int], rates: dict[str, list[float]]) -> Row:
    """k auto's row, its note the rounds by k and how it compares with the fixed k in its range
    (target-only is k = 0). fixed: their labels -> k; rates: tokens/s per repeat by label, and
    k auto's as AUTO (bench.auto_k.summary)."""
    hist = [sum(r.k_histogram[k] for r in records if k < len(r.k_histogram)) for k in range(plan.auto_max_k + 1)]
    row = service_row(AUTO_OF[method], plan.auto_max_k, records, reference)
    vs = summary(rates)
    held_out = vs["auto_over_held_out_best"]
    row.note = (f"rounds by k: {' '.join(f'{k}:{n}' for k, n in enumerate(hist) if n)}; "
                f"{vs['auto_over_best_fixed']:.2f}x the best fixed k ({fixed[vs['best_fixed']]})"
                + (f", {held_out:.2f}x held out (median of repeats)" if held_out is not None else ""))
    return row


def run_peers(args: argparse.Namespace, plan: Plan, prompts: list[list[int]], ref: list[list[int]],
              tick: Callable[[str], None]) -> list[Row]:
    """transformers on the same target (and draft), in this process, greedy, the same tokens."""
    new = args.max_new_tokens
    hf, hf_draft = load_hf(args.target_model), load_hf(args.draft_model)
    runs: list[tuple[str, int, Callable]] = [(GENERATE, 0, lambda p: hf_generate(hf, p, new))]
    for k in plan.ks:
        runs.append((PEER_OF[Method.DRAFT], k, lambda p, k=k: hf_assisted(hf, hf_draft, p, new, k)))
    for k in plan.ks:
        runs.append((PEER_OF[Method.NGRAM], k,
                     lambda p, k=k: hf_prompt_lookup(hf, p, new, k, args.max_ngram_size)))
    rows = []
    for mode, k, run in runs:
        label = f"{mode} k={k}" if k else mode
        outs, tps, per_step, _ = measured_peer(label, run, prompts)
        rows.append(peer_row(mode, k, outs, tps, per_step, ref))
        tick(label)
    return rows
