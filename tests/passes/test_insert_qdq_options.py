"""insert_qdq: what the user names and asks for takes effect, or is said not to (audit findings)."""

from __future__ import annotations

import logging
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from onnxslim.calibration import load_calibration, synthetic
from onnxslim.errors import UsageError
from onnxslim.pipeline import PassContext
from onnxslim.quantization.moments import InputLayout, InputMoments
from onnxslim.quantization.options import split_list
from onnxslim.quantization.rounding import round_weight
from onnxslim.stages.quantize import QuantizeStage
from onnxslim.verify import fidelity
from tests.helpers import apply_passes, init, make_model, op_counts, run_ort, vi
from tests.passes.test_insert_qdq import quantize, resnet_block, sqnr_db


def tensor_rows(record) -> dict[str, dict]:
    return {r["tensor"]: r for r in record.details if r["detail"] == "tensor"}


def ort_ops(model: onnx.ModelProto, tmp_path) -> dict[str, int]:
    """The op counts of the graph onnxruntime actually runs (after its QDQ fusions)."""
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "ort-optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return op_counts(onnx.load(opts.optimized_model_filepath))


# --------------------------------------------------------------------------------------------
# --calib-override


def test_override_on_a_shared_scale_member_gets_its_histogram():
    # p0 (MaxPool output) shares r0's scale and is not observed itself: with minmax as the default,
    # its percentile override needs r0's histogram, which calibration used to leave out.
    _, plain = quantize(resnet_block(batch="n"), method="minmax")
    _, rec = quantize(resnet_block(batch="n"), method="minmax", overrides=("p0=percentile:90",))
    before, after = tensor_rows(plain)["p0"], tensor_rows(rec)["p0"]
    assert before["range"][1] == pytest.approx(before["observed_max"])
    assert after["method"] == "percentile:90"
    assert after["range"][1] < 0.9 * after["observed_max"]  # a real percentile, not the maximum
    assert tensor_rows(rec)["r0"]["range"] == after["range"]  # one shared scale


@pytest.mark.parametrize("name", ["conv1", "c1", "relu1", "r1"])
def test_override_reaches_the_q_past_a_folded_relu(name):
    # conv1 -> relu1 -> Q: the Q reads r1 (c1 with the ReLU folded); all four names mean that tensor.
    _, rec = quantize(resnet_block(), method="percentile", overrides=(f"{name}=minmax",))
    rows = tensor_rows(rec)
    assert rows["r1"]["method"] == "minmax"
    assert rows["r1"]["range"][1] == pytest.approx(rows["r1"]["observed_max"])
    assert rows["r2"]["method"].startswith("percentile")


def test_a_long_alternation_override_reaches_every_name_it_lists():
    """A regex listing many names (escaped, with dots) gives each of them the method; the rest keep the default."""
    _, plain = quantize(resnet_block(), method="mse")
    names = sorted(tensor_rows(plain))
    picked = names[::2]
    pattern = "|".join(re.escape(n) for n in picked) + "|no\\.such\\.tensor\\.0" * 20  # long, with misses too
    _, rec = quantize(resnet_block(), method="mse", overrides=(f"{pattern}=minmax",))
    rows = tensor_rows(rec)
    for name in names:
        shares = any(rows[m]["group"] == rows[name]["group"] for m in picked)  # a shared scale follows its member
        assert (rows[name]["method"] == "minmax") == shares, name
    assert any(rows[n]["method"] == "mse" for n in names)


def test_patterns_matching_nothing_warn_and_bad_regexes_fail(caplog):
    with caplog.at_level(logging.WARNING, logger="onnxslim"):
        _, rec = quantize(resnet_block(), exclude=("nosuchnode",), overrides=("nosuchtensor=minmax",))
    messages = [r.getMessage() for r in caplog.records]
    assert any("--exclude 'nosuchnode' matches no node" in m for m in messages)
    assert any("--calib-override 'nosuchtensor' matches no tensor" in m for m in messages)
    assert rec.counters["int8_layers"] == 8  # nothing excluded: 4 weighted layers, MaxPool, Add, GAP, Flatten
    with pytest.raises(UsageError, match=r"--exclude '\(\[bad'.*not a valid regex"):
        quantize(resnet_block(), exclude=("([bad",))
    with pytest.raises(UsageError, match=r"--calib-override '\*conv'.*not a valid regex"):
        quantize(resnet_block(), overrides=("*conv=minmax",))


