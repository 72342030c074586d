"""Tests that pin behaviours a mutation audit of targets/, verify.py, stats.py and graph.py found
unchecked: each one fails when the guarded line is mutated (a flipped comparison, a dropped guard,
a swapped axis) and passes on the real code. Plain numbers: counts, shapes, exact messages."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxslim.errors import UsageError
from onnxslim.targets.common import input_specs
from onnxslim.targets.lint import lint
from onnxslim.targets.tensorrt import parse_shapes, polygraphy_command, profile
from tests.helpers import init, make_model, vi
from tests.targets import qdq_models as qm


def _rules(model: onnx.ModelProto, level: str | None = None) -> list[str]:
    return [f.rule for f in lint(model) if level is None or f.level == level]


# --------------------------------------------------------------------------------------------
# TensorRT profiles and build commands


def test_trt_shapes_refuse_a_zero_dimension():
    """--trt-shapes: a MIN dimension of 0 is refused (dims must be positive)."""
    with pytest.raises(UsageError, match=r"MIN <= OPT <= MAX, same rank, positive dims"):
        parse_shapes(["x:0x24/1x24/8x24"])
    assert parse_shapes(["x:1x24/1x24/8x24"]) == {"x": ([1, 24], [1, 24], [8, 24])}


def test_defaulted_dim_name_is_shared_across_axes():
    """A symbolic dim defaulted on one input (first axis: 1/1/8) keeps that range where the same
    name appears on another axis of another input (not the 1/128/512 of other axes)."""
    model = make_model([helper.make_node("MatMul", ["a", "b"], ["y"])],
                       [vi("a", ["n", 4]), vi("b", [4, "n"])], [vi("y", ["n", "n"])])
    notes: list[str] = []
    shapes = profile(input_specs(model), {}, notes)
    assert shapes == {"a": ([1, 4], [1, 4], [8, 4]), "b": ([4, 1], [4, 1], [4, 8])}
    assert notes == ["dynamic dims without --trt-shapes got default ranges (first axis 1/1/8, others 1/128/512): a[0]"]


def test_polygraphy_command_carries_the_profile():
    """The polygraphy fallback in build_engine.sh gets --trt-min/opt/max-shapes for dynamic inputs."""
    cmd = polygraphy_command({"x": ([1, 24], [2, 24], [8, 24])}, ["--int8", "--fp16"])
    assert cmd == ["polygraphy", "convert", "model.onnx", "--convert-to", "trt", "-o", "model.engine", "--int8", "--fp16",
                   "--trt-min-shapes", "x:[1,24]", "--trt-opt-shapes", "x:[2,24]", "--trt-max-shapes", "x:[8,24]"]


# --------------------------------------------------------------------------------------------
# TensorRT linter


def _relu(opset: int) -> onnx.ModelProto:
    return make_model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [1, 4])], [vi("y", [1, 4])], opset=opset, check=False)


def test_lint_opset_range_is_inclusive():
    """Opsets 9 and 24 are inside TensorRT 10.15's range; 25 is an error naming the range."""
    assert lint(_relu(24)) == [] and lint(_relu(9)) == []
    found = lint(_relu(25))
    assert [(f.level, f.rule, f.message) for f in found] == [
        ("error", "TRT-OPSET", "opset 25 is outside the 9..24 TensorRT 10.15 imports")]


def test_lint_int8_graph_input_is_an_error():
    """A graph input of a quantized type (INT8) is a TRT-TYPE error: TensorRT takes int8 only via Q/DQ."""
    model = make_model([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)],
                       [vi("x", [1, 4], TensorProto.INT8)], [vi("y", [1, 4])])
    found = lint(model)
    assert [(f.rule, f.where) for f in found] == [("TRT-TYPE", "tensor 'x'")]
    assert found[0].message == "graph input/output of type INT8, which TensorRT does not take"


@pytest.mark.parametrize("k, expected", [(3839, []), (3840, ["TRT-RESTRICT"])])
def test_lint_topk_k_must_be_below_3840(k, expected):
    """TopK: a constant K of 3840 is already too large (K must be below 3840)."""
    model = make_model([helper.make_node("TopK", ["x", "k"], ["v", "i"], name="topk")],
                       [vi("x", [1, 4096])], [vi("v", [1, k]), vi("i", [1, k], TensorProto.INT64)],
                       [init("k", np.array([k], np.int64))])
    found = lint(model)
    assert [f.rule for f in found] == expected
    if expected:
        assert found[0].message == "K = 3840 must be below 3840"


def test_lint_zero_scale_is_an_error():
    """A Q/DQ scale of 0 is refused like a negative one (scales must be positive and finite)."""
    found = [f for f in lint(qm.conv_block(act_scale=0.0)) if f.rule == "TRT-Q-SCALE"]
    assert [(f.level, f.where, f.message) for f in found] == [
        ("error", "node 'x_Q' (QuantizeLinear)", "scale must be positive and finite"),
        ("error", "node 'x_DQ' (DequantizeLinear)", "scale must be positive and finite")]


def _weighted(op: str, w_shape, axis: int, **attrs) -> onnx.ModelProto:
    """x -> Q/DQ -> op(DQ(x), DQ(W)) with W's scales per-channel on ``axis``."""
    nodes, inits = [], []
    x = qm.qdq("x", "x", 0.05, np.int8, 0, nodes, inits)
    w = qm.weight_dq("c", list(w_shape), axis, nodes, inits)
    nodes.append(helper.make_node(op, [x, w], ["y"], name="op", **attrs))
    x_shape = {"ConvTranspose": [1, w_shape[0], 8, 8], "Gemm": [4, w_shape[0] if not attrs.get("transB") else w_shape[1]],
               "MatMul": [4, w_shape[0]]}[op]
    return make_model(nodes, [vi("x", x_shape)], [vi("y", None)], inits, opset=17, check=False)


