"""Shared fixtures: tiny checkpoints with tokenizers, and real gRPC servers on loopback ports."""

from __future__ import annotations

import asyncio
import os
import threading
from dataclasses import replace
from pathlib import Path

import pytest

import proposer_service.__main__ as proposer_main
import verifier_service.__main__ as verifier_main
from specdec.admission import Admission
from specdec.build import build_draft_proposer, build_verifier
from specdec.config import EngineConfig
from specdec_rpc.convert import model_info
from specdec_rpc.metrics import ServiceMetrics
from specdec_rpc.server import ServerConfig
from specdec_rpc.sessions import SessionPolicy
from specdec_rpc.v1 import specdec_pb2 as pb
from tests.tiny_models import TEST_DEVICE, hf_model, save_tiny, save_truncated, save_word_tokenizer

# Services the tests start run eager: compiling every step shape would cost minutes per start.
# The compiled path has its own tests (test_compiled.py), which turn it on explicitly.
os.environ.setdefault("SPECDEC_COMPILE", "off")

CTX_LEN = 96
PREFILL = 8
MAX_K = 8


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory) -> tuple[Path, Path]:
    """(target, draft): a 4-layer random llama and a 2-layer draft cut from it."""
    root = tmp_path_factory.mktemp("pair")
    target = save_tiny(root / "target", "llama", seed=0, num_hidden_layers=4)
    save_word_tokenizer(target)
    return target, save_truncated(target, root / "draft", layers=2)


@pytest.fixture(scope="session")
def target_hf(tiny_pair):
    return hf_model(tiny_pair[0])


class HostedServer:
    """A service on 127.0.0.1:<free port>, hosted by the same code the services run
    (proposer_service/verifier_service `host`, specdec_rpc.hosting: interceptors, health,
    reflection, sessions, drain, closing the backend) on an event loop in a thread of its own.
    `backend` is built already; stop() drains the server and closes it."""

    def __init__(self, role: str, backend, info: pb.ModelInfo, sessions: SessionPolicy = SessionPolicy(),
                 server: ServerConfig = ServerConfig(grace_s=0.0), metrics: ServiceMetrics | None = None
                 ) -> None:
        host = {"verifier": verifier_main.host, "proposer": proposer_main.host}[role]
        self.backend = backend
        ready = threading.Event()
        self.error: BaseException | None = None

        def on_ready(address: str) -> None:
            self.address = address
            ready.set()

        async def run() -> None:
            self.loop, self.stop_event = asyncio.get_running_loop(), asyncio.Event()
            await host(server, lambda: (backend, info), sessions, stop=self.stop_event,
                       on_ready=on_ready, metrics=metrics)

        def thread() -> None:
            try:
                asyncio.run(run())
            except BaseException as exc:  # a failed start: say why in the test, not a hang
                self.error = exc
                ready.set()

        self.thread = threading.Thread(target=thread, daemon=True)
        self.thread.start()
        assert ready.wait(60), "test server did not start within 60 s"
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        if not self.thread.is_alive():  # stopped already
            return
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(30)
        assert not self.thread.is_alive(), "test server did not stop within 30 s"


def engine_config(path: Path, slots: int = 4) -> EngineConfig:
    return EngineConfig(model=str(path), device=TEST_DEVICE, ctx_len=CTX_LEN,
                        prefill_seq_len=PREFILL, full_batch_size=slots)


def start_verifier(path: Path, slots: int = 4, window_sizes: tuple[int, ...] | None = None,
                   batching: bool = True, admission: Admission = Admission(),
                   idle_timeout_s: float = 60.0, executor: str = "torch", qaic_backend=None,
                   turbo: bool = False, qaic=None, first_message_timeout_s: float = 5.0,
                   server: ServerConfig = ServerConfig(grace_s=0.0),
                   metrics: ServiceMetrics | None = None) -> tuple[HostedServer, object]:
    cfg = replace(engine_config(path, slots), turbo=turbo)
    verifier = build_verifier(cfg, window_sizes or tuple(range(MAX_K + 1)), executor, batching,
                              admission, qaic=qaic, qaic_backend=qaic_backend)
    info = model_info(verifier.engine, cfg, verifier.fingerprint, verifier.max_k,
                      "turbo" if turbo else "target", executor)
    return HostedServer("verifier", verifier, info,
                        SessionPolicy(idle_timeout_s, first_message_timeout_s), server,
                        metrics), verifier


def start_proposer(path: Path, slots: int = 4, batching: bool = True,
                   admission: Admission = Admission(), executor: str = "torch",
                   qaic_backend=None, qaic=None, pre_draft_branches: int = 0,
                   first_message_timeout_s: float = 5.0) -> tuple[HostedServer, object]:
    cfg = engine_config(path, slots)
    proposer = build_draft_proposer(cfg, MAX_K, executor, batching, admission, qaic=qaic,
                                    qaic_backend=qaic_backend, pre_draft_branches=pre_draft_branches)
    info = model_info(proposer.engine, cfg, proposer.fingerprint, MAX_K, "draft", executor)
    sessions = SessionPolicy(first_message_timeout_s=first_message_timeout_s)
    return HostedServer("proposer", proposer, info, sessions), proposer


@pytest.fixture(scope="session")
def services(tiny_pair):
    """Verifier on the tiny target and proposer on the tiny draft, both over real gRPC."""
    v_server, verifier = start_verifier(tiny_pair[0])
    p_server, proposer = start_proposer(tiny_pair[1])
    yield {"verifier": v_server.address, "proposer": p_server.address,
           "verifier_obj": verifier, "proposer_obj": proposer}
    v_server.stop()
    p_server.stop()
