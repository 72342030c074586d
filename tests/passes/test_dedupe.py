"""Tests for the ``dedupe`` pass: duplicate initializers and common subexpressions."""

from __future__ import annotations

import time

import ml_dtypes
import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto, helper, numpy_helper

from onnxslim.graph import import_model
from onnxslim.pipeline import PassContext
from onnxslim.passes.dedupe import Dedupe, _ValueKey
from tests.helpers import apply_passes, assert_equivalent, init, make_model, op_counts, run_ort, vi


def run_dedupe(model: onnx.ModelProto, check: bool = True, ctx: PassContext | None = None):
    """Apply dedupe once; return the new model and the pass record."""
    out, records = apply_passes(model, "dedupe", ctx=ctx, check=check)
    assert len(records) == 1
    return out, records[0]


def output_names(model: onnx.ModelProto) -> list[str]:
    return [o.name for o in model.graph.output]


def weights(seed: int, shape=(4, 4)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Nodes


def relu_pair_model() -> onnx.ModelProto:
    nodes = [helper.make_node("Relu", ["x"], [name]) for name in ("a", "b")]
    return make_model([*nodes, helper.make_node("Add", ["a", "b"], ["y"])], [vi("x", [2, 3])], [vi("y", [2, 3])])


def test_identical_nodes_merge():
    model = relu_pair_model()
    out, record = run_dedupe(model)
    assert op_counts(model) == {"Relu": 2, "Add": 1}
    assert op_counts(out) == {"Relu": 1, "Add": 1}
    assert record.changed and record.counters["nodes_merged"] == 1
    assert out.graph.node[1].input[0] == out.graph.node[1].input[1]
    assert_equivalent(model, out)


def test_two_identical_branches_of_three_nodes_collapse_in_one_run():
    branch = lambda tag: [  # noqa: E731
        helper.make_node("Relu", ["x"], [f"r{tag}"]),
        helper.make_node("Exp", [f"r{tag}"], [f"e{tag}"]),
        helper.make_node("Mul", [f"e{tag}", "x"], [f"m{tag}"]),
    ]
    # Interleave the branches so that file order alone is not what makes the cascade work.
    nodes = [n for pair in zip(branch("1"), branch("2")) for n in pair]
    nodes.append(helper.make_node("Sub", ["m1", "m2"], ["y"]))
    model = make_model(nodes, [vi("x", [3, 4])], [vi("y", [3, 4])])
    out, record = run_dedupe(model)
    assert op_counts(model) == {"Relu": 2, "Exp": 2, "Mul": 2, "Sub": 1}
    assert op_counts(out) == {"Relu": 1, "Exp": 1, "Mul": 1, "Sub": 1}
    assert record.counters["nodes_merged"] == 3
    assert_equivalent(model, out)
    # The pass sorts by itself: a graph whose node list is reversed cascades just as well.
    graph = import_model(model)
    graph.nodes.reverse()
    assert Dedupe().run(graph, PassContext()).counters["nodes_merged"] == 3


def test_cascade_through_merged_constants():
    model = make_model(
        [
            helper.make_node("Add", ["x", "w1"], ["a"]),
            helper.make_node("Add", ["x", "w2"], ["b"]),
            helper.make_node("Tanh", ["a"], ["ta"]),
            helper.make_node("Tanh", ["b"], ["tb"]),
            helper.make_node("Mul", ["ta", "tb"], ["y"]),
        ],
        [vi("x", [4, 4])],
        [vi("y", [4, 4])],
        [init("w1", weights(0)), init("w2", weights(0))],
    )
    out, record = run_dedupe(model)
    assert op_counts(out) == {"Add": 1, "Tanh": 1, "Mul": 1}
    assert len(out.graph.initializer) == 1
    assert record.counters == {"initializers_merged": 1, "nodes_merged": 2, "bytes_saved": 64}
    assert_equivalent(model, out)


def test_node_reading_same_tensor_twice():
    model = make_model(
        [
            helper.make_node("Mul", ["x", "x"], ["a"]),
            helper.make_node("Mul", ["x", "x"], ["b"]),
            helper.make_node("Sub", ["a", "b"], ["d"]),
            helper.make_node("Add", ["d", "a"], ["y"]),
        ],
        [vi("x", [5])],
        [vi("y", [5])],
    )
    out, record = run_dedupe(model)
    assert op_counts(out) == {"Mul": 1, "Sub": 1, "Add": 1}
    assert record.counters["nodes_merged"] == 1
    assert_equivalent(model, out)


def test_multi_output_nodes_merge():
    model = make_model(
        [
            helper.make_node("Split", ["x"], ["a1", "a2"], axis=0, num_outputs=2),
            helper.make_node("Split", ["x"], ["b1", "b2"], axis=0, num_outputs=2),
            helper.make_node("Sub", ["a1", "b2"], ["y1"]),
            helper.make_node("Sub", ["b1", "a2"], ["y2"]),
        ],
        [vi("x", [4, 3])],
        [vi("y1", [2, 3]), vi("y2", [2, 3])],
    )
    out, record = run_dedupe(model)
    assert op_counts(out) == {"Split": 1, "Sub": 2}
    assert record.counters["nodes_merged"] == 1
    assert_equivalent(model, out)


def test_graph_output_keeps_its_name_when_merged():
    model = make_model(
        [
            helper.make_node("Sigmoid", ["x"], ["y1"]),
            helper.make_node("Sigmoid", ["x"], ["s"]),
            helper.make_node("Neg", ["s"], ["y2"]),
        ],
        [vi("x", [2, 2])],
        [vi("y1", [2, 2]), vi("y2", [2, 2])],
    )
    out, record = run_dedupe(model)
    assert op_counts(out) == {"Sigmoid": 1, "Neg": 1}
    assert output_names(out) == ["y1", "y2"]
    assert_equivalent(model, out)


def test_later_duplicate_that_is_graph_output_takes_its_name():
    model = make_model(
        [
            helper.make_node("Sigmoid", ["x"], ["s"]),
            helper.make_node("Neg", ["s"], ["y1"]),
            helper.make_node("Sigmoid", ["x"], ["y2"]),
        ],
        [vi("x", [2, 2])],
        [vi("y1", [2, 2]), vi("y2", [2, 2])],
    )
    out, _ = run_dedupe(model)
    assert op_counts(out) == {"Sigmoid": 1, "Neg": 1}
    assert output_names(out) == ["y1", "y2"]
    assert "Identity" not in op_counts(out)
    assert_equivalent(model, out)


def test_constant_nodes_with_identical_values_merge():
    value = numpy_helper.from_array(np.array([1.5, -2.0, 3.0], dtype=np.float32))
    other = numpy_helper.from_array(np.array([1.5, -2.0, 3.5], dtype=np.float32))
    model = make_model(
        [
            helper.make_node("Constant", [], ["c1"], value=value),
            helper.make_node("Constant", [], ["c2"], value=value),
            helper.make_node("Constant", [], ["c3"], value=other),
            helper.make_node("Add", ["x", "c1"], ["a"]),
            helper.make_node("Add", ["x", "c2"], ["b"]),
            helper.make_node("Add", ["x", "c3"], ["c"]),
            helper.make_node("Sum", ["a", "b", "c"], ["y"]),
        ],
        [vi("x", [3])],
        [vi("y", [3])],
    )
    out, record = run_dedupe(model)
    assert op_counts(out) == {"Constant": 2, "Add": 2, "Sum": 1}
    assert record.counters["nodes_merged"] == 2  # the Constant, then its Add
    assert_equivalent(model, out)


# --------------------------------------------------------------------------------------------
# Nodes that must not merge


def assert_unchanged(model: onnx.ModelProto, check: bool = True, ctx: PassContext | None = None) -> onnx.ModelProto:
    out, record = run_dedupe(model, check=check, ctx=ctx)
    assert not record.changed
    assert record.counters == {"initializers_merged": 0, "nodes_merged": 0, "bytes_saved": 0}
    assert op_counts(out) == op_counts(model)
    assert len(out.graph.initializer) == len(model.graph.initializer)
    return out


def test_transpose_with_different_perms_not_merged():
    model = make_model(
        [
            helper.make_node("Transpose", ["x"], ["a"], perm=[1, 0, 2]),
            helper.make_node("Transpose", ["x"], ["b"], perm=[0, 2, 1]),
            helper.make_node("Transpose", ["x"], ["c"], perm=[1, 0, 2]),
            helper.make_node("Concat", ["a", "b"], ["y"], axis=0),
            helper.make_node("Neg", ["c"], ["z"]),
        ],
        [vi("x", [2, 2, 2])],
        [vi("y", [4, 2, 2]), vi("z", [2, 2, 2])],
    )
    out, record = run_dedupe(model)
    assert op_counts(out) == {"Transpose": 2, "Concat": 1, "Neg": 1}  # only a and c merge
    assert record.counters["nodes_merged"] == 1
    assert_equivalent(model, out)


def test_conv_with_different_strides_not_merged():
    w = np.random.default_rng(0).standard_normal((2, 1, 3, 3)).astype(np.float32)
    model = make_model(
        [
            helper.make_node("Conv", ["x", "w"], ["a"], strides=[1, 1]),
            helper.make_node("Conv", ["x", "w"], ["b"], strides=[2, 2]),
        ],
        [vi("x", [1, 1, 7, 7])],
        [vi("a", [1, 2, 5, 5]), vi("b", [1, 2, 3, 3])],
        [init("w", w)],
    )
    assert_equivalent(model, assert_unchanged(model))


def test_float_attribute_sign_of_zero_distinguishes():
    model = make_model(
        [
            helper.make_node("LeakyRelu", ["x"], ["a"], alpha=0.0),
            helper.make_node("LeakyRelu", ["x"], ["b"], alpha=-0.0),
            helper.make_node("Add", ["a", "b"], ["y"]),
        ],
        [vi("x", [3])],
        [vi("y", [3])],
    )
    assert_unchanged(model)


def test_input_order_matters_for_sub():
    model = make_model(
        [
            helper.make_node("Sub", ["a", "b"], ["d1"]),
            helper.make_node("Sub", ["b", "a"], ["d2"]),
            helper.make_node("Mul", ["d1", "d2"], ["y"]),
        ],
        [vi("a", [3]), vi("b", [3])],
        [vi("y", [3])],
    )
    assert_equivalent(model, assert_unchanged(model))


def test_random_ops_not_merged():
    model = make_model(
        [
            helper.make_node("RandomUniformLike", ["x"], ["r1"]),
            helper.make_node("RandomUniformLike", ["x"], ["r2"]),
            helper.make_node("RandomNormal", [], ["n1"], shape=[3]),
            helper.make_node("RandomNormal", [], ["n2"], shape=[3]),
            helper.make_node("Sum", ["r1", "r2", "n1", "n2"], ["y"]),
        ],
        [vi("x", [3])],
        [vi("y", [3])],
    )
    assert_unchanged(model)


def test_both_graph_outputs_not_merged():
    model = make_model(
        [helper.make_node("Relu", ["x"], ["y1"]), helper.make_node("Relu", ["x"], ["y2"])],
        [vi("x", [2])],
        [vi("y1", [2]), vi("y2", [2])],
    )
    ctx = PassContext()
    out = assert_unchanged(model, ctx=ctx)
    assert output_names(out) == ["y1", "y2"]
    assert any(note["pass"] == "dedupe" and "graph outputs" in note["reason"] for note in ctx.notes)
    assert_equivalent(model, out)


def test_custom_domain_nodes_not_merged():
    nodes = [helper.make_node("Relu", ["x"], [f"a{i}"], domain="custom.test") for i in range(2)]
    nodes.append(helper.make_node("Add", ["a0", "a1"], ["y"]))
    graph = helper.make_graph(nodes, "g", [vi("x", [2])], [vi("y", [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("custom.test", 1)])
    assert_unchanged(model, check=False)


def test_nodes_with_subgraphs_not_merged():
    def branch(name: str, value: float) -> onnx.GraphProto:
        const = helper.make_node("Constant", [], [f"{name}_v"], value=numpy_helper.from_array(np.array([value], np.float32)))
        add = helper.make_node("Add", ["x", f"{name}_v"], [f"{name}_out"])
        return helper.make_graph([const, add], name, [], [vi(f"{name}_out", [1])])

    nodes = [
        helper.make_node("If", ["cond"], ["i1"], then_branch=branch("t1", 1.0), else_branch=branch("e1", 2.0)),
        helper.make_node("If", ["cond"], ["i2"], then_branch=branch("t2", 1.0), else_branch=branch("e2", 2.0)),
        helper.make_node("Add", ["i1", "i2"], ["y"]),
    ]
    model = make_model(nodes, [vi("cond", [], TensorProto.BOOL), vi("x", [1])], [vi("y", [1])])
    assert_equivalent(model, assert_unchanged(model))


def test_node_read_inside_subgraph_is_not_replaced():
    # r2 duplicates r1 but is read by name inside the If's branch: leave it.
    then_branch = helper.make_graph([helper.make_node("Neg", ["r2"], ["t"])], "then", [], [vi("t", [2])])
    else_branch = helper.make_graph([helper.make_node("Abs", ["r2"], ["e"])], "else", [], [vi("e", [2])])
    model = make_model(
        [
            helper.make_node("Relu", ["x"], ["r1"]),
            helper.make_node("Relu", ["x"], ["r2"]),
            helper.make_node("If", ["cond"], ["i"], then_branch=then_branch, else_branch=else_branch),
            helper.make_node("Add", ["r1", "i"], ["y"]),
        ],
        [vi("cond", [], TensorProto.BOOL), vi("x", [2])],
        [vi("y", [2])],
    )
    assert_equivalent(model, assert_unchanged(model))


# --------------------------------------------------------------------------------------------
# Initializers


def test_duplicate_weights_merged():
    w = weights(1, (3, 3))
    model = make_model(
        [
            helper.make_node("MatMul", ["x", "w1"], ["a"]),
            helper.make_node("MatMul", ["z", "w2"], ["b"]),
            helper.make_node("Add", ["a", "b"], ["y"]),
        ],
        [vi("x", [2, 3]), vi("z", [2, 3])],
        [vi("y", [2, 3])],
        [init("w1", w), init("w2", w.copy())],
    )
    out, record = run_dedupe(model)
    assert len(model.graph.initializer) == 2
    assert len(out.graph.initializer) == 1
    assert op_counts(out) == op_counts(model)
    assert record.counters == {"initializers_merged": 1, "nodes_merged": 0, "bytes_saved": 36}
    assert_equivalent(model, out)


def test_weights_differing_in_value_dtype_or_shape_not_merged():
    w = weights(2, (2, 2))
    model = make_model(
        [
            helper.make_node("Add", ["x", "w1"], ["a"]),
            helper.make_node("Add", ["x", "w2"], ["b"]),  # one element differs
            helper.make_node("Add", ["x", "w3"], ["c"]),  # same bytes, shape (1, 2, 2)
            helper.make_node("Cast", ["w4"], ["w4f"], to=TensorProto.FLOAT),  # same bytes, int32
            helper.make_node("Sum", ["a", "b", "w4f"], ["s"]),
            helper.make_node("Add", ["s", "neg0"], ["t"]),
            helper.make_node("Add", ["t", "pos0"], ["y"]),
        ],
        [vi("x", [2, 2])],
        [vi("y", [2, 2]), vi("c", [1, 2, 2])],
        [
            init("w1", w),
            init("w2", np.where(np.arange(4).reshape(2, 2) == 3, w + 1, w).astype(np.float32)),
            init("w3", w.reshape(1, 2, 2)),
            init("w4", w.view(np.int32)),
            init("neg0", np.array([-0.0], np.float32)),
            init("pos0", np.array([0.0], np.float32)),
        ],
    )
    out = assert_unchanged(model)
    assert_equivalent(model, out)


def test_constant_that_is_graph_output_not_merged():
    w = weights(3, (2,))
    model = make_model(
        [helper.make_node("Add", ["x", "w1"], ["y"])],
        [vi("x", [2])],
        [vi("y", [2]), vi("w2", [2])],
        [init("w1", w), init("w2", w)],
    )
    out = assert_unchanged(model)
    assert output_names(out) == ["y", "w2"]
    assert_equivalent(model, out)


def test_constant_that_is_graph_input_not_merged():
    # gs drops initializer-backed inputs on import, so build the graph directly.
    w = weights(4, (2,))
    w1, w2 = gs.Constant("w1", w), gs.Constant("w2", w.copy())
    y = gs.Variable("y", dtype=np.float32, shape=[2])
    graph = gs.Graph(nodes=[gs.Node("Add", inputs=[w1, w2], outputs=[y])], inputs=[w1], outputs=[y], opset=18)
    result = Dedupe().run(graph, PassContext())
    assert not result.changed
    assert [t.name for t in graph.nodes[0].inputs] == ["w1", "w2"]


def test_equal_digests_are_still_compared_byte_for_byte():
    one, two = np.zeros(4, np.float32), np.ones(4, np.float32)
    first = _ValueKey(("f32", (4,)), lambda: ("np", one.tobytes()))
    second = _ValueKey(("f32", (4,)), lambda: ("np", two.tobytes()))
    second.digest = first.digest  # a forced hash collision
    assert hash(first) == hash(second) and first != second


def test_bfloat16_duplicates_merged_and_keep_their_type():
    w = np.arange(6, dtype=np.float32).reshape(2, 3).astype(ml_dtypes.bfloat16)
    tensors = []
    for name in ("w1", "w2"):
        t = helper.make_tensor(name, TensorProto.BFLOAT16, [2, 3], w.view(np.uint16).tobytes(), raw=True)
        tensors.append(t)
    model = make_model(
        [
            helper.make_node("Cast", ["w1"], ["a"], to=TensorProto.FLOAT),
            helper.make_node("Cast", ["w2"], ["b"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["a", "b"], ["s"]),
            helper.make_node("Add", ["s", "x"], ["y"]),
        ],
        [vi("x", [2, 3])],
        [vi("y", [2, 3])],
        tensors,
    )
    out, record = run_dedupe(model)
    assert record.counters["initializers_merged"] == 1
    assert record.counters["nodes_merged"] == 1  # the two Casts now read one tensor
    assert [t.data_type for t in out.graph.initializer] == [TensorProto.BFLOAT16]
    assert_equivalent(model, out)


def test_string_constants_compared_by_content():
    def strings(name: str, items: list[bytes]) -> onnx.TensorProto:
        return helper.make_tensor(name, TensorProto.STRING, [len(items)], items)

    model = make_model(
        [
            helper.make_node("Identity", ["s1"], ["a"]),
            helper.make_node("Identity", ["s2"], ["b"]),
            helper.make_node("Identity", ["s3"], ["c"]),
        ],
        [],
        [vi("a", [2], TensorProto.STRING), vi("b", [2], TensorProto.STRING), vi("c", [2], TensorProto.STRING)],
        [strings("s1", [b"ab", b"c"]), strings("s2", [b"ab", b"c"]), strings("s3", [b"a", b"bc"])],
    )
    out, record = run_dedupe(model)
    assert record.counters["initializers_merged"] == 1
    assert len(out.graph.initializer) == 2
    assert output_names(out) == ["a", "b", "c"]
    got = run_ort(out, {})
    assert [list(got[k]) for k in "abc"] == [["ab", "c"], ["ab", "c"], ["a", "bc"]]


# --------------------------------------------------------------------------------------------
# Whole-pass properties


def test_second_run_changes_nothing():
    once, _ = run_dedupe(relu_pair_model())
    _, record = run_dedupe(once)
    assert not record.changed


def test_linear_time_on_many_duplicate_branches():
    n = 3000
    nodes = []
    for i in range(n):
        nodes.append(helper.make_node("Relu", ["x"], [f"r{i}"]))
        nodes.append(helper.make_node("Neg", [f"r{i}"], [f"n{i}"]))
    nodes.append(helper.make_node("Sum", [f"n{i}" for i in range(n)], ["y"]))
    model = make_model(nodes, [vi("x", [2])], [vi("y", [2])], check=False)
    graph = import_model(model)
    start = time.perf_counter()
    result = Dedupe().run(graph, PassContext())
    assert time.perf_counter() - start < 2.0
    assert result.counters["nodes_merged"] == 2 * (n - 1)