@pytest.mark.parametrize("op, w_shape, attrs, good, bad", [
    ("ConvTranspose", (16, 32, 3, 3), {}, 1, 0),  # [Cin, Cout/group, kH, kW]: output channels on axis 1
    ("Gemm", (64, 96), {"transB": 1}, 0, 1),  # B is [N, K] when transposed
    ("Gemm", (96, 64), {}, 1, 0),
    ("MatMul", (96, 64), {}, 1, 0),  # B is [K, N]
])
def test_lint_per_channel_axis_is_the_output_channel(op, w_shape, attrs, good, bad):
    """Per-channel weight scales must sit on the output-channel axis of each op's weight layout."""
    assert "TRT-PER-CHANNEL" not in _rules(_weighted(op, w_shape, good, **attrs))
    found = [f for f in lint(_weighted(op, w_shape, bad, **attrs)) if f.rule == "TRT-PER-CHANNEL"]
    assert [(f.level, f.message) for f in found] == [
        ("error", f"weight scales are per-channel on axis {bad}; {op} needs axis {good} (its output channels)")]


def test_lint_lists_errors_before_warnings():
    """lint(): errors come first even when a warning was found on an earlier node."""
    model = make_model([helper.make_node("Squeeze", ["x", "axes"], ["s"], name="squeeze"),
                        helper.make_node("TopK", ["s", "k"], ["v", "i"], name="topk")],
                       [vi("x", [1, 8]), vi("axes", [1], TensorProto.INT64), vi("k", [1], TensorProto.INT64)],
                       [vi("v", None), vi("i", None, TensorProto.INT64)], check=False)
    assert [(f.level, f.where) for f in lint(model)] == [("error", "node 'topk' (TopK)"),
                                                          ("warning", "node 'squeeze' (Squeeze)")]


def test_lint_cli_exits_1_on_warnings_only(tmp_path, capsys):
    """The lint CLI exits 1 for any finding, warnings included (0 only when clean)."""
    from onnxslim.targets.lint import main

    path = tmp_path / "m.onnx"
    onnx.save(qm.concat_block((0.05, 0.1)), path)
    assert main([str(path)]) == 1
    assert capsys.readouterr().err.strip().endswith("0 error(s), 1 warning(s)")


def test_lint_pool_input_and_output_share_a_scale():
    """A pool whose Q/DQ input and output scales differ is a TRT-SCALE-SHARE warning; equal scales are not."""
    def pool(out_scale: float) -> onnx.ModelProto:
        nodes, inits = [], []
        x = qm.qdq("x", "x", 0.05, np.int8, 0, nodes, inits)
        nodes.append(helper.make_node("MaxPool", [x], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]))
        y = qm.qdq("p", "p", out_scale, np.int8, 0, nodes, inits)
        nodes.append(helper.make_node("Relu", [y], ["y"], name="relu"))
        return make_model(nodes, [vi("x", [1, 16, 8, 8])], [vi("y", [1, 16, 4, 4])], inits, opset=17)

    assert "TRT-SCALE-SHARE" not in _rules(pool(0.05))
    found = [f for f in lint(pool(0.1)) if f.rule == "TRT-SCALE-SHARE"]
    assert [(f.where, f.message) for f in found] == [
        ("node 'pool' (MaxPool)", "input and output have different Q/DQ scales: TensorRT needs one shared scale to keep this op in int8")]


@pytest.mark.parametrize("training, expected", [(False, []), (True, ["TRT-RESTRICT"])])
def test_lint_dropout_in_training_mode_is_an_error(training, expected):
    """Dropout with a constant training_mode of True is refused; False lints clean."""
    model = make_model([helper.make_node("Dropout", ["x", "ratio", "mode"], ["y"], name="drop")],
                       [vi("x", [1, 4])], [vi("y", [1, 4])],
                       [init("ratio", np.array(0.5, np.float32)), init("mode", np.array(training))])
    found = lint(model)
    assert [f.rule for f in found] == expected
    if expected:
        assert found[0].message == "training_mode must be an initializer that is False"


def test_lint_low_gain_counts_the_narrower_side_of_a_conv():
    """A conv with 8 input and 32 output channels gains little in int8: the smaller count (8) decides."""
    nodes, inits = [], []
    x = qm.qdq("x", "x", 0.05, np.int8, 0, nodes, inits)
    w = qm.weight_dq("c", [32, 8, 3, 3], 0, nodes, inits)
    nodes.append(helper.make_node("Conv", [x, w], ["c"], name="conv", pads=[1, 1, 1, 1]))
    nodes.append(helper.make_node("Relu", ["c"], ["y"], name="relu"))
    model = make_model(nodes, [vi("x", [1, 8, 8, 8])], [vi("y", [1, 32, 8, 8])], inits, opset=17)
    found = lint(model)
    assert [(f.level, f.rule, f.where) for f in found] == [("warning", "TRT-LOW-GAIN", "node 'conv' (Conv)")]
    assert found[0].message.startswith("8 channels (< 16)")