def test_lists_split_at_top_level_commas_only():
    assert split_list(["conv[0-9]{1,2},relu0", "fc"]) == ["conv[0-9]{1,2}", "relu0", "fc"]
    assert split_list("(a|b),c") == ["(a|b)", "c"]
    _, rec = quantize(resnet_block(), exclude=("conv[0-9]{1,2}",))  # conv0..conv2 stay float; fc is left
    skipped = {r["layer"] for r in rec.details if r["detail"] == "float_layer" and r["reason"] == "excluded"}
    assert {"conv0", "conv1", "conv2"} <= skipped


# --------------------------------------------------------------------------------------------
# --exclude


@pytest.mark.parametrize("exclude,float_op,int8_op", [(("add2",), "Add", "QLinearAdd"), (("Add",), "Add", "QLinearAdd"),
                                                      (("gap",), "GlobalAveragePool", "QLinearGlobalAveragePool")])
def test_excluded_elementwise_op_runs_in_float_in_onnxruntime(tmp_path, exclude, float_op, int8_op):
    # DQ -> Add -> Q is a QLinearAdd to onnxruntime: the excluded node reads per-axis DQ copies instead.
    model = resnet_block()
    assert ort_ops(quantize(model)[0], tmp_path).get(int8_op) == 1
    out, _ = quantize(model, exclude=exclude)
    ops = ort_ops(out, tmp_path)
    assert ops.get(float_op) == 1 and int8_op not in ops
    assert ops["QLinearConv"] == 3  # its neighbours stay int8
    feeds = next(synthetic(model, 1, seed=5).batches(1))
    want, got = run_ort(model, feeds)["y"], run_ort(out, feeds)["y"]
    assert np.dot(want.ravel(), got.ravel()) / np.linalg.norm(want) / np.linalg.norm(got) > 0.99


def test_fused_gemm_keeps_the_matmul_name_for_exclude():
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="fc.MatMul"), helper.make_node("Add", ["h", "b"], ["y"], name="fc.Add")]
    model = make_model(nodes, [vi("x", [2, 64])], [vi("y", [2, 64])],
                       [init("w", rng.standard_normal((64, 64)).astype(np.float32)), init("b", np.ones(64, np.float32))])
    ctx = PassContext(options={"insert_qdq": {"exclude": ("fc.MatMul",)}})
    ctx.data["calibration"] = synthetic(model, 8, seed=1)
    out, records = apply_passes(model, "infer_shapes,fuse_gemm,insert_qdq", ctx)
    assert [n.name for n in out.graph.node if n.op_type == "Gemm"] == ["fc.MatMul"]
    assert records[-1].counters["int8_layers"] == 0  # the user's name reached the fused node


