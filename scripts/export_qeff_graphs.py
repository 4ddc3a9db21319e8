"""Export checkpoints with QEfficient's own API into the ONNX graphs a QPC is compiled from, for
the qaic executor's onnxruntime session (--executor qaic --qaic-session onnxruntime).

Needs an environment where QEfficient imports (docs/operations.md, "Cloud AI 100": a venv of its own with
QEfficient installed from source); the project's own venv never needs QEfficient.

    python scripts/export_qeff_graphs.py                  # the tiny fixtures -> tests/fixtures/qeff
    python scripts/export_qeff_graphs.py --shipped        # models/target (target, turbo), models/draft
    python scripts/export_qeff_graphs.py --model DIR --role target turbo

Each graph is written to <checkpoint>/onnx/<role>.onnx, exported as
QEFFAutoModelForCausalLM.from_pretrained(DIR, continuous_batching=True,
qaic_config={"speculative_model_type": role} for a target or turbo, none for a draft).export().
The fixtures are random tiny llama-family GQA checkpoints (a target with Turbo heads beside
it, and a draft cut from the target), saved with the graphs and a PROVENANCE.json naming the
QEfficient commit and package versions that made them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FIXTURES = ROOT / "tests" / "fixtures" / "qeff"
ROLES = ("target", "turbo", "draft")
# Small enough to commit (a few hundred KB with the graphs), big enough to be a real GQA llama.
TINY = dict(num_hidden_layers=2, max_position_embeddings=128)
DRAFT_LAYERS = 1
TURBO = dict(heads=3, layers=1, zero_heads=(0,))


def qefficient_commit(qeff, given: str | None) -> str:
    if given:
        return given
    src = Path(qeff.__file__).resolve().parent.parent
    try:
        return subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        raise SystemExit(f"QEfficient at {src} is not a git checkout: pass --qefficient-commit") from None


def export(model: Path, roles: list[str]) -> dict[str, float]:
    from specdec.engine.qaic_onnx import export_graph
    from specdec.engine.qaic_specs import QpcLayout

    took = {}
    for role in roles:
        # Only the role matters to the export: specializations are chosen at compile time.
        layout = QpcLayout(role != "draft", 1 if role == "turbo" else 0, 1, 2, 1, (0,), 0)
        start = time.monotonic()
        out = export_graph(model, layout)
        took[role] = time.monotonic() - start
        print(f"{out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}: "
              f"{out.stat().st_size / 1024:.0f} KB in {took[role]:.1f}s", flush=True)
    return took


def make_fixtures(out: Path) -> tuple[Path, Path]:
    from tests.tiny_models import save_tiny, save_truncated, save_turbo, save_word_tokenizer

    target = save_tiny(out / "target", "llama", seed=0, **TINY)
    save_word_tokenizer(target)
    save_turbo(target, **TURBO)
    draft = save_truncated(target, out / "draft", layers=DRAFT_LAYERS)
    return target, draft


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="export this checkpoint (with --role)")
    p.add_argument("--role", nargs="+", choices=ROLES, default=["target"])
    p.add_argument("--shipped", action="store_true",
                   help="export models/target as target and turbo, models/draft as draft")
    p.add_argument("--out", type=Path, default=FIXTURES, help="where the fixtures go")
    p.add_argument("--qefficient-commit", default=None,
                   help="QEfficient's commit, where its source is not a git checkout")
    args = p.parse_args(argv)

    from tests.qefficient_env import import_qefficient

    qeff = import_qefficient()
    if args.model:
        export(args.model, args.role)
        return
    if args.shipped:
        export(ROOT / "models" / "target", ["target", "turbo"])
        export(ROOT / "models" / "draft", ["draft"])
        return
    import onnx
    import torch
    import transformers

    commit = qefficient_commit(qeff, args.qefficient_commit)
    target, draft = make_fixtures(args.out)
    took = {**export(target, ["target", "turbo"]), **export(draft, ["draft"])}
    files = sorted(f for f in args.out.rglob("*") if f.is_file() and f.name != "PROVENANCE.json")
    provenance = {
        "made_by": "scripts/export_qeff_graphs.py",
        "qefficient": {"commit": commit, "version": qeff.__version__},
        "packages": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "onnx": onnx.__version__},
        "checkpoints": {"target": {"family": "llama", **TINY, "turbo": TURBO},
                        "draft": {"cut_from": "target", "num_hidden_layers": DRAFT_LAYERS}},
        "export": {role: {"from_pretrained": {"continuous_batching": True, "qaic_config":
                                              None if role == "draft" else
                                              {"speculative_model_type": role}},
                          "seconds": round(took[role], 2)} for role in ROLES},
        "sha256": {str(f.relative_to(args.out)): sha256(f) for f in files},
    }
    (args.out / "PROVENANCE.json").write_text(json.dumps(provenance, indent=2) + "\n")
    print(f"{len(files)} files, {sum(f.stat().st_size for f in files) / 1024:.0f} KB in {args.out}")


if __name__ == "__main__":
    main()
