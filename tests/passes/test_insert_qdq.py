"""insert_qdq: Q/DQ placement per target (structure), INT8 accuracy (SQNR), fallback, bad input."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from onnxslim.calibration import synthetic
from onnxslim.errors import PassFailedError, UsageError
from onnxslim.pipeline import PassContext
from tests.helpers import apply_passes, init, make_model, op_counts, run_ort, vi

PIPE = "infer_shapes,insert_qdq"


def resnet_block(c: int = 16, seed: int = 0, opset: int = 18, batch: int | str = 1) -> onnx.ModelProto:
    """Conv-Relu-MaxPool, a residual block (Conv-Relu-Conv + skip, Add, Relu), GAP, Flatten, Gemm.

    ``batch``: the input's first dimension (a name for a dynamic batch; 1 fixes it, and the
    calibration collector then runs one sample at a time whatever batch size it is asked for)."""
    rng = np.random.default_rng(seed)

    def w(*shape):
        return (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)

    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        helper.make_node("MaxPool", ["r0"], ["p0"], name="pool0", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p0", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "p0"], ["a2"], name="add2"),
        helper.make_node("Relu", ["a2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], name="fc", transB=1),
    ]
    inits = [init("w0", w(c, 3, 3, 3)), init("b0", rng.standard_normal(c).astype(np.float32) * 0.1),
             init("w1", w(c, c, 3, 3)), init("b1", rng.standard_normal(c).astype(np.float32) * 0.1),
             init("w2", w(c, c, 3, 3)), init("b2", rng.standard_normal(c).astype(np.float32) * 0.1),
             init("wf", w(10, c)), init("bf", np.zeros(10, np.float32))]
    return make_model(nodes, [vi("x", [batch, 3, 16, 16])], [vi("y", [batch, 10])], inits, opset=opset)


def quantize(model, target="ort", device="x86", samples=16, holdout=None, **options):
    ctx = PassContext(target=target, device=device, options={"insert_qdq": options})
    ctx.data["calibration"] = synthetic(model, samples, seed=3)
    ctx.data["holdout"] = holdout or []
    out, records = apply_passes(model, PIPE, ctx)
    return out, records[-1]


def by_name(model):
    return {n.name: n for n in model.graph.node}


def inits_of(model):
    return {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}


def reader_ops(model, tensor):
    return sorted(n.op_type for n in model.graph.node if tensor in n.input)


def sqnr_db(model, quantized, seeds=range(4), feeds_list=None):
    sig = err = 0.0
    for feeds in feeds_list or [next(synthetic(model, 1, seed=100 + s).batches(1)) for s in seeds]:
        want, got = run_ort(model, feeds), run_ort(quantized, feeds)
        for k in want:
            sig += float(np.sum(want[k].astype(np.float64) ** 2))
            err += float(np.sum((want[k].astype(np.float64) - got[k]) ** 2))
    return 10 * np.log10(sig / err)


# --------------------------------------------------------------------------------------------
# Structure per target


def test_ort_x86_placement():
    model = resnet_block()
    assert op_counts(model) == {"Conv": 3, "Relu": 3, "MaxPool": 1, "Add": 1, "GlobalAveragePool": 1, "Flatten": 1, "Gemm": 1}
    out, rec = quantize(model)
    counts = op_counts(out)
    # Q/DQ on: x, r0(folded relu), p0 (shared with r0), r1, c2, r2, g, f -> 8 pairs; DQ on 4 weights + 4 biases.
    assert counts["QuantizeLinear"] == 8 and counts["DequantizeLinear"] == 8 + 4 + 4
    assert "Relu" not in counts  # all three ReLUs folded into the Q that follows them
    assert rec.counters["activations_folded"] == 3 and rec.counters["biases_int32"] == 4
    inits = inits_of(out)
    for q in (n for n in out.graph.node if n.op_type == "QuantizeLinear"):
        assert inits[q.input[2]].dtype == np.uint8  # u8 activations
    nodes = by_name(out)
    for conv in ("conv0", "conv1", "conv2"):
        wdq = next(n for n in out.graph.node if n.output[0] == nodes[conv].input[1])
        assert inits[wdq.input[0]].dtype == np.int8 and inits[wdq.input[1]].shape == (16,)
        assert helper.get_attribute_value(wdq.attribute[0]) == 0  # per-channel axis 0
        assert not inits[wdq.input[2]].any()  # symmetric
        bdq = next(n for n in out.graph.node if n.output[0] == nodes[conv].input[2])
        assert inits[bdq.input[0]].dtype == np.int32
    # The MaxPool reads and writes the same grid, so ORT runs it on uint8.
    pool = nodes["pool0"]
    dq_in = next(n for n in out.graph.node if n.output[0] == pool.input[0])
    q_out = next(n for n in out.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == pool.output[0])
    assert dq_in.input[1:] == q_out.input[1:]
    assert reader_ops(out, "y") == []  # logits stay float (QGemm with float output)


def test_ort_x86_fuses_into_integer_kernels():
    out, _ = quantize(resnet_block())
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    import os
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        opts.optimized_model_filepath = os.path.join(tmp, "opt.onnx")
        ort.InferenceSession(out.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        fused = op_counts(onnx.load(opts.optimized_model_filepath))
    assert fused["QLinearConv"] == 3 and fused["QLinearAdd"] == 1 and fused["QGemm"] == 1
    assert "Conv" not in fused and "Relu" not in fused


def test_ort_arm_uses_int8_activations():
    out, _ = quantize(resnet_block(), device="arm")
    inits = inits_of(out)
    dtypes = {inits[q.input[2]].dtype for q in out.graph.node if q.op_type == "QuantizeLinear"}
    assert dtypes == {np.dtype(np.int8)}
    assert "Relu" not in op_counts(out)  # int8 with zero point -128 still folds ReLU


def test_tensorrt_placement():
    out, rec = quantize(resnet_block(c=16), target="tensorrt", device="cuda")
    inits = inits_of(out)
    nodes = by_name(out)
    for q in (n for n in out.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")):
        zp = inits.get(q.input[2]) if len(q.input) > 2 else None
        assert zp is not None and not zp.any() and zp.dtype in (np.int8, np.int32)  # symmetric, zp 0
        assert np.all(inits[q.input[1]] > 0)  # positive constant scales
    assert op_counts(out)["Relu"] == 3  # no Q/DQ between conv and ReLU; nothing folded
    assert reader_ops(out, "c0") == ["Relu"] and reader_ops(out, "c1") == ["Relu"]
    # Residual Add: conv2 output enters directly, the skip input (p0) through Q/DQ.
    add = nodes["add2"]
    assert add.input[0] == "c2"
    assert next(n for n in out.graph.node if n.output[0] == add.input[1]).op_type == "DequantizeLinear"
    for conv in ("conv0", "conv1", "conv2"):
        assert nodes[conv].input[2] in inits and inits[nodes[conv].input[2]].dtype == np.float32  # bias float
    assert not any(n.op_type.startswith("QLinear") or "Integer" in n.op_type for n in out.graph.node)
    # conv0 has 3 input channels (< 16): left in float.
    assert nodes["conv0"].input[1] == "w0"
    assert any(r["detail"] == "float_layer" and r["layer"] == "conv0" for r in rec.details)


def test_tensorrt_shares_concat_scale():
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"], name="ca"), helper.make_node("Conv", ["x", "w1"], ["b"], name="cb"),
             helper.make_node("Concat", ["a", "b"], ["c"], name="cat", axis=1),
             helper.make_node("Conv", ["c", "w2"], ["y"], name="cc")]
    inits = [init("w0", rng.standard_normal((16, 16, 1, 1)).astype(np.float32)),
             init("w1", 3 * rng.standard_normal((16, 16, 1, 1)).astype(np.float32)),
             init("w2", rng.standard_normal((16, 32, 1, 1)).astype(np.float32))]
    model = make_model(nodes, [vi("x", [1, 16, 4, 4])], [vi("y", [1, 16, 4, 4])], inits)
    out, _ = quantize(model, target="tensorrt", device="cuda")
    qs = [n for n in out.graph.node if n.op_type == "QuantizeLinear"]
    scales = {n.input[0]: n.input[1] for n in qs}
    assert scales["a"] == scales["b"] == scales["c"]


def test_excluded_and_float_ops_stay_float():
    model = resnet_block()
    out, rec = quantize(model, exclude=("conv1", "Gemm"))
    nodes = by_name(out)
    assert nodes["conv1"].input[1] == "w1" and nodes["fc"].input[1] == "wf"
    assert rec.counters["weights_quantized"] == 2


def test_keep_activations_option():
    out, rec = quantize(resnet_block(), keep_activations=True)
    assert op_counts(out)["Relu"] == 3 and rec.counters["activations_folded"] == 0


# --------------------------------------------------------------------------------------------
# Numbers


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy", "mse"])
@pytest.mark.parametrize("target,device", [("ort", "x86"), ("tensorrt", "cuda")])
def test_int8_output_sqnr(method, target, device):
    model = resnet_block(c=16)
    out, _ = quantize(model, target, device, samples=32, method=method)
    assert sqnr_db(model, out) > 20.0  # INT8 end to end stays within 20 dB SQNR of FP32


def test_fallback_meets_budget_on_fragile_layer():
    # A 'fragile' MatMul reads a tensor with one huge channel (x1000) that its weights ignore:
    # a per-tensor 8-bit grid wipes out the channels that matter.
    rng = np.random.default_rng(0)
    spike = np.ones(64, np.float32)
    spike[0] = 1000.0
    w2 = rng.standard_normal((64, 64)).astype(np.float32) / 8
    w2[0, :] = 1e-4
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h1"], name="mm1"), helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
             helper.make_node("Mul", ["r1", "spike"], ["s"], name="spike"), helper.make_node("MatMul", ["s", "w2"], ["h2"], name="fragile"),
             helper.make_node("MatMul", ["h2", "w3"], ["y"], name="mm3")]
    inits = [init("w1", rng.standard_normal((64, 64)).astype(np.float32) / 8), init("spike", spike), init("w2", w2),
             init("w3", rng.standard_normal((64, 64)).astype(np.float32) / 8)]
    model = make_model(nodes, [vi("x", [1, 64])], [vi("y", [1, 64])], inits)
    plain, _ = quantize(model, method="minmax")
    assert sqnr_db(model, plain) < 25
    held = list(synthetic(model, 16, seed=7).samples())
    out, rec = quantize(model, method="minmax", max_error="sqnr=30", holdout=held)
    assert sqnr_db(model, out, feeds_list=held) >= 30  # the budget holds on the held-out samples
    assert sqnr_db(model, out, seeds=range(16)) > 27  # and roughly on fresh ones
    fallback = [r["layer"] for r in rec.details if r["detail"] == "fallback"]
    assert fallback == ["fragile"] and rec.counters["fallback_layers"] == 1
    assert by_name(out)["mm1"].input[1] != "w1"  # the others stay int8
    budget = next(r for r in rec.details if r["detail"] == "budget")
    assert budget["met"] and budget["sqnr_after_db"] >= 30


def test_report_rows_have_ranges_and_methods():
    _, rec = quantize(resnet_block(), method="percentile", overrides=("r2=minmax",))
    rows = {r["tensor"]: r for r in rec.details if r["detail"] == "tensor"}
    assert rows["r2"]["method"] == "minmax" and rows["r1"]["method"].startswith("percentile")
    assert rows["p0"]["group"] == rows["r0"]["group"] and rows["p0"]["shared"]
    assert all(r["scale"] > 0 for r in rows.values())


# --------------------------------------------------------------------------------------------
# Where the pass must not apply, and bad input


def test_no_quantizable_layer_unchanged():
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [1, 4])], [vi("y", [1, 4])])
    out, rec = quantize(model)
    assert not rec.changed and op_counts(out) == {"Relu": 1}


def test_non_float_model_unchanged():
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [vi("x", [1, 4], TensorProto.DOUBLE)],
                       [vi("y", [1, 4], TensorProto.DOUBLE)], [init("w", np.eye(4))])
    _, rec = quantize(model)
    assert not rec.changed


def test_already_quantized_is_usage_error():
    out, _ = quantize(resnet_block())
    with pytest.raises(UsageError, match="already quantized"):
        quantize(out)


@pytest.mark.parametrize("options,match", [
    ({"method": "kl"}, "unknown calibration method"),
    ({"method": "percentile", "percentile": 120}, "calib-percentile"),
    ({"bins": 3}, "calib-bins"),
    ({"max_error": "cosine=2"}, "cosine must be"),
    ({"max_error": "psnr=3"}, "expected cosine"),
    ({"overrides": ("nomethod",)}, "calib-override"),
    ({"batch_size": 0}, "calib-batch-size"),
])
def test_bad_options_are_usage_errors(options, match):
    with pytest.raises(UsageError, match=match):
        quantize(resnet_block(), **options)


def test_unknown_target_device_is_usage_error():
    with pytest.raises(UsageError, match="no QDQ placement rules"):
        quantize(resnet_block(), target="tvm", device="x86")


def test_low_opset_is_usage_error():
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [vi("x", [1, 4])], [vi("y", [1, 4])],
                       [init("w", np.eye(4, dtype=np.float32))], opset=9)
    with pytest.raises((UsageError, PassFailedError), match="opset"):
        quantize(model)


def test_unnamed_nodes_and_opset_12_get_per_channel_weights():
    model = resnet_block(opset=12)
    for node in model.graph.node:
        node.name = ""
    out, rec = quantize(model, samples=32)
    assert rec.counters["opset_raised_to"] == 13 and rec.counters["hardswish_fused"] == 0
    assert next(o.version for o in out.opset_import if o.domain in ("", "ai.onnx")) == 13
    inits = inits_of(out)
    weight_scales = [inits[n.input[1]] for n in out.graph.node
                     if n.op_type == "DequantizeLinear" and inits.get(n.input[0], np.zeros(0)).dtype == np.int8]
    assert len(weight_scales) == 4 and all(s.ndim == 1 for s in weight_scales)
    assert sqnr_db(model, out) > 20.0


def test_op_coverage_sigmoid_mul_resize_concat_avgpool():
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], name="ca"),
        helper.make_node("Sigmoid", ["a"], ["sa"], name="sig"),
        helper.make_node("Mul", ["a", "sa"], ["m"], name="swish"),
        helper.make_node("Resize", ["m", "", "scales"], ["up"], name="up", mode="nearest"),
        helper.make_node("Conv", ["x2", "wb"], ["b"], name="cb"),
        helper.make_node("Concat", ["up", "b"], ["cat"], name="cat", axis=1),
        helper.make_node("AveragePool", ["cat"], ["pool"], name="avg", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["pool", "wc"], ["y"], name="cc"),
    ]
    inits = [init("wa", rng.standard_normal((16, 8, 1, 1)).astype(np.float32)),
             init("wb", rng.standard_normal((16, 8, 1, 1)).astype(np.float32)),
             init("wc", rng.standard_normal((16, 32, 1, 1)).astype(np.float32) / 4),
             init("scales", np.array([1, 1, 2, 2], np.float32))]
    model = make_model(nodes, [vi("x", [1, 8, 4, 4]), vi("x2", [1, 8, 8, 8])], [vi("y", [1, 16, 4, 4])], inits)
    out, rec = quantize(model, samples=32)
    quantized = {n.input[0] for n in out.graph.node if n.op_type == "QuantizeLinear"}
    assert quantized == {"x", "x2", "a", "sa", "m", "up", "b", "cat", "pool"}
    scales = {n.input[0]: n.input[1] for n in out.graph.node if n.op_type == "QuantizeLinear"}
    assert scales["up"] == scales["m"]  # Resize moves values: same grid in and out
    assert scales["b"] != scales["up"]  # ORT's QLinearConcat rescales, so inputs keep their own grids
    assert rec.counters["int8_layers"] == 8  # 3 convs, Sigmoid, Mul, Resize, Concat, AveragePool
    assert sqnr_db(model, out) > 20.0


def test_softmax_float_unless_asked():
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"), helper.make_node("Softmax", ["h"], ["p"], name="sm", axis=-1),
             helper.make_node("MatMul", ["p", "v"], ["y"], name="mm2")]
    inits = [init("w", rng.standard_normal((16, 16)).astype(np.float32)), init("v", rng.standard_normal((16, 16)).astype(np.float32))]
    model = make_model(nodes, [vi("x", [1, 4, 16])], [vi("y", [1, 4, 16])], inits)
    plain, _ = quantize(model)
    assert reader_ops(plain, "h") == ["Softmax"]  # MatMul output goes to the float Softmax as is
    asked, _ = quantize(model, extra_ops=("Softmax",))
    sm = by_name(asked)["sm"]
    assert next(n for n in asked.graph.node if n.output[0] == sm.input[0]).op_type == "DequantizeLinear"


def test_float_layers_stay_float_in_onnxruntime(tmp_path):
    """onnxruntime quantizes a float Conv/Gemm behind a per-tensor DQ itself; excluded layers read a per-axis copy."""
    model = resnet_block()
    out, _ = quantize(model, exclude=("conv2",))  # conv2 reads conv1's output, which QLinearConv makes int8
    conv2 = by_name(out)["conv2"]
    dq = {n.output[0]: n for n in out.graph.node if n.op_type == "DequantizeLinear"}
    assert [a.i for a in dq[conv2.input[0]].attribute if a.name == "axis"] == [1]
    assert conv2.input[1] == "w2"
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    sess = ort.InferenceSession(out.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    ops = op_counts(onnx.load(str(tmp_path / "optimized.onnx")))
    assert ops.get("QLinearConv", 0) == 2  # conv0 and conv1; conv2 stays a float convolution
    feeds = next(synthetic(model, 1, seed=7).batches(1))
    np.testing.assert_allclose(sess.run(None, feeds)[0], run_ort(out, feeds)["y"], rtol=1e-3, atol=1e-4)


def hardswish_block(opset: int, alpha: float = 1.0 / 6.0) -> onnx.ModelProto:
    """Conv -> x * HardSigmoid(x) (fuse_hardswish's spelling below opset 14) -> Conv, 16 channels (TensorRT's floor)."""
    rng = np.random.default_rng(5)
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
        helper.make_node("HardSigmoid", ["c0"], ["g"], name="gate", alpha=alpha, beta=0.5),
        helper.make_node("Mul", ["c0", "g"], ["h"], name="hswish"),
        helper.make_node("Conv", ["h", "w1", "b1"], ["y"], name="conv1", pads=[1, 1, 1, 1]),
    ]
    inits = [init("w0", (rng.standard_normal((16, 16, 3, 3)) / 6).astype(np.float32)), init("b0", rng.standard_normal(16).astype(np.float32)),
             init("w1", (rng.standard_normal((16, 16, 3, 3)) / 12).astype(np.float32)), init("b1", np.zeros(16, np.float32))]
    return make_model(nodes, [vi("x", [1, 16, 12, 12])], [vi("y", [1, 16, 12, 12])], inits, opset=opset)


@pytest.mark.parametrize("opset, device", [(11, "x86"), (12, "x86"), (12, "arm")])
def test_opset_raise_goes_to_14_for_hardswish_products(opset, device):
    model = hardswish_block(opset)
    out, rec = quantize(model, samples=32, device=device)
    assert rec.counters["opset_raised_to"] == 14 and rec.counters["hardswish_fused"] == 1
    assert next(o.version for o in out.opset_import if o.domain in ("", "ai.onnx")) == 14
    ops = op_counts(out)
    assert ops["HardSwish"] == 1 and "HardSigmoid" not in ops and "Mul" not in ops
    assert sqnr_db(model, out) > 25.0


@pytest.mark.parametrize("case", ["other_slope", "opset_13", "tensorrt", "ort_cuda"])
def test_opset_raise_stays_at_13_without_a_hardswish_to_make(case):
    model = hardswish_block(13 if case == "opset_13" else 12, alpha=0.2 if case == "other_slope" else 1.0 / 6.0)
    out, rec = quantize(model, samples=32, target="tensorrt" if case == "tensorrt" else "ort",
                        device="cuda" if case in ("tensorrt", "ort_cuda") else "x86")
    assert rec.counters["opset_raised_to"] == (0 if case == "opset_13" else 13) and rec.counters["hardswish_fused"] == 0
    assert next(o.version for o in out.opset_import if o.domain in ("", "ai.onnx")) == 13
    ops = op_counts(out)
    assert "HardSwish" not in ops and ops["HardSigmoid"] == 1
    assert sqnr_db(model, out) > 25.0


def test_opset_raise_to_14_falls_back_to_13_when_the_converter_fails(monkeypatch):
    from onnx import version_converter

    real = version_converter.convert_version

    def no_14(model, target):
        if target == 14:
            raise RuntimeError("no adapter")
        return real(model, target)

    monkeypatch.setattr(version_converter, "convert_version", no_14)
    out, rec = quantize(hardswish_block(12), samples=32)
    assert rec.counters["opset_raised_to"] == 13 and rec.counters["hardswish_fused"] == 0
    assert op_counts(out)["HardSigmoid"] == 1


def spiky_block() -> tuple[onnx.ModelProto, object, list[dict]]:
    """Conv -> Relu -> Conv; calibration data with rare huge spikes (so minmax wastes its range on
    them), held-out data without: (model, calibration set, held-out feeds)."""
    from onnxslim.calibration.data import CalibrationSet, InputSpec

    rng = np.random.default_rng(11)
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
             helper.make_node("Conv", ["r0", "w1", "b1"], ["y"], name="conv1", pads=[1, 1, 1, 1])]
    inits = [init("w0", (rng.standard_normal((16, 8, 3, 3)) / 8).astype(np.float32)), init("b0", np.zeros(16, np.float32)),
             init("w1", (rng.standard_normal((16, 16, 3, 3)) / 12).astype(np.float32)), init("b1", np.zeros(16, np.float32))]
    model = make_model(nodes, [vi("x", ["n", 8, 10, 10])], [vi("y", ["n", 16, 10, 10])], inits)
    x = rng.standard_normal((32, 8, 10, 10)).astype(np.float32)
    x[0, 0, 5, 5] = 400.0  # one value in 25,600: a spike
    held = [{"x": rng.standard_normal((1, 8, 10, 10)).astype(np.float32)} for _ in range(8)]
    return model, CalibrationSet("spiky", [InputSpec("x", np.dtype(np.float32), (None, 8, 10, 10))], [lambda: {"x": x}]), held


def test_auto_method_scores_every_method_and_keeps_the_best():
    model, calib, held = spiky_block()
    ctx = PassContext(options={"insert_qdq": {"method": "auto"}})
    ctx.data["calibration"], ctx.data["holdout"] = calib, held
    out, records = apply_passes(model, PIPE, ctx)
    rows = [d for d in records[-1].details if d["detail"] == "method_choice"]
    assert [r["method"] for r in rows] == ["minmax", "percentile", "entropy", "mse"]
    chosen = [r for r in rows if r["chosen"]]
    assert len(chosen) == 1 and chosen[0]["cosine"] == max(r["cosine"] for r in rows)
    by_method = {r["method"]: r["cosine"] for r in rows}
    assert chosen[0]["method"] != "minmax" and by_method["minmax"] < chosen[0]["cosine"] - 0.001  # the spikes cost minmax
    ranges = [d for d in records[-1].details if d["detail"] == "tensor"]
    assert ranges and all(d["method"].startswith(chosen[0]["method"]) for d in ranges)
    assert records[-1].counters["method_choice_seconds"] > 0
    # the kept model is the one that was scored: its cosine on the same held-out feeds
    want = [run_ort(model, f)["y"] for f in held]
    got = [run_ort(out, f)["y"] for f in held]
    a, b = np.concatenate([w.ravel() for w in want]).astype(np.float64), np.concatenate([g.ravel() for g in got]).astype(np.float64)
    assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) == pytest.approx(chosen[0]["cosine"], abs=5e-4)  # the probe runs fused kernels


def test_auto_is_not_a_per_tensor_override():
    from onnxslim.quantization.options import QuantOptions

    with pytest.raises(UsageError, match="unknown calibration method 'auto'"):
        QuantOptions.from_dict({"overrides": ["conv0=auto"]})
    assert QuantOptions.from_dict({"method": "auto"}).method.name == "auto"


def test_auto_without_held_out_samples_says_so_and_still_chooses(caplog):
    out, rec = quantize(resnet_block(), samples=16, method="auto")
    assert "no held-out samples for --calib-method auto" in caplog.text
    rows = [d for d in rec.details if d["detail"] == "method_choice"]
    assert len(rows) == 4 and sum(r["chosen"] for r in rows) == 1 and all(r["held_out"] == 8 for r in rows)
