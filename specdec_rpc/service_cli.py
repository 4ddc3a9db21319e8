"""Command-line flags both services share (engine, sessions, server, security, metrics), each
also settable by environment variable: --ctx-len <=> SPECDEC_CTX_LEN. The command line wins."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

from specdec.config import DTYPES, QAIC_SESSIONS, EngineConfig, device_for_group, parse_device_group
from specdec.slots import Admission
from specdec_rpc.security import ServerSecurity
from specdec_rpc.server import ServerConfig
from specdec_rpc.sessions import SessionPolicy

ENV_PREFIX = "SPECDEC_"
SECRET_FIELDS = ("auth_token",)


def add_service_args(parser: argparse.ArgumentParser, default_max_k: int,
                     default_num_cores: int) -> None:
    e = parser.add_argument_group("engine")
    e.add_argument("--model", default=None, help="HF-format checkpoint directory (local path)")
    e.add_argument("--executor", default="torch", choices=["torch", "qaic"],
                   help="torch (CPU/CUDA) or qaic (Cloud AI 100 through QEfficient) (torch)")
    e.add_argument("--device", default=None,
                   help="torch device (cpu, cuda:N); default: from --device-group")
    e.add_argument("--device-group", default=None,
                   help="comma list of device ids: torch uses cuda:<first> where CUDA exists, "
                        "else the CPU with its threads pinned to these cores (default: cuda:0, "
                        "or every core); qaic: the card group (default: 0)")
    e.add_argument("--compile", default="on", choices=["on", "off"],
                   help="torch: compile each step shape (batch bucket x window) at start-up, "
                        "cached in --compile-dir; off = eager (on)")
    e.add_argument("--dtype", default="float32", choices=DTYPES)
    e.add_argument("--prefill-seq-len", type=int, default=32, help="prefill chunk length (32)")
    e.add_argument("--ctx-len", type=int, default=128, help="KV positions per session (128)")
    e.add_argument("--full-batch-size", type=int, default=4,
                   help="concurrent sessions = KV slots (4)")
    e.add_argument("--max-k", type=int, default=default_max_k,
                   help=f"largest number of speculative tokens per step ({default_max_k})")
    q = parser.add_argument_group("Cloud AI 100 (--executor qaic)")
    q.add_argument("--num-cores", type=int, default=default_num_cores,
                   help=f"AI cores the QPC is compiled for ({default_num_cores})")
    q.add_argument("--mxfp6", action="store_true", help="compile matmuls as MXFP6")
    q.add_argument("--mxint8-kv-cache", action="store_true", help="keep the KV cache in MXINT8")
    q.add_argument("--qaic-session", default="device", choices=QAIC_SESSIONS,
                   help="where the QPC's graph runs: device (QAICInferenceSession on the card "
                        "group) or onnxruntime (QEfficient's exported ONNX on the CPU) (device)")
    parser.add_argument("--compile-dir", type=Path, default=None,
                        help="where compiled steps are cached (qaic: QPCs; torch: inductor "
                             "kernels; default: the tool's own cache); an unchanged one is reused")
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
    b.add_argument("--first-message-timeout", type=float, default=5.0,
                   help="seconds a new stream may take to send its first message; it holds no "
                        "slot until then and is closed after (5)")
    s = parser.add_argument_group("server")
    s.add_argument("--host", default="127.0.0.1", help="bind address (127.0.0.1)")
    s.add_argument("--port", type=int, default=0, help="port; 0 picks a free one (0)")
    s.add_argument("--grace", type=float, default=5.0,
                   help="seconds in-flight steps get to finish on SIGTERM/SIGINT (5)")
    s.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus /metrics on this HTTP port (0 = any free; default off)")
    t = parser.add_argument_group("security")
    t.add_argument("--tls-cert", type=Path, default=None, help="PEM certificate: serve TLS")
    t.add_argument("--tls-key", type=Path, default=None, help="PEM private key for --tls-cert")
    t.add_argument("--tls-client-ca", type=Path, default=None,
                   help="PEM CA: require client certificates signed by it (mutual TLS)")
    t.add_argument("--auth-token", default=None,
                   help="require 'authorization: Bearer <token>' metadata (prefer the "
                        "SPECDEC_AUTH_TOKEN variable: command lines are visible to other users)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def env_var(action: argparse.Action) -> str | None:
    longs = [o for o in action.option_strings if o.startswith("--")]
    return ENV_PREFIX + longs[0][2:].upper().replace("-", "_") if longs else None


def parse_with_env(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Flags not on the command line are taken from SPECDEC_<FLAG> when set; they go through
    argparse like typed flags, so types and choices are checked the same way."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    given = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    extra: list[str] = []
    for action in parser._actions:
        name = env_var(action)
        if not name or name not in os.environ or given & set(action.option_strings):
            continue
        value = os.environ[name]
        if action.nargs == 0:  # store_true
            if value.lower() in ("1", "true", "yes", "on"):
                extra.append(action.option_strings[0])
        else:
            extra += [action.option_strings[-1], value]
    return parser.parse_args(extra + argv)


def engine_config(args: argparse.Namespace) -> EngineConfig:
    device = args.device
    if device is None and args.executor == "torch":
        import torch

        device = device_for_group(args.device_group or "0", torch.cuda.is_available())
    if args.max_k < 0:
        raise SystemExit("--max-k must be >= 0")
    try:
        cores = parse_device_group(args.device_group) if args.device_group and device == "cpu" else ()
    except ValueError as exc:
        raise SystemExit(f"--device-group: {exc}") from None
    return EngineConfig(model=args.model or "", device=device or "cpu", dtype=args.dtype,
                        prefill_seq_len=args.prefill_seq_len, ctx_len=args.ctx_len,
                        full_batch_size=args.full_batch_size, compile=args.compile == "on",
                        compile_dir=args.compile_dir, cpu_cores=cores)


def qaic_options(args: argparse.Namespace):
    """Compile settings for --executor qaic; None for torch. The device group is the card group."""
    if args.executor != "qaic":
        return None
    from specdec.engine.qaic_engine import QaicOptions

    ids = parse_device_group(args.device_group or "0")
    return QaicOptions(device_ids=ids, num_cores=args.num_cores, mxfp6_matmul=args.mxfp6,
                       mxint8_kv_cache=args.mxint8_kv_cache, compile_dir=args.compile_dir,
                       session=args.qaic_session)


def admission(args: argparse.Namespace) -> Admission:
    return Admission(max_waiting=args.max_queue, wait_s=args.queue_timeout)


def session_policy(args: argparse.Namespace) -> SessionPolicy:
    return SessionPolicy(idle_timeout_s=args.idle_timeout,
                         first_message_timeout_s=args.first_message_timeout)


def server_config(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(host=args.host, port=args.port, grace_s=args.grace,
                        metrics_port=args.metrics_port,
                        security=ServerSecurity(args.tls_cert, args.tls_key, args.tls_client_ca,
                                                args.auth_token))


def describe(config) -> str:
    """A config dataclass as one JSON line, secrets replaced by '***'."""
    def clean(value):
        if isinstance(value, dict):
            return {k: ("***" if k in SECRET_FIELDS and v else clean(v)) for k, v in value.items()}
        return str(value) if isinstance(value, Path) else value

    return json.dumps(clean(dataclasses.asdict(config)), default=str)
