"""Per-round protocol overhead on loopback: what a round costs beyond the engine.

    python -m bench.overhead --k 4 --max-new-tokens 64 --repeats 3

Starts a verifier and a draft proposer as subprocesses (one slot each, pre-drafting off, so
nothing else shares the engines), generates the bench prompts greedily over gRPC, and for every
round (propose k + verify) takes the client-side time of its calls minus the engine time the
services report for them (StepTimings.forward_ns, the engine calls only). What remains is the
protocol: gRPC and protobuf both ways, the hand-offs between the event loop and the engine
thread, and the domain code around each engine call. The goal is <= 0.5 ms per round. The same
run measures the floor beneath it (bench.echo): a round's two exchanges on bare grpc.aio echo
streams, no protobuf, servicer or engine.

Only the client-facing API is used (links, generate, the launcher), so the same file measures
an older checkout of the services too: the before/after figures come from one script.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from bench.__main__ import BENCH_PROMPTS
from bench.echo import floor_ms
from client.cli_common import load_tokenizer
from client.launcher import start_service
from client.links import GrpcProposerLink, GrpcVerifierLink
from specdec.generation import GenerationConfig, generate
from specdec.method import Method
from specdec_rpc.server import COMPILED_PREFIX
from specdec_rpc.v1 import specdec_pb2 as pb
from specdec_rpc.v1 import specdec_pb2_grpc as pb_grpc


@dataclass
class Round:
    """One decode round as the client saw it: wall = client-side call time, engine = what the
    services reported as engine time for those calls (ns)."""

    propose_wall: int = 0
    propose_engine: int = 0
    propose_service: int = 0   # the services' own step time (StepTimings.total_ns)
    verify_wall: int = 0
    verify_engine: int = 0
    verify_service: int = 0

    @property
    def overhead_ns(self) -> int:
        return self.propose_wall - self.propose_engine + self.verify_wall - self.verify_engine


@dataclass
class Recorder:
    rounds: list[Round] = field(default_factory=list)
    current: Round = field(default_factory=Round)
    decoding: bool = False   # the first prefill is done: later proposals belong to rounds


class TimedVerifier:
    """A verifier link that records each verify's wall and engine time, one round each."""

    def __init__(self, link: GrpcVerifierLink, rec: Recorder) -> None:
        self.link, self.rec = link, rec

    async def prefill(self, *args):
        out = await self.link.prefill(*args)
        self.rec.decoding = True
        return out

    async def verify(self, *args):
        t0 = time.perf_counter_ns()
        out = await self.link.verify(*args)
        r = self.rec.current
        r.verify_wall, r.verify_engine = time.perf_counter_ns() - t0, out.timings.forward_ns
        r.verify_service = out.timings.total_ns
        self.rec.rounds.append(r)
        self.rec.current = Round()
        return out


class TimedProposer:
    def __init__(self, link: GrpcProposerLink, rec: Recorder) -> None:
        self.link, self.rec = link, rec

    async def propose(self, start, tokens, k, *args):
        t0 = time.perf_counter_ns()
        out = await self.link.propose(start, tokens, k, *args)
        if k > 0:  # the sync-only call at the start runs beside the verifier's prefill
            self.rec.current.propose_wall += time.perf_counter_ns() - t0
            self.rec.current.propose_engine += out.timings.forward_ns
            self.rec.current.propose_service += out.timings.total_ns
        return out


async def measure(verifier: str, proposer: str, prompts: list[list[int]],
                  config: GenerationConfig) -> list[Round]:
    rounds: list[Round] = []
    async with grpc.aio.insecure_channel(verifier) as vc, grpc.aio.insecure_channel(proposer) as pc:
        vstub, pstub = pb_grpc.VerifierStub(vc), pb_grpc.ProposerStub(pc)
        info = await vstub.Info(pb.InfoRequest(), wait_for_ready=True)
        pinfo = await pstub.Info(pb.InfoRequest(), wait_for_ready=True)
        for prompt in prompts:
            rec = Recorder()
            v = GrpcVerifierLink(vstub.Session())
            p = GrpcProposerLink(pstub.Session())
            try:
                await generate(prompt, TimedVerifier(v, rec), TimedProposer(p, rec), config,
                               info.ctx_len, pinfo.tokenizer_fingerprint)
            finally:
                await v.close()
                await p.close()
            rounds += rec.rounds
    return rounds


