"""The command-line entry points as a user runs them: services as real processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from client.launcher import start_service
from tests.tiny_models import greedy_reference

pytestmark = pytest.mark.slow  # services, compiling or a benchmark: `pytest -m "not slow"` skips it

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("k", ["3", "auto"])
def test_draft_based_cli_starts_services_and_is_lossless(tiny_pair, target_hf, tmp_path, k):
    target, draft = tiny_pair
    out = tmp_path / "run.json"
    cmd = [sys.executable, "-m", "client.draft_based", "--target-model-name", str(target),
           "--draft-model-name", str(draft), "--num-speculative-tokens", k,
           "--prefill-seq-len", "8", "--ctx-len", "64", "--max-new-tokens", "20",
           "--ignore-eos-token", "--full-batch-size", "2", "--json", str(out), "--compare-target-only",
           "--prompts", "t5 t6 t7 t8 t9", "--prompts", "t40 t41 t42 t43 t44 t45 t46 t47 t48 t49 t50"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for label in ("Avg TLM+DLM TTFT", "Decode Throughput", "E2E Throughput",
                  "Avg number of accepted tokens"):
        assert label in proc.stdout
    report = json.loads(out.read_text())
    assert len(report["prompts"]) == 2
    for item in report["prompts"]:
        assert item["generated_ids"] == greedy_reference(target_hf, item["prompt_ids"], 20)
        assert item["metrics"]["generated_tokens"] == 20
        rounds = item["metrics"]["k_histogram"]
        assert sum(rounds) > 0 and (k == "auto" or len(rounds) == 4 and rounds[3] == max(rounds))
    assert report["totals"]["generated_tokens"] == 40
    # --compare-target-only: the same prompts at k = 0 on the same services, the same tokens
    assert report["target_only"]["generated_ids"] == [item["generated_ids"] for item in report["prompts"]]
    assert report["target_only"]["totals"]["k_histogram"][1:] == []
    assert "speedup: " in proc.stdout and "identical outputs: yes, token for token" in proc.stdout
    # auto: k in 0..8, the largest both services the client started accept
    assert len(report["totals"]["k_histogram"]) <= (9 if k == "auto" else 4)


def test_service_exits_cleanly_on_sigterm(tiny_pair):
    svc = start_service("verifier", "verifier_service", ["--model", str(tiny_pair[0])])
    assert svc.address.startswith("127.0.0.1:")
    assert svc.stop() == 0
    assert any("stopped" in line for line in svc.stderr_tail)


def test_service_reports_a_bad_model_path(tmp_path):
    import pytest

    with pytest.raises(RuntimeError, match="no such directory"):
        start_service("verifier", "verifier_service", ["--model", str(tmp_path / "missing")])


@pytest.mark.parametrize("every_s, ready", [(0.1, True), (0.0, False)])
def test_start_up_deadline_counts_silence(every_s, ready):
    """The start-up deadline is time without output, not since the start: a start-up three
    times the deadline that logs as it goes is waited for (a service compiling its steps), a
    silent one fails."""
    env = {"SLOW_START_S": "1.5", "SLOW_START_EVERY_S": str(every_s)}
    if ready:
        svc = start_service("slow", "tests.slow_start", [], timeout_s=0.5, env=env)
        assert svc.address.startswith("127.0.0.1:") and len(svc.stderr_tail) >= 5
        svc.stop()
    else:
        with pytest.raises(RuntimeError, match="slow timed out before it was ready"):
            start_service("slow", "tests.slow_start", [], timeout_s=0.5, env=env)


def test_a_service_that_crashed_mid_run_is_reported_when_stopped(capsys):
    """A service that exits on its own after it was ready reaches its clients only as
    DEADLINE_EXCEEDED or UNAVAILABLE; stop() then says it had exited, with its last lines."""
    env = {"SLOW_START_S": "0.1", "SLOW_START_EVERY_S": "0", "SLOW_START_CRASH": "3"}
    svc = start_service("slow", "tests.slow_start", [], env=env)
    svc.proc.wait(10)
    assert svc.stop() == 3
    err = capsys.readouterr().err
    assert "slow had exited with code 3 before it was stopped" in err and "the last words" in err
    assert svc.stop() == 3 and capsys.readouterr().err == ""   # said once


def test_bench_modes_agree(tiny_pair, tmp_path):
    """The benchmark's modes (target-only, gRPC, pre-drafting, Generate on the verifier,
    in-process, transformers' own) produce identical tokens."""
    target, draft = tiny_pair
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "bench", "--target-model", str(target), "--draft-model", str(draft),
           "--prompts", "t5 t6 t7", "--max-new-tokens", "12", "--ctx-len", "64", "--json", str(out),
           "--auto-max-k", "1",  # (b~) with k in 0..1: one more verify window to compile
           "--repeats", "2"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["identical_outputs"] is True
    assert figures["tokens_per_s"]["speculative_grpc"] > 0
    assert figures["pre_draft_on_request_tokens_per_s"] > 0
    assert figures["tokens_per_s"]["transformers_speculative"] > 0
    assert figures["auto_vs_fixed_bauto_over_b"] > 0 and sum(figures["auto_k_histogram"]) > 0
    assert figures["server_side_tokens_per_s"] > 0 and figures["server_side_vs_client_loop"] > 0


