"""The Cloud AI 100 executor: QEfficient-compiled QPCs behind the engine contract.

A target is compiled with qaic_config={"speculative_model_type": "target" | "turbo"} (logits
for every position of a K+1 window), a draft plainly; both with continuous batching, so each
session owns a batch_index slot and the KV cache stays on the card (retained state, never
copied to the host). Each call is mapped onto a compiled specialization (qaic_specs), padded
with -1 positions, and the logits buffer is sized for that shape before `run`.

QEfficient and the Cloud AI SDK are imported only here and only when this executor is chosen.
The compile-and-session backend is chosen by QaicOptions.session: "device" compiles with
QEfficient and runs QAICInferenceSession on the card; "onnxruntime" (qaic_onnx.py) runs
QEfficient's exported graph on the CPU behind the same session surface, which is how CI runs
this executor (no card there). Tests may also inject a backend (tests/qpc_double.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from specdec.config import QAIC_SESSIONS, EngineConfig, QaicOptions
from specdec.engine.checkpoint import read_config
from specdec.engine.hub import resolve_model_path
from specdec.engine.qaic_specs import QpcLayout, Specialization
from specdec.engine.qpc_rules import is_retained
from specdec.engine.specializations import row_logit_slice
from specdec.engine.turbo import read_turbo_config

log = logging.getLogger(__name__)

INSTALL_HELP = (
    "--executor qaic needs QEfficient and the Cloud AI 100 Platform and Apps SDKs. On a Cloud AI "
    "100 host: install the SDKs (they provide /opt/qti-aic, qaicrt and the qaic-compile compiler), "
    "then QEfficient from its repository: pip install "
    "'git+https://github.com/quic/efficient-transformers' (it is not on PyPI). Without a card, "
    "use --executor torch, or --qaic-session onnxruntime to run QEfficient's exported graph on "
    "the CPU.")


class QpcBackend(Protocol):
    """Compiles a checkpoint into a QPC and opens sessions on it."""

    def compile(self, model_path: Path, layout: QpcLayout, options: QaicOptions) -> Any: ...

    def session(self, qpc: Any, device_ids: tuple[int, ...]) -> Any: ...


class QEfficientBackend:
    """The real one: QEFFAutoModelForCausalLM.compile + QAICInferenceSession."""

    def __init__(self) -> None:
        try:
            from QEfficient import QEFFAutoModelForCausalLM
            from QEfficient.generation.cloud_infer import QAICInferenceSession
        except ImportError as exc:
            raise RuntimeError(f"{INSTALL_HELP} ({exc})") from exc
        self._auto, self._session = QEFFAutoModelForCausalLM, QAICInferenceSession

    def compile(self, model_path: Path, layout: QpcLayout, options: QaicOptions) -> Any:
        qaic_config = {"speculative_model_type": layout.role} if layout.tlm else None
        model = self._auto.from_pretrained(str(model_path), continuous_batching=True,
                                           qaic_config=qaic_config)
        kwargs: dict[str, Any] = dict(prefill_seq_len=layout.prefill_seq_len, ctx_len=layout.ctx_len,
                      full_batch_size=layout.full_batch_size, num_cores=options.num_cores,
                      num_devices=len(options.device_ids), mxfp6_matmul=options.mxfp6_matmul,
                      mxint8_kv_cache=options.mxint8_kv_cache,
                      aic_enable_depth_first=options.aic_enable_depth_first)
        if options.compile_dir is not None:
            kwargs["compile_dir"] = str(options.compile_dir)
        if layout.tlm and not layout.num_heads:  # Turbo takes K from its speculator config
            kwargs["num_speculative_tokens"] = list(layout.decode_ks)
        return model.compile(**kwargs)  # the qpc path; an unchanged compile is reused from cache

    def session(self, qpc: Any, device_ids: tuple[int, ...]) -> Any:
        return self._session(qpc, device_ids=list(device_ids))


def qpc_backend(options: QaicOptions) -> QpcBackend:
    if options.session == "onnxruntime":
        from specdec.engine.qaic_onnx import OnnxRuntimeBackend

        return OnnxRuntimeBackend()
    if options.session == "device":
        return QEfficientBackend()
    raise ValueError(f"qaic session {options.session!r} is not one of {QAIC_SESSIONS}")


@contextmanager
def progress(what: str, every_s: float = 10.0) -> Iterator[None]:
    """Log elapsed time while a long step (a QPC compile: minutes) runs."""
    done = threading.Event()
    start = time.monotonic()

    def tick() -> None:
        while not done.wait(every_s):
            log.info("%s ... %.0fs", what, time.monotonic() - start)

    threading.Thread(target=tick, daemon=True).start()
    log.info("%s ...", what)
    try:
        yield
    finally:
        done.set()
        log.info("%s done in %.1fs", what, time.monotonic() - start)


class QaicEngine:
    """Engine contract over one QPC. Not thread-safe: the batcher serialises calls."""

    def __init__(self, config: EngineConfig, options: QaicOptions, tlm: bool,
                 decode_ks: tuple[int, ...] = (0,), backend: QpcBackend | None = None) -> None:
        path = resolve_model_path(config.model)
        mc = read_config(path)
        heads = read_turbo_config(path).num_heads if config.turbo else 0
        if heads:
            decode_ks = (heads,)
        if tlm and config.prefill_seq_len < max(decode_ks) + 1:
            raise ValueError(f"prefill_seq_len {config.prefill_seq_len} must be >= k+1 = "
                             f"{max(decode_ks) + 1} for a QPC (QEfficient requires it)")
        self.layout = QpcLayout(tlm, heads, config.prefill_seq_len, config.ctx_len,
                                config.full_batch_size, tuple(decode_ks) if tlm else (0,),
                                mc.vocab_size)
        self.path, self.device = path, f"qaic:{','.join(map(str, options.device_ids))}"
        self.vocab_size, self.ctx_len = mc.vocab_size, config.ctx_len
        self.slots, self.prefill_seq_len = config.full_batch_size, config.prefill_seq_len
        self.eos_token_ids, self.num_heads = mc.eos_token_ids, heads
        self.backend = backend or qpc_backend(options)
        with progress(f"compiling {'target' if tlm else 'draft'} QPC for {path.name} "
                      f"(ctx {config.ctx_len}, fbs {config.full_batch_size}, k {self.layout.decode_ks})"):
            qpc = self.backend.compile(path, self.layout, options)
        self.session = self.backend.session(qpc, options.device_ids)
        # Retained KV state stays on the device: never bound on the host.
        self.session.skip_buffers([n for n in (*self.session.input_names, *self.session.output_names)
                                   if is_retained(n)])
        self.has_num_logits = "num_logits_to_keep" in self.session.input_names

    def _call(self, spec: Specialization, ids: np.ndarray, pos: np.ndarray,
              slots: np.ndarray) -> np.ndarray:
        self.session.set_buffers({"logits": np.zeros(self.layout.logits_shape(spec), np.float32)})
        inputs = {"input_ids": np.where(pos >= 0, ids, 0).astype(np.int64),
                  "position_ids": pos.astype(np.int64),
                  "batch_index": slots.reshape(-1, 1).astype(np.int64)}
        if self.has_num_logits:
            inputs["num_logits_to_keep"] = np.zeros((spec.num_logits, 1), np.int64)  # shape only
        return self.session.run(inputs)["logits"]

    def run(self, input_ids: np.ndarray, position_ids: np.ndarray, batch_index: np.ndarray,
            num_logits: int) -> np.ndarray:
        b, s = input_ids.shape
        spec = self.layout.choose(s, num_logits)
        out_shape = (b, num_logits) + self.layout.logits_shape(spec)[2:]
        out = np.zeros(out_shape, np.float32)
        real = (position_ids >= 0).sum(axis=1)
        if spec.phase == "prefill":
            # One call per row (prefill is compiled for batch 1), padded to prefill_seq_len.
            for row in range(b):
                ids = np.full((1, spec.seq_len), -1, np.int64)
                pos = np.full((1, spec.seq_len), -1, np.int64)
                ids[0, :s], pos[0, :s] = input_ids[row], position_ids[row]
                out[row] = self._call(spec, ids, pos, batch_index[row:row + 1])[0, -num_logits:]
            return out
        # Decode: every slot is a row of the compiled batch; absent slots are all -1.
        ids = np.full((spec.batch, spec.seq_len), -1, np.int64)
        pos = np.full((spec.batch, spec.seq_len), -1, np.int64)
        ids[batch_index, :s], pos[batch_index, :s] = input_ids, position_ids
        logits = self._call(spec, ids, pos, np.arange(spec.batch))
        for row, slot in enumerate(batch_index.tolist()):
            out[row] = logits[slot, row_logit_slice(int(real[row]), num_logits, spec.num_logits)]
        return out
