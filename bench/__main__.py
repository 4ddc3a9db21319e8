"""Benchmark: the same models and prompts, decoded several ways, measured in one run.

  (a) target-only: k = 0 steps through the verifier service over gRPC
  (b) speculative over gRPC: the services as separate processes, each pinned to its own CPU
      cores on a CPU host (for --method turbo the verifier alone, drafting with its heads)
  (b+r) as (b), with a proposer that pre-drafts the next round while the verifier verifies
      (--method draft, --pre-draft-branches F); the client asks for each draft, and a hit is
      answered from the branches at once
  (b~) as (b), with k chosen each round (--num-speculative-tokens auto, up to --auto-max-k)
      (--method draft and ngram)
  (g) Generate on the verifier: each prompt as one Generate call, the verifier running the same
      loop (--method draft: on the proposer service of (b), the verifier's --proposer; ngram:
      prompt lookup inside the verifier; turbo: the Turbo verifier's heads)
  (c) speculative in-process: the same library and generation loop, no gRPC, one process
  (d) transformers' plain greedy generate() on the same target (what a Python user has)
  (e) transformers' own speculation on the same models: assisted generation with the draft
      (--method draft) or prompt lookup (--method ngram)

Prints tokens/s of each, the ratios b/a (what speculation buys), b/c (what the split costs),
g/b (the loop served by the verifier vs the client's), a/d and b/e (against transformers), and
mean accepted tokens per target step. Every row must produce identical tokens.

With --temperature T > 0 every row samples, seeded: the rows (a), (b), (b+r), (g) and (c) only. The
speculative ones must give the same tokens (the same seed draws the same numbers however the
drafts came about, pre-drafted or not); (a) and transformers draw differently.

    python -m bench --method draft --k 4
    python -m bench --method ngram --k 3
    python -m bench --method turbo
    python -m bench --method draft --temperature 0.5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from bench.measure import Result, measured, measured_in_turn, throughput_without
from bench.peers import hf_assisted, hf_generate, hf_prompt_lookup, load_hf, measured_peer, own_tokenizers
from client.api import SpecDecClient
from client.cli_common import DEFAULT_PROMPTS, generate_record, generate_request, load_tokenizer
from client.launcher import ServiceProcess, start_service
from specdec.adaptive_k import KEstimates
from specdec.build import build_proposer, build_verifier
from specdec.config import DTYPES, EngineConfig
from specdec.cpu_cores import available_cores, split_cores
from specdec.engine.torch_engine import TorchEngine
from specdec.engine.turbo import read_turbo_config
from specdec.generation import GenerationConfig, GenerationRecord, generate
from specdec.inprocess import InProcessProposerLink, InProcessVerifierLink
from specdec.method import Method, method_arg
from specdec.metrics import BatchMetrics
from specdec.sampling import SamplingParams
from specdec.service_config import DEFAULT_PRE_DRAFT_BRANCHES
from specdec_rpc.server import COMPILED_PREFIX

BENCH_METHODS = (Method.DRAFT, Method.NGRAM, Method.TURBO)
BENCH_PROMPTS = DEFAULT_PROMPTS + [
    "class Stack:\n    def __init__(self):\n",
    "def copyfile(src, dst):\n    \"\"\"Copy data from src to dst.\"\"\"\n    ",
]
# Openings of functions from the standard-library files held out of the models' training
# (models/README.md): prompts neither model has seen, for figures that must hold beyond them.
HELDOUT_PROMPTS = Path(__file__).parent / "prompts" / "heldout.json"


def read_prompts(path: Path) -> list[str]:
    """A prompts file: a JSON list of strings."""
    texts = json.loads(path.read_text())
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
        raise SystemExit(f"error: {path}: expected a JSON list of non-empty strings")
    return texts


async def run_grpc(verifier: str, proposer: str | None, prompts: list[list[int]],
                   config: GenerationConfig, k_estimates: KEstimates | None = None) -> list[GenerationRecord]:
    """k_estimates: k auto's, carried from an earlier run (None: this client's own)."""
    async with SpecDecClient(verifier, proposer, k_estimates=k_estimates) as client:
        return [await client.generate(p, config) for p in prompts]


async def run_generate(verifier: str, method: Method, prompts: list[list[int]],
                       config: GenerationConfig) -> list[GenerationRecord]:
    """(g): each prompt as one Generate call, timed here as run_grpc's generations are (from
    the request to the last reply; the prompt goes as ids, so no tokenization, but the
    verifier's detokenization is in), its counts from the verifier's final metrics."""
    async with SpecDecClient(verifier) as client:
        return [await generate_record(client, generate_request(p, method, config)) for p in prompts]


async def run_inprocess(verifier, proposer, prompts: list[list[int]],
                        config: GenerationConfig) -> list[GenerationRecord]:
    records = []
    for p in prompts:
        v = InProcessVerifierLink(verifier)
        d = InProcessProposerLink(proposer) if proposer is not None else None
        try:
            records.append(await generate(p, v, d, config, verifier.engine.ctx_len,
                                          proposer.fingerprint if proposer is not None else ""))
        finally:
            await v.close()
            if d is not None:
                await d.close()
    return records


def service_flags(args: argparse.Namespace, max_k: int, windows: list[int],
                  sessions: int = 1) -> tuple[list[str], list[str], list[str]]:
    """(common, verifier, proposer) service flags from the benchmark's engine flags, for this
    many concurrent sessions; the verifier compiles these verify window sizes. As the client's
    launcher does: on a CPU the two services get disjoint cores."""
    flags = ["--device", args.device, "--dtype", args.dtype, "--prefill-seq-len",
             str(args.prefill_seq_len), "--ctx-len", str(args.ctx_len), "--full-batch-size", str(sessions),
             "--max-k", str(max_k), "--compile", args.compile]
    v_cores, p_cores = split_cores(available_cores()) if args.device == "cpu" else (None, None)
    v_flags = [*flags, "--window-sizes", ",".join(map(str, windows))] \
        + (["--device-group", v_cores] if v_cores else [])
    return flags, v_flags, flags + (["--device-group", p_cores] if p_cores else [])


def start_verifier(args: argparse.Namespace, flags: list[str], turbo: bool = False,
                   wait: bool = True) -> ServiceProcess:
    extra = ["--speculative-model-type", Method.TURBO] if turbo else []
    return start_service("verifier", "verifier_service", ["--model", args.target_model, *flags, *extra],
                         wait=wait, wait_for=COMPILED_PREFIX)


def start_proposer(args: argparse.Namespace, flags: list[str], method: Method, pre_draft_branches: int = 0,
                   wait: bool = True) -> ServiceProcess:
    """method "ngram" (prompt lookup), "suffix" (suffix decoding, a fresh cache) or "draft"
    (pre-drafting this many branches; 0 = sequential)."""
    extra = ["--method", method, "--max-ngram-size", str(args.max_ngram_size)] if method == Method.NGRAM \
        else ["--method", method] if method == Method.SUFFIX \
        else ["--method", method, "--model", args.draft_model, "--pre-draft-branches", str(pre_draft_branches),
              "--target-model-name", args.target_model]
    return start_service("proposer", "proposer_service", [*extra, *flags], wait=wait,
                         wait_for=COMPILED_PREFIX)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default=Method.DRAFT, choices=BENCH_METHODS, type=method_arg(BENCH_METHODS))
    p.add_argument("--target-model", default="models/target")
    p.add_argument("--draft-model", default="models/draft")
    p.add_argument("--k", type=int, default=None,
                   help="speculative tokens per step (4; turbo: its heads, at most)")
    p.add_argument("--max-ngram-size", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--ctx-len", type=int, default=256)
    p.add_argument("--prefill-seq-len", type=int, default=32)
    p.add_argument("--dtype", default="float32", choices=DTYPES)
    p.add_argument("--device", default="cpu")
    p.add_argument("--pre-draft-branches", type=int, default=DEFAULT_PRE_DRAFT_BRANCHES,
                   help="draft: also run a proposer that pre-drafts this many outcomes (b+r, "
                        f"hits answered on request); 0 = skip ({DEFAULT_PRE_DRAFT_BRANCHES})")
    p.add_argument("--auto-max-k", type=int, default=None,
                   help="also run k auto (b~), k in 0..this; 0 = skip (draft, ngram: --k; turbo: 0)")
    p.add_argument("--compile", default=os.environ.get("SPECDEC_COMPILE", "on"), choices=["on", "off"],
                   help="compile the torch steps, services and in-process (on; as the services, "
                        "SPECDEC_COMPILE sets the default)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="sample at this temperature, seeded (the draft from its top 16): rows a, "
                        "b, b+r and c only; 0 = greedy (0)")
    p.add_argument("--prompts", action="append", default=None)
    p.add_argument("--prompts-file", type=Path, default=None,
                   help="prompts from a JSON list of strings, e.g. bench/prompts/heldout.json "
                        "(openings of functions held out of the models' training)")
    p.add_argument("--repeats", type=int, default=5,
                   help="times each gRPC row is measured, the rows in turn; each reports its "
                        "median (5)")
    p.add_argument("--json", type=Path, default=None, help="write the figures as JSON")
    return p.parse_args(argv)


@dataclass
class Served:
    """The gRPC rows: (a), (b), (g), and (b~) and (b+r) where they run."""

    a: Result
    b: Result
    g: Result
    auto: Result | None
    pre: Result | None


def served_rows(args: argparse.Namespace, prompts: list[list[int]], config: GenerationConfig,
                auto_k: int) -> Served:
    """Start the services, measure the gRPC rows in turn, stop them."""
    warm = prompts[:1]
    target_only = replace(config, num_speculative_tokens=0)
    auto = GenerationConfig(auto_k, args.max_new_tokens, ignore_eos=True, adaptive_k=True)
    # 0 and k, and with k auto every size up to its max (each size is compiled at start-up).
    # Turbo: (a)'s verifier only runs k = 0; the Turbo verifier compiles the windows of its heads.
    windows = [0] if args.method == Method.TURBO else sorted({0, args.k, *range(auto_k + 1)})
    _, v_flags, p_flags = service_flags(args, max(args.k, auto_k), windows)
    if args.method == Method.DRAFT:  # sequential drafting, first: (g)'s verifier drafts on it (--proposer)
        drafts = start_proposer(args, p_flags, Method.DRAFT)
        services = [start_verifier(args, [*v_flags, "--proposer", drafts.address]), drafts]
    else:
        services = [start_verifier(args, v_flags)]
    if args.method == Method.TURBO:  # a second verifier with its heads on, on the same cores as (a)
        services.append(start_verifier(args, v_flags, turbo=True))
    elif args.method == Method.NGRAM:
        services.append(start_proposer(args, p_flags, Method.NGRAM))
    elif args.pre_draft_branches:  # (b+r) a second proposer that pre-drafts
        services.append(start_proposer(args, p_flags, Method.DRAFT, args.pre_draft_branches))
    try:
        plain = services[0].address
        spec_v, spec_p = (services[1].address, None) if args.method == Method.TURBO \
            else (plain, services[1].address)

        def grpc_row(label: str, verifier: str, proposer: str | None, cfg: GenerationConfig):
            return label, lambda warmup: asyncio.run(
                run_grpc(verifier, proposer, warm if warmup else prompts, cfg))
        rows = [grpc_row("(a) target-only, gRPC", plain, None, target_only),
                grpc_row("(b) speculative, gRPC", spec_v, spec_p, config),
                ("(g) Generate on the verifier", lambda warmup: asyncio.run(
                    run_generate(spec_v, args.method, warm if warmup else prompts, config)))]
        if auto_k:
            rows.append(grpc_row(f"(b~) k auto up to {auto_k}, gRPC", spec_v, spec_p, auto))
        if len(services) > 2:
            rows.append(grpc_row(f"(b+r) pre-drafting {args.pre_draft_branches}, hits on request, gRPC",
                                 plain, services[2].address, config))
        results = measured_in_turn(rows, args.repeats)
    finally:
        for svc in services:
            svc.stop()
    return Served(results[0], results[1], results[2], results[3] if auto_k else None,
                  results[-1] if len(services) > 2 else None)


def in_process_row(args: argparse.Namespace, prompts: list[list[int]], config: GenerationConfig) -> Result:
    """(c): the same loop over in-process links, every step shape compiled first, as the services."""
    engine = EngineConfig(model=args.target_model, device=args.device, dtype=args.dtype,
                          prefill_seq_len=args.prefill_seq_len, ctx_len=args.ctx_len,
                          full_batch_size=1, compile=args.compile)
    if args.method == Method.TURBO:
        verifier, proposer = build_verifier(replace(engine, turbo=True), (0,)), None
    else:
        verifier = build_verifier(engine, (0, args.k) if args.method == Method.DRAFT else tuple(range(args.k + 1)))
        proposer = build_proposer(args.method, replace(engine, model=args.draft_model), args.k,
                                  args.max_ngram_size, target_model=args.target_model)
    for built in (verifier, proposer):
        engine_of = getattr(built, "engine", None)
        if isinstance(engine_of, TorchEngine):
            engine_of.wait_compiled()
    return measured("(c) speculative, in-process", lambda warmup: asyncio.run(
        run_inprocess(verifier, proposer, prompts[:1] if warmup else prompts, config)))


def peer_rows(args: argparse.Namespace, prompts: list[list[int]]) -> tuple[list[list[int]], float, tuple | None]:
    """(d) transformers generate() -> its outputs and tokens/s; (e) its own speculation on the
    same models (measured_peer's outputs, tokens/s, tokens per step, failed prompts), if any."""
    hf, new = load_hf(args.target_model), args.max_new_tokens
    out_d, d, _, _ = measured_peer("(d) transformers generate()", lambda p: hf_generate(hf, p, new), prompts)
    peer = None
    if args.method == Method.DRAFT:
        hf_draft, tokenizers = load_hf(args.draft_model), own_tokenizers(args.target_model, args.draft_model)
        peer = measured_peer("(e) transformers " + ("universal assisted" if tokenizers else "assisted"),
                             lambda p: hf_assisted(hf, hf_draft, p, new, args.k, tokenizers), prompts)
    elif args.method == Method.NGRAM:
        peer = measured_peer("(e) transformers prompt lookup",
                             lambda p: hf_prompt_lookup(hf, p, new, args.k, args.max_ngram_size), prompts)
    return out_d, d, peer


def bench_figures(args: argparse.Namespace, s: Served, c: BatchMetrics, d: float | None,
                  peer: tuple | None) -> dict:
    """The JSON figures of a run: tokens/s and the ratios between the rows."""
    (_, a), (rec_b, b), (_, g) = s.a, s.b, s.g
    pre, auto = s.pre, s.auto
    return {
        "tokens_per_s": {"target_only_grpc": a.e2e_throughput, "speculative_grpc": b.e2e_throughput,
                         "speculative_inprocess": c.e2e_throughput, "transformers_generate": d,
                         "transformers_speculative": peer[1] if peer else None},
        "speedup_b_over_a": b.e2e_throughput / a.e2e_throughput,
        "split_ratio_b_over_c": b.e2e_throughput / c.e2e_throughput,
        "server_side_tokens_per_s": g.e2e_throughput,
        "server_side_vs_client_loop": g.e2e_throughput / b.e2e_throughput,
        "target_only_vs_transformers_a_over_d": a.e2e_throughput / d if d else None,
        "pre_draft_on_request_tokens_per_s": pre[1].e2e_throughput if pre else None,
        "pre_draft_on_request_vs_sequential_bplusr_over_b": pre[1].e2e_throughput / b.e2e_throughput if pre else None,
        "pre_draft_on_request_hit_rate": pre[1].pre_draft_hit_rate if pre else None,
        "pre_draft_on_request_split_vs_inprocess_bplusr_over_c":
            pre[1].e2e_throughput / c.e2e_throughput if pre else None,
        "pre_draft_on_request_vs_transformers_bplusr_over_e":
            throughput_without(pre[0], peer[3]) / peer[1] if pre and peer else None,
        "auto_tokens_per_s": auto[1].e2e_throughput if auto else None,
        "auto_vs_fixed_bauto_over_b": auto[1].e2e_throughput / b.e2e_throughput if auto else None,
        "auto_k_histogram": auto[1].k_histogram if auto else None,
        "speculative_vs_transformers_b_over_e": throughput_without(rec_b, peer[3]) / peer[1] if peer else None,
        "transformers_speculative_failed_prompts": peer[3] if peer else None,
        "transformers_speculative_accepted_per_step": peer[2] if peer else None,
        "mean_accepted_tokens": b.mean_accepted_tokens,
        "acceptance_rate": b.acceptance_rate,
    }


def summary_lines(args: argparse.Namespace, figures: dict, auto_k: int) -> list[str]:
    f, peer_failed = figures, figures["transformers_speculative_failed_prompts"]
    lines = [f"\nspeedup b/a (speculative vs target-only, both gRPC): {f['speedup_b_over_a']:.2f}x",
             f"split  b/c (gRPC services vs in-process):          {f['split_ratio_b_over_c']:.2f}x",
             f"server-side g/b (Generate on the verifier vs the client's loop): "
             f"{f['server_side_vs_client_loop']:.2f}x",
             f"mean accepted tokens per target step: {f['mean_accepted_tokens']:.2f} "
             f"(acceptance rate {f['acceptance_rate']:.1%})"]
    if f["target_only_vs_transformers_a_over_d"]:
        lines.append(f"target-only a/d (gRPC vs transformers generate()): "
                     f"{f['target_only_vs_transformers_a_over_d']:.2f}x")
    if f["speculative_vs_transformers_b_over_e"] is not None:
        lines.append(f"speculative b/e (gRPC vs transformers' own, same k): "
                     f"{f['speculative_vs_transformers_b_over_e']:.2f}x"
                     + (f" (on the prompts but {peer_failed}, which transformers failed)" if peer_failed else ""))
    if f["pre_draft_on_request_tokens_per_s"] is not None:
        lines += ["pre-drafting, hits on request b+r/b:  "
                  f"{f['pre_draft_on_request_vs_sequential_bplusr_over_b']:.2f}x"
                  f"  (hit rate {f['pre_draft_on_request_hit_rate']:.0%})",
                  "pre-drafting b+r/c (split vs sequential in-process): "
                  f"{f['pre_draft_on_request_split_vs_inprocess_bplusr_over_c']:.2f}x"]
    if f["auto_tokens_per_s"] is not None:
        lines.append(f"k auto b~/b (auto up to {auto_k} vs k = {args.k}, both gRPC): "
                     f"{f['auto_vs_fixed_bauto_over_b']:.2f}x  (rounds by k: "
                     + " ".join(f"{k}:{n}" for k, n in enumerate(f["auto_k_histogram"]) if n) + ")")
    return lines + [f"identical outputs across every row: {f['identical_outputs']}"]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.method == Method.TURBO:  # a round verifies the first k of the heads' guesses
        heads = read_turbo_config(Path(args.target_model)).num_heads
        args.k = heads if args.k is None else min(args.k, heads)
        args.auto_max_k = min(args.auto_max_k or 0, heads)
    elif args.k is None:
        args.k = 4
    tok = load_tokenizer(args.target_model)
    texts = args.prompts or (read_prompts(args.prompts_file) if args.prompts_file else BENCH_PROMPTS)
    prompts = [tok(t)["input_ids"] for t in texts]
    sampling = SamplingParams(args.temperature, seed=0)   # greedy at 0
    config = GenerationConfig(args.k, args.max_new_tokens, ignore_eos=True, sampling=sampling)
    auto_k = 0 if not sampling.greedy else args.k if args.auto_max_k is None else args.auto_max_k
    print(f"bench: {args.method}, {len(prompts)} prompts x {args.max_new_tokens} tokens, "
          f"k = {args.k}, {args.device}/{args.dtype}", file=sys.stderr)
    s = served_rows(args, prompts, config, auto_k)
    rec_c, c = in_process_row(args, prompts, config)
    # The speculative rows' tokens; greedy, also target-only's and transformers' (sampled, those
    # draw other numbers from the same seed).
    outputs = [[r.tokens for r in records] for records in
               [s.b[0], s.g[0], rec_c] + ([s.pre[0]] if s.pre else []) + ([s.auto[0]] if s.auto else [])]
    d = peer = None
    if sampling.greedy:
        out_d, d, peer = peer_rows(args, prompts)
        # A prompt the peer failed on is compared without it.
        outputs += [[r.tokens for r in s.a[0]], out_d] + \
            ([[ref if i in peer[3] else o for i, (o, ref) in enumerate(zip(peer[0], outputs[0]))]]
             if peer else [])
    figures = bench_figures(args, s, c, d, peer)
    figures["identical_outputs"] = same = all(o == outputs[0] for o in outputs)
    figures["setup"] = {"method": args.method, "k": args.k, "auto_max_k": auto_k, "prompts": len(prompts),
                        "prompts_file": str(args.prompts_file) if args.prompts_file else None,
                        "max_new_tokens": args.max_new_tokens, "device": args.device,
                        "dtype": args.dtype, "compile": args.compile, "target": args.target_model,
                        "draft": args.draft_model, "temperature": args.temperature}
    print("\n".join(summary_lines(args, figures, auto_k)))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
