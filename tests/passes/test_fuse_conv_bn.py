"""fuse_conv_bn: structural (op counts) and numeric (onnxruntime) checks, plus declined cases."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from onnxslim.pipeline import PassContext
from tests.helpers import apply_passes, assert_equivalent, init, make_model, op_counts, vi


def _pipeline() -> str:
    return "infer_shapes,fuse_conv_bn"


def _bn_inits(prefix: str, channels: int, seed: int = 0) -> list[onnx.TensorProto]:
    rng = np.random.default_rng(seed)
    return [
        init(f"{prefix}_scale", rng.uniform(0.5, 2.0, channels).astype(np.float32)),
        init(f"{prefix}_b", rng.standard_normal(channels).astype(np.float32)),
        init(f"{prefix}_mean", rng.standard_normal(channels).astype(np.float32)),
        init(f"{prefix}_var", rng.uniform(0.001, 2.0, channels).astype(np.float32)),
    ]


def _bn(x: str, y: str, prefix: str = "bn", **attrs) -> onnx.NodeProto:
    names = [f"{prefix}_{k}" for k in ("scale", "b", "mean", "var")]
    return helper.make_node("BatchNormalization", [x, *names], [y], name=prefix, **attrs)


def _weights(shape: tuple[int, ...], seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _run(model: onnx.ModelProto):
    out, records = apply_passes(model, _pipeline())
    return out, records[-1]


def _conv_bn_model(op: str = "Conv", group: int = 1, bias: bool = True, eps: float | None = None, opset: int = 18):
    cin, cout = 4, 6
    if op == "Conv":
        w = _weights((cout, cin // group, 3, 3))
    else:
        w = _weights((cin, cout // group, 3, 3))
    inits = [init("w", w), *_bn_inits("bn", cout)]
    inputs = ["x", "w"]
    if bias:
        inits.append(init("b", _weights((cout,), 2)))
        inputs.append("b")
    conv = helper.make_node(op, inputs, ["c"], name="conv", group=group, pads=[1, 1, 1, 1])
    bn_attrs = {} if eps is None else {"epsilon": eps}
    out_hw = 5 if op == "Conv" else 5
    return make_model(
        [conv, _bn("c", "y", **bn_attrs)],
        [vi("x", [2, cin, 5, 5])],
        [vi("y", [2, cout, out_hw, out_hw])],
        inits,
        opset=opset,
    )


# --------------------------------------------------------------------------------------------
# Preceding Conv / ConvTranspose


@pytest.mark.parametrize("group", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
def test_conv_bn_folds(group, bias):
    model = _conv_bn_model(group=group, bias=bias)
    assert op_counts(model) == {"Conv": 1, "BatchNormalization": 1}
    out, record = _run(model)
    assert op_counts(out) == {"Conv": 1}
    assert record.changed and record.counters == {"into_conv": 1}
    assert [o.name for o in out.graph.output] == ["y"]
    assert_equivalent(model, out)


@pytest.mark.parametrize("group", [1, 2])
def test_conv_transpose_bn_folds(group):
    model = _conv_bn_model(op="ConvTranspose", group=group)
    out, record = _run(model)
    assert op_counts(out) == {"ConvTranspose": 1}
    assert record.counters == {"into_conv_transpose": 1}
    assert_equivalent(model, out)


def test_bn_epsilon_is_used():
    # var as small as 1e-3 makes eps=0.1 matter; a fold that ignored eps would fail numerically.
    model = _conv_bn_model(eps=0.1)
    out, _ = _run(model)
    assert op_counts(out) == {"Conv": 1}
    assert_equivalent(model, out)


def test_conv_bn_opset_11():
    model = _conv_bn_model(opset=11)
    out, _ = _run(model)
    assert op_counts(out) == {"Conv": 1}
    assert_equivalent(model, out)


def test_conv_with_second_reader_is_kept():
    model = _conv_bn_model()
    model.graph.node.append(helper.make_node("Relu", ["c"], ["r"], name="relu"))
    model.graph.output.append(vi("r", [2, 6, 5, 5]))
    out, record = _run(model)
    assert op_counts(out) == {"Conv": 1, "BatchNormalization": 1, "Relu": 1}
    assert not record.changed


def test_conv_output_that_is_graph_output_is_kept():
    model = _conv_bn_model()
    model.graph.output.append(vi("c", [2, 6, 5, 5]))
    out, record = _run(model)
    assert op_counts(out) == {"Conv": 1, "BatchNormalization": 1}
    assert not record.changed


def test_non_constant_weight_is_kept():
    model = make_model(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), _bn("c", "y")],
        [vi("x", [1, 4, 5, 5]), vi("w", [6, 4, 3, 3])],
        [vi("y", [1, 6, 3, 3])],
        _bn_inits("bn", 6),
    )
    out, record = _run(model)
    assert op_counts(out) == {"Conv": 1, "BatchNormalization": 1}
    assert not record.changed


def test_training_mode_bn_is_kept():
    model = _conv_bn_model()
    bn = model.graph.node[1]
    bn.attribute.append(helper.make_attribute("training_mode", 1))
    bn.output.extend(["running_mean", "running_var"])
    out, record = _run(model)
    assert op_counts(out) == {"Conv": 1, "BatchNormalization": 1}
    assert not record.changed


def test_non_constant_statistics_are_kept():
    model = _conv_bn_model()
    mean = next(i for i in model.graph.initializer if i.name == "bn_mean")
    model.graph.initializer.remove(mean)
    model.graph.input.append(vi("bn_mean", [6]))
    out, record = _run(model)
    assert op_counts(out) == {"Conv": 1, "BatchNormalization": 1}
    assert not record.changed


# --------------------------------------------------------------------------------------------
# Preceding Gemm / MatMul


def _gemm_bn_model(trans_a: int, trans_b: int, c_shape: tuple[int, ...] | None, beta: float = 1.0):
    m, k, n = 3, 5, 4
    a_shape = [k, m] if trans_a else [m, k]
    w = _weights((n, k) if trans_b else (k, n))
    inits = [init("w", w), *_bn_inits("bn", n)]
    inputs = ["a", "w"]
    if c_shape is not None:
        inits.append(init("c", _weights(c_shape, 3)))
        inputs.append("c")
    gemm = helper.make_node("Gemm", inputs, ["g"], name="gemm", transA=trans_a, transB=trans_b, alpha=0.5, beta=beta)
    return make_model([gemm, _bn("g", "y")], [vi("a", a_shape)], [vi("y", [m, n])], inits)


@pytest.mark.parametrize(
    "trans_a,trans_b,c_shape,beta",
    [(0, 0, (4,), 1.0), (0, 1, (1, 4), 2.0), (1, 0, (3, 1), 0.7), (1, 1, None, 1.0), (0, 1, (3, 4), 0.0)],
)
def test_gemm_bn_folds(trans_a, trans_b, c_shape, beta):
    model = _gemm_bn_model(trans_a, trans_b, c_shape, beta)
    out, record = _run(model)
    assert op_counts(out) == {"Gemm": 1}
    assert record.counters == {"into_gemm": 1}
    assert_equivalent(model, out)


def test_matmul_bn_becomes_gemm():
    model = make_model(
        [helper.make_node("MatMul", ["a", "w"], ["m"], name="mm"), _bn("m", "y")],
        [vi("a", [3, 5])],
        [vi("y", [3, 4])],
        [init("w", _weights((5, 4))), *_bn_inits("bn", 4)],
    )
    out, record = _run(model)
    assert op_counts(out) == {"Gemm": 1}
    assert record.counters == {"into_matmul": 1}
    assert_equivalent(model, out)


def test_matmul_bn_on_3d_activation_is_kept():
    # BN's channel axis is 1 (sequence), not the weight's output dim: no fold.
    model = make_model(
        [helper.make_node("MatMul", ["a", "w"], ["m"], name="mm"), _bn("m", "y")],
        [vi("a", [2, 4, 5])],
        [vi("y", [2, 4, 4])],
        [init("w", _weights((5, 4))), *_bn_inits("bn", 4)],
    )
    out, record = _run(model)
    assert op_counts(out) == {"MatMul": 1, "BatchNormalization": 1}
    assert not record.changed


# --------------------------------------------------------------------------------------------
# Following Conv (no padding)


def _bn_conv_model(group: int = 1, pads: list[int] | None = None, auto_pad: str | None = None, bias: bool = True):
    cin, cout = 4, 6
    inits = [init("w", _weights((cout, cin // group, 3, 3))), *_bn_inits("bn", cin)]
    inputs = ["t", "w"]
    if bias:
        inits.append(init("b", _weights((cout,), 2)))
        inputs.append("b")
    attrs = {"group": group, "strides": [2, 1], "dilations": [1, 2]}
    if pads is not None:
        attrs["pads"] = pads
    if auto_pad is not None:
        attrs["auto_pad"] = auto_pad
    conv = helper.make_node("Conv", inputs, ["y"], name="conv", **attrs)
    relu = helper.make_node("Relu", ["x"], ["r"], name="relu")  # BN with no foldable producer
    return make_model([relu, _bn("r", "t"), conv], [vi("x", [2, cin, 9, 9])], [vi("y", [2, cout, "h", "w"])], inits)


@pytest.mark.parametrize("group,bias,auto_pad", [(1, True, None), (2, False, None), (2, True, "VALID")])
def test_bn_folds_into_following_unpadded_conv(group, bias, auto_pad):
    model = _bn_conv_model(group=group, bias=bias, pads=None if auto_pad else [0, 0, 0, 0], auto_pad=auto_pad)
    assert op_counts(model) == {"Relu": 1, "BatchNormalization": 1, "Conv": 1}
    out, record = _run(model)
    assert op_counts(out) == {"Relu": 1, "Conv": 1}
    assert record.counters == {"into_following_conv": 1}
    assert_equivalent(model, out)


@pytest.mark.parametrize("pads,auto_pad", [([1, 1, 1, 1], None), ([0, 0, 1, 0], None), (None, "SAME_UPPER")])
def test_bn_before_padded_conv_is_kept(pads, auto_pad):
    model = _bn_conv_model(pads=pads, auto_pad=auto_pad)
    out, record = _run(model)
    assert op_counts(out) == {"Relu": 1, "BatchNormalization": 1, "Conv": 1}
    assert not record.changed


def test_standalone_bn_is_kept_and_declined():
    model = make_model(
        [helper.make_node("Relu", ["x"], ["r"], name="relu"), _bn("r", "y")],
        [vi("x", [2, 4, 3, 3])],
        [vi("y", [2, 4, 3, 3])],
        _bn_inits("bn", 4),
    )
    ctx = PassContext()
    out, records = apply_passes(model, _pipeline(), ctx)
    assert op_counts(out) == {"Relu": 1, "BatchNormalization": 1}
    assert not records[-1].changed
    assert any(n["pass"] == "fuse_conv_bn" and "standalone" in n["reason"] for n in ctx.notes)


def test_chain_bn_conv_bn_folds_both():
    model = _bn_conv_model(pads=[0, 0, 0, 0])
    graph = model.graph
    graph.node[2].output[0] = "c2"
    graph.node.append(_bn("c2", "y", prefix="bn2"))
    graph.initializer.extend(_bn_inits("bn2", 6, seed=5))
    out, record = _run(model)
    assert op_counts(out) == {"Relu": 1, "Conv": 1}
    assert record.counters == {"into_following_conv": 1, "into_conv": 1}
    assert_equivalent(model, out)
