"""Regenerate the Python stubs of protos/ into specdec_rpc/ (committed; tests check drift).

Run: python scripts/gen_protos.py [--out DIR]
--proto_path is the protos/ root, so the generated modules import each other absolutely
(`from specdec_rpc.v1 import specdec_pb2`) with no post-processing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"


def generate(out_dir: Path) -> list[Path]:
    from grpc_tools import protoc  # dev/test dependency only

    protos = sorted(PROTO_ROOT.rglob("*.proto"))
    args = [
        "protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed")
    return [p.relative_to(PROTO_ROOT) for p in protos]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT)
    args = parser.parse_args()
    done = generate(args.out)
    print(f"generated stubs for {', '.join(map(str, done))} under {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
