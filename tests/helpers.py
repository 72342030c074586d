"""Helpers shared by the tests: build tiny models, run passes, compare with onnxruntime.

Tolerances live in one table, per dtype (STYLE.md habit 5).
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnxslim.graph import export_model, import_model
from onnxslim.pipeline import PassContext, PassRecord, Pipeline

# (rtol, atol) for exact-in-math rewrites, by output dtype.
TOLERANCES = {
    np.dtype(np.float32): (1e-5, 1e-5),
    np.dtype(np.float16): (1e-2, 1e-2),
    np.dtype(np.float64): (1e-10, 1e-10),
}

OPSET = 18


def vi(name: str, shape: Sequence[int | str | None] | None, dtype: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    """A value info (graph input/output declaration)."""
    return helper.make_tensor_value_info(name, dtype, shape)


def init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def make_model(
    nodes: Iterable[onnx.NodeProto],
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[onnx.ValueInfoProto],
    initializers: Sequence[onnx.TensorProto] = (),
    opset: int = OPSET,
    check: bool = True,
) -> onnx.ModelProto:
    graph = helper.make_graph(list(nodes), "test", list(inputs), list(outputs), list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset <= 18 else 10
    if check:
        onnx.checker.check_model(model, full_check=True)
    return model


def _np_dtype(elem_type: int) -> np.dtype:
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))


def random_feeds(model: onnx.ModelProto, seed: int = 0, dims: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Seeded inputs for every graph input that is not an initializer; symbolic dims → ``dims`` or 2."""
    rng = np.random.default_rng(seed)
    inits = {i.name for i in model.graph.initializer}
    feeds = {}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        tt = inp.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else (dims or {}).get(d.dim_param, 2) for d in tt.shape.dim]
        dtype = _np_dtype(tt.elem_type)
        if dtype.kind == "f":
            feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[inp.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            feeds[inp.name] = rng.integers(0, 4, shape).astype(dtype)
    return feeds


def run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    wanted = {i.name for i in sess.get_inputs()}
    return dict(zip(names, sess.run(names, {k: v for k, v in feeds.items() if k in wanted})))


def apply_passes(model: onnx.ModelProto, pipeline: str, ctx: PassContext | None = None, check: bool = True) -> tuple[onnx.ModelProto, list[PassRecord]]:
    """Run a pipeline string on a copy of ``model``; return the new model and the pass records."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = import_model(copy)
    records = Pipeline(pipeline).run(graph, ctx or PassContext())
    out = export_model(graph, model)
    if check:
        onnx.checker.check_model(out, full_check=True)
    return out, records


def assert_equivalent(before: onnx.ModelProto, after: onnx.ModelProto, seeds: Sequence[int] = (0, 1), dims: dict[str, int] | None = None) -> None:
    """Outputs of ``after`` match ``before`` under onnxruntime, per-dtype tolerance, by output name."""
    for seed in seeds:
        feeds = random_feeds(before, seed, dims)
        want, got = run_ort(before, feeds), run_ort(after, feeds)
        assert list(want) == list(got), f"outputs differ: {list(want)} vs {list(got)}"
        for name, w in want.items():
            g = got[name]
            assert w.shape == g.shape, f"{name}: shape {g.shape} != {w.shape}"
            assert w.dtype == g.dtype, f"{name}: dtype {g.dtype} != {w.dtype}"
            rtol, atol = TOLERANCES.get(w.dtype, (0, 0))
            np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=name)


def op_counts(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)