def test_nothing_quantized_is_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="onnxslim"):
        _, rec = quantize(resnet_block(), exclude=("Conv", "Gemm"))
    assert not rec.changed
    assert any("nothing quantized" in r.getMessage() and "4 excluded" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------------------------
# --max-error


def fragile_model() -> onnx.ModelProto:
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
    return make_model(nodes, [vi("x", [1, 64])], [vi("y", [1, 64])], inits)


def test_fallback_rows_say_fallback_and_rank_only_weighted_layers():
    model = fragile_model()
    held = list(synthetic(model, 16, seed=7).samples())
    _, rec = quantize(model, method="minmax", max_error="sqnr=30", holdout=held)
    floats = {r["layer"]: r["reason"] for r in rec.details if r["detail"] == "float_layer"}
    assert floats["fragile"].startswith("fallback") and "sqnr=30" in floats["fragile"]
    ranked = [r for r in rec.details if r["detail"] == "sensitivity"]
    assert {r["layer"] for r in ranked} == {"mm1", "fragile", "mm3"}  # not the Mul, whose "alone" is the float model
    assert all(r["kind"] == "compute" for r in ranked)


def test_every_layer_falling_back_is_a_warning(caplog):
    model = fragile_model()
    held = list(synthetic(model, 8, seed=7).samples())
    with caplog.at_level(logging.WARNING, logger="onnxslim"):
        out, _ = quantize(model, method="minmax", max_error="sqnr=200", holdout=held)
    assert "QuantizeLinear" not in op_counts(out)
    assert any("every int8 layer fell back to float" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------------------------
# Options without effect, and data onnxruntime refuses


def stage_configure(values: dict, model: onnx.ModelProto, calibration: bool = True) -> None:
    ctx = PassContext()
    ctx.data["calibration"] = synthetic(model, 4) if calibration else None
    QuantizeStage().configure(values, model, ctx)


@pytest.mark.parametrize("values,flag", [
    ({"calib_percentile": 99.9}, "--calib-percentile"),
    ({"calib_method": "minmax", "calib_bins": 4096}, "--calib-bins"),
    ({"quant_rounding_samples": 8, "quant_bias_correction": False}, "--quant-rounding-samples"),
])
def test_options_without_effect_warn(caplog, values, flag):
    with caplog.at_level(logging.WARNING, logger="onnxslim"):
        stage_configure({"quantize": "int8", **values}, resnet_block())
    assert any(r.getMessage().startswith(f"{flag} has no effect") for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="onnxslim"):  # the same option where it does act
        stage_configure({"quantize": "int8", "calib_method": "percentile", "calib_bins": 4096, "quant_rounding_samples": 8,
                         "calib_percentile": 99.9}, resnet_block())
    assert not caplog.records


def test_no_bias_correction_flag_needs_quantize():
    with pytest.raises(UsageError, match="--quant-bias-correction only applies with --quantize int8"):
        stage_configure({"quant_bias_correction": False}, resnet_block())


@pytest.mark.parametrize("bins", [128, 256, 511])
def test_too_few_bins_for_entropy_are_refused(bins):
    with pytest.raises(UsageError, match="512..65536"):
        quantize(resnet_block(), method="entropy", bins=bins)


def test_onnxruntime_failure_on_calibration_data_is_a_usage_error(tmp_path):
    # Token ids past the vocabulary: onnxruntime's Gather fails on the batch holding samples 4-5.
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["e"], name="embed"), helper.make_node("MatMul", ["e", "w"], ["y"], name="mm")]
    model = make_model(nodes, [vi("ids", ["n", 4], TensorProto.INT64)], [vi("y", ["n", 4, 64])],
                       [init("emb", rng.standard_normal((10, 64)).astype(np.float32)),
                        init("w", rng.standard_normal((64, 64)).astype(np.float32))])
    ids = rng.integers(0, 10, (8, 4)).astype(np.int64)
    ids[5, 2] = 1000
    np.savez(tmp_path / "calib.npz", ids=ids)
    ctx = PassContext(options={"insert_qdq": {"batch_size": 2}})
    ctx.data["calibration"] = load_calibration(tmp_path / "calib.npz", model)
    with pytest.raises(UsageError, match=r"onnxruntime cannot run the model on samples 4-5 .*out of (data )?bounds"):
        apply_passes(model, "infer_shapes,insert_qdq", ctx)


def test_inf_inputs_skip_bias_correction(caplog):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 16)).astype(np.float32)
    node = onnx_graphsurgeon_node(w)
    moments = InputMoments(InputLayout("x", 1, 16), outer=False)
    x = rng.standard_normal((4, 16)).astype(np.float32)
    x[1, 3] = np.inf
    moments.update(x, 1)
    with caplog.at_level(logging.WARNING, logger="onnxslim"):
        assert round_weight(node, w, np.abs(w).max(axis=1) / 127, 0, moments, use_gptq=False, bias_correction=True) is None
    assert any("inf/NaN" in r.getMessage() for r in caplog.records)


