"""Soak: many sessions, some of them hostile, against a verifier and a draft proposer for minutes.

    python -m bench.soak --sessions 64 --minutes 10 [--hostile-fraction 0.2]

Starts both services (as separate processes, with metrics), then runs `--sessions` concurrent
workers until the time is up. A well-behaved worker generates greedily, over and over, from
a fixed set of prompts; every output it gets is compared with transformers' own greedy
decoding of the target. A hostile worker loops over what a hostile client found (issue 15):
streams that send nothing, garbage bytes, invalid requests (bad ids, duplicate draft ids),
sessions cancelled mid-generation, oversized fields. Reported: the outcome
of every attempt by status code (good and hostile apart, and as each service counted its
RPCs), whether every admitted good session
was identical to greedy, the slots in use at the end, and each service's RSS over time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from client.api import SpecDecClient
from client.launcher import ServiceProcess, start_service
from client.links import ServiceError
from specdec.generation import GenerationConfig
from specdec.method import Method
from specdec_rpc.healthcheck import check
from specdec_rpc.server import COMPILED_PREFIX
from specdec_rpc.v1 import specdec_pb2 as pb
from specdec_rpc.v1 import specdec_pb2_grpc as pb_grpc


@dataclass
class Tally:
    good: Counter = field(default_factory=Counter)      # outcome code -> count
    hostile: Counter = field(default_factory=Counter)   # "action:code" -> count
    identical: int = 0
    different: int = 0
    unexpected: list[str] = field(default_factory=list)  # first few non-gRPC failures


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def scrape(address: str, name: str) -> float:
    text = urllib.request.urlopen(f"http://{address}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return float("nan")


def rpc_codes(address: str) -> dict[str, float]:
    """The service's own count of ended RPCs by method and status code."""
    text = urllib.request.urlopen(f"http://{address}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("specdec_rpc_total{"):
            labels, value = line[len("specdec_rpc_total{"):].rsplit("} ", 1)
            parts = dict(kv.split("=", 1) for kv in labels.split(","))
            out[f"{parts['method'].strip(chr(34))}:{parts['code'].strip(chr(34))}"] = float(value)
    return out


def greedy_references(model: str, prompts: list[list[int]], new: int) -> list[list[int]]:
    """transformers' greedy decoding of the target, EOS ignored: the ground truth."""
    import torch
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for p in prompts:
            ids = hf.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                              max_new_tokens=new, min_new_tokens=new, do_sample=False,
                              eos_token_id=None, pad_token_id=0)
            out.append(ids[0, len(p):].tolist())
    return out


async def good_worker(verifier: str, proposer: str, prompts, refs, config: GenerationConfig,
                      until: float, tally: Tally, rng: random.Random) -> None:
    async with SpecDecClient(verifier, proposer, timeout_s=60) as client:
        while time.monotonic() < until:
            i = rng.randrange(len(prompts))
            try:
                rec = await client.generate(prompts[i], config)
            except ServiceError as exc:
                tally.good[exc.code.name] += 1
                continue
            except Exception as exc:  # not a status: a finding
                tally.good["EXCEPTION"] += 1
                if len(tally.unexpected) < 5:
                    tally.unexpected.append(repr(exc))
                continue
            tally.good["OK"] += 1
            if rec.tokens == refs[i]:
                tally.identical += 1
            else:
                tally.different += 1


async def _outcome(call, writes, reads: int = 1) -> str:
    try:
        for w in writes:
            await call.write(w)
        for _ in range(reads):
            await call.read()
        await call.done_writing()
        await call.read()
    except grpc.aio.AioRpcError as exc:
        return exc.code().name
    except (asyncio.InvalidStateError, grpc.aio.UsageError):
        pass
    return (await call.code()).name


async def hostile_worker(verifier: str, proposer: str, vocab: int, until: float, tally: Tally,
                         rng: random.Random) -> None:
    async with grpc.aio.insecure_channel(verifier) as vch, grpc.aio.insecure_channel(proposer) as pch:
        vstub, pstub = pb_grpc.VerifierStub(vch), pb_grpc.ProposerStub(pch)
        raw_v = vch.stream_stream("/specdec.v1.Verifier/Session")
        raw_p = pch.stream_stream("/specdec.v1.Proposer/Session")
        prompt = [rng.randrange(2, vocab) for _ in range(8)]
        while time.monotonic() < until:
            action = rng.choice(["silent", "garbage", "bad-token", "duplicate-probs", "cancel",
                                 "huge-fingerprint", "half-close"])
            if action == "silent":            # opens and sends nothing: must hold no slot
                call = (vstub if rng.random() < 0.5 else pstub).Session()
                code = (await call.code()).name
            elif action == "garbage":
                call = (raw_v if rng.random() < 0.5 else raw_p)()
                code = await _outcome(call, [rng.randbytes(rng.randrange(1, 64)) + b"\xff\xff"])
            elif action == "bad-token":
                call = vstub.Session()
                code = await _outcome(call, [pb.VerifierRequest(prefill=pb.Prefill(
                    tokens=prompt + [vocab + rng.randrange(1000)]))])
            elif action == "duplicate-probs":
                call = vstub.Session()
                d = prompt[0]
                code = await _outcome(call, [
                    pb.VerifierRequest(prefill=pb.Prefill(tokens=prompt, sampling=pb.SamplingParams(
                        temperature=1.0, top_k=1))),
                    pb.VerifierRequest(verify=pb.Verify(draft_tokens=[d], draft_probs=[
                        pb.TokenDistribution(token_ids=[d, d], probs=[0.5, 0.0])]))], reads=2)
            elif action == "cancel":          # a session broken off mid-generation
                call = vstub.Session()
                await call.write(pb.VerifierRequest(prefill=pb.Prefill(tokens=prompt)))
                try:
                    await call.read()
                    await call.write(pb.VerifierRequest(verify=pb.Verify(draft_tokens=[3, 4])))
                    await asyncio.sleep(rng.random() * 0.05)
                except grpc.aio.AioRpcError:
                    pass
                call.cancel()
                code = "CANCELLED(by us)"
            elif action == "huge-fingerprint":  # a 20 KB field the error must not echo in full
                call = vstub.Session()
                code = await _outcome(call, [pb.VerifierRequest(prefill=pb.Prefill(
                    tokens=prompt, draft_tokenizer_fingerprint="f" * 20_000))])
            else:                             # opens and half-closes without a message
                call = pstub.Session()
                code = await _outcome(call, [], reads=0)
            tally.hostile[f"{action}:{code}"] += 1


async def soak(args, verifier: ServiceProcess, proposer: ServiceProcess, prompts, refs,
               vocab: int) -> tuple[Tally, list[dict]]:
    tally, rss = Tally(), []
    until = time.monotonic() + args.minutes * 60
    hostile = round(args.sessions * args.hostile_fraction)
    config = GenerationConfig(args.k, args.max_new_tokens, ignore_eos=True)
    workers = [hostile_worker(verifier.address, proposer.address, vocab, until, tally,
                              random.Random(args.seed * 1000 + i)) for i in range(hostile)]
    workers += [good_worker(verifier.address, proposer.address, prompts, refs, config, until, tally,
                            random.Random(args.seed * 1000 + hostile + i))
                for i in range(args.sessions - hostile)]

    async def sample_rss() -> None:
        t0 = time.monotonic()
        while True:
            rss.append({"t_s": round(time.monotonic() - t0, 1),
                        "verifier_mb": round(rss_mb(verifier.proc.pid), 1),
                        "proposer_mb": round(rss_mb(proposer.proc.pid), 1)})
            if time.monotonic() >= until:
                return
            await asyncio.sleep(min(args.rss_every, max(until - time.monotonic(), 0.1)))

    sampler = asyncio.create_task(sample_rss())
    await asyncio.gather(*workers)
    await sampler
    return tally, rss


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=64, help="concurrent workers (64)")
    p.add_argument("--minutes", type=float, default=10.0, help="how long they run (10)")
    p.add_argument("--hostile-fraction", type=float, default=0.0,
                   help="share of the workers that are hostile (0)")
    p.add_argument("--target-model", default="models/target")
    p.add_argument("--draft-model", default="models/draft")
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--full-batch-size", type=int, default=8, help="slots of each service (8)")
    p.add_argument("--ctx-len", type=int, default=256)
    p.add_argument("--prompts", type=int, default=16, help="distinct prompts the good workers use")
    p.add_argument("--rss-every", type=float, default=15.0, help="seconds between RSS samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--service-logs", action="store_true",
                   help="copy both services' logs to stderr, prefixed [verifier] / [proposer]")
    args = p.parse_args(argv)
    if not 0.0 <= args.hostile_fraction <= 1.0:
        p.error("--hostile-fraction must be in [0, 1]")

    config = json.loads((Path(args.target_model) / "config.json").read_text())
    vocab = int(config["vocab_size"])
    rng = random.Random(args.seed)
    prompts = [[rng.randrange(2, vocab) for _ in range(rng.randrange(4, 24))]
               for _ in range(args.prompts)]
    print(f"soak: greedy references for {len(prompts)} prompts", file=sys.stderr)
    refs = greedy_references(args.target_model, prompts, args.max_new_tokens)
    flags = ["--ctx-len", str(args.ctx_len), "--full-batch-size", str(args.full_batch_size),
             "--max-k", str(args.k), "--metrics-port", "0", "--max-queue", str(args.sessions),
             "--queue-timeout", "60"]
    verifier = start_service("verifier", "verifier_service", ["--model", args.target_model, *flags],
                             echo_stderr=args.service_logs, wait_for=COMPILED_PREFIX)
    proposer = start_service("proposer", "proposer_service",
                             ["--method", Method.DRAFT, "--model", args.draft_model, *flags],
                             echo_stderr=args.service_logs, wait_for=COMPILED_PREFIX)
    try:
        print(f"soak: {args.sessions} sessions ({args.hostile_fraction:.0%} hostile) for "
              f"{args.minutes:g} min", file=sys.stderr)
        t0 = time.monotonic()
        tally, rss = asyncio.run(soak(args, verifier, proposer, prompts, refs, vocab))
        elapsed = time.monotonic() - t0
        time.sleep(2)  # the last cancelled streams end on the services
        slots = {name: scrape(svc.metrics_address, "specdec_slots_in_use")
                 for name, svc in (("verifier", verifier), ("proposer", proposer))}
        health = {name: check(svc.address) for name, svc in (("verifier", verifier), ("proposer", proposer))}
        served = {name: rpc_codes(svc.metrics_address)
                  for name, svc in (("verifier", verifier), ("proposer", proposer))}
    finally:
        codes = {"verifier": verifier.stop(), "proposer": proposer.stop()}
    warm = [r for r in rss if r["t_s"] >= min(60.0, args.minutes * 60 / 4)] or rss
    report = {
        "sessions": args.sessions, "hostile_fraction": args.hostile_fraction,
        "minutes": round(elapsed / 60, 2),
        "good_outcomes": dict(tally.good), "hostile_outcomes": dict(sorted(tally.hostile.items())),
        "service_rpc_codes": served,
        "admitted_identical_to_greedy": tally.identical, "admitted_different": tally.different,
        "all_identical": tally.different == 0 and tally.identical > 0,
        "unexpected": tally.unexpected,
        "slots_in_use_at_end": slots, "health_at_end": health, "exit_codes": codes,
        "rss_mb": rss,
        "rss_growth_after_warmup_mb": {
            name: round(warm[-1][f"{name}_mb"] - warm[0][f"{name}_mb"], 1)
            for name in ("verifier", "proposer")},
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    ok = (report["all_identical"] and not tally.unexpected
          and all(v == 0 for v in slots.values()) and all(h == "SERVING" for h in health.values()))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
