"""Command-line flags both services share: engine, server, logging."""

from __future__ import annotations

import argparse

from concurrent.futures import ThreadPoolExecutor

from specdec.config import DTYPES, EngineConfig, device_for_group
from specdec.slots import Admission
from specdec_rpc.sessions import SessionPolicy, SessionRunner
from specdec_rpc.server import ServerConfig


def add_service_args(parser: argparse.ArgumentParser, default_max_k: int) -> None:
    e = parser.add_argument_group("engine")
    e.add_argument("--model", default=None, help="HF-format checkpoint directory (local path)")
    e.add_argument("--executor", default="torch", choices=["torch"], help="model executor")
    e.add_argument("--device", default=None,
                   help="torch device (cpu, cuda:N); default: from --device-group")
    e.add_argument("--device-group", default="0",
                   help="comma list of device ids; torch uses cuda:<first> where CUDA exists, "
                        "else the CPU (default: 0)")
    e.add_argument("--dtype", default="float32", choices=DTYPES)
    e.add_argument("--prefill-seq-len", type=int, default=32, help="prefill chunk length (32)")
    e.add_argument("--ctx-len", type=int, default=128, help="KV positions per session (128)")
    e.add_argument("--full-batch-size", type=int, default=4,
                   help="concurrent sessions = KV slots (4)")
    e.add_argument("--max-k", type=int, default=default_max_k,
                   help=f"largest number of speculative tokens per step ({default_max_k})")
    b = parser.add_argument_group("sessions and batching")
    b.add_argument("--batching", default="on", choices=["on", "off"],
                   help="coalesce ready steps of all sessions into one engine call (on); off = "
                        "one engine call per session step")
    b.add_argument("--max-queue", type=int, default=16,
                   help="sessions that may wait for a free slot; more get RESOURCE_EXHAUSTED (16)")
    b.add_argument("--queue-timeout", type=float, default=30.0,
                   help="seconds a session waits for a slot before RESOURCE_EXHAUSTED (30)")
    b.add_argument("--idle-timeout", type=float, default=120.0,
                   help="seconds a session may send nothing before it is closed (120)")
    s = parser.add_argument_group("server")
    s.add_argument("--host", default="127.0.0.1", help="bind address (127.0.0.1)")
    s.add_argument("--port", type=int, default=0, help="port; 0 picks a free one (0)")
    s.add_argument("--grace", type=float, default=5.0,
                   help="seconds in-flight steps get to finish on SIGTERM/SIGINT (5)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def engine_config(args: argparse.Namespace) -> EngineConfig:
    device = args.device
    if device is None:
        import torch

        device = device_for_group(args.device_group, torch.cuda.is_available())
    if args.max_k < 0:
        raise SystemExit("--max-k must be >= 0")
    return EngineConfig(model=args.model or "", device=device, dtype=args.dtype,
                        prefill_seq_len=args.prefill_seq_len, ctx_len=args.ctx_len,
                        full_batch_size=args.full_batch_size)


def admission(args: argparse.Namespace) -> Admission:
    return Admission(max_waiting=args.max_queue, wait_s=args.queue_timeout)


def session_runner(args: argparse.Namespace) -> SessionRunner:
    # Every open or waiting session may block one thread (admission wait, engine row).
    workers = args.full_batch_size + args.max_queue + 4
    return SessionRunner(ThreadPoolExecutor(workers, thread_name_prefix="session"),
                         SessionPolicy(idle_timeout_s=args.idle_timeout))


def server_config(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(host=args.host, port=args.port, grace_s=args.grace)
