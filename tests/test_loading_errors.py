"""A model that cannot be loaded ends a service or a client CLI within seconds, with one line
that names it and says what to do, exit code EXIT_START_ERROR, and no traceback or asyncio
noise: a hub id without a hub, a local path that is not there, a model_type not supported."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from specdec.errors import ERROR_PREFIX, EXIT_START_ERROR
from tests.tiny_models import save_word_tokenizer

pytestmark = pytest.mark.slow  # services, compiling or a benchmark: `pytest -m "not slow"` skips it

ROOT = Path(__file__).resolve().parent.parent
HUB_ID = "meta-llama/Llama-3.2-1B"
TIMEOUT_S = 30   # a run that goes this long has hung: it fails rather than waits
NOISE = ("Traceback", "Event loop is closed", "never awaited")
# What may come before the error: a service's start-up log at INFO (which names the model in
# its config line), as the client echoes it ("[verifier] ..."), and the client's "starting ...".
INFO_LINE = re.compile(r"^(\[\w+\] )?\d{4}-\d\d-\d\d [\d:,]+ INFO ")
STARTING_LINE = re.compile(r"^starting (verifier|proposer) ")

ENTRY_POINTS = {
    "verifier": lambda model: ["verifier_service", "--model", model],
    "proposer": lambda model: ["proposer_service", "--method", "draft", "--model", model],
    "client": lambda model: ["client.draft_based", "--target-model-name", model,
                             "--draft-model-name", model, "--max-new-tokens", "4"],
}


def run(entry: str, model: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *ENTRY_POINTS[entry](model)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=TIMEOUT_S)


def hub_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A hub cache of its own (a model cached on this machine must not be found) and no token."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_TOKEN")}
    return {**env, "HF_HOME": str(tmp_path / "hf-home"), **extra}


def error_lines(stderr: str) -> list[str]:
    """Every non-empty line of stderr that is not start-up progress."""
    return [line for line in stderr.splitlines() if line.strip()
            and not INFO_LINE.match(line) and not STARTING_LINE.match(line)]


def assert_one_line_error(proc: subprocess.CompletedProcess, model: str, says: str) -> str:
    for noise in NOISE:
        assert noise not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == EXIT_START_ERROR, proc.stderr[-3000:]
    lines = error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr[-3000:]
    line = lines[0]
    assert line.startswith(ERROR_PREFIX) and f"model '{model}'" in line and says in line, line
    return line


def unsupported_model(root: Path) -> Path:
    """A checkpoint of a family the engines do not implement; with a tokenizer, so the client
    gets past encoding its prompts and hears it from the services it starts."""
    path = root / "gemma2"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "gemma2", "vocab_size": 96}))
    save_word_tokenizer(path)
    return path


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
@pytest.mark.parametrize("case", ["hub id offline", "missing path", "unsupported model_type"])
def test_a_model_that_cannot_load_is_one_line(entry, case, tmp_path):
    if case == "hub id offline":
        model, says, env = HUB_ID, "HF_HUB_OFFLINE is set", hub_env(tmp_path, HF_HUB_OFFLINE="1")
    elif case == "missing path":
        model, says, env = str(tmp_path / "missing"), "no such directory", hub_env(tmp_path)
    else:
        model, env = str(unsupported_model(tmp_path)), hub_env(tmp_path)
        says = "model_type 'gemma2' is not supported (supported: llama, mistral, qwen2, qwen3)"
    line = assert_one_line_error(run(entry, model, env), model, says)
    if entry == "client" and case == "unsupported model_type":
        # the client found the directory and its tokenizer; a service it started refused it
        assert re.match(r"error: (verifier|proposer) could not start: ", line), line


def test_a_hub_id_without_a_network_is_one_line(tmp_path):
    """Without HF_HUB_OFFLINE, the hub look-up itself fails (no network here) under a short
    timeout of huggingface_hub's own, instead of transformers retrying for close to a minute."""
    env = hub_env(tmp_path, HF_HUB_ETAG_TIMEOUT="5", HF_HUB_DOWNLOAD_TIMEOUT="5")
    line = assert_one_line_error(run("client", HUB_ID, env), HUB_ID, "the hub")
    assert f"hf download {HUB_ID} --local-dir DIR" in line or "gated" in line, line
