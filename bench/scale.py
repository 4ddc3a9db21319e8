"""The scale benchmark: a published model shape (random weights, --layers layers) served on this
machine and measured against itself and transformers in one run. Its figures are ratios, so a
shape's figures compare across machines (absolute times are printed beside them).

    python -m bench.scale --family llama-3.2-1b --layers 2
    python -m bench.scale --quick --shrink --compile off      # what the test runs (about a minute)

Two passes over one checkpoint: eager services (--compile off), then compiled ones (--compile,
on by default). Each pass starts a verifier and a draft proposer on the same checkpoint (draft
== target: every draft is accepted, so what is measured is the mechanics), on disjoint cores,
proposer pre-drafting off. Measured:

  start-up      process start -> "specdec-ready" and -> "specdec-compiled" (the background
                compile done), per service: eager; compiled with a fresh --compile-dir (first
                start), then again with the same one (second start, the cache warm)
  peak RSS      VmHWM of each service process at the end of its pass: compiled / eager
  target-only   tokens/s of greedy k = 0 over gRPC / transformers' greedy generate() in this
                process, the same prompts
  speculation   draft == target at k = 4 over gRPC / target-only; tokens per target step
  step / floor  target-only's decode time per token at batch 1 over gRPC (and the eager
                engine's step in this process) / bench.floor's floor (bytes a step reads /
                memory bandwidth, on as many threads as the verifier has cores)
  TTFT          a --long-prompt-tokens prompt at --ctx-len 2048 --prefill-seq-len 256,
                target-only over gRPC / one transformers forward over it (its prefill)

"Compiled" is when a service printed its compiled line (eager: just after ready).
Transformers run in this process on --device, with torch's own thread count. Writes
--out as JSON ("figures": every number; "identical_tokens"; "setup") and prints a markdown
table. Exit status 1 when speculation's tokens differ from target-only's.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from bench.families import FAMILIES, build_checkpoint
from bench.report import machine
from bench.scale_passes import K, Pass, run_pass, say
from bench.scale_table import figures_table
from specdec.config import COMPILE_MODES, DTYPES, EngineConfig
from specdec.cpu_cores import available_cores, split_cores

PROMPT_TOKENS = 32      # each decoding prompt's length
STEPS = 10              # timed calls of the in-process engine step (bench.floor.time_step)


def checkpoint(args: argparse.Namespace) -> Path:
    """The family's random checkpoint, built once into --models-dir and reused after."""
    out = args.models_dir / f"{args.family}-{args.layers}L{'-shrunk' if args.shrink else ''}"
    if not (out / "tokenizer.json").exists():   # written last by build_checkpoint
        say(f"building {out}")
        build_checkpoint(args.family, out, args.layers, shrink=args.shrink)
    return out


def random_prompts(model: Path, count: int, length: int, seed: int) -> list[list[int]]:
    """Token ids drawn uniformly from the vocab: random weights make any text as good as any."""
    vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, size=length).tolist() for _ in range(count)]


def verifier_threads(device: str) -> int:
    """Threads the verifier's steps run on: on a CPU, one per core of its share (service_flags)."""
    return len(split_cores(available_cores())[0].split(",")) if device == "cpu" else torch.get_num_threads()


@contextmanager
def verifier_thread_count(device: str) -> Iterator[None]:
    """Torch in this process on as many threads as the verifier, for what must measure as it would."""
    threads = torch.get_num_threads()
    torch.set_num_threads(verifier_threads(device))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def resolved_dtype(requested: str, model: Path, device: str) -> str:
    """--dtype auto decided once, here, as the engine decides it (specdec.engine.dtypes): the
    verifier, the proposer and transformers then all compute in the same dtype (two services
    deciding apart could differ where the timed choice is close)."""
    from specdec.engine.checkpoint import read_config
    from specdec.engine.dtypes import choose_dtype, gemv_faster, natively_computed

    mc = read_config(model)
    with verifier_thread_count(device):
        dtype, why = choose_dtype(requested, mc.torch_dtype, device, lambda d: natively_computed(device, d),
                                  lambda d: gemv_faster(d, mc.hidden_size, mc.intermediate_size))
    say(f"--dtype {requested}: {dtype} ({why})")
    return dtype


