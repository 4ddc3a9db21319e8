"""python -m bench.scale --quick on a shrunk family, services eager, float32: every figure of the
report is there, a finite positive number, and every row decoded the same tokens. No timing
asserts."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # services, compiling or a benchmark: `pytest -m "not slow"` skips it

ROOT = Path(__file__).resolve().parent.parent
FIGURES = {"startup_s", "peak_rss_mb", "peak_rss_compiled_over_eager", "tokens_per_s",
           "target_only_over_transformers", "speculative_over_target_only", "tokens_per_target_step",
           "step_ms", "bandwidth_gb_s", "floor_ms", "engine_step_ms", "step_over_floor",
           "engine_step_over_floor", "ttft_s", "transformers_prefill_s", "ttft_over_transformers_prefill"}


def leaves(tree: object, path: str = "") -> list[tuple[str, object]]:
    if isinstance(tree, dict):
        return [leaf for k, v in tree.items() for leaf in leaves(v, f"{path}.{k}")]
    return [(path, tree)]


def test_quick_scale_report_has_every_figure(tmp_path):
    out = tmp_path / "scale.json"
    # float32: transformers' tokens must match too (in half precision they may round apart)
    proc = subprocess.run([sys.executable, "-m", "bench.scale", "--quick", "--shrink", "--compile", "off",
                           "--dtype", "float32", "--models-dir", str(tmp_path / "models"), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    figures = report["figures"]
    assert set(figures) == FIGURES
    for service in ("verifier", "proposer"):
        assert set(figures["startup_s"][service]) == {"eager", "first", "second"}
        assert set(figures["peak_rss_mb"][service]) == {"eager", "compiled", "compiled_first_start"}
    numbers = leaves(figures)
    assert len(numbers) == 44   # 2 services x (3 starts x 2 + 3 RSS + 1 ratio), 2 modes x 9, and 6 single
    bad = [(path, x) for path, x in numbers
           if not isinstance(x, (int, float)) or isinstance(x, bool) or not math.isfinite(x) or x <= 0]
    assert not bad, bad
    assert all(same for mode in report["identical_tokens"].values() for same in mode.values())
    assert "| target-only / transformers generate() |" in proc.stdout
