"""QEfficient's exported graph run by onnxruntime behind the QAICInferenceSession surface, so the
qaic executor runs on a CPU (`--executor qaic --qaic-session onnxruntime`).

A QPC is compiled from the ONNX graph QEfficient exports (QEFFAutoModelForCausalLM(...,
continuous_batching=True, qaic_config={"speculative_model_type": ...}).export()). This backend
takes that graph, <checkpoint>/onnx/<role>.onnx (role: target, turbo or draft; see
scripts/export_qeff_graphs.py, which writes it with QEfficient's own API; where the file is
missing and QEfficient imports, it is exported on first use), and runs it the way a card runs
the QPC:
- the compiled specializations (qaic_specs.QpcLayout) and binding rules (qpc_rules) are enforced;
- the retained state (past_key.{i}/past_value.{i}, [full_batch_size, kv_heads, ctx_len,
  head_dim]) lives in the session between calls, fed in and taken back from the
  *_RetainedState outputs, never seen by the caller;
- one device semantic onnxruntime lacks is given to the graph (see `device_index_semantics`).

Only the KV cache's index semantics differ from the exported file; all arithmetic is the graph's.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from specdec.engine.qaic_specs import QpcLayout
from specdec.engine.qpc_rules import QpcRules, is_retained

GRAPH_DIR = "onnx"
QEFF_DOMAIN = "com.qualcomm.cloud"   # QEfficient's custom functions (CtxScatterCB, CtxGatherCB)
ORT_DTYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32,
              "tensor(float16)": np.float16}
EXPORT_HELP = ("export it with QEfficient: python scripts/export_qeff_graphs.py --model {path} "
               "(in an environment where QEfficient imports; see docs/operations.md, Cloud AI 100)")


def graph_path(model_path: Path, role: str) -> Path:
    return model_path / GRAPH_DIR / f"{role}.onnx"


def export_graph(model_path: Path, layout: QpcLayout) -> Path:
    """Export the checkpoint with QEfficient's own API, as its compile() would before
    qaic-compile, into graph_path(); external weights are folded into the one file."""
    try:
        from QEfficient import QEFFAutoModelForCausalLM
    except ImportError as exc:
        raise RuntimeError(f"{graph_path(model_path, layout.role)} is missing and QEfficient is "
                           f"not importable ({exc}): " + EXPORT_HELP.format(path=model_path)) from exc
    import onnx

    qaic_config = {"speculative_model_type": layout.role} if layout.tlm else None
    model = QEFFAutoModelForCausalLM.from_pretrained(str(model_path), continuous_batching=True,
                                                     qaic_config=qaic_config)
    dst = graph_path(model_path, layout.role)
    with tempfile.TemporaryDirectory() as tmp:
        graph = onnx.load(str(model.export(export_dir=tmp)))   # loads external data too
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(graph, str(dst))
    return dst


def device_index_semantics(model: Any) -> Any:
    """Give QEfficient's KV functions the index semantics of the card, in place.

    QEfficient's graph marks "no such position" with index INT32_MAX: a -1 (padding) position
    is scattered to INT32_MAX so its K/V are not written, and cache positions above a row's
    last position are gathered from INT32_MAX (then masked and zeroed). On the card such writes
    are dropped and such reads tolerated (QEfficient's cache code calls the index
    "invalid_scatter_index"; inferred from its code, a card would confirm it); onnxruntime
    rejects both ("invalid index found").
    QEfficient's own ORT runner replaces the INT32_MAX constants with 0, which sends padding
    writes to position 0 and would corrupt that slot's first token with continuous batching.
    Here instead, inside the com.qualcomm.cloud functions only:
    - GatherND reads an out-of-range index component as 0 (the graph masks what it reads);
    - ScatterND sends an out-of-range write to one extra position past the end of each indexed
      axis, which is cut off again: the write is dropped and every in-range write is kept.
    """
    from onnx import TensorProto, helper

    def index_bounds(node):
        """Nodes computing p+'ok' (each index component in range) and p+'lim' (axis lengths)."""
        data, idx = node.input[0], node.input[1]
        p = f"_dev_{node.output[0]}_"
        lim = [helper.make_node("Shape", [data], [p + "shp"]),
               helper.make_node("Shape", [idx], [p + "ishp"]),
               helper.make_node("Constant", [], [p + "m1"], value_ints=[-1]),
               helper.make_node("Constant", [], [p + "big"], value_ints=[2 ** 62]),
               helper.make_node("Constant", [], [p + "z1"], value_ints=[0]),
               helper.make_node("Slice", [p + "ishp", p + "m1", p + "big"], [p + "k"]),
               helper.make_node("Slice", [p + "shp", p + "z1", p + "k"], [p + "lim64"]),
               helper.make_node("CastLike", [p + "lim64", idx], [p + "lim"]),
               helper.make_node("CastLike", [p + "z1", idx], [p + "zero"]),
               helper.make_node("GreaterOrEqual", [idx, p + "zero"], [p + "ge"]),
               helper.make_node("Less", [idx, p + "lim"], [p + "lt"]),
               helper.make_node("And", [p + "ge", p + "lt"], [p + "ok"])]
        return lim, p

    for fn in model.functions:
        if fn.domain != QEFF_DOMAIN:
            continue
        nodes = []
        for node in fn.node:
            if node.op_type not in ("GatherND", "ScatterND"):
                nodes.append(node)
                continue
            prep, p = index_bounds(node)
            nodes += prep
            if node.op_type == "GatherND":
                nodes.append(helper.make_node("Where", [p + "ok", node.input[1], p + "zero"], [p + "idx"]))
                nodes.append(helper.make_node("GatherND", [node.input[0], p + "idx"], list(node.output),
                                              batch_dims=next((a.i for a in node.attribute
                                                               if a.name == "batch_dims"), 0)))
                continue
            data = node.input[0]
            nodes += [
                # each out-of-range component -> its axis' length: the padding position
                helper.make_node("Where", [p + "ok", node.input[1], p + "lim"], [p + "idx"]),
                helper.make_node("Shape", [p + "shp"], [p + "r"]),
                helper.make_node("Sub", [p + "r", p + "k"], [p + "rk"]),
                helper.make_node("ConstantOfShape", [p + "r"], [p + "zr"],
                                 value=helper.make_tensor("", TensorProto.INT64, [1], [0])),
                helper.make_node("ConstantOfShape", [p + "k"], [p + "ok1"],
                                 value=helper.make_tensor("", TensorProto.INT64, [1], [1])),
                helper.make_node("ConstantOfShape", [p + "rk"], [p + "zrk"],
                                 value=helper.make_tensor("", TensorProto.INT64, [1], [0])),
                helper.make_node("Concat", [p + "zr", p + "ok1", p + "zrk"], [p + "pads"], axis=0),
                helper.make_node("Pad", [data, p + "pads"], [p + "padded"]),
                helper.make_node("ScatterND", [p + "padded", p + "idx", node.input[2]], [p + "sc"]),
                helper.make_node("Slice", [p + "sc", p + "zr", p + "shp"], list(node.output)),
            ]
        del fn.node[:]
        fn.node.extend(nodes)
    return model


@dataclass(frozen=True)
class OnnxQpc:
    """What `compile` yields here: QEfficient's graph and the specializations it is held to."""

    graph: Path
    layout: QpcLayout


