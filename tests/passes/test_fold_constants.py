"""fold_constants: Constant nodes to initializers, constant regions evaluated with onnxruntime,
the size guard, the ops that must never fold, the node-by-node fallback and the whole cleanup chain."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxslim.passes import fold_constants
from onnxslim.pipeline import PassContext
from tests.helpers import apply_passes, assert_equivalent, init, make_model, op_counts, vi

CHAIN = "infer_shapes,[fold_constants,fold_shapes,eliminate_dead,infer_shapes]"


def _fold(model: onnx.ModelProto, ctx: PassContext | None = None, pipeline: str = "fold_constants"):
    out, records = apply_passes(model, pipeline, ctx)
    return out, records[-1]


def _inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _constant_node(name: str, **attr) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], **attr)


# --------------------------------------------------------------------------------------------
# (a) Constant nodes


@pytest.mark.parametrize(
    "attr, expected",
    [
        ({"value": numpy_helper.from_array(np.array([1.5, -2.0, 3.0], np.float32))}, np.array([1.5, -2.0, 3.0], np.float32)),
        ({"value_float": 2.5}, np.array(2.5, np.float32)),
        ({"value_floats": [1.0, 2.0, 3.0]}, np.array([1.0, 2.0, 3.0], np.float32)),
    ],
)
def test_constant_node_becomes_initializer(attr, expected):
    nodes = [_constant_node("c", **attr), helper.make_node("Add", ["x", "c"], ["y"])]
    model = make_model(nodes, [vi("x", [2, 3])], [vi("y", [2, 3])])
    out, record = _fold(model)
    assert op_counts(out) == {"Add": 1}
    assert record.counters["constants_converted"] == 1
    value = _inits(out)["c"]
    assert value.dtype == expected.dtype and np.array_equal(value, expected)
    assert_equivalent(model, out)


@pytest.mark.parametrize("attr, dtype", [({"value_int": 3}, np.int64), ({"value_ints": [3, 1, 2]}, np.int64)])
def test_integer_constant_nodes_keep_int64(attr, dtype):
    nodes = [_constant_node("c", **attr), helper.make_node("Add", ["x", "c"], ["y"])]
    model = make_model(nodes, [vi("x", [3], TensorProto.INT64)], [vi("y", [3], TensorProto.INT64)])
    out, _ = _fold(model)
    assert op_counts(out) == {"Add": 1} and _inits(out)["c"].dtype == dtype
    assert_equivalent(model, out)


def test_constant_node_that_is_a_graph_output_stays():
    nodes = [_constant_node("y", value_floats=[1.0, 2.0])]
    model = make_model(nodes, [], [vi("y", [2])])
    out, record = _fold(model)
    assert not record.changed and op_counts(out) == {"Constant": 1}


# --------------------------------------------------------------------------------------------
# (b) constant regions


def _weights_chain() -> onnx.ModelProto:
    """x @ (Transpose(W) * 2 + 1): the whole right operand is constant."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Transpose", ["W"], ["wt"], perm=[1, 0]),
        helper.make_node("Mul", ["wt", "two"], ["w2"]),
        helper.make_node("Add", ["w2", "one"], ["w3"]),
        helper.make_node("MatMul", ["x", "w3"], ["y"]),
    ]
    inits = [
        init("W", rng.standard_normal((5, 4)).astype(np.float32)),
        init("two", np.array(2.0, np.float32)),
        init("one", np.array(1.0, np.float32)),
    ]
    return make_model(nodes, [vi("x", ["N", 4])], [vi("y", ["N", 5])], inits)


def test_constant_region_folds_to_one_initializer():
    model = _weights_chain()
    out, record = _fold(model)
    assert op_counts(model) == {"Transpose": 1, "Mul": 1, "Add": 1, "MatMul": 1}
    assert op_counts(out) == {"MatMul": 1}
    assert record.counters["nodes_folded"] == 3
    assert record.counters["bytes_materialized"] == 5 * 4 * 4
    assert set(_inits(out)) == {"w3"}  # the folded tensor keeps its name
    assert_equivalent(model, out, dims={"N": 3})


def test_second_run_reports_no_change():
    out, _ = _fold(_weights_chain())
    again, record = _fold(out)
    assert not record.changed and op_counts(again) == {"MatMul": 1}


