"""fuse_conv_affine: structural (op counts) and numeric (onnxruntime) checks, plus declined cases."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from onnxslim.pipeline import PassContext
from tests.helpers import apply_passes, assert_equivalent, init, make_model, op_counts, vi

CIN, COUT, HW = 4, 6, 5


def _pipeline() -> str:
    return "infer_shapes,fuse_conv_affine"


def _run(model: onnx.ModelProto, ctx: PassContext | None = None):
    out, records = apply_passes(model, _pipeline(), ctx)
    return out, records[-1]


def _rand(shape, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.5, 1.5, shape).astype(np.float32) * np.where(
        np.random.default_rng(seed + 7).random(shape) < 0.5, -1, 1
    ).astype(np.float32)


def _conv_then(ops: list[tuple[str, tuple[int, ...], bool]], bias=True, group=1, out_shape=None, check=True) -> onnx.ModelProto:
    """Conv followed by a chain of (op, constant shape, constant-first) nodes."""
    inits = [init("w", _rand((COUT, CIN // group, 3, 3)))]
    conv_inputs = ["x", "w"]
    if bias:
        inits.append(init("b", _rand((COUT,), 2)))
        conv_inputs.append("b")
    nodes = [helper.make_node("Conv", conv_inputs, ["t0"], name="conv", group=group, pads=[1, 1, 1, 1])]
    for i, (op, shape, const_first) in enumerate(ops):
        k = f"k{i}"
        inits.append(init(k, _rand(shape, 10 + i)))
        args = [k, f"t{i}"] if const_first else [f"t{i}", k]
        out = "y" if i == len(ops) - 1 else f"t{i + 1}"
        nodes.append(helper.make_node(op, args, [out], name=f"{op.lower()}{i}"))
    return make_model(nodes, [vi("x", [2, CIN, HW, HW])], [vi("y", out_shape or [2, COUT, HW, HW])], inits, check=check)


# --------------------------------------------------------------------------------------------
# Conv


@pytest.mark.parametrize("shape", [(COUT, 1, 1), (1, COUT, 1, 1), (1,), (), (1, 1, 1)])
@pytest.mark.parametrize("bias,group", [(True, 1), (False, 2)])
def test_conv_mul_folds(shape, bias, group):
    model = _conv_then([("Mul", shape, False)], bias=bias, group=group)
    assert op_counts(model) == {"Conv": 1, "Mul": 1}
    out, record = _run(model)
    assert op_counts(out) == {"Conv": 1}
    assert record.counters == {"conv_mul": 1}
    assert_equivalent(model, out)


@pytest.mark.parametrize("op,const_first", [("Add", False), ("Add", True), ("Sub", False), ("Sub", True)])
@pytest.mark.parametrize("bias", [True, False])
def test_conv_add_sub_fold_into_bias(op, const_first, bias):
    model = _conv_then([(op, (COUT, 1, 1), const_first)], bias=bias)
    out, record = _run(model)
    assert op_counts(out) == {"Conv": 1}
    assert record.counters == {"conv_add": 1}
    assert len(out.graph.node[0].input) == 3
    assert_equivalent(model, out)


def test_conv_mul_add_chain_folds_in_one_run():
    model = _conv_then([("Mul", (COUT, 1, 1), True), ("Add", (1, COUT, 1, 1), False)], bias=False)
    out, record = _run(model)
    assert op_counts(out) == {"Conv": 1}
    assert record.counters == {"conv_mul": 1, "conv_add": 1}
    assert [o.name for o in out.graph.output] == ["y"]
    assert_equivalent(model, out)


@pytest.mark.parametrize(
    "shape",
    [
        (1, 1, 1, HW),  # varies along width
        (HW, 1),  # varies along height
        (2, COUT, 1, 1),  # varies along batch
        (1, 1, COUT, 1, 1),  # grows the output's rank
        (HW,),  # right-aligned: the width axis, not channels
    ],
)
def test_non_per_channel_constant_is_kept(shape):
    out_shape = list(np.broadcast_shapes((2, COUT, HW, HW), shape))
    model = _conv_then([("Mul", shape, False)], out_shape=out_shape)
    out, record = _run(model)
    assert op_counts(out) == {"Conv": 1, "Mul": 1}
    assert not record.changed


def test_non_constant_operand_is_kept():
    model = _conv_then([("Mul", (COUT, 1, 1), False)])
    k = next(i for i in model.graph.initializer if i.name == "k0")
    model.graph.initializer.remove(k)
    model.graph.input.append(vi("k0", [COUT, 1, 1]))
    out, record = _run(model)
    assert op_counts(out) == {"Conv": 1, "Mul": 1}
    assert not record.changed
    # not a candidate (a residual Add, say), so not a declined rewrite: --strict must not fail on it
    ctx = PassContext(strict=True)
    out, _ = _run(model, ctx)
    assert op_counts(out) == {"Conv": 1, "Mul": 1} and ctx.notes == []


def test_non_constant_weight_is_kept():
    model = _conv_then([("Mul", (COUT, 1, 1), False)])
    w = next(i for i in model.graph.initializer if i.name == "w")
    model.graph.initializer.remove(w)
    model.graph.input.append(vi("w", [COUT, CIN, 3, 3]))
    out, record = _run(model)
    assert op_counts(out) == {"Conv": 1, "Mul": 1}
    assert not record.changed


def test_conv_with_two_readers_is_kept():
    model = _conv_then([("Mul", (COUT, 1, 1), False)])
    model.graph.node.append(helper.make_node("Relu", ["t0"], ["r"], name="relu"))
    model.graph.output.append(vi("r", [2, COUT, HW, HW]))
    out, record = _run(model)
    assert op_counts(out) == {"Conv": 1, "Mul": 1, "Relu": 1}
    assert not record.changed


# --------------------------------------------------------------------------------------------
# Gemm / MatMul


def _gemm_then(op: str, k_shape, const_first: bool, trans_b: int, c_shape, beta: float = 1.0) -> onnx.ModelProto:
    m, kdim, n = 3, 5, 4
    inits = [init("w", _rand((n, kdim) if trans_b else (kdim, n))), init("k", _rand(k_shape, 3))]
    inputs = ["a", "w"]
    if c_shape is not None:
        inits.append(init("c", _rand(c_shape, 4)))
        inputs.append("c")
    nodes = [
        helper.make_node("Gemm", inputs, ["g"], name="gemm", transB=trans_b, alpha=0.75, beta=beta),
        helper.make_node(op, ["k", "g"] if const_first else ["g", "k"], ["y"], name="affine"),
    ]
    return make_model(nodes, [vi("a", [m, kdim])], [vi("y", [m, n])], inits)


@pytest.mark.parametrize(
    "op,k_shape,const_first,trans_b,c_shape,beta,counter",
    [
        ("Mul", (4,), False, 0, (4,), 1.0, "gemm_mul"),
        ("Mul", (1, 4), True, 1, (3, 1), 0.5, "gemm_mul"),
        ("Mul", (), False, 1, None, 1.0, "gemm_mul"),
        ("Add", (1, 4), False, 0, None, 1.0, "gemm_add"),
        ("Add", (4,), True, 1, (3, 4), 2.0, "gemm_add"),
        ("Sub", (4,), False, 0, (4,), 1.0, "gemm_add"),
        ("Sub", (1,), True, 1, (1, 4), 0.5, "gemm_add"),
    ],
)
def test_gemm_affine_folds(op, k_shape, const_first, trans_b, c_shape, beta, counter):
    model = _gemm_then(op, k_shape, const_first, trans_b, c_shape, beta)
    out, record = _run(model)
    assert op_counts(out) == {"Gemm": 1}
    assert record.counters == {counter: 1}
    assert_equivalent(model, out)


def test_gemm_mul_by_row_constant_is_kept():
    model = _gemm_then("Mul", (3, 1), False, 0, (4,))
    out, record = _run(model)
    assert op_counts(out) == {"Gemm": 1, "Mul": 1}
    assert not record.changed


def _matmul_mul(a_shape, k_shape) -> onnx.ModelProto:
    nodes = [helper.make_node("MatMul", ["a", "w"], ["m"], name="mm"), helper.make_node("Mul", ["m", "k"], ["y"], name="mul")]
    out_shape = list(np.broadcast_shapes(tuple(a_shape[:-1]) + (4,), k_shape))
    return make_model(nodes, [vi("a", a_shape)], [vi("y", out_shape)], [init("w", _rand((5, 4))), init("k", _rand(k_shape, 3))])


@pytest.mark.parametrize("a_shape,k_shape", [([3, 5], (4,)), ([2, 3, 5], (1, 1, 4)), ([2, 3, 5], (1,)), ([5], (4,))])
def test_matmul_mul_folds(a_shape, k_shape):
    model = _matmul_mul(a_shape, k_shape)
    out, record = _run(model)
    assert op_counts(out) == {"MatMul": 1}
    assert record.counters == {"matmul_mul": 1}
    assert_equivalent(model, out)


@pytest.mark.parametrize("a_shape,k_shape", [([2, 3, 5], (3, 1)), ([3, 5], (1, 1, 4)), ([2, 3, 5], (2, 1, 4))])
def test_matmul_mul_not_per_column_is_kept(a_shape, k_shape):
    model = _matmul_mul(a_shape, k_shape)
    out, record = _run(model)
    assert op_counts(out) == {"MatMul": 1, "Mul": 1}
    assert not record.changed


def test_matmul_add_is_left_to_fuse_gemm():
    nodes = [helper.make_node("MatMul", ["a", "w"], ["m"], name="mm"), helper.make_node("Add", ["m", "k"], ["y"], name="add")]
    model = make_model(nodes, [vi("a", [3, 5])], [vi("y", [3, 4])], [init("w", _rand((5, 4))), init("k", _rand((4,), 3))])
    out, record = _run(model)
    assert op_counts(out) == {"MatMul": 1, "Add": 1}
    assert not record.changed


def test_conv_read_only_inside_a_subgraph_is_kept():
    # The Conv's only reader is a Mul in an If branch: that Mul is not in the main graph.
    model = _conv_then([("Mul", (COUT, 1, 1), False)], check=False)
    graph = model.graph
    del graph.node[1:]  # drop the main-graph Mul
    k = helper.make_tensor("k_sub", onnx.TensorProto.FLOAT, [COUT, 1, 1], np.full(COUT, 2.0, np.float32))
    out_vi = vi("o", [2, COUT, HW, HW])
    then_g = helper.make_graph([helper.make_node("Mul", ["t0", "k_sub"], ["o"], name="mul_in_if")], "then", [], [out_vi], [k])
    else_g = helper.make_graph([helper.make_node("Identity", ["x2"], ["o"], name="id_in_if")], "else", [], [out_vi])
    graph.node.append(helper.make_node("If", ["cond"], ["y"], name="if", then_branch=then_g, else_branch=else_g))
    graph.input.extend([vi("cond", [], onnx.TensorProto.BOOL), vi("x2", [2, COUT, HW, HW])])
    del graph.initializer[2:]  # k0 was the Mul's
    onnx.checker.check_model(model, full_check=True)
    out, record = _run(model)
    assert op_counts(out) == {"Conv": 1, "If": 1}
    assert not record.changed
    assert_equivalent(model, out)