def onnx_graphsurgeon_node(w: np.ndarray):
    import onnx_graphsurgeon as gs

    x, y = gs.Variable("x", np.float32, [4, 16]), gs.Variable("y", np.float32, [4, 8])
    return gs.Node("Gemm", "fc", attrs={"transB": 1},
                   inputs=[x, gs.Constant("w", w), gs.Constant("b", np.zeros(8, np.float32))], outputs=[y])


def test_top1_agreement_only_for_class_scores():
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((4, 10))
    embeddings = scores / np.linalg.norm(scores, axis=1, keepdims=True)
    (f_scores, f_embed) = fidelity(["s", "e"], [[scores, embeddings]], ["s", "e"], [[scores, embeddings]])
    assert f_scores.top1_agreement == 1.0
    assert f_embed.top1_agreement is None


def test_mask_values_in_a_range_are_a_warning(caplog):
    # An attention-style mask adds float32's minimum: a Softmax quantized on request (--quant-ops)
    # would read a grid 1e36 wide; the user hears about it.
    rng = np.random.default_rng(0)
    mask = np.zeros((1, 4, 16), np.float32)
    mask[..., 12:] = np.finfo(np.float32).min
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"), helper.make_node("Add", ["h", "mask"], ["hm"], name="mask"),
             helper.make_node("Softmax", ["hm"], ["p"], name="sm", axis=-1), helper.make_node("MatMul", ["p", "v"], ["y"], name="mm2")]
    inits = [init("w", rng.standard_normal((16, 16)).astype(np.float32)), init("mask", mask),
             init("v", rng.standard_normal((16, 16)).astype(np.float32))]
    model = make_model(nodes, [vi("x", [1, 4, 16])], [vi("y", [1, 4, 16])], inits)
    with caplog.at_level(logging.WARNING, logger="onnxslim"):
        quantize(model, extra_ops=("Softmax",))
    assert any("a mask or sentinel value" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="onnxslim"):
        quantize(model)  # Softmax in float: its input is not quantized, nothing to say
    assert not any("sentinel" in r.getMessage() for r in caplog.records)


def test_calib_size_without_calib_data(tmp_path):
    from tests.reliability import models
    from tests.reliability.test_bad_inputs import invoke

    path = tmp_path / "m.onnx"
    onnx.save(models.conv_model(), path)
    warned = invoke([path, "--quantize", "int8", "--calib-size", "4"])
    assert warned.exit_code == 0 and "--calib-size has no effect without --calib-data" in warned.output
    refused = invoke([path, "--quantize", "int8", "--calib-size", "0"])
    assert refused.exit_code == 2 and "--calib-size must be positive" in refused.output


def test_an_excluded_relu_stays_in_the_graph_in_float():
    """--exclude relu1 between two quantized Convs: the Relu stays, in float, between the conv
    output's Q/DQ and its own (it was folded away anyway, leaving Q -> DQ -> Q on the conv output);
    without the exclusion it is folded into the Q. Outputs within 30 dB SQNR of FP32 either way."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"), helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["y"], name="conv2")]
    model = make_model(nodes, [vi("x", [1, 4, 8, 8])], [vi("y", [1, 4, 8, 8])],
                       [init("w1", rng.standard_normal((8, 4, 1, 1)).astype(np.float32)),
                        init("w2", rng.standard_normal((4, 8, 1, 1)).astype(np.float32))])
    folded, rec = quantize(model)
    assert "Relu" not in op_counts(folded) and rec.counters["activations_folded"] == 1
    kept, rec = quantize(model, exclude=("relu1",))
    relu = next(n for n in kept.graph.node if n.op_type == "Relu")
    producers = {o: n for n in kept.graph.node for o in n.output}
    readers = [n for n in kept.graph.node if relu.output[0] in n.input]
    assert producers[relu.input[0]].op_type == "DequantizeLinear"
    assert [n.op_type for n in readers] == ["QuantizeLinear"] and rec.counters["activations_folded"] == 0
    assert op_counts(kept)["QuantizeLinear"] == 3  # x, c1, r1: no Q reads a DQ
    for out in (folded, kept):
        assert sqnr_db(model, out) > 30.0
