"""fuse_gemm: structural (op counts) and numeric (onnxruntime) checks, plus declined cases."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxslim.pipeline import PassContext
from tests.helpers import apply_passes, assert_equivalent, init, make_model, op_counts, vi

M, K, N = 3, 5, 4


def _pipeline() -> str:
    return "infer_shapes,fuse_gemm"


def _run(model: onnx.ModelProto, ctx: PassContext | None = None):
    out, records = apply_passes(model, _pipeline(), ctx)
    return out, records[-1]


def _model(a_shape, c_shape, bias_first=False, dtype=np.float32, b_const=True, opset=18, out_shape=None):
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((K, N)) * 3).astype(dtype)
    bias = (rng.standard_normal(c_shape) * 3).astype(dtype)
    inputs = [vi("a", a_shape, elem)]
    inits = [init("c", bias)]
    if b_const:
        inits.append(init("w", weight))
    else:
        inputs.append(vi("w", [K, N], elem))
    nodes = [
        helper.make_node("MatMul", ["a", "w"], ["m"], name="mm"),
        helper.make_node("Add", ["c", "m"] if bias_first else ["m", "c"], ["y"], name="add"),
    ]
    out_shape = out_shape or [*a_shape[:-1], N]
    return make_model(nodes, inputs, [vi("y", out_shape, elem)], inits, opset=opset)


@pytest.mark.parametrize("c_shape", [(N,), (1, N), (M, N), (M, 1), (1,), ()])
@pytest.mark.parametrize("bias_first", [False, True])
def test_matmul_add_becomes_gemm(c_shape, bias_first):
    model = _model([M, K], c_shape, bias_first)
    assert op_counts(model) == {"MatMul": 1, "Add": 1}
    out, record = _run(model)
    assert op_counts(out) == {"Gemm": 1}
    assert record.changed and record.counters == {"fused": 1}
    assert [o.name for o in out.graph.output] == ["y"]
    assert_equivalent(model, out)


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_other_float_dtypes(dtype):
    model = _model([M, K], (N,), dtype=dtype)
    out, _ = _run(model)
    assert op_counts(out) == {"Gemm": 1}
    assert_equivalent(model, out)


def test_dynamic_batch_with_row_bias():
    model = _model(["batch", K], (1, N))
    out, _ = _run(model)
    assert op_counts(out) == {"Gemm": 1}
    assert_equivalent(model, out, dims={"batch": 6})


def test_opset_9():
    model = _model([M, K], (N,), opset=9)
    out, _ = _run(model)
    assert op_counts(out) == {"Gemm": 1}
    assert_equivalent(model, out)


def test_rank_3_input_is_declined():
    model = _model([2, M, K], (N,))  # output [2, M, N]
    ctx = PassContext()
    out, record = _run(model, ctx)
    assert op_counts(out) == {"MatMul": 1, "Add": 1}
    assert not record.changed
    assert {"pass": "fuse_gemm", "where": "mm", "reason": "rank>2"} in ctx.notes


@pytest.mark.parametrize(
    "a_shape,c_shape,out_shape",
    [
        (["batch", K], (M, N), ["batch", N]),  # needs a static M
        ([M, K], (2, M, N), [2, M, N]),  # grows the output
        ([1, K], (M, N), [M, N]),  # broadcasts the MatMul's rows up to M
    ],
)
def test_bias_that_does_not_fit_gemm_is_kept(a_shape, c_shape, out_shape):
    model = _model(a_shape, c_shape, out_shape=out_shape)
    out, record = _run(model)
    assert op_counts(out) == {"MatMul": 1, "Add": 1}
    assert not record.changed


def test_non_constant_weight_is_kept():
    model = _model([M, K], (N,), b_const=False)
    out, record = _run(model)
    assert op_counts(out) == {"MatMul": 1, "Add": 1}
    assert not record.changed


def test_integer_matmul_is_kept():
    model = _model([M, K], (N,), dtype=np.int32)
    out, record = _run(model)
    assert op_counts(out) == {"MatMul": 1, "Add": 1}
    assert not record.changed


def test_matmul_with_two_readers_is_kept():
    model = _model([M, K], (N,))
    model.graph.node.append(helper.make_node("Relu", ["m"], ["r"], name="relu"))
    model.graph.output.append(vi("r", [M, N]))
    out, record = _run(model)
    assert op_counts(out) == {"MatMul": 1, "Add": 1, "Relu": 1}
    assert not record.changed


def test_non_constant_bias_is_kept():
    model = make_model(
        [helper.make_node("MatMul", ["a", "w"], ["m"], name="mm"), helper.make_node("Add", ["m", "c"], ["y"], name="add")],
        [vi("a", [M, K]), vi("c", [N], TensorProto.FLOAT)],
        [vi("y", [M, N])],
        [init("w", np.ones((K, N), np.float32))],
    )
    out, record = _run(model)
    assert op_counts(out) == {"MatMul": 1, "Add": 1}
    assert not record.changed