def test_folded_graph_output_keeps_its_name():
    nodes = [helper.make_node("Add", ["a", "b"], ["y"]), helper.make_node("Relu", ["x"], ["z"])]
    inits = [init("a", np.arange(3, dtype=np.float32)), init("b", np.ones(3, np.float32))]
    model = make_model(nodes, [vi("x", [3])], [vi("y", [3]), vi("z", [3])], inits)
    out, record = _fold(model)
    assert op_counts(out) == {"Constant": 1, "Relu": 1}
    assert [o.name for o in out.graph.output] == ["y", "z"]
    assert record.counters["nodes_folded"] == 1
    assert_equivalent(model, out)
    _, again = _fold(out)
    assert not again.changed


@pytest.mark.parametrize(
    "to, np_dtype", [(TensorProto.FLOAT16, np.float16), (TensorProto.INT32, np.int32), (TensorProto.BOOL, np.bool_)]
)
def test_output_dtypes_are_kept_exactly(to, np_dtype):
    nodes = [helper.make_node("Cast", ["c"], ["k"], to=to), helper.make_node("Identity", ["k"], ["k2"]),
             helper.make_node("Add", ["x", "k2"], ["y"]) if np_dtype != np.bool_ else helper.make_node("And", ["x", "k2"], ["y"])]
    model = make_model(nodes, [vi("x", [4], to)], [vi("y", [4], to)], [init("c", np.array([0.0, 1.5, -2.0, 3.0], np.float32))])
    out, _ = _fold(model)
    assert op_counts(out) in ({"Add": 1}, {"And": 1})
    assert _inits(out)["k2"].dtype == np_dtype
    assert_equivalent(model, out)


def test_tensor_read_inside_a_subgraph_stays_a_graph_value():
    then_graph = helper.make_graph([helper.make_node("Identity", ["s"], ["t_out"])], "then", [], [vi("t_out", [2])])
    else_graph = helper.make_graph([helper.make_node("Neg", ["s"], ["e_out"])], "else", [], [vi("e_out", [2])])
    nodes = [
        helper.make_node("Add", ["a", "a"], ["s"]),
        helper.make_node("If", ["cond"], ["y"], then_branch=then_graph, else_branch=else_graph),
    ]
    model = make_model(nodes, [vi("cond", [], TensorProto.BOOL)], [vi("y", [2])], [init("a", np.array([1.0, 2.0], np.float32))])
    out, record = _fold(model)
    assert op_counts(out) == {"Constant": 1, "If": 1} and record.counters["nodes_folded"] == 1
    assert_equivalent(model, out, seeds=(0, 1, 2, 3))


# --------------------------------------------------------------------------------------------
# What must not fold


def test_size_guard_keeps_constant_of_shape_blowup():
    # ConstantOfShape([1000, 1000]) would materialize 4 MB from 16 bytes of shape.
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["big"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.5])),
             helper.make_node("Add", ["x", "big"], ["y"])]
    model = make_model(nodes, [vi("x", [1000, 1000])], [vi("y", [1000, 1000])], [init("shape", np.array([1000, 1000], np.int64))])
    for pipeline in ("fold_constants", "infer_shapes,fold_constants"):  # checked after / before evaluation
        ctx = PassContext()
        out, record = _fold(model, ctx, pipeline)
        assert not record.changed and op_counts(out) == {"ConstantOfShape": 1, "Add": 1}
        assert any("limit" in note["reason"] for note in ctx.notes)
    assert_equivalent(model, out, seeds=(0,))


def test_size_guard_still_folds_the_blowups_inputs():
    nodes = [
        helper.make_node("Add", ["s1", "s2"], ["shape"]),
        helper.make_node("Expand", ["one", "shape"], ["big"]),
        helper.make_node("Add", ["x", "big"], ["y"]),
    ]
    inits = [init("s1", np.array([500, 500], np.int64)), init("s2", np.array([500, 500], np.int64)), init("one", np.ones(1, np.float32))]
    model = make_model(nodes, [vi("x", [1000, 1000])], [vi("y", [1000, 1000])], inits)
    out, record = _fold(model)
    assert op_counts(out) == {"Expand": 1, "Add": 1}
    assert np.array_equal(_inits(out)["shape"], [1000, 1000]) and record.counters["nodes_folded"] == 1
    assert_equivalent(model, out, seeds=(0,))


@pytest.mark.parametrize("op", ["RandomNormalLike", "RandomUniformLike", "Bernoulli"])
def test_random_ops_are_not_folded(op):
    nodes = [helper.make_node(op, ["c"], ["r"]), helper.make_node("Add", ["x", "r"], ["y"])]
    model = make_model(nodes, [vi("x", [4])], [vi("y", [4])], [init("c", np.full(4, 0.5, np.float32))])
    out, record = _fold(model)
    assert not record.changed and op_counts(out) == op_counts(model)


