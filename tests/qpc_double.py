"""TEST DOUBLE of QEfficient's compile() and QAICInferenceSession, for machines without a
Cloud AI 100 card (this one has none). It stands in for the hardware only: it holds each call
to the rules a compiled QPC imposes (specdec/engine/qpc_rules.py, shared with the onnxruntime
session) and computes with the project's torch executor.

What it still adds beside the onnxruntime session on QEfficient's real graphs
(tests/test_qeff_onnx.py): it needs no exported graph, so it runs the qaic executor's mapping
on any checkpoint the torch executor loads (every family, the tests' 4-layer pair, any Turbo
head count) and counts the QPC calls. Its binding names and dtypes are the ones QEfficient's
exported graphs were found to have (input_ids, position_ids, past_key.{i}/past_value.{i},
batch_index, num_logits_to_keep; all int64), pinned against the real graphs by
test_double_binds_like_qefficient_graphs_qeff_onnx.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from specdec.config import EngineConfig
from specdec.engine.qaic_specs import QpcLayout
from specdec.engine.qpc_rules import QpcRules
from specdec.engine.specializations import gather_index
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
    sessions: list[QAICInferenceSessionDouble] = field(default_factory=list)

    def compile(self, model_path: Path, layout: QpcLayout, options) -> CompiledQpcDouble:
        if layout.tlm and layout.prefill_seq_len < max(layout.decode_ks) + 1:
            raise ValueError("prefill_seq_len must be >= K+1")  # QEfficient's own check
        layers = json.loads((model_path / "config.json").read_text())["num_hidden_layers"]
        qpc = CompiledQpcDouble(model_path, layout, options, layers)
        self.compiled.append(qpc)
        return qpc

    def session(self, qpc: CompiledQpcDouble, device_ids) -> QAICInferenceSessionDouble:
        assert len(device_ids) == len(qpc.options.device_ids), "run on the compiled device count"
        s = QAICInferenceSessionDouble(qpc)
        self.sessions.append(s)
        return s


def double_bindings(layout: QpcLayout, num_layers: int) -> tuple[dict[str, np.dtype], list[str]]:
    """The bindings of QEfficient's continuous-batching export, in its order."""
    kv = [f"past_{kind}.{i}" for i in range(num_layers) for kind in ("key", "value")]
    inputs = {"input_ids": np.dtype(np.int64), "position_ids": np.dtype(np.int64),
              **{n: np.dtype(np.float32) for n in kv}, "batch_index": np.dtype(np.int64),
              **({"num_logits_to_keep": np.dtype(np.int64)} if layout.tlm else {})}
    return inputs, ["logits", *(f"{n}_RetainedState" for n in kv)]


class QAICInferenceSessionDouble(QpcRules):
    def __init__(self, qpc: CompiledQpcDouble) -> None:
        lay = qpc.layout
        super().__init__(lay, *double_bindings(lay, qpc.num_layers))
        # The device's computation, KV included (retained on the "device").
        self.engine = TorchEngine(EngineConfig(
            model=str(qpc.model_path), ctx_len=lay.ctx_len, prefill_seq_len=lay.prefill_seq_len,
            full_batch_size=lay.full_batch_size, turbo=lay.num_heads > 0))

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        spec = self.check(inputs)
        n = spec.num_logits
        pos, slots = inputs["position_ids"], inputs["batch_index"][:, 0]
        logits = self.engine.run(inputs["input_ids"], pos, slots, n)                 # [B, n, V]
        if self.layout.num_heads:  # a Turbo QPC returns every head at every kept position
            kept = np.take_along_axis(pos, gather_index(pos, n, n), 1)                 # [B, n]
            heads = np.zeros((*kept.shape, self.layout.num_heads, logits.shape[-1]), np.float32)
            for b, i in zip(*np.nonzero(kept >= 0)):                                   # real positions
                heads[b, i] = self.engine.head_logits(slots[b:b + 1], kept[b, i:i + 1])[0]
            logits = np.concatenate([logits[:, :, None], heads], axis=2)               # [B, n, H+1, V]
        return {"logits": logits.astype(np.float32)}


def double_options(**kw):
    from specdec.engine.qaic_engine import QaicOptions

    return replace(QaicOptions(num_cores=11), **kw)