class OnnxQpcSession(QpcRules):
    """QAICInferenceSession's surface (input_names, output_names, set_buffers, skip_buffers,
    run) over onnxruntime. Not thread-safe, like the real one: the executor serialises calls."""

    def __init__(self, qpc: OnnxQpc, threads: int = 0) -> None:
        import onnx
        import onnxruntime as ort

        model = device_index_semantics(onnx.load(str(qpc.graph)))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads               # 0 = onnxruntime's default
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # shared CPUs
        self.ort = ort.InferenceSession(model.SerializeToString(), opts,
                                        providers=["CPUExecutionProvider"])
        graph_inputs = {i.name: i for i in self.ort.get_inputs()}
        super().__init__(qpc.layout, {n: np.dtype(ORT_DTYPES[i.type]) for n, i in graph_inputs.items()},
                         [o.name for o in self.ort.get_outputs()])
        lay = qpc.layout
        # The device's retained state: [full_batch_size, kv_heads, ctx_len, head_dim] per binding.
        self.state = {}
        for name, inp in graph_inputs.items():
            if is_retained(name):
                _, heads, _, head_dim = inp.shape
                self.state[name] = np.zeros((lay.full_batch_size, heads, lay.ctx_len, head_dim),
                                            self.input_dtypes[name])

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        spec = self.check(inputs)
        outs = dict(zip(self.output_names, self.ort.run(self.output_names, {**inputs, **self.state})))
        for name in self.state:
            self.state[name] = outs[f"{name}_RetainedState"]
        logits = outs["logits"]
        if logits.shape != self.layout.logits_shape(spec):
            raise ValueError(f"the graph returned logits {logits.shape}; the QPC's buffer for "
                             f"{spec} is {self.layout.logits_shape(spec)}")
        return {n: outs[n] for n in self.output_names
                if not is_retained(n) and n not in self.skipped}


class OnnxRuntimeBackend:
    """`compile` finds (or exports) QEfficient's graph; `session` runs it with onnxruntime."""

    def __init__(self) -> None:
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            raise RuntimeError(f"--qaic-session onnxruntime needs onnx and onnxruntime: pip install "
                               f"'specdec-serving[onnx]' ({exc})") from exc

    def compile(self, model_path: Path, layout: QpcLayout, options: Any) -> OnnxQpc:
        """No qaic-compile here: the layout's specializations are what the session enforces."""
        graph = graph_path(model_path, layout.role)
        return OnnxQpc(graph if graph.exists() else export_graph(model_path, layout), layout)

    def session(self, qpc: OnnxQpc, device_ids: tuple[int, ...]) -> OnnxQpcSession:
        return OnnxQpcSession(qpc)
