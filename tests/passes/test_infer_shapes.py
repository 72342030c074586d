"""infer_shapes: what it writes onto tensors, what it sends to ONNX (never large weight bytes),
the input_shapes override, the merge rule, fixed-point behaviour and failure handling."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxslim.graph import import_model
from onnxslim.passes.infer_shapes import InferShapes, lightweight_model, merge_shape
from onnxslim.pipeline import PassContext
from tests.helpers import apply_passes, assert_equivalent, init, make_model, op_counts, vi


def _run(model: onnx.ModelProto, ctx: PassContext | None = None):
    graph = import_model(model)
    result = InferShapes().run(graph, ctx or PassContext())
    return graph, result


def _mlp(batch="N", weight_rows=4, weight_cols=5) -> onnx.ModelProto:
    """x[batch, 4] -> Relu -> MatMul(W[4, 5]) -> Add(b) -> y; no intermediate annotations."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("MatMul", ["r", "W"], ["m"]),
        helper.make_node("Add", ["m", "b"], ["y"]),
    ]
    inits = [
        init("W", rng.standard_normal((weight_rows, weight_cols)).astype(np.float32)),
        init("b", rng.standard_normal(weight_cols).astype(np.float32)),
    ]
    return make_model(nodes, [vi("x", [batch, weight_rows])], [vi("y", [batch, weight_cols])], inits)


