"""The repeated, agent-like workload of the suffix-decoding benchmark (`python -m bench.suffix`),
built from the shipped models' own domain: functions of the standard-library files held out of
their training (models/README.md, "Held-out split"), so neither model saw these texts.

Three kinds of request, in the order a busy service would see them:
- repeat: the same task asked again with small changes (the same function header, then with a
  comment above it, then with a parameter renamed);
- edit: a function given whole, then asked for again ("the same function, ..."): an edit
  that copies most of its input;
- turn: a conversation, each turn the previous prompt + its answer + a new request
  (`follow_up`), so answers can quote earlier turns.

The requests are committed in bench/prompts/agent.json so every machine runs the same texts;
this module rebuilds that file from the interpreter's standard library:

    python -m bench.workload            # writes bench/prompts/agent.json
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

WORKLOAD = Path(__file__).parent / "prompts" / "agent.json"
# Held-out files with plain, self-contained functions (the split is models/README.md's).
SOURCES = ("base64.py", "copy.py", "gzip.py", "uu.py", "imaplib.py", "locale.py")
FUNCTIONS = 6            # functions the workload is built from
PER_SOURCE = 2           # at most this many from one file: several topics, not one
MIN_CHARS, MAX_CHARS = 200, 700  # a function fits a prompt with room for the answer


@dataclass(frozen=True)
class Request:
    kind: str          # "repeat", "edit" or "turn"
    text: str
    follow_up: bool = False  # the prompt is the previous request's prompt + answer + text


def functions(source: str) -> list[str]:
    """Top-level functions of a module's source, each with its body, in file order."""
    found = re.finditer(r"(?ms)^def \w+\(.*?(?=^(?:def |class |\S)|\Z)", source)
    return [m.group(0).rstrip() + "\n" for m in found]


def header(function: str) -> str:
    return function.split("\n", 1)[0] + "\n"


def renamed(head: str) -> str:
    """The header with its first parameter renamed (a small change to the same task)."""
    m = re.search(r"\((\w+)", head)
    return head if m is None else head[:m.start(1)] + m.group(1) + "_" + head[m.end(1):]


def build(sources: dict[str, str], count: int = FUNCTIONS) -> list[Request]:
    picked = [f for name in SOURCES
              for f in [f for f in functions(sources[name]) if MIN_CHARS <= len(f) <= MAX_CHARS][:PER_SOURCE]
              ][:count]
    requests: list[Request] = []
    for i, f in enumerate(picked):
        head = header(f)
        requests += [Request("repeat", head), Request("repeat", "# helper\n" + head),
                     Request("repeat", renamed(head))]
        requests.append(Request("edit", f + "\n\n# The same function, with comments:\n" + head))
        if i % 2 == 0:  # a three-turn conversation on every other function
            requests += [Request("turn", head),
                         Request("turn", "\n\n# A test for it:\ndef test_", follow_up=True),
                         Request("turn", "\n\n# Once more, as before:\n" + head, follow_up=True)]
    return requests


def load(path: Path = WORKLOAD) -> list[Request]:
    return [Request(**r) for r in json.loads(path.read_text())]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.workload", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=WORKLOAD)
    args = p.parse_args(argv)
    from training.data import collect_corpus  # the split the models were trained with

    _, _, held, _ = collect_corpus(None, 400_000, 0, 20)
    requests = build(dict(held))
    args.out.write_text(json.dumps([asdict(r) for r in requests], indent=1) + "\n")
    print(f"wrote {len(requests)} requests to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
