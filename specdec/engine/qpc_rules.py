"""The rules a compiled QPC imposes on its callers, as QAICInferenceSession enforces them on a
card. Shared by the onnxruntime session (qaic_onnx.py, QEfficient's exported graph on the CPU)
and the test double (tests/qpc_double.py): both hold a call to these rules before computing.

- inputs only in the shapes of the compiled specializations (qaic_specs.QpcLayout): prefill
  batch 1 x prefill_seq_len, decode full_batch_size x (K+1) per compiled K (x 1 for a plain
  draft), num_logits_to_keep [N, 1] on a target QPC matching the specialization;
- input names, and their dtypes, exactly the QPC's (the graph's); a buffer whose itemsize differs
  from the binding's matches no specialization on a card;
- the logits buffer set (set_buffers) to exactly the call's output shape before run;
- retained state (past_key.{i} / past_value.{i} and their _RetainedState outputs) stays on the
  device: never passed in, and its host buffers skipped.
"""

from __future__ import annotations

import warnings

import numpy as np

from specdec.engine.qaic_specs import QpcLayout, Specialization


def is_retained(name: str) -> bool:
    """QEfficient's own test for retained-state bindings (cloud_infer.is_retained_state_name),
    restricted to the KV cache of the llama-family graphs served here."""
    return name.startswith("past_")


class QpcRules:
    """Binding names, buffers and the shape/dtype checks of one compiled QPC session."""

    def __init__(self, layout: QpcLayout, inputs: dict[str, np.dtype], output_names: list[str]) -> None:
        self.layout = layout
        self.input_dtypes = inputs                  # graph input name -> dtype, graph order
        self.input_names = list(inputs)
        self.output_names = list(output_names)
        self.skipped: set[str] = set()
        self.buffers: dict[str, np.ndarray] = {}
        self.calls: list[tuple[str, int, int]] = []   # (phase, batch, seq_len) per run

    @property
    def allowed_shapes(self) -> list[tuple[int, int]]:
        return [(s.batch, s.seq_len) for s in self.layout.specializations()]

    def skip_buffers(self, names) -> None:
        self.set_buffers({n: np.array([]) for n in names})

    def set_buffers(self, buffers: dict[str, np.ndarray]) -> None:
        for name, arr in buffers.items():
            if name not in self.input_names and name not in self.output_names:
                warnings.warn(f"buffer {name} is not in the QPC; skipped", stacklevel=2)  # as the real one does
                continue
            if arr.size == 0:
                self.skipped.add(name)
            else:
                self.buffers[name] = arr

    def check(self, inputs: dict[str, np.ndarray]) -> Specialization:
        """The specialization this call runs in, or ValueError naming the broken rule."""
        lay = self.layout
        if any(is_retained(n) for n in inputs):
            raise ValueError("retained KV state must not be passed in")
        kv = {n for n in self.input_names + self.output_names if is_retained(n)}
        if not kv <= self.skipped:
            raise ValueError(f"KV buffers not skipped: {sorted(kv - self.skipped)[:2]}")
        required = [n for n in self.input_names if not is_retained(n)]
        if sorted(inputs) != sorted(required):
            raise ValueError(f"inputs {sorted(inputs)} != QPC inputs {required}")
        for name, arr in inputs.items():
            if arr.dtype != self.input_dtypes[name]:
                raise ValueError(f"{name} is {arr.dtype}; the QPC binding is {self.input_dtypes[name]}")
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
        if out is None or out.shape != lay.logits_shape(spec) or out.dtype != np.float32:
            raise ValueError(f"logits buffer {None if out is None else (out.shape, out.dtype)} must be "
                             f"set to {lay.logits_shape(spec)} float32 before run")
        self.calls.append((spec.phase, b, s))
        return spec
