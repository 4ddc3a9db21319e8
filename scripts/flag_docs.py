"""Rewrite the flag tables of docs/operations.md from the entry points' parsers (a test checks
they agree).

Run: python scripts/flag_docs.py [--check]
--check changes nothing and exits 1, printing the tables as they should be, when the page
differs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "operations.md"


def tables() -> dict[str, str]:
    """Block name -> the table the parsers give."""
    from client import draft_based, multi_projection, prompt_lookup
    from proposer_service.config import parser as proposer_parser
    from specdec.flag_tables import markdown_table
    from verifier_service.config import parser as verifier_parser

    return {
        "services": markdown_table({"verifier_service": verifier_parser(),
                                    "proposer_service": proposer_parser()}),
        "clients": markdown_table({"client.draft_based": draft_based.parser(),
                                   "client.prompt_lookup": prompt_lookup.parser(),
                                   "client.multi_projection": multi_projection.parser()}),
    }


def render(page: str) -> str:
    from specdec.flag_tables import replace_block

    for name, table in tables().items():
        page = replace_block(page, name, table)
    return page


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(ROOT))  # run from a checkout without `pip install -e .` too
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--check", action="store_true", help="exit 1 when the page differs")
    args = p.parse_args(argv)
    current = PAGE.read_text()
    wanted = render(current)
    if wanted == current:
        return 0
    if args.check:
        print("docs/operations.md's flag tables differ from the parsers; run python scripts/flag_docs.py."
              " They should read:\n")
        print("\n\n".join(tables().values()))
        return 1
    PAGE.write_text(wanted)
    print(f"rewrote the flag tables in {PAGE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
