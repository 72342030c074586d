"""Tiny Q/DQ graphs for the TensorRT linter tests, built with onnx.helper.

``conv_block`` builds ``x -> Q -> DQ -> Conv(DQ(W), bias) -> Relu -> y`` the way TensorRT's
explicit quantization wants it; keyword arguments break one rule at a time.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from tests.helpers import init, make_model, vi


def qdq(name: str, src: str, scale: float = 0.05, zp_dtype=np.int8, zero: int = 0, nodes=None, inits=None) -> str:
    """Append Q -> DQ of activation ``src``; returns the dequantized tensor's name."""
    inits.append(init(f"{name}_s", np.array(scale, np.float32)))
    inits.append(init(f"{name}_z", np.array(zero, zp_dtype)))
    nodes.append(helper.make_node("QuantizeLinear", [src, f"{name}_s", f"{name}_z"], [f"{name}_q"], name=f"{name}_Q"))
    nodes.append(helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"], [f"{name}_dq"], name=f"{name}_DQ"))
    return f"{name}_dq"


def weight_dq(name: str, shape, axis: int | None = 0, nodes=None, inits=None, scale_sign: float = 1.0) -> str:
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, shape).astype(np.int8)
    channels = shape[axis] if axis is not None else 1
    inits.append(init(f"{name}_w", w))
    inits.append(init(f"{name}_ws", (np.full(channels, 0.01, np.float32) * scale_sign) if axis is not None else np.array(0.01 * scale_sign, np.float32)))
    inits.append(init(f"{name}_wz", np.zeros(channels, np.int8) if axis is not None else np.array(0, np.int8)))
    attrs = {"axis": axis} if axis is not None else {}
    nodes.append(helper.make_node("DequantizeLinear", [f"{name}_w", f"{name}_ws", f"{name}_wz"], [f"{name}_wdq"], name=f"{name}_WDQ", **attrs))
    return f"{name}_wdq"


def conv_block(channels: int = 16, act_zp_dtype=np.int8, act_zero: int = 0, act_scale: float = 0.05,
               weight_axis: int | None = 0, quantize_weight: bool = True, quantize_input: bool = True,
               int32_bias: bool = False, qdq_before_relu: bool = False, opset: int = 17) -> onnx.ModelProto:
    nodes, inits = [], []
    x = qdq("x", "x", act_scale, act_zp_dtype, act_zero, nodes, inits) if quantize_input else "x"
    if quantize_weight:
        w = weight_dq("c", [channels, channels, 3, 3], weight_axis, nodes, inits)
    else:
        inits.append(init("c_wf", np.random.default_rng(0).standard_normal([channels, channels, 3, 3]).astype(np.float32)))
        w = "c_wf"
    if int32_bias:
        inits += [init("b_q", np.zeros(channels, np.int32)), init("b_s", np.full(channels, 1e-4, np.float32)),
                  init("b_z", np.zeros(channels, np.int32))]
        nodes.append(helper.make_node("DequantizeLinear", ["b_q", "b_s", "b_z"], ["b"], name="bias_DQ", axis=0))
    else:
        inits.append(init("b", np.zeros(channels, np.float32)))
    nodes.append(helper.make_node("Conv", [x, w, "b"], ["c"], name="conv", pads=[1, 1, 1, 1]))
    relu_in = qdq("c", "c", 0.05, np.int8, 0, nodes, inits) if qdq_before_relu else "c"
    nodes.append(helper.make_node("Relu", [relu_in], ["y"], name="relu"))
    return make_model(nodes, [vi("x", [1, channels, 8, 8])], [vi("y", [1, channels, 8, 8])], inits, opset=opset)


def residual_block(quantize_conv_branch: bool) -> onnx.ModelProto:
    """y = Conv(x) + x, Q/DQ on the skip input (and on the conv branch when asked)."""
    nodes, inits = [], []
    xq = qdq("x", "x", 0.05, np.int8, 0, nodes, inits)
    w = weight_dq("c", [16, 16, 1, 1], 0, nodes, inits)
    nodes.append(helper.make_node("Conv", [xq, w], ["c"], name="conv"))
    branch = qdq("cb", "c", 0.05, np.int8, 0, nodes, inits) if quantize_conv_branch else "c"
    skip = qdq("skip", "x", 0.05, np.int8, 0, nodes, inits)
    nodes.append(helper.make_node("Add", [branch, skip], ["y"], name="add"))
    return make_model(nodes, [vi("x", [1, 16, 8, 8])], [vi("y", [1, 16, 8, 8])], inits, opset=17)


def concat_block(scales=(0.05, 0.05)) -> onnx.ModelProto:
    nodes, inits = [], []
    a = qdq("a", "a", scales[0], np.int8, 0, nodes, inits)
    b = qdq("b", "b", scales[1], np.int8, 0, nodes, inits)
    nodes.append(helper.make_node("Concat", [a, b], ["y"], name="concat", axis=1))
    return make_model(nodes, [vi("a", [1, 16, 8, 8]), vi("b", [1, 16, 8, 8])], [vi("y", [1, 32, 8, 8])], inits, opset=17)


def float_only_consumer(as_output: bool = False) -> onnx.ModelProto:
    """A Q/DQ pair whose reader (Sigmoid) stays float, or that is itself a graph output."""
    nodes, inits = [], []
    x = qdq("x", "x", 0.05, np.int8, 0, nodes, inits)
    if as_output:
        nodes.append(helper.make_node("Identity", ["x"], ["unused"], name="keep"))
        return make_model(nodes, [vi("x", [1, 4])], [vi(x, [1, 4])], inits, opset=17)
    nodes.append(helper.make_node("Sigmoid", [x], ["y"], name="sigmoid"))
    return make_model(nodes, [vi("x", [1, 4])], [vi("y", [1, 4])], inits, opset=17)


def op_model(node: onnx.NodeProto, inputs, outputs, inits=(), opset: int = 17, domains=()) -> onnx.ModelProto:
    graph = helper.make_graph([node], "g", list(inputs), list(outputs), list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), *[helper.make_opsetid(d, 1) for d in domains]])
    model.ir_version = 8
    return model


TYPES = TensorProto