def _reshape_chain(shape) -> onnx.ModelProto:
    """Shape -> Gather(0) -> Unsqueeze -> Concat(-1) -> Reshape: needs data propagation."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "i0"], ["g"], axis=0),
        helper.make_node("Unsqueeze", ["g", "ax"], ["u"]),
        helper.make_node("Concat", ["u", "m1"], ["c"], axis=0),
        helper.make_node("Reshape", ["x", "c"], ["r"]),
        helper.make_node("Relu", ["r"], ["y"]),
    ]
    inits = [init("i0", np.array(0, np.int64)), init("ax", np.array([0], np.int64)), init("m1", np.array([-1], np.int64))]
    return make_model(nodes, [vi("x", shape)], [vi("y", [shape[0], 12])], inits)


def test_writes_dtype_and_shape_of_intermediates():
    graph, result = _run(_mlp())
    tensors = graph.tensors()
    assert result.changed and result.counters["tensors_updated"] == 2
    assert tensors["r"].dtype == np.float32 and list(tensors["r"].shape) == ["N", 4]
    assert list(tensors["m"].shape) == ["N", 5]


def test_data_propagation_resolves_reshape_target():
    graph, _ = _run(_reshape_chain([2, 3, 4]))
    tensors = graph.tensors()
    assert list(tensors["c"].shape) == [2]
    assert list(tensors["r"].shape) == [2, 12]


def test_numeric_and_structure_unchanged():
    model = _mlp()
    out, records = apply_passes(model, "infer_shapes")
    assert op_counts(out) == op_counts(model)
    assert records[0].changed
    assert_equivalent(model, out, dims={"N": 3})


def test_second_run_reports_no_change():
    graph = import_model(_reshape_chain(["N", 3, 4]))
    assert InferShapes().run(graph, PassContext()).changed
    again = InferShapes().run(graph, PassContext())
    assert not again.changed and again.counters["tensors_updated"] == 0


def test_invented_symbols_are_not_written():
    # Reshape(x[N,3,4], [N, -1]) gives ONNX a fresh symbol for the -1 dim when N is symbolic.
    graph, _ = _run(_reshape_chain(["N", 3, 4]))
    shape = list(graph.tensors()["r"].shape)
    assert shape[0] == "N"
    assert shape[1] is None or shape[1] == 12


def test_input_shapes_fix_dynamic_dims():
    model = _mlp()
    ctx = PassContext(input_shapes={"x": (3, 4)})
    graph, result = _run(model, ctx)
    tensors = graph.tensors()
    assert result.counters["inputs_fixed"] == 1
    assert list(graph.inputs[0].shape) == [3, 4]
    assert list(tensors["m"].shape) == [3, 5]
    assert list(graph.outputs[0].shape) == [3, 5]


def test_input_shapes_numeric():
    model = _mlp()
    out, _ = apply_passes(model, "infer_shapes", PassContext(input_shapes={"x": (3, 4)}))
    assert [d.dim_value for d in out.graph.input[0].type.tensor_type.shape.dim] == [3, 4]
    assert_equivalent(model, out, dims={"N": 3})


def test_fully_annotated_graph_is_unchanged():
    graph = import_model(_mlp(batch=2))
    InferShapes().run(graph, PassContext())
    result = InferShapes().run(graph, PassContext())
    assert not result.changed


def test_large_initializer_is_not_sent_to_shape_inference(monkeypatch):
    model = _mlp(batch=2, weight_rows=1024, weight_cols=768)  # W: 3 MiB of float32
    assert model.graph.initializer[0].ByteSize() > 3_000_000
    captured: list[onnx.ModelProto] = []
    real = onnx.shape_inference.infer_shapes

    def spy(proto, *args, **kwargs):
        captured.append(proto)
        return real(proto, *args, **kwargs)

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", spy)
    graph, result = _run(model)
    assert result.changed and list(graph.tensors()["m"].shape) == [2, 768]
    (sent,) = captured
    assert sent.ByteSize() < 10_000
    assert "W" not in {t.name for t in sent.graph.initializer}
    (w_input,) = [i for i in sent.graph.input if i.name == "W"]
    assert [d.dim_value for d in w_input.type.tensor_type.shape.dim] == [1024, 768]
    assert w_input.type.tensor_type.elem_type == TensorProto.FLOAT
    assert all(t.ByteSize() < 1100 for t in sent.graph.initializer)


def test_small_constants_keep_their_data_for_propagation():
    sent = lightweight_model(import_model(_reshape_chain([2, 3, 4])))
    assert {t.name for t in sent.graph.initializer} == {"i0", "ax", "m1"}
    assert {i.name for i in sent.graph.input} == {"x"}


def test_large_constant_node_travels_as_typed_input():
    big = np.ones((512, 4), np.float32)  # 8 KiB
    nodes = [
        helper.make_node("Constant", [], ["c"], value=helper.make_tensor("v", TensorProto.FLOAT, big.shape, big.ravel())),
        helper.make_node("Add", ["x", "c"], ["y"]),
    ]
    model = make_model(nodes, [vi("x", [512, 4])], [vi("y", [512, 4])])
    graph = import_model(model)
    sent = lightweight_model(graph)
    assert [n.op_type for n in sent.graph.node] == ["Add"]
    assert "c" in {i.name for i in sent.graph.input}
    result = InferShapes().run(graph, PassContext())
    assert result.changed and list(graph.tensors()["c"].shape) == [512, 4]


def test_inference_failure_declines_without_raising(monkeypatch):
    def broken(*args, **kwargs):
        raise onnx.shape_inference.InferenceError("boom")

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", broken)
    ctx = PassContext()
    graph, result = _run(_mlp(), ctx)
    assert not result.changed
    assert graph.tensors()["r"].shape is None
    assert ctx.notes and ctx.notes[0]["pass"] == "infer_shapes" and "boom" in ctx.notes[0]["reason"]


def test_custom_op_outputs_keep_their_annotation():
    nodes = [helper.make_node("MyOp", ["x"], ["c"], domain="custom"), helper.make_node("Relu", ["c"], ["y"])]
    graph_proto = helper.make_graph(
        nodes, "t", [vi("x", [2, 3])], [vi("y", [2, 3])], value_info=[vi("c", [2, 3])]
    )
    model = helper.make_model(graph_proto, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("custom", 1)])
    graph = import_model(model)
    graph.outputs[0].shape = None  # forget it: only the custom op's annotation can restore it
    result = InferShapes().run(graph, PassContext())
    assert result.changed and list(graph.outputs[0].shape) == [2, 3]


@pytest.mark.parametrize(
    "old, new, expected",
    [
        (None, [2, "N"], [2, "N"]),
        ([None, "N"], [3, 4], [3, 4]),
        ([2, 3], [5, 3], [2, 3]),  # conflicting integers keep the existing value
        (["N", 3], [2, 3, 4], ["N", 3]),  # rank conflict keeps the existing shape
        (["N"], [None], ["N"]),  # never less specific
        ([None], ["unk__0"], [None]),  # invented symbols are dropped
    ],
)
def test_merge_shape(old, new, expected):
    assert merge_shape(old, new, {"unk__0"}) == expected
