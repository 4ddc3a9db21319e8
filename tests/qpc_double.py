"""TEST DOUBLE of QEfficient's compile() and QAICInferenceSession, for machines without a
Cloud AI 100 card (this one has none). It stands in for the hardware only: it enforces the
rules a compiled QPC imposes and computes with the project's torch executor.

Rules enforced, as the real session does (shared/reference/qefficient.md §2.2-2.4):
- inputs are accepted only in the shapes of the compiled specializations (prefill: batch 1 x
  prefill_seq_len; decode: full_batch_size x (K+1) per compiled K, or x 1 for a plain draft),
  with num_logits_to_keep [N, 1] on a target QPC matching the specialization;
- input and output names are the QPC's: input_ids, position_ids, batch_index,
  (num_logits_to_keep), past_key.{i}/past_value.{i}; logits, past_*_RetainedState;
- the logits buffer must have been set (set_buffers) to exactly the call's output shape;
- retained KV state is never passed in, and its buffers must have been skipped.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from specdec.config import EngineConfig
from specdec.engine.qaic_specs import QpcLayout
from specdec.engine.torch_engine import TorchEngine


@dataclass
class CompiledQpcDouble:
    model_path: Path
    layout: QpcLayout
    options: object
    num_layers: int


@dataclass
class QpcDoubleBackend:
    compiled: list[CompiledQpcDouble] = field(default_factory=list)
    sessions: list["QAICInferenceSessionDouble"] = field(default_factory=list)

    def compile(self, model_path: Path, layout: QpcLayout, options) -> CompiledQpcDouble:
        if layout.tlm and layout.prefill_seq_len < max(layout.decode_ks) + 1:
            raise ValueError("prefill_seq_len must be >= K+1")  # QEfficient's own check
        import json

        layers = json.loads((model_path / "config.json").read_text())["num_hidden_layers"]
        qpc = CompiledQpcDouble(model_path, layout, options, layers)
        self.compiled.append(qpc)
        return qpc

    def session(self, qpc: CompiledQpcDouble, device_ids) -> "QAICInferenceSessionDouble":
        assert len(device_ids) == len(qpc.options.device_ids), "run on the compiled device count"
        s = QAICInferenceSessionDouble(qpc)
        self.sessions.append(s)
        return s


class QAICInferenceSessionDouble:
    def __init__(self, qpc: CompiledQpcDouble) -> None:
        lay = qpc.layout
        self.layout = lay
        kv = [f"past_{kind}.{i}" for i in range(qpc.num_layers) for kind in ("key", "value")]
        self.input_names = ["input_ids", "position_ids", "batch_index",
                            *(["num_logits_to_keep"] if lay.tlm else []), *kv]
        self.output_names = ["logits", *(f"{n}_RetainedState" for n in kv)]
        self.skipped: set[str] = set()
        self.buffers: dict[str, np.ndarray] = {}
        self.calls: list[tuple[str, int, int]] = []   # (phase, batch, seq_len) per run
        # The device's computation, KV included (retained on the "device").
        self.engine = TorchEngine(EngineConfig(
            model=str(qpc.model_path), ctx_len=lay.ctx_len, prefill_seq_len=lay.prefill_seq_len,
            full_batch_size=lay.full_batch_size, turbo=lay.num_heads > 0))

    @property
    def allowed_shapes(self):
        return [(s.batch, s.seq_len) for s in self.layout.specializations()]

    def skip_buffers(self, names) -> None:
        self.set_buffers({n: np.array([]) for n in names})

    def set_buffers(self, buffers: dict[str, np.ndarray]) -> None:
        for name, arr in buffers.items():
            if name not in self.input_names and name not in self.output_names:
                warnings.warn(f"buffer {name} is not in the QPC; skipped")  # as the real one
                continue
            if arr.size == 0:
                self.skipped.add(name)
            else:
                self.buffers[name] = arr

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        lay = self.layout
        if any(n.startswith("past_") for n in inputs):
            raise ValueError("retained KV state must not be passed in")
        kv = {n for n in self.input_names + self.output_names if n.startswith("past_")}
        if not kv <= self.skipped:
            raise ValueError(f"KV buffers not skipped: {sorted(kv - self.skipped)[:2]}")
        required = [n for n in self.input_names if not n.startswith("past_")]
        if sorted(inputs) != sorted(required):
            raise ValueError(f"inputs {sorted(inputs)} != QPC inputs {required}")
        if any(a.dtype != np.int64 for a in inputs.values()):
            raise ValueError("all inputs are int64")
        ids, pos, bidx = inputs["input_ids"], inputs["position_ids"], inputs["batch_index"]
        b, s = ids.shape
        if pos.shape != (b, s) or bidx.shape != (b, 1):
            raise ValueError(f"shapes {ids.shape}, {pos.shape}, {bidx.shape} do not agree")
        n = inputs["num_logits_to_keep"].shape[0] if lay.tlm else 1
        if lay.tlm and inputs["num_logits_to_keep"].shape != (n, 1):
            raise ValueError("num_logits_to_keep must be [N, 1]")
        spec = next((sp for sp in lay.specializations()
                     if (sp.batch, sp.seq_len, sp.num_logits) == (b, s, n)), None)
        if spec is None:
            raise ValueError(f"shape (batch {b}, seq_len {s}, logits {n}) matches no "
                             f"specialization; allowed: {self.allowed_shapes}")
        out = self.buffers.get("logits")
        if out is None or out.shape != lay.logits_shape(spec):
            raise ValueError(f"logits buffer {None if out is None else out.shape} must be set to "
                             f"{lay.logits_shape(spec)} before run")
        self.calls.append((spec.phase, b, s))
        out[...] = self.engine.run(ids, pos, bidx[:, 0], n)
        return {"logits": out}


def double_options(**kw):
    from specdec.engine.qaic_engine import QaicOptions

    return replace(QaicOptions(num_cores=11), **kw)