def test_lint_1d_pooling_is_an_error():
    """MaxPool over one spatial axis is refused (TensorRT pools in 2D or 3D only)."""
    model = make_model([helper.make_node("MaxPool", ["x"], ["y"], name="pool", kernel_shape=[2], strides=[2])],
                       [vi("x", [1, 4, 8])], [vi("y", [1, 4, 4])])
    found = lint(model)
    assert [(f.level, f.rule, f.message) for f in found] == [("error", "TRT-RESTRICT", "only 2D or 3D pooling is supported")]


def test_lint_layernorm_extra_outputs_are_an_error():
    """LayerNormalization whose Mean output is read is refused; only Y is supported."""
    model = make_model([helper.make_node("LayerNormalization", ["x", "g"], ["y", "mean"], name="ln", axis=-1)],
                       [vi("x", [2, 4])], [vi("y", [2, 4]), vi("mean", [2, 1])], [init("g", np.ones(4, np.float32))])
    found = lint(model)
    assert [(f.level, f.rule, f.message) for f in found] == [("error", "TRT-RESTRICT", "only the first output (Y) is supported")]


def test_lint_cast_to_int8_is_an_error():
    """A Cast to INT8 is refused (int8 only through Q/DQ); a Cast to FLOAT16 is fine."""
    def cast(to: int) -> onnx.ModelProto:
        return make_model([helper.make_node("Cast", ["x"], ["c"], name="cast", to=to),
                           helper.make_node("Cast", ["c"], ["y"], name="back", to=TensorProto.FLOAT)],
                          [vi("x", [1, 4])], [vi("y", [1, 4])])

    assert lint(cast(TensorProto.FLOAT16)) == []
    found = lint(cast(TensorProto.INT8))
    assert [(f.where, f.message) for f in found] == [("node 'cast' (Cast)", "cast to INT8, which TensorRT does not take")]


# --------------------------------------------------------------------------------------------
# ONNX Runtime emitter


def test_ort_session_settings_are_exact():
    """session.json: sequential execution with one inter-op thread; intra-op threads as given."""
    from onnxslim.targets.ort import session_settings

    assert session_settings("x86", None) == {
        "model": "model.onnx", "execution_providers": ["CPUExecutionProvider"],
        "graph_optimization_level": "ORT_ENABLE_ALL", "intra_op_num_threads": 0, "inter_op_num_threads": 1,
        "execution_mode": "ORT_SEQUENTIAL", "session_config_entries": {"session.qdqisint8allowed": "0"}}
    assert session_settings("cuda", 3)["intra_op_num_threads"] == 3
    assert session_settings("cuda", 3)["session_config_entries"] == {}


def test_ort_threads_must_not_be_negative():
    """--ort-threads -1 is a usage error; 0 (onnxruntime's default) is accepted."""
    from onnxslim.targets import validate

    with pytest.raises(UsageError, match=r"^--ort-threads must be >= 0 \(0: onnxruntime's default\)$"):
        validate("ort", "x86", {"threads": -1})
    assert validate("ort", "x86", {"threads": 0})["threads"] == 0


def _rotated(angle: float) -> np.ndarray:
    return np.array([[np.cos(angle), np.sin(angle)]], np.float32)


@pytest.mark.parametrize("cosines, status", [((1.0, 0.9995), "passed"), ((1.0, 0.995), "failed"), ((0.995, 1.0), "failed")])
def test_ort_qdq_check_uses_the_worst_sample_against_0_999(monkeypatch, tmp_path, cosines, status):
    """QDQ models pass the emitted-model check when the worst sample's cosine is >= 0.999."""
    from onnxslim.targets import EmitResult
    from onnxslim.targets import ort as ort_target

    want = [[_rotated(0.0)] for _ in cosines]
    got = [[_rotated(float(np.arccos(c)))] for c in cosines]
    monkeypatch.setattr(ort_target, "_run", lambda path, feeds: (["y"], got))
    result = EmitResult("ort", "x86", str(tmp_path))
    ort_target._check_same("check", tmp_path / "m.onnx", ["y"], want, [{}, {}], True, result)
    assert [c.status for c in result.checks] == [status]
    worst = min(cosines)
    assert result.checks[0].detail == f"integer kernels vs QDQ simulation: worst cosine {worst:.5f} (>= 0.999)"


# --------------------------------------------------------------------------------------------
# verify.py: output comparison, input synthesis, fidelity


def _cmp(want: np.ndarray, got: np.ndarray, tolerance: float | None = None):
    from onnxslim.verify import compare_outputs

    [c] = compare_outputs(["y"], [[want]], ["y"], [[got]], tolerance)
    return c


def test_compare_error_is_relative_to_at_least_one():
    """Outputs with max |want| below 1 are compared in absolute terms: 5e-5 off on values ~0.01 passes at 1e-4."""
    want = np.array([0.01, -0.005], np.float32)
    c = _cmp(want, want + np.float32(5e-5))
    assert c.ok and c.problem == "" and c.tolerance == 1e-4
    assert c.max_rel == pytest.approx(5e-5, rel=1e-3) and c.max_abs == pytest.approx(5e-5, rel=1e-3)
    big = _cmp(np.array([100.0], np.float32), np.array([100.005], np.float32))  # 5e-5 relative to 100
    assert big.ok and big.max_rel == pytest.approx(5e-5, rel=1e-2)
    bad = _cmp(np.array([100.0], np.float32), np.array([100.05], np.float32))
    assert not bad.ok and bad.problem.startswith("max error 0.0005") and bad.problem.endswith("> tolerance 0.0001")


