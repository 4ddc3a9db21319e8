"""The committed stubs match the protos, and plain protoc compiles them for other languages."""

from __future__ import annotations

import filecmp
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_committed_stubs_have_no_drift(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "scripts/gen_protos.py"), "--out", str(tmp_path)],
                   check=True)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.py*"))
    assert generated, "protoc produced nothing"
    for rel in generated:
        committed = ROOT / "specdec_rpc" / rel.relative_to("specdec_rpc")
        assert committed.exists(), f"{rel} is not committed; run scripts/gen_protos.py"
        assert filecmp.cmp(tmp_path / rel, committed, shallow=False), \
            f"{rel} differs from protos/; run scripts/gen_protos.py and commit"


def test_protoc_compiles_for_other_languages(tmp_path):
    """Debian's plain protoc (the one other languages' toolchains use), not grpc_tools'."""
    protoc = shutil.which("protoc")
    if protoc is None:
        pytest.skip("protoc not installed (.ci/run installs Debian's protobuf-compiler)")
    protos = [str(p) for p in (ROOT / "protos").rglob("*.proto")]
    for lang in ("cpp", "java", "csharp"):
        out = tmp_path / lang
        out.mkdir()
        subprocess.run([protoc, f"--proto_path={ROOT / 'protos'}", f"--{lang}_out={out}", *protos],
                       check=True)
        assert any(p.is_file() for p in out.rglob("*")), lang
