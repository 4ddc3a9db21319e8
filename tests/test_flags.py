"""One declaration per flag: the parsers derived from the config dataclasses, the flags a client
passes on to the services it starts, the environment, secrets, and the flag tables of docs/operations.md."""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from client import draft_based, multi_projection, prompt_lookup
from client.cli_common import engine_args
from proposer_service.config import ProposerServiceConfig
from proposer_service.config import from_args as proposer_config
from proposer_service.config import parser as proposer_parser
from specdec.admission import Admission
from specdec.config import EngineConfig, QaicOptions
from specdec.flag_tables import default_and_meaning, replace_block
from specdec.flags import UNSET, add_flags, declared, option, to_argv, values
from specdec.generation import GenerationConfig
from specdec.recovery import RecoveryPolicy
from specdec.sampling import SamplingParams
from specdec.service_config import DEFAULT_PRE_DRAFT_BRANCHES, ServiceOptions
from specdec_rpc.security import ClientSecurity, ServerSecurity
from specdec_rpc.server import ServerConfig
from specdec_rpc.service_cli import describe
from specdec_rpc.sessions import SessionPolicy
from verifier_service.config import VerifierServiceConfig
from verifier_service.config import from_args as verifier_config
from verifier_service.config import parser as verifier_parser

ROOT = Path(__file__).resolve().parent.parent
DECLARING = (EngineConfig, QaicOptions, Admission, SessionPolicy, ServerConfig, ServerSecurity,
             ServiceOptions, ProposerServiceConfig, VerifierServiceConfig, SamplingParams,
             GenerationConfig, RecoveryPolicy, ClientSecurity)
# A value unlike each field's default, by the field's type: what a round trip must carry.
SAMPLES = {int: 7, float: 2.5, str: "x", Path: Path("/tmp/x"), bool: True}


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    for name in ("SPECDEC_COMPILE", "SPECDEC_AUTH_TOKEN"):   # conftest sets the first
        monkeypatch.delenv(name, raising=False)


def sample(cls: type, field: str):
    opt = option(cls, field)
    if opt.flag.choices:
        return next(c for c in opt.flag.choices if c != opt.default)
    if opt.flag.on_off:
        return opt.default != "on"
    return (7, 8) if field == "window_sizes" else SAMPLES[opt.parse or (bool if opt.default is False else str)]


@pytest.mark.parametrize("cls", DECLARING, ids=lambda c: c.__name__)
def test_every_declared_flag_round_trips_through_its_parser(cls):
    """to_argv writes a value as its flag's arguments; the derived parser and values() read
    it back as the field's value."""
    given = {field: sample(cls, field) for field in declared(cls)}
    p = argparse.ArgumentParser()
    add_flags(p, cls)
    argv = [a for field, v in given.items() for a in to_argv(cls, field, v)]
    assert values(cls, p.parse_args(argv)) == given
    defaults = values(cls, p.parse_args([]))   # no flag given: the declared defaults
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for field, spec in declared(cls).items():
        want = fields[field].default if spec.cli_default is UNSET else spec.cli_default
        assert defaults[field] == (None if want is dataclasses.MISSING else want), field


def test_the_services_defaults_are_the_dataclasses_fields():
    v = verifier_config(["--model", "m"])
    p = proposer_config(["--method", "ngram"])
    for cfg in (v, p):
        assert cfg.sessions == SessionPolicy() and cfg.server == ServerConfig()
        assert cfg.admission == Admission(max_waiting=16, wait_s=30.0)   # the services queue
        assert (cfg.executor, cfg.device_group, cfg.max_k, cfg.batching) == ("torch", None, 8, True)
        e = cfg.engine
        assert (e.dtype, e.prefill_seq_len, e.ctx_len, e.full_batch_size, e.compile) == \
            ("auto", 32, 128, 4, "auto")
    assert v.window_sizes == tuple(range(9)) and v.speculative_model_type == "target"
    assert (p.max_ngram_size, p.pre_draft_branches) == (3, DEFAULT_PRE_DRAFT_BRANCHES)


