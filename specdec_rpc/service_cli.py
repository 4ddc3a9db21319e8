"""Command-line flags of the services, derived from their config dataclasses (specdec.flags):
each flag is declared once, on the field it sets, and is also settable by environment variable:
--ctx-len <=> SPECDEC_CTX_LEN. The command line wins."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from specdec.admission import Admission
from specdec.config import (
    EngineConfig,
    QaicOptions,
    device_for_group,
    parse_device_group,
)
from specdec.errors import exit_with
from specdec.flags import add_flags, is_secret, values
from specdec.service_config import ServiceOptions
from specdec_rpc.security import ServerSecurity
from specdec_rpc.server import ServerConfig
from specdec_rpc.sessions import SessionPolicy

ENV_PREFIX = "SPECDEC_"


def add_service_args(parser: argparse.ArgumentParser, config: type[ServiceOptions],
                     num_cores: int) -> None:
    """The flags of a service: its config's own (ServiceOptions' included) and those of the
    configs it holds, in help groups."""
    add_flags(parser, config)
    add_flags(parser.add_argument_group("engine"), EngineConfig)
    add_flags(parser.add_argument_group("Cloud AI 100 (--executor qaic)"), QaicOptions,
              defaults={"num_cores": num_cores})
    sessions = parser.add_argument_group("sessions")
    add_flags(sessions, Admission)
    add_flags(sessions, SessionPolicy)
    add_flags(parser.add_argument_group("server"), ServerConfig)
    add_flags(parser.add_argument_group("security"), ServerSecurity)


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
        exit_with("--max-k must be >= 0")
    try:
        cores = parse_device_group(args.device_group) if args.device_group and device == "cpu" else ()
    except ValueError as exc:
        exit_with(f"--device-group: {exc}")
    return EngineConfig(**values(EngineConfig, args, skip=("model", "device")),
                        model=args.model or "", device=device or "cpu", cpu_cores=cores)


def local_model(engine: EngineConfig) -> EngineConfig:
    """The config with its model found (a hub id fetched here, once) and its config.json read:
    one that is not there or not supported fails here, in a second, rather than after the
    engine's imports (torch.compile's take seconds). The first thing a service's load does."""
    from specdec.engine.checkpoint import read_config
    from specdec.engine.hub import resolve_model_path

    path = resolve_model_path(engine.model)
    read_config(path)
    return dataclasses.replace(engine, model=str(path))


def qaic_options(args: argparse.Namespace) -> QaicOptions | None:
    """Compile settings for --executor qaic; None for torch. The device group is the card group."""
    if args.executor != "qaic":
        return None
    return QaicOptions(**values(QaicOptions, args), compile_dir=args.compile_dir,
                       device_ids=parse_device_group(args.device_group or "0"))


def held_configs(args: argparse.Namespace) -> dict[str, Any]:
    """The configs every service holds, from its flags: keyword arguments of its config."""
    return {"engine": engine_config(args), "qaic": qaic_options(args),
            "admission": Admission(**values(Admission, args)),
            "sessions": SessionPolicy(**values(SessionPolicy, args)),
            "server": ServerConfig(**values(ServerConfig, args),
                                   security=ServerSecurity(**values(ServerSecurity, args)))}


def describe(config: Any) -> str:
    """A config dataclass as one JSON line, secret fields (flag(secret=True)) as '***'."""
    def clean(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: "***" if is_secret(f) and getattr(value, f.name)
                    else clean(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return str(value) if isinstance(value, Path) else value

    return json.dumps(clean(config), default=str)
