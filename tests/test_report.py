"""python -m bench.report: the quick report as a user runs it (real services, the shipped models,
transformers beside them), the bound's arithmetic, and the README's headline block against the
committed report. No timing asserts: only structure, and tokens against transformers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.markdown import END, PLOTS, START, block, readme_block, with_readme_block
from bench.rows import alpha, expected_tokens, speedup_bound
from specdec.generation import GenerationRecord
from specdec.method import Method
from tests.tiny_models import greedy_reference

pytestmark = pytest.mark.slow  # services, compiling or a benchmark: `pytest -m "not slow"` skips it

ROOT = Path(__file__).resolve().parent.parent
PNG = b"\x89PNG\r\n\x1a\n"
HEADLINE_MODES = ["target-only", "draft", "ngram", "turbo", "draft pre-drafting", "draft k auto",
                  "ngram k auto", "transformers generate()", "transformers assisted", "transformers prompt lookup"]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    readme = (ROOT / "README.md").read_text()
    proc = subprocess.run([sys.executable, "-m", "bench.report", "--quick", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (ROOT / "README.md").read_text() == readme, "a report elsewhere must leave the README alone"
    return out


def test_quick_report_writes_every_table_and_plot(quick):
    text = (quick / "benchmarks.md").read_text()
    for title in ("## Headline", "## All rows", "## Speedup vs k, and the bound", "## Acceptance by draft position",
                  "## Concurrent sessions", "## Where a round's time goes", "**Machine:**",
                  "python -m bench.report --quick"):
        assert title in text
    for name in PLOTS:
        png = quick / "benchmarks" / f"{name}.png"
        assert png.read_bytes()[:8] == PNG and png.stat().st_size < 200_000
        assert f"](benchmarks/{name}.png)" in text
    lines = block(text).splitlines()
    modes = [ln.split("|")[1].split(" (")[0].strip() for ln in lines if ln.startswith("| ") and "---" not in ln][1:]
    assert modes == HEADLINE_MODES
    assert all(ln.rstrip().endswith("| yes |") for ln in lines if ln.startswith("| ") and "---" not in ln
               and not ln.startswith("| mode"))
    concurrency = text.split("## Concurrent sessions")[1].split("##")[0]
    assert "| 1 |" in concurrency and "| 2 |" in concurrency


def test_quick_report_rows_all_produce_the_targets_greedy_tokens(quick, shipped_target_hf):
    """Every row, this project's and the peers', and every concurrent session: the same tokens
    as transformers' greedy decoding of the target (and so as target-only)."""
    report = json.loads((quick / "benchmarks.json").read_text())
    from client.cli_common import load_tokenizer

    tok = load_tokenizer(str(ROOT / "models" / "target"))
    prompts = [tok(t)["input_ids"] for t in report["setup"]["prompts"]]
    new = len(report["rows"][0]["tokens"][0])
    reference = [greedy_reference(shipped_target_hf, p, new) for p in prompts]
    assert {r["mode"] for r in report["rows"]} == set(HEADLINE_MODES)
    for row in report["rows"]:
        assert row["tokens"] == reference, row["mode"]
        assert row["identical"] is True
    for mode, by_n in report["concurrency"]["tokens"].items():
        for n, outs in by_n.items():
            assert outs == [reference[i % len(reference)] for i in range(int(n))], (mode, n)
    drafted = [r for r in report["rows"] if r["mode"] in ("draft", "ngram", "turbo")]
    assert all(r["bound"] is not None and r["alpha"] is not None and r["acceptance_by_position"] for r in drafted)
    assert all(set(r["round_ms"]) == {"proposer", "verifier", "network", "client"}
               for r in report["rows"] if not r["peer"])


@pytest.fixture(scope="module")
def shipped_target_hf():
    from bench.peers import load_hf

    return load_hf(str(ROOT / "models" / "target"))


def test_readme_headline_is_the_committed_reports():
    """The README's block is what bench.report wrote from docs/benchmarks.md, byte for byte,
    and the plots it shows are committed."""
    readme, report = (ROOT / "README.md").read_text(), (ROOT / "docs" / "benchmarks.md").read_text()
    assert block(readme) == readme_block(report)
    for name in ("tokens_per_s", "speedup_vs_k"):
        png = ROOT / "docs" / "benchmarks" / f"{name}.png"
        assert f"](docs/benchmarks/{name}.png)" in block(readme)
        assert png.read_bytes()[:8] == PNG and png.stat().st_size < 200_000