def floor_figures(args: argparse.Namespace, model: Path, position: int) -> dict[str, float]:
    """bench.floor's floor of a batch-1, one-token step at `position`, and the eager engine's
    step there, in this process, on the verifier's thread count."""
    from bench.floor import memory_bandwidth, step_bytes, time_step
    from specdec.engine.torch_engine import TorchEngine

    with verifier_thread_count(args.device):
        bandwidth = memory_bandwidth(args.device)
        engine = TorchEngine(EngineConfig(model=str(model), device=args.device, dtype=args.dtype,
                                          prefill_seq_len=args.prefill_seq_len, ctx_len=args.ctx_len,
                                          full_batch_size=1))
        floor_s = step_bytes(engine, 1, 1, position + 1) / bandwidth
        engine_s = time_step(engine, 1, 1, position, STEPS)
    return {"bandwidth_gb_s": bandwidth / 1e9, "floor_ms": floor_s * 1e3, "engine_step_ms": engine_s * 1e3}


def transformers_figures(args: argparse.Namespace, model: Path, prompts: list[list[int]],
                         long_prompt: list[int]) -> tuple[list[list[int]], float, float]:
    """(greedy outputs, generate() tokens/s, median prefill seconds of the long prompt)."""
    from bench.peers import hf_generate, hf_prefill_s, load_hf, measured_peer

    hf = load_hf(str(model), args.dtype, args.device)
    outs, tokens_per_s, _, _ = measured_peer("transformers generate()",
                                          lambda p: hf_generate(hf, p, args.max_new_tokens), prompts)
    say(f"  transformers prefill of the {len(long_prompt)}-token prompt, on the verifier's thread count")
    # A prefill is compute-bound: compared on as many cores as the verifier's (generate() above
    # runs as a user runs it, on torch's default threads: a comparison that favours it).
    with verifier_thread_count(args.device):
        hf_prefill_s(hf, prompts[0])  # warm-up
        prefill = statistics.median(hf_prefill_s(hf, long_prompt) for _ in range(args.repeats))
    return outs, tokens_per_s, prefill


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.scale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", default="llama-3.2-1b", choices=sorted(FAMILIES))
    p.add_argument("--layers", type=int, default=2, help="decoder layers of the checkpoint (2)")
    p.add_argument("--shrink", action="store_true",
                   help="the family's shrunk shape (bench.families.SHRUNK): seconds, for tests")
    p.add_argument("--dtype", default=EngineConfig.dtype, choices=DTYPES,
                   help=f"the services' and transformers' dtype ({EngineConfig.dtype}, the services' "
                        "default; auto is decided once, here, as the engine decides it)")
    p.add_argument("--device", default="cpu", help="cpu or cuda:N (cpu)")
    p.add_argument("--compile", default="on", choices=COMPILE_MODES,
                   help="the second pass's services (on); the first pass is always eager")
    p.add_argument("--prompts", type=int, default=None, help="decoding prompts (3; --quick 1)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="tokens per prompt (32; --quick 8)")
    p.add_argument("--repeats", type=int, default=1,
                   help="times each gRPC row, TTFT and prefill is measured; the median is kept (1)")
    p.add_argument("--long-prompt-tokens", type=int, default=1500, help="the TTFT prompt's length (1500)")
    p.add_argument("--ctx-len", type=int, default=2048)
    p.add_argument("--prefill-seq-len", type=int, default=256)
    p.add_argument("--quick", action="store_true", help="1 prompt x 8 tokens")
    p.add_argument("--models-dir", type=Path, default=Path("out/scale-models"),
                   help="checkpoint cache: <family>-<layers>L[-shrunk], reused when present")
    p.add_argument("--out", type=Path, default=Path("out/scale.json"))
    args = p.parse_args(argv)
    args.command = shlex.join(["python", "-m", "bench.scale", *(sys.argv[1:] if argv is None else argv)])
    args.prompts = args.prompts or (1 if args.quick else 3)
    args.max_new_tokens = args.max_new_tokens or (8 if args.quick else 32)
    if args.long_prompt_tokens + 1 >= args.ctx_len:
        p.error("--long-prompt-tokens must leave room in --ctx-len for a token")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model = checkpoint(args)
    args.requested_dtype, args.dtype = args.dtype, resolved_dtype(args.dtype, model, args.device)
    args.target_model = args.draft_model = str(model)   # service_flags' and start_*'s names
    prompts = random_prompts(model, args.prompts, PROMPT_TOKENS, seed=0)
    long_prompt = random_prompts(model, 1, args.long_prompt_tokens, seed=1)[0]
    say(f"{model}: {args.prompts} prompts x {args.max_new_tokens} tokens, {args.device}/{args.dtype}")
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        eager = run_pass(argparse.Namespace(**{**vars(args), "compile": "off"}), Path(tmp) / "eager", 1,
                         prompts, long_prompt)
        if args.compile != "off":
            compiled = run_pass(args, Path(tmp) / "compiled", 2, prompts, long_prompt)
        else:  # nothing to compile: the eager pass was the first start on its --compile-dir
            compiled = run_pass(args, Path(tmp) / "eager", 1, prompts, long_prompt)
            compiled.startup = eager.startup + compiled.startup
            compiled.first_peak_rss_mb = eager.peak_rss_mb
    say("floor: memory bandwidth and the eager engine's step, in-process")
    floor = floor_figures(args, model, PROMPT_TOKENS + args.max_new_tokens // 2)
    say("transformers, in-process")
    hf_outs, hf_tokens_per_s, hf_prefill = transformers_figures(args, model, prompts, long_prompt)
    report = assemble(args, model, eager, compiled, floor, hf_outs, hf_tokens_per_s, hf_prefill)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(figures_table(report))
    say(f"wrote {args.out}")
    # Lossless: speculation must give target-only's tokens. Transformers' may differ in half
    # precision, where the two implementations round apart (the table says so).
    return 0 if all(same["speculative_vs_target_only"] for same in report["identical_tokens"].values()) else 1


def assemble(args: argparse.Namespace, model: Path, eager: Pass, compiled: Pass, floor: dict[str, float],
             hf_outs: list[list[int]], hf_tokens_per_s: float, hf_prefill_s: float) -> dict:
    """The JSON report: "figures" (every number), "identical_tokens", "setup"."""
    passes = {"eager": eager, "compiled": compiled}
    services = list(eager.startup[0])
    tps = {mode: p.target_only[1].e2e_throughput for mode, p in passes.items()}
    step_ms = {mode: 1e3 / p.target_only[1].decode_throughput for mode, p in passes.items()}
    figures = {
        "startup_s": {name: {start: {"ready": times[name][0], "compiled": times[name][1]}
                             for start, times in (("eager", eager.startup[0]), ("first", compiled.startup[0]),
                                                  ("second", compiled.startup[-1]))}
                      for name in services},
        "peak_rss_mb": {name: {"eager": eager.peak_rss_mb[name], "compiled": compiled.peak_rss_mb[name],
                               "compiled_first_start": compiled.first_peak_rss_mb[name]} for name in services},
        "peak_rss_compiled_over_eager": {name: compiled.peak_rss_mb[name] / eager.peak_rss_mb[name]
                                         for name in services},
        "tokens_per_s": {"transformers_generate": hf_tokens_per_s, "target_only": tps,
                         "speculative": {mode: p.speculative[1].e2e_throughput for mode, p in passes.items()}},
        "target_only_over_transformers": {mode: t / hf_tokens_per_s for mode, t in tps.items()},
        "speculative_over_target_only": {mode: p.speculative[1].e2e_throughput / tps[mode]
                                         for mode, p in passes.items()},
        "tokens_per_target_step": {mode: p.speculative[1].mean_accepted_tokens for mode, p in passes.items()},
        "step_ms": step_ms,
        **floor,
        "step_over_floor": {mode: ms / floor["floor_ms"] for mode, ms in step_ms.items()},
        "engine_step_over_floor": floor["engine_step_ms"] / floor["floor_ms"],
        "ttft_s": {mode: p.ttft_s for mode, p in passes.items()},
        "transformers_prefill_s": hf_prefill_s,
        "ttft_over_transformers_prefill": {mode: p.ttft_s / hf_prefill_s for mode, p in passes.items()},
    }
    identical = {mode: {"target_only_vs_transformers": [r.tokens for r in p.target_only[0]] == hf_outs,
                        "speculative_vs_target_only": [r.tokens for r in p.speculative[0]]
                        == [r.tokens for r in p.target_only[0]]} for mode, p in passes.items()}
    setup = {"family": args.family, "layers": args.layers, "shrink": args.shrink, "checkpoint": str(model),
             "dtype": args.dtype, "requested_dtype": args.requested_dtype, "device": args.device,
             "compile": args.compile, "k": K,
             "prompts": args.prompts, "prompt_tokens": PROMPT_TOKENS, "max_new_tokens": args.max_new_tokens,
             "long_prompt_tokens": args.long_prompt_tokens, "ctx_len": args.ctx_len,
             "prefill_seq_len": args.prefill_seq_len, "repeats": args.repeats,
             "verifier_threads": verifier_threads(args.device), "transformers_threads": torch.get_num_threads(),
             "machine": machine(args.device),
             "command": args.command}
    return {"figures": figures, "identical_tokens": identical, "setup": setup}


if __name__ == "__main__":
    raise SystemExit(main())
