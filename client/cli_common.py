"""Flags, service start-up and output shared by the client's command-line entry points."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

from client.api import SpecDecClient
from client.compare import format_comparison
from client.launcher import start_service
from client.links import ServiceError
from specdec.config import DTYPES, QAIC_SESSIONS
from specdec.cpu_cores import available_cores, split_cores
from specdec.errors import InvalidRequest
from specdec.generation import GenerationConfig, GenerationRecord
from specdec.metrics import batch_metrics, format_metrics, generation_metrics
from specdec.recovery import RecoveryPolicy
from specdec.sampling import SamplingParams
from specdec_rpc.security import ClientSecurity

AUTO = "auto"     # --num-speculative-tokens auto: k adapts each round (specdec.adaptive_k)
AUTO_MAX_K = 8    # ... up to this k in services the client starts (the services' --max-k default)

# Standard-library-style Python, the shipped models' domain, chosen so that greedy decoding does
# not fall into a repetition loop ("def fibonacci(n):\n" gives "#\n#\n..." from the target).
DEFAULT_PROMPTS = ["import os\n\n\ndef list_files(path):\n",
                   "def read_config(path):\n    with open(path) as f:\n"]


def add_common_args(p: argparse.ArgumentParser, prefill_seq_len: int = 32, ctx_len: int = 128) -> None:
    """Flags every client CLI takes; the defaults of the two engine sizes follow each example."""
    p.add_argument("--prompts", action="append", default=None,
                   help="prompt text; repeat the flag for several prompts")
    p.add_argument("--prefill-seq-len", type=int, default=prefill_seq_len,
                   help=f"prefill chunk length ({prefill_seq_len})")
    p.add_argument("--ctx-len", type=int, default=ctx_len,
                   help=f"KV positions per session ({ctx_len})")
    p.add_argument("--prefill-bsz", type=int, default=1,
                   help="prompts run at a time when --full-batch-size is not set (1)")
    p.add_argument("--full-batch-size", type=int, default=None,
                   help="concurrent sessions, and KV slots of the services the client starts")
    p.add_argument("--max-new-tokens", type=int, default=0,
                   help="tokens to generate per prompt; 0 = until EOS or ctx_len (0)")
    p.add_argument("--ignore-eos-token", action="store_true", help="do not stop at EOS")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="sampling temperature; 0 = greedy (0)")
    p.add_argument("--top-k", type=int, default=0, help="sample from the k most likely; 0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1.0 = off)")
    p.add_argument("--seed", type=int, default=None,
                   help="sampling seed; prompt i uses seed + i (default: fresh entropy)")
    p.add_argument("--verifier", default=None, metavar="ADDR",
                   help="verifier host:port, a comma list of replicas, or dns:///name:port "
                        "(one replica per address); default: start one as a subprocess")
    p.add_argument("--proposer", default=None, metavar="ADDR",
                   help="proposer host:port, a comma list of replicas, or dns:///name:port; "
                        "default: start one as a subprocess")
    p.add_argument("--dtype", default="float32", choices=DTYPES,
                   help="dtype of the services the client starts")
    q = p.add_argument_group("executor of the services the client starts")
    q.add_argument("--executor", default="torch", choices=["torch", "qaic"],
                   help="torch (CPU/CUDA) or qaic (Cloud AI 100 through QEfficient) (torch)")
    q.add_argument("--num-cores", type=int, default=11, help="qaic: AI cores of the target QPC (11)")
    q.add_argument("--draft-num-cores", type=int, default=5, help="qaic: AI cores of the draft QPC (5)")
    q.add_argument("--mxfp6", action="store_true", help="qaic: compile matmuls as MXFP6")
    q.add_argument("--mxint8-kv-cache", action="store_true", help="qaic: KV cache in MXINT8")
    q.add_argument("--compile", default=None, choices=["on", "off"],
                   help="torch: compile each step shape at start-up; off = eager (default: the "
                        "services' own, on unless SPECDEC_COMPILE says otherwise)")
    q.add_argument("--compile-dir", default=None,
                   help="where compiled steps are cached (qaic: QPCs; torch: inductor kernels)")
    q.add_argument("--qaic-session", default="device", choices=QAIC_SESSIONS,
                   help="qaic: run the QPC on the card (device) or QEfficient's ONNX on the CPU")
    p.add_argument("--json", type=Path, default=None, metavar="PATH",
                   help="write prompts, generated ids, text and metrics as JSON")
    p.add_argument("--quiet-services", action="store_true",
                   help="do not echo the started services' logs")
    p.add_argument("--compare-target-only", action="store_true",
                   help="then decode the same prompts target-only (k = 0) on the same services and "
                        "print both times, the speedup and whether the outputs are identical")
    c = p.add_argument_group("connection (services given by address)")
    c.add_argument("--tls-ca", type=Path, default=None, help="PEM CA: connect with TLS")
    c.add_argument("--tls-cert", type=Path, default=None, help="PEM client certificate (mutual TLS)")
    c.add_argument("--tls-key", type=Path, default=None, help="PEM key of --tls-cert")
    c.add_argument("--auth-token", default=os.environ.get("SPECDEC_AUTH_TOKEN"),
                   help="shared token sent as 'authorization: Bearer' (default: $SPECDEC_AUTH_TOKEN)")
    c.add_argument("--step-timeout", type=float, default=60.0,
                   help="deadline of each service step, seconds (60)")
    c.add_argument("--recovery-deadline", type=float, default=60.0,
                   help="how long to keep reconnecting to a lost verifier, seconds (60)")


@dataclass
class ServiceSpec:
    name: str
    module: str
    args: list[str]


def k_or_auto(parse):
    """An argparse type: `auto`, or what `parse` makes of the text."""
    def convert(text: str):
        return AUTO if text.strip().lower() == AUTO else parse(text)
    convert.__name__ = parse.__name__  # argparse names the type in its error message
    return convert


def concurrency(args: argparse.Namespace) -> int:
    return max(1, args.full_batch_size or args.prefill_bsz)


def engine_args(args: argparse.Namespace, model: str, device_group: str | None, max_k: int,
                draft: bool = False) -> list[str]:
    """Pass the client's engine flags on to a service it starts (device_group None: the
    service's default)."""
    out = ["--model", model, "--dtype", args.dtype,
           "--prefill-seq-len", str(args.prefill_seq_len), "--ctx-len", str(args.ctx_len),
           "--full-batch-size", str(concurrency(args)), "--max-k", str(max_k),
           "--executor", args.executor]
    out += ["--compile", args.compile] if args.compile else []
    out += ["--device-group", device_group] if device_group else []
    out += ["--compile-dir", args.compile_dir] if args.compile_dir else []
    if args.executor == "qaic":
        out += ["--num-cores", str(args.draft_num_cores if draft else args.num_cores)]
        out += ["--mxfp6"] * args.mxfp6 + ["--mxint8-kv-cache"] * args.mxint8_kv_cache
        out += ["--qaic-session", args.qaic_session]
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