def test_compare_nan_inf_int_dtype_and_missing():
    """NaNs must sit at the same places, infinities must match, integers must be equal, dtypes and names must match."""
    from onnxslim.verify import compare_outputs

    nan = _cmp(np.array([np.nan, 1.0], np.float32), np.array([1.0, 1.0], np.float32))
    assert (nan.ok, nan.problem, nan.max_abs) == (False, "NaN positions differ", float("inf"))
    same_nan = _cmp(np.array([np.nan, 1.0], np.float32), np.array([np.nan, 1.0], np.float32))
    assert same_nan.ok and same_nan.max_abs == 0.0
    inf = _cmp(np.array([np.inf, 1.0], np.float32), np.array([-np.inf, 1.0], np.float32))
    assert (inf.ok, inf.problem) == (False, "infinite values differ")
    ints = _cmp(np.array([1, 2, 3], np.int64), np.array([1, 0, 0], np.int64))
    assert (ints.ok, ints.problem, ints.max_abs) == (False, "2 element(s) differ", 2.0)
    dtype = _cmp(np.array([1.0], np.float32), np.array([1.0], np.float64))
    assert (dtype.ok, dtype.problem) == (False, "dtype float64 != float32")
    [missing] = compare_outputs(["y"], [[np.zeros(2, np.float32)]], ["z"], [[np.zeros(2, np.float32)]])
    assert (missing.ok, missing.problem, missing.max_abs) == (False, "output missing", float("inf"))


def test_default_tolerances_per_dtype():
    """fp16 outputs are compared at 1e-2, fp32 at 1e-4 (relative to max(1, max |want|))."""
    h = _cmp(np.array([1.0], np.float16), np.array([1.0 + 2 ** -8], np.float16))  # ~3.9e-3 off
    assert h.ok and h.tolerance == 1e-2
    f = _cmp(np.array([1.0], np.float32), np.array([1.0005], np.float32))
    assert not f.ok and f.tolerance == 1e-4


def test_verify_fails_when_any_output_fails():
    """verify(): one output out of tolerance fails the whole result, and the reason names it."""
    from onnxslim.verify import verify

    good = make_model([helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Neg", ["x"], ["b"])],
                      [vi("x", [2, 3])], [vi("a", [2, 3]), vi("b", [2, 3])])
    bad = make_model([helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Identity", ["x"], ["b"])],
                     [vi("x", [2, 3])], [vi("a", [2, 3]), vi("b", [2, 3])])
    result = verify(good, bad)
    assert result.status == "failed" and not result.ok
    assert [c.ok for c in result.outputs] == [True, False]
    assert result.reason.startswith("b: max error ")
    assert verify(good, good).status == "passed"


def test_skipped_verification_is_not_a_failure():
    """A 'skipped' verification result counts as ok (only 'failed' does not)."""
    from onnxslim.verify import VerificationResult

    assert VerificationResult("skipped").ok and VerificationResult("passed").ok and not VerificationResult("failed").ok


def test_synthesized_inputs_share_named_dims_across_axes():
    """A named symbolic dim gets one value everywhere: 1 when first seen on axis 0, even on axis 1 of another input."""
    from onnxslim.verify import synthesize_inputs

    model = make_model([helper.make_node("MatMul", ["a", "b"], ["y"])],
                       [vi("a", ["n", 4]), vi("b", [4, "n"]), ], [vi("y", ["n", "n"])])
    [feeds] = synthesize_inputs(model)
    assert feeds["a"].shape == (1, 4) and feeds["b"].shape == (4, 1)
    unnamed = make_model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [None, None, 3])], [vi("y", [None, None, 3])])
    assert synthesize_inputs(unnamed)[0]["x"].shape == (1, 8, 3)
    ints = make_model([helper.make_node("Identity", ["i"], ["y"])], [vi("i", [64], TensorProto.INT64)], [vi("y", [64], TensorProto.INT64)])
    values = synthesize_inputs(ints, seed=3)[0]["i"]
    assert values.dtype == np.int64 and set(np.unique(values)) == {0, 1}


def test_reference_outputs_tries_larger_symbolic_dims():
    """A model that only runs with a symbolic dim of 32 (it reshapes to [32]) is still verified."""
    from onnxslim.verify import verify

    model = make_model([helper.make_node("Reshape", ["x", "shape"], ["y"])], [vi("x", [1, "s"])], [vi("y", [32])],
                       [init("shape", np.array([32], np.int64))])
    result = verify(model, model)
    assert result.status == "passed", result.reason
    assert result.input_shapes == {"x": [1, 32]}


def test_load_inputs_refuses_unknown_names(tmp_path):
    """--inputs: an array named after no model input is refused with both lists in the message."""
    from onnxslim.verify import load_inputs

    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [1, 2])], [vi("y", [1, 2])])
    np.savez(tmp_path / "in.npz", x=np.zeros([1, 2], np.float32), extra=np.zeros(1))
    with pytest.raises(UsageError, match=r"inputs do not match the model \(missing: \[\], unknown: \['extra'\]\)$"):
        load_inputs(tmp_path / "in.npz", model)


