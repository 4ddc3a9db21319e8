"""Shared fixtures: tiny checkpoints with tokenizers, and real gRPC servers on loopback ports."""

from __future__ import annotations

import asyncio
import os
import threading
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from proposer_service.servicer import ProposerServicer
from specdec.build import build_draft_proposer, build_verifier
from specdec.config import EngineConfig
from specdec.slots import Admission
from specdec_rpc.convert import model_info
from specdec_rpc.server import Lifecycle
from specdec_rpc.sessions import SessionPolicy, SessionRunner
from specdec_rpc.v1 import specdec_pb2_grpc as pb_grpc
from tests.tiny_models import hf_model, save_tiny, save_truncated, save_word_tokenizer
from verifier_service.servicer import VerifierServicer

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


class ServerThread:
    """A grpc.aio server on 127.0.0.1:<free port>, running its own event loop in a thread."""

    def __init__(self, add_servicer, interceptors=()) -> None:
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        async def start() -> None:
            self.server = grpc.aio.server(interceptors=list(interceptors))
            add_servicer(self.server)
            self.port = self.server.add_insecure_port("127.0.0.1:0")
            await self.server.start()
            started.set()

        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(start(), self.loop)
        assert started.wait(30)
        self.address = f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(None), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def attached(servicer_cls, backend, info, idle_timeout_s: float = 60.0):
    """A servicer with its (already loaded) verifier or proposer attached."""
    servicer = servicer_cls(runner(idle_timeout_s))
    servicer.attach(backend, info)
    return servicer


def engine_config(path: Path, slots: int = 4) -> EngineConfig:
    return EngineConfig(model=str(path), ctx_len=CTX_LEN, prefill_seq_len=PREFILL,
                        full_batch_size=slots)


def runner(idle_timeout_s: float = 60.0, first_message_timeout_s: float = 5.0) -> SessionRunner:
    """A session runner whose service counts as loaded (the in-process servers attach first)."""
    lifecycle = Lifecycle("test")
    lifecycle.ready = True
    return SessionRunner(SessionPolicy(idle_timeout_s, first_message_timeout_s), lifecycle)


def start_verifier(path: Path, slots: int = 4, window_sizes: tuple[int, ...] | None = None,
                   batching: bool = True, admission: Admission = Admission(),
                   idle_timeout_s: float = 60.0, executor: str = "torch", qaic_backend=None,
                   turbo: bool = False, qaic=None, first_message_timeout_s: float = 5.0
                   ) -> tuple[ServerThread, object]:
    cfg = replace(engine_config(path, slots), turbo=turbo)
    verifier = build_verifier(cfg, window_sizes or tuple(range(MAX_K + 1)), executor, batching,
                              admission, qaic=qaic, qaic_backend=qaic_backend)
    info = model_info(verifier.engine, cfg, verifier.fingerprint, verifier.max_k,
                      "turbo" if turbo else "target", executor)
    servicer = VerifierServicer(runner(idle_timeout_s, first_message_timeout_s))
    servicer.attach(verifier, info)
    return ServerThread(lambda s: pb_grpc.add_VerifierServicer_to_server(servicer, s)), verifier


def start_proposer(path: Path, slots: int = 4, batching: bool = True,
                   admission: Admission = Admission(), executor: str = "torch",
                   qaic_backend=None, qaic=None, pre_draft_branches: int = 0,
                   first_message_timeout_s: float = 5.0) -> tuple[ServerThread, object]:
    cfg = engine_config(path, slots)
    proposer = build_draft_proposer(cfg, MAX_K, executor, batching, admission, qaic=qaic,
                                    qaic_backend=qaic_backend, pre_draft_branches=pre_draft_branches)
    info = model_info(proposer.engine, cfg, proposer.fingerprint, MAX_K, "draft", executor)
    servicer = ProposerServicer(runner(first_message_timeout_s=first_message_timeout_s))
    servicer.attach(proposer, info)
    return ServerThread(lambda s: pb_grpc.add_ProposerServicer_to_server(servicer, s)), proposer


@pytest.fixture(scope="session")
def services(tiny_pair):
    """Verifier on the tiny target and proposer on the tiny draft, both over real gRPC."""
    v_server, verifier = start_verifier(tiny_pair[0])
    p_server, proposer = start_proposer(tiny_pair[1])
    yield {"verifier": v_server.address, "proposer": p_server.address,
           "verifier_obj": verifier, "proposer_obj": proposer}
    v_server.stop()
    p_server.stop()
