"""The benchmark as a report: every method x k, concurrent sessions, and transformers' own
decoding on the same models, prompts and machine, in one run; written as docs/benchmarks.md
(tables, machine, date, command), PNG plots beside it, benchmarks.json, and the README's
headline block.

    python -m bench.report            # the full report (about 6 minutes on a 2-core CPU)
    python -m bench.report --quick    # a small one, services eager (what the test runs)
    python -m bench.report --quick --out /tmp/report   # elsewhere: the README is left alone

The README's block between <!-- bench:headline --> and <!-- /bench:headline --> is rewritten
only when the report goes to this repository's docs/ (the default). Exit status 1 when any row
produced tokens other than target-only's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from tqdm import tqdm

from bench import plots
from bench.__main__ import BENCH_PROMPTS, read_prompts
from bench.__main__ import parse_args as bench_args
from bench.concurrency import measure as measure_concurrency
from bench.markdown import REPORT, Setup, headline_rows, render, with_readme_block
from bench.matrix import Plan, run_matrix, steps
from bench.rows import TARGET_ONLY, Row
from client.cli_common import load_tokenizer
from specdec.cpu_cores import available_cores
from specdec.engine.turbo import read_turbo_config
from specdec.generation import GenerationConfig
from specdec.service_config import DEFAULT_PRE_DRAFT_BRANCHES

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Scale:
    """How much a report runs."""

    plan: Plan
    prompts: int
    max_new_tokens: int
    sessions: tuple[int, ...]
    compile: str   # the method rows' --compile; the concurrency rows run eager


FULL = Scale(Plan(ks=(1, 2, 3, 4, 6), k=4, auto_max_k=6, pre_draft_branches=DEFAULT_PRE_DRAFT_BRANCHES,
                  repeats=5),
             prompts=4, max_new_tokens=96, sessions=(1, 2, 4, 8), compile="on")
QUICK = Scale(Plan(ks=(2,), k=2, auto_max_k=2, pre_draft_branches=DEFAULT_PRE_DRAFT_BRANCHES),
              prompts=2, max_new_tokens=24, sessions=(1, 2), compile="off")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="2 prompts x 24 tokens, k = 2, 1-2 sessions, eager services: under 2 minutes")
    p.add_argument("--out", type=Path, default=ROOT / "docs",
                   help="folder for benchmarks.md, benchmarks.json and benchmarks/*.png (docs/)")
    p.add_argument("--prompts-file", type=Path, default=None,
                   help="prompts from a JSON list of strings (bench/prompts/heldout.json: held "
                        "out of the models' training); default: the bench prompts")
    p.add_argument("--compile", choices=["on", "off"], default=None,
                   help="compile the services' steps for the method rows (full: on; --quick: off); "
                        "the concurrency rows run eager, as compiling every batch bucket x window "
                        "would take most of the run")
    return p.parse_args(argv)


def machine(device: str) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        names = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                 if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB memory"
    except (OSError, ValueError, IndexError):
        pass
    import torch
    import transformers

    gpu = f", {torch.cuda.get_device_name(0)}" if device.startswith("cuda") else ""
    return (f"{cpu}, {len(available_cores())} usable cores of {os.cpu_count()}{mem}{gpu}; {platform.system()} "
            f"{platform.release()}; Python {platform.python_version()}, torch {torch.__version__}, "
            f"transformers {transformers.__version__}; device {device}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    cfg = QUICK if args.quick else FULL
    compile_ = args.compile or cfg.compile
    plan = cfg.plan
    texts = read_prompts(args.prompts_file) if args.prompts_file else BENCH_PROMPTS[:cfg.prompts]
    bench = bench_args(["--max-new-tokens", str(cfg.max_new_tokens), "--compile", compile_])
    tok = load_tokenizer(bench.target_model)
    prompts = [tok(t)["input_ids"] for t in texts]
    heads = read_turbo_config(Path(bench.target_model)).num_heads
    bar = tqdm(total=steps(plan, heads) + 2 * len(cfg.sessions) + 1, desc="bench.report", unit="step",
               file=sys.stderr, dynamic_ncols=True)

    def tick(label: str) -> None:
        bar.set_postfix_str(label)
        bar.update(1)

    rows, tokens = run_matrix(bench, plan, prompts, tick)
    ref = next(r for r in rows if r.mode == TARGET_ONLY)
    flags = ["--ctx-len", str(bench.ctx_len), "--max-k", str(plan.k), "--compile", "off",
             "--prefill-seq-len", str(bench.prefill_seq_len)]
    config = GenerationConfig(plan.k, bench.max_new_tokens, ignore_eos=True)
    table, outputs = measure_concurrency(bench.target_model, bench.draft_model, prompts, config, cfg.sessions,
                                         flags, ["--window-sizes", f"0,{plan.k}"], lambda: tick("concurrency"))
    same = {mode: {n: outs == [tokens[i % len(tokens)] for i in range(n)] for n, outs in by_n.items()}
            for mode, by_n in outputs.items()}
    command = "python -m bench.report" + "".join(f" {shlex.quote(a)}" for a in (sys.argv[1:] if argv is None
                                                                                 else argv))
    settings = (f"{len(prompts)} prompts x {bench.max_new_tokens} new tokens, greedy, EOS ignored; "
                f"{bench.device}/{bench.dtype}; method rows: services compiled: {compile_}, batch 1; "
                f"concurrency rows: services eager, k = {plan.k}; pre-drafting: "
                f"{plan.pre_draft_branches} branches at k = {plan.k}; k auto: 0..{plan.auto_max_k}, "
                f"its estimates carried across its repeats; "
                f"gRPC rows measured in turn, median of {plan.repeats}; "
                f"n-gram size {bench.max_ngram_size}; models: {bench.target_model} (target, Turbo heads), "
                f"{bench.draft_model} (draft)")
    summary = (f"{len(prompts)} prompts x {bench.max_new_tokens} tokens, {bench.device}, services "
               f"{'compiled' if compile_ == 'on' else 'eager'}")
    setup = Setup(datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), command, machine(bench.device),
                  (time.perf_counter() - t0) / 60, settings, summary, texts, plan.k)
    write(args.out, setup, rows, table, same, outputs)
    tick("written")
    bar.close()
    ok = all(r.identical for r in rows) and all(all(v.values()) for v in same.values())
    print(f"bench.report: wrote {args.out / 'benchmarks.md'} in {setup.minutes:.1f} min; target-only "
          f"{ref.tokens_per_s:.0f} tok/s; identical tokens in every row: {ok}", file=sys.stderr)
    return 0 if ok else 1


def write(out: Path, setup: Setup, rows: list[Row], table: dict[str, dict[int, float]],
          same: dict[str, dict[int, bool]], outputs: dict[str, dict[int, list[list[int]]]]) -> None:
    pngs = out / "benchmarks"
    pngs.mkdir(parents=True, exist_ok=True)
    top = headline_rows(rows, setup.k)
    plots.tokens_per_s(top, pngs / "tokens_per_s.png")
    plots.speedup_vs_k(rows, pngs / "speedup_vs_k.png")
    plots.acceptance(rows, pngs / "acceptance.png")
    plots.concurrency(table, pngs / "concurrency.png")
    plots.round_time([r for r in top if not r.peer], pngs / "round_time.png")
    text = render(setup, rows, table, same)
    (out / "benchmarks.md").write_text(text)
    (out / "benchmarks.json").write_text(json.dumps(
        {"setup": asdict(setup), "rows": [r.as_dict() for r in rows],
         "concurrency": {"tokens_per_s": table, "identical": same, "tokens": outputs}}))
    if out.resolve() == (ROOT / REPORT).parent:
        readme = ROOT / "README.md"
        readme.write_text(with_readme_block(readme.read_text(), text))


if __name__ == "__main__":
    raise SystemExit(main())
