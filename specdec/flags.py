"""One declaration per command-line flag: the config dataclass field it sets, with its help,
choices, parsing and CLI default in the field's metadata (`flag(...)`). `add_flag`/`add_flags`
derive argparse options, `values` reads a namespace back, and `to_argv` writes a value as the
flag's arguments (a client passing flags on to a service it starts). Pure: dataclasses, typing
and argparse only.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable, Collection, Mapping
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any

META_KEY = "specdec.flag"   # where a field's Flag lives in dataclasses.field(metadata=...)
ON_OFF = ("on", "off")      # a bool flag spelled --x on|off (the services' existing flags)
UNSET: Any = object()       # "no CLI default given": the field's own default is the flag's


@dataclass(frozen=True)
class Flag:
    help: str
    name: str | None = None          # None: --<field name, "_" as "-">
    cli_default: Any = UNSET         # the command line's default where it differs from the field's
    choices: tuple[str, ...] | None = None
    parse: Callable[[str], Any] | None = None  # None: from the field's type (int, float, Path, str)
    on_off: bool = False             # bool field: --x on|off (else a bool field is store_true)
    shown: str | None = None         # how help and the flag tables state a default computed at run time
    secret: bool = False             # never printed (config logs show '***')
    metavar: str | None = None


@dataclass(frozen=True)
class Option:
    """One flag of one parser, as derived: what argparse gets and what the flag tables show."""

    field: str
    flag: Flag
    name: str
    default: Any
    parse: Callable[[str], Any] | None


def flag(default: Any = MISSING, *, help: str, name: str | None = None, cli_default: Any = UNSET,
         choices: Collection[str] | None = None, parse: Callable[[str], Any] | None = None,
         on_off: bool = False, shown: str | None = None, secret: bool = False,
         metavar: str | None = None) -> Any:
    """A dataclass field that is also a command-line flag (`default` is the field's default)."""
    meta = {META_KEY: Flag(help, name, cli_default, tuple(choices) if choices else None, parse,
                           on_off, shown, secret, metavar)}
    return dataclasses.field(default=default, metadata=meta)


def declared(cls: type) -> dict[str, Flag]:
    """Field name -> Flag, in declaration order, for the fields of `cls` that are flags."""
    return {f.name: f.metadata[META_KEY] for f in dataclasses.fields(cls) if META_KEY in f.metadata}


def is_secret(field: dataclasses.Field) -> bool:
    meta = field.metadata.get(META_KEY)
    return bool(meta and meta.secret)


def option(cls: type, field: str, *, name: str | None = None, default: Any = UNSET,
           shown: str | None = None) -> Option:
    """The flag of `cls.field`, with a caller's rename or default (a client's own defaults)."""
    spec = declared(cls)[field]
    f = next(f for f in dataclasses.fields(cls) if f.name == field)
    if default is UNSET:
        default = spec.cli_default if spec.cli_default is not UNSET else f.default
        default = None if default is MISSING else default
    if spec.on_off and isinstance(default, bool):
        default = ON_OFF[0] if default else ON_OFF[1]
    parse = spec.parse or _parse_of(typing.get_type_hints(cls)[field])
    spec = dataclasses.replace(spec, shown=shown if shown is not None else spec.shown)
    return Option(field, spec, name or spec.name or "--" + field.replace("_", "-"), default, parse)


def _parse_of(hint: Any) -> Callable[[str], Any] | None:
    kinds = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    return kinds[0] if kinds[0] in (int, float, Path) else None


def shown_default(opt: Option) -> str | None:
    """The default as help and the flag tables state it; None where a store_true flag is off."""
    if opt.flag.shown is not None:
        return opt.flag.shown
    if opt.parse is None and opt.default is False:
        return None
    if isinstance(opt.default, float):
        return f"{opt.default:g}"   # 30, not 30.0
    return None if opt.default is None else str(opt.default)


def is_switch(opt: Option) -> bool:
    return not opt.flag.on_off and isinstance(opt.default, bool)


def add_option(parser: argparse._ActionsContainer, opt: Option, prefix: str = "") -> None:
    shown = shown_default(opt)
    suffix = f" (default: {shown})" if shown is not None and not is_switch(opt) else ""
    # argparse %-formats help text when it prints it ("%(default)s"): a literal % is %%.
    text = (prefix + opt.flag.help + suffix).replace("%", "%%")
    if is_switch(opt):
        parser.add_argument(opt.name, action="store_true", help=text)
        return
    choices = ON_OFF if opt.flag.on_off else opt.flag.choices
    kwargs: dict[str, Any] = {"default": opt.default, "help": text}
    if choices:
        kwargs["choices"] = list(choices)
    if opt.parse is not None:
        kwargs["type"] = opt.parse
    if opt.flag.metavar:
        kwargs["metavar"] = opt.flag.metavar
    parser.add_argument(opt.name, **kwargs)


def add_flag(parser: argparse._ActionsContainer, cls: type, field: str, *, name: str | None = None,
             default: Any = UNSET, shown: str | None = None, prefix: str = "") -> None:
    add_option(parser, option(cls, field, name=name, default=default, shown=shown), prefix)


def add_flags(parser: argparse._ActionsContainer, cls: type, *, defaults: Mapping[str, Any] = {},
              skip: Collection[str] = ()) -> None:
    """Every flag `cls` declares, in declaration order; `defaults` by field name (a role's)."""
    for field in declared(cls):
        if field not in skip:
            add_flag(parser, cls, field, default=defaults.get(field, UNSET))


def dest(opt: Option) -> str:
    return opt.name.lstrip("-").replace("-", "_")


def values(cls: type, args: argparse.Namespace, skip: Collection[str] = ()) -> dict[str, Any]:
    """The keyword arguments of `cls` its flags set in `args` (on/off flags as bools)."""
    out = {}
    for field in declared(cls):
        if field in skip:
            continue
        opt = option(cls, field)
        value = getattr(args, dest(opt))
        out[field] = (value == ON_OFF[0]) if opt.flag.on_off and value is not None else value
    return out


def to_argv(cls: type, field: str, value: Any) -> list[str]:
    """`value` of `cls.field` as command-line arguments of its flag ([] for an off switch or None)."""
    opt = option(cls, field)
    if value is None or (is_switch(opt) and not value):
        return []
    if is_switch(opt):
        return [opt.name]
    if opt.flag.on_off and isinstance(value, bool):
        value = ON_OFF[0] if value else ON_OFF[1]
    if isinstance(value, (tuple, list)):
        value = ",".join(map(str, value))   # "0,3": how a list flag (--window-sizes) is spelled
    return [opt.name, str(value)]