def test_fidelity_numbers():
    """fidelity(): SQNR = 10 log10(signal/error) in dB, rel_l2 = sqrt(error/signal), top-1 per row, cosine of all-zero pairs is 1."""
    from onnxslim.verify import fidelity

    want = np.array([[3.0, 0.0, 1.0], [0.0, 2.0, 5.0]], np.float32)
    got = want.copy()
    got[0, 2] = 4.0  # row 0 now argmaxes to 2: one of two rows agrees
    [f] = fidelity(["y"], [[want]], ["y"], [[got]])
    sig, err = float(np.sum(want.astype(np.float64) ** 2)), 9.0
    assert f.sqnr_db == pytest.approx(10 * np.log10(sig / err))
    assert f.rel_l2 == pytest.approx(np.sqrt(err / sig))
    assert f.max_abs == pytest.approx(3.0)
    assert f.top1_agreement == 0.5
    [z] = fidelity(["y"], [[np.zeros([2, 3], np.float32)]], ["y"], [[np.zeros([2, 3], np.float32)]])
    assert z.cosine == 1.0 and z.sqnr_db == float("inf") and z.rel_l2 == 0.0


def test_fidelity_skips_top1_for_unit_norm_rows():
    """Rows of L2 norm 1 are embeddings, not class scores: no top-1 agreement is reported."""
    from onnxslim.verify import fidelity

    want = np.array([[0.6, 0.8], [1.0, 0.0]], np.float32)
    [f] = fidelity(["y"], [[want]], ["y"], [[want[:, ::-1].copy()]])
    assert f.top1_agreement is None


# --------------------------------------------------------------------------------------------
# stats.py: MACs, parameters, bytes


def _stats(model: onnx.ModelProto, top: int = 5):
    from onnxslim.graph import import_model
    from onnxslim.stats import compute

    return compute(import_model(onnx.shape_inference.infer_shapes(model)), top)


def test_macs_of_each_op_kind():
    """MACs: Conv out*Cin/g*kH*kW, ConvTranspose in*Cout/g*kH*kW, Gemm (transA: K from A's first axis), MatMul out*K."""
    rng = np.random.default_rng(0)
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    model = make_model(
        [helper.make_node("Conv", ["x", "wc"], ["c"]),  # [1,4,6,6] * 3*3*3
         helper.make_node("ConvTranspose", ["x", "wt"], ["t"]),  # in [1,3,8,8] * 2*3*3
         helper.make_node("Gemm", ["a", "b"], ["g"], transA=1),  # out [2,5] * K=6
         helper.make_node("MatMul", ["m", "n"], ["mm"])],  # out [3,7] * K=4
        [vi("x", [1, 3, 8, 8]), vi("a", [6, 2]), vi("m", [3, 4])],
        [vi("c", None), vi("t", None), vi("g", None), vi("mm", None)],
        [init("wc", f32(4, 3, 3, 3)), init("wt", f32(3, 2, 3, 3)), init("b", f32(6, 5)), init("n", f32(4, 7))], check=False)
    s = _stats(model)
    assert s.macs_by_op == {"Conv": 144 * 27, "ConvTranspose": 192 * 18, "Gemm": 10 * 6, "MatMul": 21 * 4}
    assert s.macs == 144 * 27 + 192 * 18 + 60 + 84 and s.macs_exact


def test_macs_of_qlinear_ops_read_the_weight_input():
    """QLinearConv takes its weight from input 3, QLinearMatMul its B from input 3."""
    import onnx_graphsurgeon as gs

    from onnxslim.stats import node_macs

    def var(name, shape, dtype=np.uint8):
        return gs.Variable(name, dtype=dtype, shape=shape)

    scalars = [var(f"s{i}", [], np.float32) for i in range(6)]
    conv = gs.Node("QLinearConv", inputs=[var("x", [1, 3, 8, 8]), scalars[0], scalars[1], var("w", [4, 3, 3, 3]),
                                          scalars[2], scalars[3], scalars[4], scalars[5]], outputs=[var("y", [1, 4, 6, 6])])
    assert node_macs(conv) == (144 * 27, True)
    mm = gs.Node("QLinearMatMul", inputs=[var("a", [3, 4]), scalars[0], scalars[1], var("b", [4, 7]), scalars[2], scalars[3],
                                          scalars[4], scalars[5]], outputs=[var("y2", [3, 7])])
    assert node_macs(mm) == (21 * 4, True)
    short = gs.Node("QLinearMatMul", inputs=[var("a", [3, 4]), scalars[0], scalars[1]], outputs=[var("y3", [3, 7])])
    assert node_macs(short) == (0, False)


def _branch(name: str, k: int) -> onnx.GraphProto:
    w = init(f"{name}_w", np.ones([4, k], np.float32))
    return helper.make_graph([helper.make_node("MatMul", ["x", f"{name}_w"], [f"{name}_y"])], name, [],
                             [vi(f"{name}_y", [2, k])], [w])


def test_macs_of_if_take_the_costlier_branch_and_loops_are_approximate():
    """An If counts its costlier branch (exact); a Loop body counts once and marks the figure approximate."""
    model = make_model([helper.make_node("If", ["c"], ["y"], then_branch=_branch("then", 3), else_branch=_branch("else", 10))],
                       [vi("c", [], TensorProto.BOOL), vi("x", [2, 4])], [vi("y", [2, None])], check=False)
    s = _stats(model)
    assert (s.macs, s.macs_exact, s.macs_by_op) == (2 * 10 * 4, True, {"MatMul": 80})
    assert s.parameters == 12 + 40 and s.constant_bytes == 4 * 52
    body = helper.make_graph([helper.make_node("Identity", ["cond_in"], ["cond_out"]),
                              helper.make_node("MatMul", ["x", "lw"], ["ly"])], "body",
                             [vi("i", [], TensorProto.INT64), vi("cond_in", [], TensorProto.BOOL)],
                             [vi("cond_out", [], TensorProto.BOOL), vi("ly", [2, 3])])
    loop = make_model([helper.make_node("Loop", ["n", ""], ["ys"], body=body), helper.make_node("MatMul", ["x", "lw"], ["z"])],
                      [vi("n", [], TensorProto.INT64), vi("x", [2, 4])], [vi("ys", None), vi("z", [2, 3])],
                      [init("lw", np.ones([4, 3], np.float32))], check=False)
    s = _stats(loop)
    assert (s.macs, s.macs_exact) == (24 + 24, False)
    assert (s.parameters, s.constant_bytes) == (12, 48)  # read by the main graph and the body: counted once


