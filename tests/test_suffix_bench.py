"""The suffix-decoding benchmark's workload and its runner: the requests built from held-out
sources, follow-ups carrying the earlier answer, and one short run of `python -m bench.suffix`
whose rows all agree token for token."""

from __future__ import annotations

import json

import pytest

from bench.suffix import in_order, main, next_prompt
from bench.workload import WORKLOAD, Request, build, functions, load, renamed

pytestmark = pytest.mark.slow  # services, compiling or a benchmark: `pytest -m "not slow"` skips it

SOURCE = '''import os


def first(a, b):
    """One."""
    return a + b + a + b + a + b + a + b + a + b + a + b + a + b + a + b + a + b + a + b + a
    # padding padding padding padding padding padding padding padding padding padding padding


class Skipped:
    pass


def second(x):
    return [x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x]
    # padding padding padding padding padding padding padding padding padding padding padding
'''


def test_functions_are_the_top_level_defs_with_their_bodies():
    found = functions(SOURCE)
    assert [f.split("(")[0] for f in found] == ["def first", "def second"]
    assert found[0].endswith("padding\n") and "class" not in found[0]
    assert renamed("def first(a, b):\n") == "def first(a_, b):\n"


def test_build_asks_each_task_again_edits_and_conversations(monkeypatch):
    import bench.workload as workload

    monkeypatch.setattr(workload, "SOURCES", ("m.py",))
    requests = build({"m.py": SOURCE}, count=2)
    kinds = [r.kind for r in requests]
    # Per function: three asks, one edit; a conversation of three turns on every other one.
    assert kinds == ["repeat"] * 3 + ["edit"] + ["turn"] * 3 + ["repeat"] * 3 + ["edit"]
    assert [r.follow_up for r in requests if r.kind == "turn"] == [False, True, True]
    assert requests[3].text.startswith(functions(SOURCE)[0])


def test_follow_ups_carry_the_previous_prompt_and_answer():
    assert next_prompt([7], False, [1, 2], [3]) == [7]
    assert next_prompt([7], True, [1, 2], [3]) == [1, 2, 3, 7]
    seen: list[list[int]] = []

    def echo(prompt: list[int]) -> list[int]:
        seen.append(prompt)
        return [len(prompt)]

    outs = in_order([([1], False), ([2], True), ([3], True), ([4], False)], echo)
    assert seen == [[1], [1, 1, 2], [1, 1, 2, 3, 3], [4]] and outs == [[1], [3], [5], [1]]


def test_the_committed_workload_loads():
    requests = load(WORKLOAD)
    assert len(requests) >= 20 and {r.kind for r in requests} == {"repeat", "edit", "turn"}
    assert all(isinstance(r, Request) and r.text for r in requests)


def test_a_short_run_agrees_across_rows(tmp_path):
    out = tmp_path / "suffix.json"
    assert main(["--limit", "7", "--max-new-tokens", "8", "--repeats", "1", "--compile", "off",
                 "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    for name in ("workload", "general"):
        assert figures[name]["identical_outputs"] is True
        assert figures[name]["tokens_per_step"]["suffix"] >= 1.0