def test_readme_block_is_replaced_in_place():
    report = f"# r\n{START}\n| a |\n\n![x](benchmarks/x.png)\n{END}\nmore\n"
    readme = f"intro\n{START}\nstale 1.5x\n{END}\noutro\n"
    new = with_readme_block(readme, report)
    assert new.startswith("intro\n") and new.endswith("\noutro\n") and "stale" not in new
    assert "](docs/benchmarks/x.png)" in new and "[docs/benchmarks.md](docs/benchmarks.md)" in new
    assert block(new) == readme_block(report)
    with pytest.raises(ValueError):
        with_readme_block("no markers", report)


def test_leviathan_bound():
    assert expected_tokens(0.5, 2) == pytest.approx(1.75)          # 1 + 0.5 + 0.25
    assert expected_tokens(1.0, 4) == 5.0
    assert speedup_bound(0.5, 2, 0.1) == pytest.approx(1.75 / 1.2)
    assert speedup_bound(0.8, 4, 0.0) == pytest.approx(expected_tokens(0.8, 4))


def test_alpha_pools_drafts_that_were_reached():
    # k = 3, two rounds: all 3 accepted; then the first rejected. Reached: 2, 1, 1; accepted: 1, 1, 1.
    rec = GenerationRecord(prompt_len=1, accepted_at=[1, 1, 1], drafted_at=[2, 2, 2])
    assert alpha([rec]) == pytest.approx(3 / 4)
    assert alpha([GenerationRecord(prompt_len=1)]) is None


def test_auto_k_bench_rotates_rows_and_compares_auto_with_each_repeats_best():
    from bench.auto_k import AUTO, summary
    from bench.measure import rotated
    names = ["k=1", "k=2", AUTO]
    orders = [rotated(names, r, 3) for r in range(3)]
    assert [o[0] for o in orders] == names and all(sorted(o) == sorted(names) for o in orders)
    # More rows than repeats: the turns' first rows spread over the list.
    assert [rotated(list(range(10)), r, 5)[0] for r in range(5)] == [0, 2, 4, 6, 8]
    s = summary({"k=1": [100.0, 90.0, 120.0], "k=2": [110.0, 130.0, 100.0], AUTO: [99.0, 117.0, 126.0]})
    assert s["best_fixed"] == "k=2" and s["tokens_per_s"]["k=2"] == 110.0
    assert s["auto_over_best_fixed"] == pytest.approx(117.0 / 110.0)
    assert s["auto_over_best_fixed_per_repeat"] == pytest.approx([0.9, 0.9, 1.05])
    # Held out: repeat 2's best k by the other repeats is k=1 (medians 110 against 105).
    assert s["auto_over_held_out_best_per_repeat"] == pytest.approx([99 / 110, 117 / 90, 126 / 100])
    assert s["auto_over_held_out_best"] == pytest.approx(1.26)
    one = summary({"k=0": [50.0], "k=1": [100.0], AUTO: [90.0]})   # one repeat: none held out
    assert one["best_fixed"] == "k=1" and one["auto_over_held_out_best"] is None


def test_k_auto_note_names_the_best_fixed_k_and_auto_held_out():
    from bench.auto_k import AUTO
    from bench.matrix import Plan, auto_row
    rec = GenerationRecord(prompt_len=1, tokens=[5, 6, 7], t_start=0.0, t_first=0.1, t_end=1.0,
                           k_histogram=[1, 0, 2], verify_steps=3)
    fixed = {"target-only": 0, "draft k=1": 1, "draft k=2": 2}
    rates = {"target-only": [50.0, 50.0, 50.0], "draft k=1": [100.0, 90.0, 120.0],
             "draft k=2": [110.0, 130.0, 100.0], AUTO: [99.0, 117.0, 126.0]}
    row = auto_row(Method.DRAFT, Plan(ks=(1, 2), k=2, auto_max_k=2, pre_draft_branches=0),
                   [rec], [[5, 6, 7]], fixed, rates)
    # The best median is k = 2's (110); held out, repeat 2 compares with k = 1 (test above).
    assert row.note == "rounds by k: 0:1 2:2; 1.06x the best fixed k (2), 1.26x held out (median of repeats)"
    assert row.identical