def test_symbolic_dims_make_macs_approximate():
    """A symbolic batch counts as 1 and marks the MAC figure approximate."""
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [vi("x", ["N", 4])], [vi("y", ["N", 3])],
                       [init("w", np.ones([4, 3], np.float32))])
    s = _stats(model)
    assert (s.macs, s.macs_exact) == (12, False)


def test_parameters_count_quantized_weights_and_constant_nodes():
    """Parameters: float and int8 weights (Constant nodes included); int64 shape tensors are left out."""
    model = make_model([helper.make_node("Constant", [], ["k"], value=helper.make_tensor("kv", TensorProto.FLOAT, [5], [1.0] * 5)),
                        helper.make_node("DequantizeLinear", ["q", "s"], ["dq"]),
                        helper.make_node("Reshape", ["dq", "shape"], ["r"]),
                        helper.make_node("Add", ["r", "k"], ["y"])],
                       [], [vi("y", [2, 5])],
                       [init("q", np.ones([10], np.int8)), init("s", np.array(0.5, np.float32)), init("shape", np.array([2, 5], np.int64))])
    s = _stats(model)
    assert s.parameters == 10 + 1 + 5
    assert s.constant_bytes == 10 + 4 + 16 + 20
    assert [t["name"] for t in s.largest_tensors] == ["kv", "shape", "q", "s"]
    assert [t["bytes"] for t in s.largest_tensors] == [20, 16, 10, 4]


def test_human_units():
    """human(): 1000 is '1k' (a factor reached counts), 999 stays plain; human_bytes uses binary units."""
    from onnxslim.stats import human, human_bytes

    assert (human(1000), human(999), human(1_500_000, "MACs"), human(2e9)) == ("1k", "999", "1.5MMACs", "2G")
    assert (human_bytes(1024), human_bytes(1023), human_bytes(3 * 2**20)) == ("1 KiB", "1023 B", "3 MiB")


# --------------------------------------------------------------------------------------------
# Shared emitter helpers, EmitResult, TVM checks


def test_common_compare_reports_a_mismatch():
    """targets.common.compare: an output out of tolerance makes it (False, 'name: problem')."""
    from onnxslim.targets.common import compare

    want = [[np.array([1.0, 2.0], np.float32)]]
    assert compare(["y"], want, [[np.array([1.0, 2.0], np.float32)]]) == (True, "1 output(s), max error 0 relative to max |output|")
    ok, detail = compare(["y"], want, [[np.array([1.0, 3.0], np.float32)]])
    assert not ok and detail == "y: max error 0.5 (relative to max |output|) > tolerance 0.0001"


def test_common_cosine_keeps_the_sign():
    """cosine() of opposite outputs is -1 (a sign flip is not agreement); of zero outputs, 1."""
    from onnxslim.targets.common import cosine

    a = np.array([1.0, -2.0, 3.0], np.float32)
    assert cosine(a, -a) == pytest.approx(-1.0) and cosine(a, 2 * a) == pytest.approx(1.0)
    assert cosine(np.zeros(3), np.zeros(3)) == 1.0


def test_emit_result_ok_ignores_skipped_checks():
    """EmitResult.ok: a skipped check (no GPU, no nvcc) does not fail the emit; a failed one does."""
    from onnxslim.targets import EmitResult

    result = EmitResult("tensorrt", "cuda", "/nowhere")
    result.check("a", "passed")
    result.check("b", "skipped", "no GPU")
    assert result.ok and result.first_failure() is None and result.to_dict()["ok"] is True
    result.check("c", "failed", "broken")
    assert not result.ok and result.first_failure().name == "c"


def _elf(tmp_path, elf_class: int, machine: int):
    path = tmp_path / f"lib{elf_class}_{machine}.so"
    path.write_bytes(b"\x7fELF" + bytes([elf_class, 1, 1]) + bytes(9) + (3).to_bytes(2, "little") + machine.to_bytes(2, "little") + bytes(40))
    return path


def test_elf_check_wants_64_bit_aarch64(tmp_path):
    """The arm emit's ELF check passes for a 64-bit AArch64 library only; x86-64 and 32-bit ELF fail it."""
    from onnxslim.targets import EmitResult
    from onnxslim.targets.tvm import _check_elf, elf_machine

    assert elf_machine(_elf(tmp_path, 2, 183)) == (True, 183)
    assert elf_machine(_elf(tmp_path, 1, 183)) == (False, -1)  # ELFCLASS32
    result = EmitResult("tvm", "arm", str(tmp_path))
    for path in (_elf(tmp_path, 2, 183), _elf(tmp_path, 2, 62)):
        _check_elf(path, result)
    assert [(c.status, c.detail) for c in result.checks] == [
        ("passed", "e_machine 183 (AArch64)"), ("failed", "e_machine 62 (expected 183, AArch64)")]