def test_the_qefficient_example_flags_keep_their_defaults():
    d, pl, mp = draft_based.parse_args([]), prompt_lookup.parse_args([]), multi_projection.parse_args([])
    assert (d.num_speculative_tokens, d.prefill_seq_len, d.ctx_len, d.full_batch_size) == (4, 32, 128, None)
    assert (d.draft_top_m, d.target_device_group, d.draft_device_group) == (16, None, None)
    assert (pl.num_speculative_tokens, pl.max_ngram_size, pl.prefill_seq_len, pl.ctx_len) == ((3,), 3, 256, 1024)
    assert (mp.prefill_seq_len, mp.ctx_len, mp.device_group) == (32, 128, None)
    for a in (d, pl, mp):
        assert (a.num_cores, a.draft_num_cores, a.compile, a.executor, a.qaic_session) == \
            (11, 5, None, "torch", "device")
        assert (a.temperature, a.top_k, a.top_p, a.seed, a.max_new_tokens) == (0.0, 0, 1.0, None, 0)


@pytest.mark.parametrize("executor", ["torch", "qaic"])
def test_a_client_passes_its_engine_flags_on_as_the_services_parse_them(executor):
    args = draft_based.parse_args(["--executor", executor, "--ctx-len", "96", "--prefill-seq-len", "16",
                                   "--full-batch-size", "3", "--compile", "off", "--mxfp6",
                                   "--compile-dir", "/tmp/c", "--draft-num-cores", "4"])
    target = verifier_config(engine_args(args, "t", "0,1", 5))
    draft = proposer_config(["--method", "draft", *engine_args(args, "d", "1", 5, draft=True)])
    for cfg in (target, draft):
        e = cfg.engine
        assert (e.ctx_len, e.prefill_seq_len, e.full_batch_size, e.compile, e.compile_dir) == \
            (96, 16, 3, "off", Path("/tmp/c"))
        assert (cfg.executor, cfg.max_k) == (executor, 5)
    assert (target.engine.model, draft.engine.model) == ("t", "d")
    if executor == "qaic":
        assert (target.qaic.num_cores, draft.qaic.num_cores) == (11, 4)
        assert target.qaic.device_ids == (0, 1) and draft.qaic.device_ids == (1,)
        assert target.qaic.mxfp6_matmul and not target.qaic.mxint8_kv_cache
    else:
        assert target.qaic is None


def test_environment_overrides_and_secrets_stay_secret(monkeypatch):
    monkeypatch.setenv("SPECDEC_COMPILE", "off")
    monkeypatch.setenv("SPECDEC_QUEUE_TIMEOUT", "2.5")
    monkeypatch.setenv("SPECDEC_AUTH_TOKEN", "s3cret-token")
    cfg = verifier_config(["--model", "m", "--queue-timeout", "4"])   # the command line wins
    assert cfg.engine.compile == "off" and cfg.admission.wait_s == 4.0
    assert cfg.server.security.auth_token == "s3cret-token"
    text = describe(cfg)
    assert "s3cret-token" not in text and json.loads(text)["server"]["security"]["auth_token"] == "***"
    assert draft_based.parse_args([]).auth_token == "s3cret-token"   # the client's default


def test_help_states_each_default_once_and_the_table_reads_it():
    actions = {a.dest: a for a in verifier_parser()._actions}
    assert default_and_meaning(actions["ctx_len"]) == \
        ("128", "KV positions per session; a prompt must leave room to generate")
    assert default_and_meaning(actions["mxfp6"])[0] == "off"
    assert default_and_meaning(actions["auth_token"])[0] == "off"
    assert "one of `auto`, `float32`" in default_and_meaning(actions["dtype"])[1]
    assert {a.dest for a in proposer_parser()._actions} >= {"method", "max_ngram_size", "max_queue"}
    with pytest.raises(ValueError, match="flags:nowhere"):
        replace_block("no markers here", "nowhere", "| x |")


def test_the_documented_flag_tables_are_the_parsers():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/flag_docs.py"), "--check"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


@pytest.mark.parametrize("module", ["verifier_service.config", "proposer_service.config",
                                    "client.draft_based", "client.prompt_lookup",
                                    "client.multi_projection"])
def test_help_prints_for_every_entry_point(module):
    """argparse %-formats help when printing it: a literal % in a flag's help (the compile
    flag's "10%") made every --help end in a traceback."""
    import importlib

    text = importlib.import_module(module).parser().format_help()
    assert "--compile" in text and "10%" in text
