"""space_to_depth_stem: a quantized stride-2 few-channel stem conv becomes SpaceToDepth + stride-1 conv.

The rewrite only rearranges integer weights and integer inputs, so the outputs of the quantized
model must stay bit-identical, with and without onnxruntime's graph optimizations (which fuse the
QDQ conv into QLinearConv).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from tests.helpers import apply_passes, init, make_model, op_counts, vi


def stem_model(channels=3, kernel=(7, 7), pads=(3, 3, 3, 3), strides=(2, 2), size=(32, 32), group=1,
               per_channel=True, batch="N", quantized_input=True, out_ch=8) -> onnx.ModelProto:
    """x -> Q -> DQ -> Conv(DQ(int8 W), DQ(int32 b)) -> Q -> DQ -> y, like insert_qdq emits for ORT x86."""
    rng = np.random.default_rng(0)

    w = rng.integers(-127, 128, (out_ch, channels // group, *kernel)).astype(np.int8)
    w_scale = (rng.random(out_ch if per_channel else 1) * 0.01 + 0.001).astype(np.float32)
    x_scale, x_zp = np.float32(0.02), np.uint8(128)
    bias = rng.integers(-1000, 1000, out_ch).astype(np.int32)
    inits = [init("w_q", w), init("w_scale", w_scale if per_channel else w_scale.reshape(())),
             init("x_scale", x_scale), init("x_zp", x_zp), init("b_q", bias),
             init("b_scale", (x_scale * w_scale).astype(np.float32) if per_channel else (x_scale * w_scale).reshape(()).astype(np.float32)),
             init("y_scale", np.float32(0.05)), init("y_zp", np.uint8(100))]
    axis = {"axis": 0} if per_channel else {}
    conv_in = "x_dq" if quantized_input else "x"
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["x_q"]),
             helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zp"], ["x_dq"]),
             helper.make_node("DequantizeLinear", ["w_q", "w_scale"], ["w"], **axis),
             helper.make_node("DequantizeLinear", ["b_q", "b_scale"], ["b"], **axis),
             helper.make_node("Conv", [conv_in, "w", "b"], ["c"], name="stem", kernel_shape=list(kernel), pads=list(pads),
                              strides=list(strides), group=group),
             helper.make_node("QuantizeLinear", ["c", "y_scale", "y_zp"], ["c_q"]),
             helper.make_node("DequantizeLinear", ["c_q", "y_scale", "y_zp"], ["y"])]
    if not quantized_input:
        nodes = nodes[2:]
    return make_model(nodes, [vi("x", [batch, channels, *size])], [vi("y", [batch, out_ch, None, None])], inits, opset=13)


def run(model: onnx.ModelProto, x: np.ndarray, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = level
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def attrs(model: onnx.ModelProto, op: str) -> dict:
    node = next(n for n in model.graph.node if n.op_type == op)
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


@pytest.mark.parametrize("kernel,pads,size", [
    ((7, 7), (3, 3, 3, 3), (32, 32)),     # ResNet stem
    ((7, 7), (3, 3, 3, 3), (30, 18)),     # non-square, sizes not multiples of 4
    ((5, 5), (2, 2, 2, 2), (16, 16)),
    ((7, 5), (3, 2, 2, 1), (20, 14)),     # asymmetric pads, rectangular kernel
    ((6, 6), (2, 2, 2, 2), (16, 16)),     # even kernel
    ((7, 7), (0, 0, 0, 0), (32, 32)),     # no padding
    ((5, 5), (1, 1, 2, 2), (18, 22)),     # odd begin pad
])
def test_rewrite_is_bit_exact(kernel, pads, size):
    model = stem_model(kernel=kernel, pads=pads, size=size)
    out, records = apply_passes(model, "space_to_depth_stem")
    assert records[0].counters == {"stems_rewritten": 1}
    assert op_counts(out)["SpaceToDepth"] == 1 and op_counts(out)["Conv"] == 1
    a = attrs(out, "Conv")
    assert a["strides"] == [1, 1]
    assert a["kernel_shape"] == [-(-(k + p % 2) // 2) for k, p in zip(kernel, pads[:2])]
    w = next(i for i in out.graph.initializer if len(i.dims) == 4)
    assert w.data_type == TensorProto.INT8 and list(w.dims[:2]) == [8, 12]
    x = np.random.default_rng(1).standard_normal((2, 3, *size)).astype(np.float32) * 2
    for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        want, got = run(model, x, level), run(out, x, level)
        assert want.shape == got.shape
        np.testing.assert_array_equal(got, want)


def test_onnxruntime_still_fuses_to_qlinearconv(tmp_path):
    out, _ = apply_passes(stem_model(), "space_to_depth_stem")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(out.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    ops = op_counts(onnx.load(str(tmp_path / "opt.onnx")))
    assert ops.get("QLinearConv") == 1 and "Conv" not in ops and ops.get("SpaceToDepth") == 1


def test_per_tensor_weight_scale():
    model = stem_model(per_channel=False)
    out, records = apply_passes(model, "space_to_depth_stem")
    assert records[0].counters == {"stems_rewritten": 1}
    x = np.random.default_rng(2).standard_normal((1, 3, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(run(out, x), run(model, x))


@pytest.mark.parametrize("kwargs", [
    {"strides": (1, 1)},                    # not strided
    {"channels": 8},                        # too many channels to gain
    {"kernel": (3, 3), "pads": (1, 1, 1, 1)},  # small kernel: no measurable gain
    {"size": (31, 32)},                     # odd height
    {"size": ("H", "W")},                   # unknown spatial size
    {"quantized_input": False},             # float input: not a QDQ conv
    {"channels": 4, "group": 2},            # grouped
])
def test_left_alone(kwargs):
    model = stem_model(**kwargs)
    out, records = apply_passes(model, "space_to_depth_stem")
    assert not records[0].changed
    assert op_counts(out) == op_counts(model)


def float_stem_net() -> onnx.ModelProto:
    rng = np.random.default_rng(3)
    inits = [init("w1", rng.standard_normal((8, 3, 7, 7)).astype(np.float32) * 0.1), init("b1", np.zeros(8, np.float32)),
             init("w2", rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.1), init("b2", np.zeros(8, np.float32))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[7, 7], pads=[3, 3, 3, 3], strides=[2, 2]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])]
    return make_model(nodes, [vi("x", [1, 3, 32, 32])], [vi("y", [1, 8, 16, 16])], inits, opset=13)


@pytest.mark.parametrize("device,expected", [("x86", 1), ("arm", 0)])
def test_quantize_stage_runs_it_for_ort_x86_only(device, expected):
    import onnxslim

    model, report = onnxslim.optimize(float_stem_net(), stage_values={"quantize": "int8"}, target="ort", device=device)
    assert op_counts(model).get("SpaceToDepth", 0) == expected
    assert ("space_to_depth_stem" in [p.name for p in report.passes]) == bool(expected)