@pytest.mark.skipif(importlib.util.find_spec("tvm") is None, reason="apache-tvm not installed (extra [tvm])")
def test_tvm_option_checks(tmp_path):
    """--tvm-tuning-db alone on arm is refused (tuning is x86 only); --tvm-cuda-arch must be sm_<digits>."""
    from onnxslim.targets import validate

    db = tmp_path / "db"
    db.mkdir()
    (db / "database_tuning_record.json").write_text("")
    with pytest.raises(UsageError, match="applies to --device x86 only"):
        validate("tvm", "arm", {"tuning_db": str(db)})
    with pytest.raises(UsageError, match=r"--tvm-cuda-arch 'sm_xx': expected sm_XX"):
        validate("tvm", "cuda", {"cuda_arch": "sm_xx"})
    assert validate("tvm", "cuda", {"cuda_arch": "sm_90a"})["cuda_arch"] == "sm_90a"


@pytest.mark.slow  # imports TVM (~10 s)
@pytest.mark.skipif(importlib.util.find_spec("tvm") is None, reason="apache-tvm not installed (extra [tvm])")
def test_tvm_target_carries_the_cpu_triple_and_cores():
    """--tvm-mcpu reaches the LLVM target; arm gets the aarch64 triple and NEON; tuning adds the core count."""
    from onnxslim.targets.tvm import target_for

    x86 = target_for("x86", {"mcpu": "znver3"})
    assert str(x86.attrs["mcpu"]) == "znver3" and "mtriple" not in x86.attrs
    arm = target_for("arm", {"mcpu": "cortex-a76"})
    assert str(arm.attrs["mtriple"]) == "aarch64-linux-gnu" and str(arm.attrs["mcpu"]) == "cortex-a76"
    assert "+neon" in [str(a) for a in arm.attrs["mattr"]]
    assert "mcpu" not in target_for("x86", {}).attrs
    assert int(target_for("x86", {"tune_trials": 8}).attrs["num-cores"]) >= 1
    cuda = target_for("cuda", {"cuda_arch": "sm_90"})
    assert str(cuda.kind.name) == "cuda" and str(cuda.attrs["arch"]) == "sm_90"


def test_tuning_db_best_latencies(tmp_path):
    """best_latencies_us: per workload, the best mean latency in microseconds; failed runs (1e10) are left out."""
    from onnxslim.targets.tvm_tune import best_latencies_us, records

    lines = [[0, [None, [2e-6, 4e-6]]], [0, [None, [1e-6, 1e-6]]], [1, [None, [5e-6]]], [2, [None, [1e10]]]]
    (tmp_path / "database_tuning_record.json").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    assert best_latencies_us(tmp_path) == pytest.approx([1.0, 5.0])
    assert records(tmp_path) == 4
    assert best_latencies_us(tmp_path / "none") == [] and records(tmp_path / "none") == 0


# --------------------------------------------------------------------------------------------
# graph.py: export, names, rewiring


def _roundtrip(model: onnx.ModelProto) -> onnx.ModelProto:
    from onnxslim.graph import export_model, import_model

    return export_model(import_model(model), model)


def test_export_declares_initializers_as_inputs_before_ir4():
    """IR version 3: every initializer is also declared a graph input after export (the model stays valid)."""
    model = make_model([helper.make_node("Add", ["x", "b"], ["y"])], [vi("x", [2])], [vi("y", [2])],
                       [init("b", np.ones(2, np.float32))], opset=8, check=False)
    model.ir_version = 3
    out = _roundtrip(model)
    assert [i.name for i in out.graph.input] == ["x", "b"]
    onnx.checker.check_model(out)
    model.ir_version = 4
    assert [i.name for i in _roundtrip(model).graph.input] == ["x"]


def test_export_keeps_model_fields_and_raises_opset():
    """export_model keeps metadata, leaves unset fields unset, and raises the default opset when the graph did."""
    from onnxslim.graph import export_model, import_model

    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [2])], [vi("y", [2])], opset=13)
    helper.set_model_props(model, {"author": "me"})
    graph = import_model(model)
    graph.opset = 17
    out = export_model(graph, model)
    assert [(p.key, p.value) for p in out.metadata_props] == [("author", "me")]
    assert [(o.domain, o.version) for o in out.opset_import] == [("", 17)]
    assert not out.HasField("producer_name") and not out.HasField("producer_version")


def test_export_parts_declares_custom_domains():
    """export_parts (streaming) declares a domain that only nodes use, at version 1."""
    from onnxslim.graph import export_parts, import_model

    model = make_model([helper.make_node("Gelu", ["x"], ["y"], domain="com.microsoft")], [vi("x", [2])], [vi("y", [2])],
                       check=False)
    graph = import_model(model)
    del model.opset_import[1:]
    shell, inits = export_parts(graph, model)
    assert sorted((o.domain, o.version) for o in shell.opset_import) == [("", 18), ("com.microsoft", 1)]
    assert list(inits) == []


def _if_with_branch_constant(then_value: float, main_value: float | None) -> onnx.ModelProto:
    then = helper.make_graph([helper.make_node("Add", ["x", "c"], ["t"])], "then", [], [vi("t", [2])],
                             [init("c", np.full(2, then_value, np.float32))])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [], [vi("e", [2])])
    nodes = [helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)]
    inits = [] if main_value is None else [init("c", np.full(2, main_value, np.float32))]
    outputs = [vi("y", [2])]
    if main_value is not None:
        nodes.append(helper.make_node("Mul", ["x", "c"], ["z"]))
        outputs.append(vi("z", [2]))
    return make_model(nodes, [vi("cond", [], TensorProto.BOOL), vi("x", [2])], outputs, inits, check=False)


