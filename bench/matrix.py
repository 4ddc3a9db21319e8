"""The report's matrix: each method x k over gRPC, and the transformers peers, on one set of
prompts, in one process run. The rows come from the benchmark's own pieces (bench.__main__:
its service flags and starts, `run_grpc`, `measured`; bench.peers, `measured_peer`)."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.__main__ import measured_in_turn, run_grpc, service_flags, start_proposer, start_verifier
from bench.peers import hf_assisted, hf_generate, hf_prompt_lookup, load_hf, measured_peer
from bench.rows import GENERATE, PEER_OF, TARGET_ONLY, Row, peer_row, service_row, target_round_ms
from specdec.engine.turbo import read_turbo_config
from specdec.generation import GenerationConfig, GenerationRecord
from specdec.method import Method


@dataclass(frozen=True)
class Plan:
    ks: tuple[int, ...]         # fixed k for the draft model and prompt lookup (and the peers)
    k: int                      # the headline k: pre-drafting runs at it, the headline shows it
    auto_max_k: int             # k auto picks from 0..this each round
    pre_draft_branches: int
    # The draft's and prompt lookup's rows, every fixed k and k auto, are measured in turn this
    # many times and each shows its median (bench.__main__.measured_in_turn): auto is compared
    # with the best fixed k, and a shared CPU drifts by 10-20% between rows measured once.
    repeats: int = 1


def steps(plan: Plan) -> int:
    """Progress-bar steps of `run_matrix`: service start, rows, peers."""
    return 1 + (1 + 2 * len(plan.ks) + 1 + 1 + 2) + (1 + 2 * len(plan.ks))


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
    new = args.max_new_tokens
    warm = prompts[:1]

    def in_turn(runs: list[tuple[str, str, str | None, GenerationConfig]], repeats: int = 1):
        """(label, verifier, proposer, config) rows measured in turn: each row's median records."""
        def run(verifier: str, proposer: str | None, config: GenerationConfig):
            return lambda warmup: asyncio.run(run_grpc(
                services[verifier].address, services[proposer].address if proposer else None,
                warm if warmup else prompts, config))
        measured = measured_in_turn([(label, run(v, p, c)) for label, v, p, c in runs], repeats)
        for label, *_ in runs:
            tick(label)
        return [records for records, _ in measured]

    def grpc(verifier: str, proposer: str | None, config: GenerationConfig, label: str):
        return in_turn([(label, verifier, proposer, config)])[0]

    rows: list[Row] = []
    try:
        for svc in services.values():
            svc.wait_ready()
        tick("services ready")
        base = grpc("plain", None, GenerationConfig(0, new, ignore_eos=True), TARGET_ONLY)
        ref, t_ms = [r.tokens for r in base], target_round_ms(base)
        rows.append(service_row(TARGET_ONLY, 0, base, ref))
        auto = GenerationConfig(plan.auto_max_k, new, ignore_eos=True, adaptive_k=True)
        auto_rows = []   # shown after the fixed-k methods, as in the headline
        for method in (Method.DRAFT, Method.NGRAM):
            runs = [(f"{method} k={k}", "plain", method, GenerationConfig(k, new, ignore_eos=True)) for k in plan.ks]
            *fixed, auto_recs = in_turn([*runs, (f"{method} k auto", "plain", method, auto)], plan.repeats)
            rows += [service_row(method, k, recs, ref, t_ms) for k, recs in zip(plan.ks, fixed)]
            auto_rows.append(auto_row(method, plan, auto_recs, rows, ref))
        # Turbo at each k up to its heads: a round verifies the first k guesses (a smaller window
        # can cost less per token than all H: `python -m bench.turbo_cost`).
        for k in sorted({*(k for k in plan.ks if k <= heads), min(plan.k, heads)}):
            recs = grpc(Method.TURBO, None, GenerationConfig(k, new, ignore_eos=True), f"turbo k={k}")
            rows.append(service_row(Method.TURBO, k, recs, ref, t_ms))
        recs = grpc("plain", "pre", GenerationConfig(plan.k, new, ignore_eos=True), "draft pre-drafting")
        hits = sum(r.pre_draft_hits for r in recs) / max(1, sum(r.proposals for r in recs))
        rows.append(service_row("draft pre-drafting", plan.k, recs, ref, note=f"{plan.pre_draft_branches} "
                                f"branches, {hits:.0%} of drafts pre-drafted"))
        rows += auto_rows
    finally:
        for svc in services.values():
            svc.stop()
    return rows + run_peers(args, plan, prompts, ref, tick), ref


def auto_row(method: Method, plan: Plan, records: list[GenerationRecord], rows: list[Row],
             reference: list[list[int]]) -> Row:
    """k auto's row, its note the rounds by k and how it compares with the best fixed k in its
    range (target-only is k = 0)."""
    hist = [sum(r.k_histogram[k] for r in records if k < len(r.k_histogram)) for k in range(plan.auto_max_k + 1)]
    row = service_row(f"{method} k auto", plan.auto_max_k, records, reference)
    best = max((r for r in rows if r.mode == TARGET_ONLY or (r.mode == method and r.k <= plan.auto_max_k)),
               key=lambda r: r.tokens_per_s)
    row.note = (f"rounds by k: {' '.join(f'{k}:{n}' for k, n in enumerate(hist) if n)}; "
                f"{row.tokens_per_s / best.tokens_per_s:.2f}x the best fixed k ({best.k})")
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
