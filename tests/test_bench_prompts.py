"""Prompt files for the benchmarks: the committed held-out set reads, a malformed file is one
error line, not a traceback."""

from __future__ import annotations

import pytest

from bench.__main__ import HELDOUT_PROMPTS, parse_args, read_prompts


def test_the_heldout_prompts_read():
    texts = read_prompts(HELDOUT_PROMPTS)
    assert len(texts) == 8 and len(set(texts)) == 8
    assert parse_args(["--prompts-file", str(HELDOUT_PROMPTS)]).prompts_file == HELDOUT_PROMPTS


@pytest.mark.parametrize("content", ['{"a": 1}', "[]", '["ok", ""]', '["ok", 3]'])
def test_a_malformed_prompts_file_is_refused(tmp_path, content):
    path = tmp_path / "p.json"
    path.write_text(content)
    with pytest.raises(SystemExit, match="expected a JSON list of non-empty strings"):
        read_prompts(path)