def sampling_params(args: argparse.Namespace) -> SamplingParams:
    params = SamplingParams(args.temperature, args.top_k, args.top_p, args.seed)
    try:
        params.validate()
    except InvalidRequest as exc:
        raise SystemExit(f"error: {exc}") from None
    return params


def load_tokenizer(model: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model)


def client_options(args: argparse.Namespace) -> dict:
    return {"security": ClientSecurity(args.tls_ca, args.tls_cert, args.tls_key, args.auth_token),
            "step_timeout_s": args.step_timeout,
            "recovery": RecoveryPolicy(deadline_s=args.recovery_deadline)}


async def _run_prompts(addresses: dict[str, str | None], prompts: list[list[int]],
                       config: GenerationConfig, width: int, local_proposer=None,
                       options: dict | None = None) -> list[GenerationRecord]:
    # Channels belong to the event loop they are created in: make them inside it.
    client = SpecDecClient(addresses["verifier"], addresses.get("proposer"),
                           local_proposer=local_proposer, **(options or {}))
    gate = asyncio.Semaphore(width)

    async def one(i: int, ids: list[int]) -> GenerationRecord:
        s = config.sampling
        seeded = replace(config, sampling=replace(s, seed=None if s.seed is None else s.seed + i))
        async with gate:
            return await client.generate(ids, seeded)

    async with client:
        return await asyncio.gather(*(one(i, ids) for i, ids in enumerate(prompts)))


def run_cli(args: argparse.Namespace, tokenizer_model: str, services: dict[str, ServiceSpec],
            addresses: dict[str, str | None], config: GenerationConfig,
            default_prompts: list[str] = DEFAULT_PROMPTS, local_proposer=None) -> int:
    """Start whatever services have no address, generate every prompt, print and save."""
    tok = load_tokenizer(tokenizer_model)
    texts = args.prompts or default_prompts
    prompts = [tok(t)["input_ids"] for t in texts]
    with ExitStack() as stack:
        started = {}
        for key, spec in services.items():   # all at once: they load and compile side by side
            if addresses.get(key) is None:
                print(f"starting {spec.name} (a first start compiles its steps: a minute or "
                      "more; --compile off skips it) ...", file=sys.stderr, flush=True)
                started[key] = start_service(spec.name, spec.module, spec.args,
                                             echo_stderr=not args.quiet_services, wait=False)
                stack.callback(started[key].stop)
        for key, svc in started.items():
            svc.wait_ready()
            addresses[key] = svc.address
            print(f"{svc.name} ready on {svc.address}", file=sys.stderr, flush=True)
        try:
            records = asyncio.run(_run_prompts(addresses, prompts, config, concurrency(args),
                                               local_proposer, client_options(args)))
            baseline = asyncio.run(_run_prompts(
                addresses, prompts, replace(config, num_speculative_tokens=0, adaptive_k=False),
                concurrency(args), None, client_options(args))) if args.compare_target_only else None
        except (ServiceError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    report(args, tok, texts, prompts, records, baseline)
    return 0


def report(args, tok, texts: list[str], prompts: list[list[int]], records: list[GenerationRecord],
           target_only: list[GenerationRecord] | None = None) -> None:
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
    doc = {"prompts": out, "totals": totals.as_dict()}
    if target_only is not None:
        print("\n" + format_comparison(records, target_only, args.temperature == 0))
        doc["target_only"] = {"generated_ids": [r.tokens for r in target_only],
                              "totals": batch_metrics(target_only).as_dict()}
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2))
        print(f"wrote {args.json}", file=sys.stderr)
