"""fuse_pad: structural (op counts) and numeric (onnxruntime) checks, plus declined cases."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from tests.helpers import apply_passes, assert_equivalent, init, make_model, op_counts, vi

C, HW = 4, 6


def _pipeline() -> str:
    return "infer_shapes,fuse_pad"


def _run(model: onnx.ModelProto):
    out, records = apply_passes(model, _pipeline())
    return out, records[-1]


def _pad_model(
    pads: list[int],
    consumer: str = "Conv",
    opset: int = 18,
    value: float | None = None,
    axes: list[int] | None = None,
    mode: str | None = None,
    pads_as_constant_node: bool = False,
    **consumer_attrs,
) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits, nodes = [], []
    pad_attrs = {} if mode is None else {"mode": mode}
    if opset < 11:
        pad_attrs["pads"] = pads
        if value is not None:
            pad_attrs["value"] = value
        nodes.append(helper.make_node("Pad", ["x"], ["p"], name="pad", **pad_attrs))
    else:
        if pads_as_constant_node:
            nodes.append(helper.make_node("Constant", [], ["pads"], value=helper.make_tensor("v", onnx.TensorProto.INT64, [len(pads)], pads)))
        else:
            inits.append(init("pads", np.array(pads, np.int64)))
        pad_inputs = ["x", "pads"]
        if value is not None:
            inits.append(init("value", np.array(value, np.float32)))
            pad_inputs.append("value")
        if axes is not None:
            inits.append(init("axes", np.array(axes, np.int64)))
            pad_inputs += [""] * (3 - len(pad_inputs)) + ["axes"]
        nodes.append(helper.make_node("Pad", pad_inputs, ["p"], name="pad", **pad_attrs))
    if "consumer_pads" in consumer_attrs:
        consumer_attrs["pads"] = consumer_attrs.pop("consumer_pads")
    if consumer == "Conv":
        group = consumer_attrs.get("group", 1)
        inits += [init("w", rng.standard_normal((6, C // group, 3, 3)).astype(np.float32)), init("b", np.ones(6, np.float32))]
        nodes.append(helper.make_node("Conv", ["p", "w", "b"], ["y"], name="conv", **consumer_attrs))
    else:
        nodes.append(helper.make_node(consumer, ["p"], ["y"], name="pool", kernel_shape=[3, 3], **consumer_attrs))
    return make_model(nodes, [vi("x", [2, C, HW, HW])], [vi("y", None)], inits, opset=opset, check=False)


def _pad_then(*args, **kwargs) -> onnx.ModelProto:
    model = _pad_model(*args, **kwargs)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    model.graph.output[0].CopyFrom(inferred.graph.output[0])
    onnx.checker.check_model(model, full_check=True)
    return model


# --------------------------------------------------------------------------------------------
# Rewrites


@pytest.mark.parametrize(
    "kwargs",
    [
        {"pads": [0, 0, 1, 2, 0, 0, 2, 1]},
        {"pads": [0, 0, 1, 1, 0, 0, 1, 1], "consumer_pads": [1, 0, 0, 2]},  # Conv already pads
        {"pads": [0, 0, 0, 3, 0, 0, 1, 0], "group": 2, "strides": [2, 2], "dilations": [1, 2]},
        {"pads": [0, 0, 1, 1, 0, 0, 1, 1], "auto_pad": "VALID"},
        {"pads": [0, 0, 1, 1, 0, 0, 1, 1], "value": 0.0},
        {"pads": [1, 2, 3, 4], "axes": [2, 3]},
        {"pads": [2, 1], "axes": [-1]},
        {"pads": [0, 0, 1, 1, 0, 0, 1, 1], "opset": 11},
        {"pads": [0, 0, 1, 1, 0, 0, 1, 1], "opset": 10, "value": 0.0},
        {"pads": [0, 0, 1, 1, 0, 0, 1, 1], "pads_as_constant_node": True},
        {"pads": [0, 0, 4, 3, 0, 0, 5, 3], "consumer_pads": [1, 0, 0, 2]},  # pads beyond the kernel
    ],
)
def test_pad_folds_into_conv(kwargs):
    kwargs = dict(kwargs)
    model = _pad_then(kwargs.pop("pads"), "Conv", **kwargs)
    out, record = _run(model)
    assert op_counts(out) == {"Conv": 1}
    assert record.counters == {"into_conv": 1}
    assert_equivalent(model, out)


@pytest.mark.parametrize("pool_pads", [None, [1, 0, 0, 1]])
def test_pad_folds_into_average_pool_counting_padding(pool_pads):
    attrs = {"count_include_pad": 1, "strides": [2, 1]}
    if pool_pads:
        attrs["consumer_pads"] = pool_pads
    model = _pad_then([0, 0, 1, 2, 0, 0, 2, 1], "AveragePool", **attrs)
    out, record = _run(model)
    assert op_counts(out) == {"AveragePool": 1}
    assert record.counters == {"into_average_pool": 1}
    assert_equivalent(model, out)


# --------------------------------------------------------------------------------------------
# Declined


@pytest.mark.parametrize(
    "pads,consumer,kwargs",
    [
        ([0, 0, 1, 1, 0, 0, 1, 1], "Conv", {"mode": "reflect"}),
        ([0, 0, 1, 1, 0, 0, 1, 1], "Conv", {"mode": "edge"}),
        ([0, 0, 1, 1, 0, 0, 1, 1], "Conv", {"value": 1.5}),
        ([0, 0, 1, 1, 0, 0, 1, 1], "Conv", {"opset": 10, "value": -1.0}),
        ([0, 1, 1, 1, 0, 1, 1, 1], "Conv", {}),  # channel dim padded
        ([0, 0, 2, 2, 0, 0, -1, -1], "Conv", {}),  # negative pads crop
        ([0, 0, 1, 1, 0, 0, 1, 1], "Conv", {"auto_pad": "SAME_UPPER"}),
        ([0, 0, 1, 1, 0, 0, 1, 1], "AveragePool", {}),  # count_include_pad=0
        # ceil mode: the last window starts in the padding; onnxruntime drops it, not so over a Pad
        ([0, 0, 0, 0, 0, 0, 2, 2], "AveragePool", {"count_include_pad": 1, "ceil_mode": 1, "strides": [3, 3]}),
        ([0, 0, 2, 0, 0, 0, 1, 0], "AveragePool", {"count_include_pad": 1, "consumer_pads": [1, 0, 0, 0]}),  # 3 >= k
        ([0, 0, 1, 1, 0, 0, 1, 1], "MaxPool", {}),
    ],
)
def test_pad_is_kept(pads, consumer, kwargs):
    model = _pad_then(pads, consumer, **kwargs)
    out, record = _run(model)
    assert op_counts(out) == op_counts(model)
    assert not record.changed


def test_pad_with_two_readers_is_kept():
    model = _pad_then([0, 0, 1, 1, 0, 0, 1, 1])
    model.graph.node.append(helper.make_node("Relu", ["p"], ["r"], name="relu"))
    model.graph.output.append(vi("r", [2, C, HW + 2, HW + 2]))
    out, record = _run(model)
    assert op_counts(out) == {"Pad": 1, "Conv": 1, "Relu": 1}
    assert not record.changed


def test_non_constant_pads_are_kept():
    model = _pad_then([0, 0, 1, 1, 0, 0, 1, 1])
    pads = next(i for i in model.graph.initializer if i.name == "pads")
    model.graph.initializer.remove(pads)
    model.graph.input.append(vi("pads", [8], onnx.TensorProto.INT64))
    out, record = _run(model)
    assert op_counts(out) == {"Pad": 1, "Conv": 1}
    assert not record.changed