def test_a_branch_constant_stays_in_its_branch():
    """A constant that only one If branch holds stays in that branch after export (not hoisted to the main graph)."""
    out = _roundtrip(_if_with_branch_constant(2.0, None))
    assert [t.name for t in out.graph.initializer] == []
    assert [t.name for t in out.graph.node[0].attribute[0].g.initializer] + \
        [t.name for t in out.graph.node[0].attribute[1].g.initializer] == ["c"]


def test_hoist_keeps_a_branch_constant_that_shadows_another_value():
    """A branch initializer named like a main-graph one but holding other values is kept in the branch."""
    from onnxslim.graph import _hoist_outer_constants

    model = _if_with_branch_constant(2.0, 5.0)
    _hoist_outer_constants(model, None)
    then = next(a.g for a in model.graph.node[0].attribute if a.name == "then_branch")
    assert [onnx.numpy_helper.to_array(t).tolist() for t in then.initializer] == [[2.0, 2.0]]
    from tests.helpers import run_ort

    out = run_ort(model, {"cond": np.array(True), "x": np.zeros(2, np.float32)})
    np.testing.assert_array_equal(out["y"], [2.0, 2.0])


def test_name_scope_skips_every_taken_name():
    """NameScope.fresh never returns a name the graph uses, even when base__1 is taken too."""
    import onnx_graphsurgeon as gs

    from onnxslim.graph import NameScope

    x, t, t1 = (gs.Variable(n, dtype=np.float32, shape=[1]) for n in ("x", "t", "t__1"))
    graph = gs.Graph(nodes=[gs.Node("Relu", inputs=[x], outputs=[t]), gs.Node("Relu", inputs=[t], outputs=[t1])],
                     inputs=[x], outputs=[t1])
    scope = NameScope(graph)
    assert [scope.fresh("t"), scope.fresh("t"), scope.fresh("x"), scope.fresh("new")] == ["t__2", "t__3", "x__4", "new"]


def _relu_graph():
    import onnx_graphsurgeon as gs

    x = gs.Variable("x", dtype=np.float32, shape=[2])
    y = gs.Variable("y", dtype=np.float32, shape=[2])
    return gs.Graph(nodes=[gs.Node("Relu", inputs=[x], outputs=[y])], inputs=[x], outputs=[y]), x, y


def test_replace_all_uses_never_renames_a_graph_input():
    """Replacing output y by input x keeps both names: an Identity(x) -> y is inserted instead."""
    from onnxslim.graph import replace_all_uses

    graph, x, y = _relu_graph()
    replace_all_uses(graph, y, x)
    assert [t.name for t in graph.inputs] == ["x"] and [t.name for t in graph.outputs] == ["y"]
    assert graph.outputs[0] is y and y.inputs[0].op == "Identity" and y.inputs[0].inputs[0] is x


def test_replace_all_uses_hands_over_the_output_shape():
    """When an internal tensor takes over an output's name, it also takes its dtype and shape if it had none."""
    import onnx_graphsurgeon as gs

    from onnxslim.graph import replace_all_uses

    graph, x, y = _relu_graph()
    z = gs.Variable("z")
    graph.nodes.append(gs.Node("Neg", inputs=[x], outputs=[z]))
    replace_all_uses(graph, y, z)
    assert graph.outputs == [z] and z.name == "y" and z.shape == [2] and z.dtype == np.float32


def test_graph_reading_helpers():
    """constant_value of value_ints is int64; static_shape refuses negative dims; consumers and sole_reader count a node once
    and give no sole reader for a graph output; outer_scope_names lists only names from outside the subgraph;
    constant_nbytes multiplies every dim."""
    import onnx_graphsurgeon as gs

    from onnxslim.graph import constant_nbytes, constant_value, consumers, outer_scope_names, sole_reader, static_shape

    out = gs.Variable("k")
    gs.Node("Constant", attrs={"value_ints": [1, 2]}, outputs=[out])
    assert constant_value(out).dtype == np.int64 and constant_value(out).tolist() == [1, 2]
    assert static_shape(gs.Variable("v", shape=[-1, 3])) is None and static_shape(gs.Variable("w", shape=[0, 3])) == (0, 3)
    x, y = gs.Variable("x", dtype=np.float32, shape=[2]), gs.Variable("y", dtype=np.float32, shape=[2])
    add = gs.Node("Add", inputs=[x, x], outputs=[y])
    assert consumers(x) == [add] and sole_reader(x, {id(add)}, set()) is add
    assert sole_reader(x, {id(add)}, {id(x)}) is None
    assert constant_nbytes(gs.Constant("c", np.zeros([3, 4, 5], np.float32))) == 240
    then = helper.make_graph([helper.make_node("Add", ["x", "c"], ["t"]), helper.make_node("Neg", ["t"], ["t2"])], "then", [],
                             [vi("t2", [2])], [init("c", np.ones(2, np.float32))])
    other = helper.make_graph([helper.make_node("Neg", ["w"], ["e"])], "else", [], [vi("e", [2])])
    model = make_model([helper.make_node("Relu", ["x"], ["w"]), helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)],
                       [vi("cond", [], TensorProto.BOOL), vi("x", [2])], [vi("y", [2])], check=False)
    from onnxslim.graph import import_model

    assert outer_scope_names(import_model(model)) == {"x", "w"}