def test_random_normal_is_not_folded():
    nodes = [helper.make_node("RandomNormal", [], ["r"], shape=[4]), helper.make_node("Add", ["x", "r"], ["y"])]
    model = make_model(nodes, [vi("x", [4])], [vi("y", [4])])
    out, record = _fold(model)
    assert not record.changed and op_counts(out) == {"RandomNormal": 1, "Add": 1}


def test_dequantize_linear_of_weights_is_kept():
    nodes = [helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["w"]), helper.make_node("Add", ["x", "w"], ["y"])]
    inits = [init("q", np.arange(4, dtype=np.int8)), init("scale", np.array(0.1, np.float32)), init("zp", np.array(0, np.int8))]
    model = make_model(nodes, [vi("x", [4])], [vi("y", [4])], inits)
    out, record = _fold(model)
    assert not record.changed and op_counts(out) == op_counts(model)


def test_custom_domain_and_subgraph_nodes_are_not_folded():
    branch = helper.make_graph([helper.make_node("Identity", ["a"], ["b_out"])], "b", [], [vi("b_out", [2])])
    nodes = [
        helper.make_node("MyOp", ["a"], ["m"], domain="custom"),
        helper.make_node("If", ["cond"], ["i"], then_branch=branch, else_branch=branch),
        helper.make_node("Add", ["m", "i"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "t", [], [vi("y", [2])], [init("a", np.ones(2, np.float32)), init("cond", np.array(True))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("custom", 1)])
    out, record = apply_passes(model, "fold_constants", check=False)
    assert not record[-1].changed and op_counts(out) == {"MyOp": 1, "If": 1, "Add": 1}


# --------------------------------------------------------------------------------------------
# Fallback when one session cannot run


def test_node_by_node_fallback_when_the_session_fails(monkeypatch):
    real = fold_constants._Evaluator._run

    def one_node_only(self, nodes, targets):
        if len(nodes) > 1:
            raise RuntimeError("simulated failure of the one-session evaluation")
        return real(self, nodes, targets)

    monkeypatch.setattr(fold_constants._Evaluator, "_run", one_node_only)
    model = _weights_chain()
    out, record = _fold(model)
    assert op_counts(out) == {"MatMul": 1} and record.counters["nodes_folded"] == 3
    assert_equivalent(model, out, dims={"N": 3})


def test_node_that_onnxruntime_cannot_evaluate_is_skipped():
    # Gather with an out-of-range constant index fails in onnxruntime; the Neg beside it folds.
    nodes = [
        helper.make_node("Neg", ["a"], ["n"]),
        helper.make_node("Gather", ["a", "bad"], ["g"], axis=0),
        helper.make_node("Add", ["x", "n"], ["y"]),
        helper.make_node("Add", ["x", "g"], ["z"]),
    ]
    inits = [init("a", np.arange(3, dtype=np.float32)), init("bad", np.array([7], np.int64))]
    model = make_model(nodes, [vi("x", [1])], [vi("y", [3]), vi("z", [1])], inits)
    ctx = PassContext()
    out, record = _fold(model, ctx)
    assert op_counts(out) == {"Gather": 1, "Add": 2} and record.counters["nodes_folded"] == 1
    assert any(note["pass"] == "fold_constants" and "onnxruntime" in note["reason"] for note in ctx.notes)


# --------------------------------------------------------------------------------------------
# The cleanup chain


def test_whole_chain_folds_static_reshape_target():
    nodes = [
        helper.make_node("Constant", [], ["ax"], value_ints=[0]),
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "i0"], ["g"], axis=0),
        helper.make_node("Unsqueeze", ["g", "ax"], ["u"]),
        helper.make_node("Concat", ["u", "m1"], ["c"], axis=0),
        helper.make_node("Reshape", ["x", "c"], ["r"]),
        helper.make_node("MatMul", ["r", "W"], ["y"]),
        helper.make_node("Relu", ["unused"], ["dead"]),
    ]
    inits = [init("i0", np.array(0, np.int64)), init("m1", np.array([-1], np.int64)),
             init("W", np.random.default_rng(0).standard_normal((12, 5)).astype(np.float32))]
    model = make_model(nodes, [vi("x", [2, 3, 4]), vi("unused", [2])], [vi("y", [2, 5])], inits)
    out, records = apply_passes(model, CHAIN)
    assert op_counts(out) == {"Reshape": 1, "MatMul": 1}
    assert np.array_equal(_inits(out)["c"], [2, -1])
    assert [i.name for i in out.graph.input] == ["x"]
    assert not records[-1].changed
    assert_equivalent(model, out)