def summary(rounds: list[Round]) -> dict:
    ms = [r.overhead_ns / 1e6 for r in rounds]
    return {
        "rounds": len(rounds),
        "overhead_ms_mean": statistics.fmean(ms),
        "overhead_ms_median": statistics.median(ms),
        "propose_overhead_ms_median": statistics.median(
            (r.propose_wall - r.propose_engine) / 1e6 for r in rounds),
        "verify_overhead_ms_median": statistics.median(
            (r.verify_wall - r.verify_engine) / 1e6 for r in rounds),
        # Split: inside the services around the engine (domain code, hops to the engine
        # thread) vs outside them (gRPC both ways, the client, the stream handlers).
        "in_service_ms_median": statistics.median(
            (r.propose_service - r.propose_engine + r.verify_service - r.verify_engine) / 1e6
            for r in rounds),
        "transport_ms_median": statistics.median(
            (r.propose_wall - r.propose_service + r.verify_wall - r.verify_service) / 1e6
            for r in rounds),
        "round_ms_median": statistics.median((r.propose_wall + r.verify_wall) / 1e6 for r in rounds),
        "engine_ms_median": statistics.median(
            (r.propose_engine + r.verify_engine) / 1e6 for r in rounds),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.overhead", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target-model", default="models/target")
    p.add_argument("--draft-model", default="models/draft")
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--ctx-len", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3, help="passes over the prompts (3)")
    p.add_argument("--compile", default="off", choices=["on", "off"],
                   help="the services' --compile (off: the overhead does not depend on it)")
    p.add_argument("--batching", default="on", choices=["on", "off"])
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    tok = load_tokenizer(args.target_model)
    prompts = [tok(t)["input_ids"] for t in BENCH_PROMPTS]
    config = GenerationConfig(args.k, args.max_new_tokens, ignore_eos=True)
    flags = ["--ctx-len", str(args.ctx_len), "--full-batch-size", "1", "--max-k", str(args.k),
             "--compile", args.compile, "--batching", args.batching]
    services = [
        start_service("verifier", "verifier_service",
                      ["--model", args.target_model, "--window-sizes", f"0,{args.k}", *flags],
                      wait_for=COMPILED_PREFIX),
        start_service("proposer", "proposer_service",
                      ["--method", Method.DRAFT, "--model", args.draft_model,
                       "--pre-draft-branches", "0", *flags], wait_for=COMPILED_PREFIX),
    ]
    echoes = [start_service("echo", "bench.echo", []) for _ in range(2)]
    try:
        v, d = services[0].address, services[1].address
        asyncio.run(measure(v, d, prompts[:1], config))  # warm-up
        rounds = asyncio.run(measure(v, d, prompts * args.repeats, config))
        addresses = (echoes[0].address, echoes[1].address)
        floor = asyncio.run(floor_ms(addresses, len(rounds)))
        # The same with the processes idle for the engine time first, as in a round.
        idle = (statistics.median(r.verify_engine for r in rounds) / 1e9,
                statistics.median(r.propose_engine for r in rounds) / 1e9)
        floor_idle = asyncio.run(floor_ms(addresses, min(len(rounds), 200), 20, idle))
    finally:
        for svc in services + echoes:
            svc.stop()
    figures = {**summary(rounds), "echo_floor_ms_median": floor,
               "echo_floor_after_idle_ms_median": floor_idle}
    print(f"rounds {figures['rounds']}: per-round overhead (client round time - engine time) "
          f"median {figures['overhead_ms_median']:.3f} ms, mean {figures['overhead_ms_mean']:.3f} ms "
          f"(propose {figures['propose_overhead_ms_median']:.3f} ms + verify "
          f"{figures['verify_overhead_ms_median']:.3f} ms; in the services around the engine "
          f"{figures['in_service_ms_median']:.3f} ms, outside them {figures['transport_ms_median']:.3f} ms); "
          f"round {figures['round_ms_median']:.2f} ms, "
          f"engine {figures['engine_ms_median']:.2f} ms; floor (two bare grpc.aio echo exchanges) "
          f"{figures['echo_floor_ms_median']:.3f} ms back to back, "
          f"{figures['echo_floor_after_idle_ms_median']:.3f} ms after idling for the engine time",
          flush=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