def test_sampled_bench_rows_give_the_same_tokens(tiny_pair, tmp_path):
    """--temperature: the speculative rows (sequential, pre-drafting, Generate on the verifier,
    in-process) sample the same tokens for the same seed, and transformers' rows, which draw
    otherwise, are skipped."""
    target, draft = tiny_pair
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "bench", "--target-model", str(target), "--draft-model", str(draft),
           "--prompts", "t5 t6 t7", "--max-new-tokens", "12", "--ctx-len", "64", "--json", str(out),
           "--temperature", "0.8", "--repeats", "1"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["identical_outputs"] is True and figures["setup"]["temperature"] == 0.8
    assert figures["pre_draft_on_request_vs_sequential_bplusr_over_b"] > 0
    assert figures["tokens_per_s"]["transformers_generate"] is None


@pytest.mark.parametrize("cli", ["draft_based", "prompt_lookup", "multi_projection"])
def test_server_side_cli_generates_through_the_verifier_losslessly(cli, tiny_pair, target_hf, tmp_path):
    """--server-side: one Generate call per prompt, the services started here (for the draft
    model the proposer first, its address the verifier's --proposer); the same greedy tokens,
    with drafts accepted by the verifier's own loop."""
    target, draft = tiny_pair
    model = ["--target-model-name", str(target)]
    if cli == "draft_based":
        model += ["--draft-model-name", str(draft), "--num-speculative-tokens", "3"]
    elif cli == "multi_projection":
        import shutil

        from tests.tiny_models import save_turbo

        turbo = shutil.copytree(target, tmp_path / "turbo")
        save_turbo(turbo, heads=3, layers=1, zero_heads=(0,))
        model = ["--pretrained-model-name-or-path", str(turbo)]
    out = tmp_path / "run.json"
    cmd = [sys.executable, "-m", f"client.{cli}", *model, "--server-side", "--prefill-seq-len", "8",
           "--ctx-len", "64", "--max-new-tokens", "16", "--ignore-eos-token", "--full-batch-size", "2",
           "--json", str(out), "--compare-target-only", "--quiet-services",
           "--prompts", "t5 t6 t7 t8 t9 t5 t6 t7 t8 t9 t5 t6", "--prompts", "t40 t41 t42 t40 t41 t42"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    started = [line.split()[1] for line in proc.stderr.splitlines() if line.startswith("starting ")]
    assert started == (["proposer", "verifier"] if cli == "draft_based" else ["verifier"])
    report = json.loads(out.read_text())
    for item in report["prompts"]:
        assert item["generated_ids"] == greedy_reference(target_hf, item["prompt_ids"], 16)
        assert item["finish_reason"] == "LENGTH"
    totals = report["totals"]
    assert totals["generated_tokens"] == 32 and totals["drafted"] > 0
    assert totals["mean_accepted_tokens"] > 1.0 and sum(totals["k_histogram"]) > 0, totals
    # rounds by draft length, rebuilt from Generate's metrics: as many rounds, some with drafts
    lengths = totals["draft_length_histogram"]
    assert sum(lengths) == sum(totals["k_histogram"]) and sum(lengths[1:]) > 0, totals
    # the baseline: target-only Generate calls on the same verifier, the same tokens
    assert report["target_only"]["generated_ids"] == [item["generated_ids"] for item in report["prompts"]]
    assert report["target_only"]["totals"]["drafted"] == 0


@pytest.mark.parametrize("argv, message", [
    (["client.prompt_lookup", "--server-side", "--local-proposer"], "--server-side runs the verifier's own"),
    (["client.prompt_lookup", "--server-side", "--method", "suffix"], "--server-side runs the verifier's own"),
    (["client.draft_based", "--server-side", "--verifier", "127.0.0.1:9", "--proposer", "127.0.0.1:9"],
     "drop --proposer here"),
])
def test_server_side_refuses_what_the_verifier_would_not_do(argv, message, tiny_pair):
    proc = subprocess.run([sys.executable, "-m", *argv, "--target-model-name", str(tiny_pair[0])],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]
