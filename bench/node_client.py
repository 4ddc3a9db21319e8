"""The Node.js example client that runs the round loop itself (examples/node/round_loop.mjs) vs
the Python client, on the same services and prompts, measured in one run: tokens/s of each,
their ratio, and that the tokens are identical.

    python -m bench.node_client --method draft --k 4     # also: --method ngram --k 3, turbo

Each client's time runs from its first request of a generation (the prefill) to its last reply,
as GenerationRecord's e2e time: Info, tokenization and Node's process start are left out.
Runs alternate between the two clients so drift on a noisy machine hits both alike. Each
client's CPU time over the same span (its own process, all threads) is reported per token too:
on a loaded machine wall-clock tokens/s swings with the other load, the client's own cost does not.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import time
from pathlib import Path

from bench.__main__ import BENCH_PROMPTS
from client.api import SpecDecClient
from client.cli_common import load_tokenizer
from client.launcher import start_service
from specdec.engine.turbo import read_turbo_config
from specdec.generation import GenerationConfig
from specdec.method import Method, method_arg
from specdec_rpc.server import COMPILED_PREFIX

NODE_METHODS = (Method.DRAFT, Method.NGRAM, Method.TURBO)
NODE_CLIENT = Path(__file__).resolve().parent.parent / "examples" / "node" / "round_loop.mjs"


async def node_run(node: str, verifier: str, proposer: str | None, text: str, k: int,
                   new: int) -> dict:
    args = [node, str(NODE_CLIENT), "--verifier", verifier, "--prompt", text, "--max-new-tokens",
            str(new), "--num-speculative-tokens", str(k), "--ignore-eos", "--json"]
    proc = await asyncio.create_subprocess_exec(*args, *(["--proposer", proposer] if proposer else []),
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"node client failed: {err.decode()[-2000:]}")
    return json.loads(out)


async def compare(node: str, verifier: str, proposer: str | None, texts: list[str],
                  prompts: list[list[int]], k: int, new: int, repeats: int) -> dict:
    config = GenerationConfig(k, new, ignore_eos=True)
    totals = {"python": [0, 0.0, 0.0], "node": [0, 0.0, 0.0]}   # [tokens, seconds, cpu seconds]
    same = True
    async with SpecDecClient(verifier, proposer) as client:
        await client.generate(prompts[0], config)                   # warm-up, both sides
        await node_run(node, verifier, proposer, texts[0], k, new)
        for r in range(repeats):
            for text, ids in zip(texts, prompts):
                got = {}
                for who in (("python", "node") if r % 2 == 0 else ("node", "python")):
                    if who == "python":
                        cpu0 = time.process_time()
                        rec = await client.generate(ids, config)
                        cpu = time.process_time() - cpu0
                        got[who], seconds = rec.tokens, rec.t_end - rec.t_start
                    else:
                        out = await node_run(node, verifier, proposer, text, k, new)
                        got[who], seconds, cpu = out["ids"], out["e2e_time_s"], out["client_cpu_s"]
                        same &= out["prompt_ids"] == ids
                    totals[who][0] += len(got[who])
                    totals[who][1] += seconds
                    totals[who][2] += cpu
                same &= got["python"] == got["node"]
    tps = {who: n / s for who, (n, s, _) in totals.items()}
    cpu_ms = {who: 1000 * c / n for who, (n, _, c) in totals.items()}
    return {"tokens_per_s": tps, "node_over_python": tps["node"] / tps["python"],
            "client_cpu_ms_per_token": cpu_ms, "identical_outputs": same}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.node_client", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default=Method.DRAFT, choices=NODE_METHODS, type=method_arg(NODE_METHODS))
    p.add_argument("--target-model", default="models/target")
    p.add_argument("--draft-model", default="models/draft")
    p.add_argument("--k", type=int, default=4, help="speculative tokens per step (turbo: its heads)")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--repeats", type=int, default=2, help="runs of each prompt per client (2)")
    args = p.parse_args(argv)
    node = shutil.which("node")
    if node is None:
        p.error("node is not installed")
    if args.method == Method.TURBO:
        args.k = read_turbo_config(Path(args.target_model)).num_heads
    tok = load_tokenizer(args.target_model)
    prompts = [tok(t)["input_ids"] for t in BENCH_PROMPTS]
    flags = ["--ctx-len", "256", "--prefill-seq-len", "32", "--full-batch-size", "1",
             "--max-k", str(args.k)]
    target = ["--model", args.target_model, *flags]
    services = [start_service("verifier", "verifier_service", target + (
        ["--speculative-model-type", Method.TURBO] if args.method == Method.TURBO else []), wait_for=COMPILED_PREFIX)]
    if args.method != Method.TURBO:
        model = ["--model", args.draft_model] if args.method == Method.DRAFT else []
        services.append(start_service("proposer", "proposer_service",
                                      ["--method", args.method, *model, *flags], wait_for=COMPILED_PREFIX))
    try:
        figures = asyncio.run(compare(node, services[0].address,
                                      services[1].address if len(services) > 1 else None,
                                      BENCH_PROMPTS, prompts, args.k, args.max_new_tokens,
                                      args.repeats))
    finally:
        for svc in services:
            svc.stop()
    tps, cpu = figures["tokens_per_s"], figures["client_cpu_ms_per_token"]
    print(f"{args.method}, k = {args.k}, {len(prompts)} prompts x {args.max_new_tokens} tokens x "
          f"{args.repeats}: python {tps['python']:.1f} tok/s, node {tps['node']:.1f} tok/s, "
          f"node/python {figures['node_over_python']:.2f}; client CPU per token: python "
          f"{cpu['python']:.2f} ms, node {cpu['node']:.2f} ms; identical outputs: "
          f"{figures['identical_outputs']}")
    return 0 if figures["identical_outputs"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
