"""Tests added by a mutation audit of the quantization package: each pins a behaviour that a
hand-made mutant of the source changed without any other test noticing."""

from __future__ import annotations


import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import helper

from onnxslim.errors import UsageError
from onnxslim.quantization.emit import activation_params, quantize_weight
from onnxslim.quantization.histogram import TensorStats
from onnxslim.quantization.methods import MethodSpec, entropy_threshold, select_range
from onnxslim.quantization.moments import InputLayout, InputMoments, input_layout
from onnxslim.quantization.options import (ErrorBudget, Override, QuantOptions, parse_bins, parse_budget, parse_override,
                                           parse_percentile, parse_positive)
from onnxslim.quantization.rounding import gptq, round_weight
from onnxslim.quantization.rules import rules_for
from onnxslim.quantization.sensitivity import FidelityProbe, Score, find_fallback
from tests.helpers import init, make_model, op_counts, run_ort, vi
from tests.passes.test_insert_qdq import quantize, resnet_block, sqnr_db
from tests.quantization.test_rounding import quantize as quantize_on


def stats_of(x: np.ndarray, bins: int = 2048) -> TensorStats:
    s = TensorStats(bins)
    s.update(np.asarray(x, np.float32))
    return s


def inits_of(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}


def producer(model: onnx.ModelProto, tensor: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if tensor in n.output)


# --------------------------------------------------------------------------------------------
# histogram.py / methods.py


def test_merge_keeps_the_minimum_and_maximum_of_both_parts():
    """TensorStats.merge: min and max of the union, whichever part holds them."""
    a, b = stats_of(np.array([-1.0, 2.0])), stats_of(np.array([-5.0, 0.5, 7.0]))
    for merged in (a.merge(b), b.merge(a)):
        assert (merged.minimum, merged.maximum, merged.count) == (-5.0, 7.0, 5)


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy", "mse"])
def test_all_negative_tensor_gets_a_range_below_zero(method):
    """A tensor with only values <= 0 (e.g. -ReLU) is one-sided on the negative side: [lo, 0], lo < 0."""
    x = -np.abs(np.random.default_rng(0).standard_normal(100_000)).astype(np.float32)
    lo, hi = select_range(stats_of(x), MethodSpec(method), symmetric=False)
    assert hi == 0.0
    assert float(x.min()) <= lo < -1.0  # covers most of the data (|x| > 1 for a third of it)


@pytest.mark.parametrize("method", ["percentile", "entropy", "mse"])
def test_symmetric_threshold_never_exceeds_the_largest_magnitude(method):
    """The symmetric threshold is clamped to max|x|: the histogram's top edge lies above it."""
    x = np.random.default_rng(0).uniform(-1, 1, 100_000)
    s = stats_of(x)
    t = select_range(s, MethodSpec(method, 100.0), symmetric=True)[1]
    assert 0.99 < t <= float(np.abs(x).max().astype(np.float32))


def test_one_sided_entropy_searches_256_levels():
    """One-sided (ReLU) entropy: TensorRT's KL search with all 256 uint8 levels, not int8's 128."""
    x = np.maximum(np.random.default_rng(1).standard_normal(400_000), 0)
    s = stats_of(x)
    edges, counts = s.magnitude()
    want = min(entropy_threshold(edges, counts, levels=256), float(s.maximum))
    assert select_range(s, MethodSpec("entropy"), symmetric=False) == (0.0, want)
    assert want != entropy_threshold(edges, counts, levels=128)  # the two searches differ on this data


def test_two_sided_entropy_gives_each_side_its_share_of_levels():
    """Two-sided entropy: each side searched with round(256 * span / (hi - lo)) levels (16..255)."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.exponential(1.0, 400_000), -rng.exponential(0.1, 200_000)])
    s = stats_of(x)
    lo, hi = select_range(s, MethodSpec("entropy"), symmetric=False)
    span = s.maximum - s.minimum
    want = {}
    for side, extent in ((1, s.maximum), (-1, -s.minimum)):
        levels = int(min(255, max(16, round(256 * extent / span))))
        want[side] = min(entropy_threshold(*s.magnitude(side), levels=levels), extent)
    assert (lo, hi) == (-want[-1], want[1])
    assert want[-1] != min(entropy_threshold(*s.magnitude(-1), levels=128), -s.minimum)


def test_mse_clips_a_lone_outlier_far_below_it():
    """mse searches thresholds down to 1/64 of max|x|: one outlier at 50 among 1M normals clips at ~8."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(1_000_000), [50.0]]).astype(np.float32)

    def sym_mse(t):
        s = t / 127
        return float(np.mean((np.clip(np.round(x / s), -127, 127) * s - x) ** 2))

    t = select_range(stats_of(x), MethodSpec("mse"), symmetric=True)[1]
    assert t < 12.5  # a quarter of the outlier's magnitude
    assert sym_mse(t) <= 1.01 * min(sym_mse(c) for c in (4.0, 6.0, 7.0, 8.0, 9.0, 10.0, 12.0))


def test_percentile_interpolates_inside_a_bin():
    """percentile: linear interpolation inside the histogram bin, within 0.2 bin of NumPy on dense uniform data."""
    u = np.random.default_rng(0).uniform(0, 1, 400_000)
    s = stats_of(u)
    for p in (80.0, 85.0, 90.0, 95.0, 97.5):
        hi = select_range(s, MethodSpec("percentile", p), symmetric=False)[1]
        assert abs(hi - np.percentile(u.astype(np.float32), p)) <= 0.2 * s.width, p


# --------------------------------------------------------------------------------------------
# emit.py: grids


def test_activation_grids_are_exact():
    """Asymmetric s = (hi - lo) / 255, z = round(-lo / s); symmetric s = amax / 127, z = 0."""
    p = activation_params(-1.0, 3.0, np.uint8, symmetric=False)
    assert p.scale == np.float32(4.0 / 255) and p.zero_point == 64  # -lo / s = 63.75
    p = activation_params(-1.0, 3.0, np.int8, symmetric=False)
    assert p.scale == np.float32(4.0 / 255) and p.zero_point == -64
    p = activation_params(-2.0, 1.0, np.int8, symmetric=True)
    assert p.scale == np.float32(2.0 / 127) and p.zero_point == 0


def test_weight_scale_is_max_over_127_per_channel():
    """Weights: s_c = max|W_c| / 127, so each channel's largest weight maps to +-127."""
    w = np.array([[0.5, -2.0, 1.0], [3.0, 0.1, -0.2]], np.float32)
    q, scale = quantize_weight(w, 0)
    np.testing.assert_array_equal(scale, np.array([2.0, 3.0], np.float32) / np.float32(127))
    np.testing.assert_array_equal(q, [[32, -127, 64], [127, 4, -8]])


def clip_model(lo: float, hi: float) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
             helper.make_node("Clip", ["h", "lo", "hi"], ["c"], name="clip"),
             helper.make_node("MatMul", ["c", "w2"], ["y"], name="mm2")]
    inits = [init("w1", rng.standard_normal((16, 16)).astype(np.float32)), init("lo", np.float32(lo)),
             init("hi", np.float32(hi)), init("w2", rng.standard_normal((16, 16)).astype(np.float32) / 4)]
    return make_model(nodes, [vi("x", [1, 16])], [vi("y", [1, 16])], inits)


def test_clip_with_a_positive_minimum_is_not_folded():
    """Clip(1, 6) does not clamp like the uint8 Q after it (which clamps at 0): it stays, and the output is right."""
    model = clip_model(1.0, 6.0)
    out, rec = quantize(model, samples=32)
    assert op_counts(out)["Clip"] == 1 and rec.counters["activations_folded"] == 0
    assert sqnr_db(model, out) > 25.0
    relu_like, rec = quantize(clip_model(0.0, 6.0), samples=32)  # Clip(0, 6) is what the Q does: folded
    assert "Clip" not in op_counts(relu_like) and rec.counters["activations_folded"] == 1


def test_int32_bias_that_would_overflow_stays_float():
    """A bias beyond int32 on the scale s_x * s_w stays float (with a note), and the output stays right."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((16, 16)) * 1e-4).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=1)]
    model = make_model(nodes, [vi("x", [1, 16])], [vi("y", [1, 16])],
                       [init("w", w), init("b", np.full(16, 1e3, np.float32))])
    out, rec = quantize(model, samples=16)
    assert rec.counters["biases_int32"] == 0 and rec.counters["weights_quantized"] == 1
    assert inits_of(out)[producer(out, "y").input[2]].dtype == np.float32  # the bias constant as it was
    assert sqnr_db(model, out) > 40.0


# --------------------------------------------------------------------------------------------
# rounding.py / moments.py


def offset_rows(n: int, width: int, seed: int) -> np.ndarray:
    """Correlated input rows (low rank plus noise) with a mean far from zero."""
    basis = np.random.default_rng(width).standard_normal((width // 4, width))
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, width // 4)) @ basis + 0.1 * rng.standard_normal((n, width)) + 2.0).astype(np.float32)


def matmul_add_node(w: np.ndarray) -> gs.Node:
    x, m, y = gs.Variable("x", np.float32), gs.Variable("m", np.float32), gs.Variable("y", np.float32)
    mm = gs.Node("MatMul", "mm", inputs=[x, gs.Constant("w", w)], outputs=[m])
    gs.Node("Add", "bias", inputs=[m, gs.Constant("b", np.zeros(w.shape[1], np.float32))], outputs=[y])
    return mm


def test_gptq_with_bias_correction_minimises_the_covariance_error():
    """With a bias to correct, GPTQ weighs errors by the covariance S = H - mu mu^T (the mean goes to the bias)."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((32, 12)) * 0.2).astype(np.float32)  # MatMul K x N
    x = offset_rows(512, 32, seed=1)
    moments = InputMoments(InputLayout("x", 1, 32), outer=True)
    moments.update(x, 0)
    q, scale = quantize_weight(w, 1)
    rounded = round_weight(matmul_add_node(w), w, scale, 1, moments, use_gptq=True, bias_correction=True)
    assert rounded is not None and rounded.gptq and rounded.bias_shift is not None
    mu, h = moments.mean, moments.second
    cov = gptq(w.T[None], h - mu[:, :, None] * mu[:, None, :], scale[None].astype(np.float64))[0].T
    plain = gptq(w.T[None], h, scale[None].astype(np.float64))[0].T
    np.testing.assert_array_equal(rounded.q, cov)
    assert not np.array_equal(cov, plain)  # the two objectives give different codes on these inputs


def test_gptq_needs_four_input_rows_per_weight_column():
    """Fewer than 4 input vectors per column: GPTQ would fit noise, the codes stay round-to-nearest."""
    from tests.quantization.test_rounding import correlated_inputs, correlated_matmul_model

    model = correlated_matmul_model()  # K = 64: GPTQ needs 256 rows, 8 per sample
    few, rec = quantize_on(model, correlated_inputs(16, seed=1), rounding="gptq", rounding_samples=16)  # 128 rows
    assert rec.counters["weights_rounded_gptq"] == 0
    assert [r["rounding"] for r in rec.details if r["detail"] == "rounding"] == ["nearest"]
    _, rec = quantize_on(model, correlated_inputs(32, seed=1), rounding="gptq", rounding_samples=32)  # 256 rows
    assert rec.counters["weights_rounded_gptq"] == 1


def offset_gemm(trans_a: int, trans_b: int, alpha: float = 1.0, beta: float = 1.0) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((16, 32)) * 0.2).astype(np.float32)  # N x K
    node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transA=trans_a, transB=trans_b, alpha=alpha, beta=beta)
    x = vi("x", [32, 8] if trans_a else [8, 32])
    return make_model([node], [x], [vi("y", [8, 16])], [init("w", w if trans_b else w.T.copy()),
                                                        init("b", rng.standard_normal(16).astype(np.float32))])


def offset_gemm_inputs(trans_a: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(99).uniform(2.0, 4.0, 32)  # per input feature, the same for every sample
    x = (means + 0.05 * rng.standard_normal((8, 32))).astype(np.float32)
    return {"x": np.ascontiguousarray(x.T) if trans_a else x}


def _stacked(chunks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


@pytest.mark.parametrize("trans_a,trans_b", [(0, 1), (0, 0)])
def test_gemm_bias_correction_in_every_layout(trans_a, trans_b):
    """Gemm (transB or not): the bias absorbs the mean rounding error; mean output error halves at least."""
    model = offset_gemm(trans_a, trans_b)
    calib = _stacked([offset_gemm_inputs(trans_a, seed=s) for s in range(1, 9)])
    corrected, rec = quantize_on(model, calib)
    plain, _ = quantize_on(model, calib, bias_correction=False)
    assert rec.counters["biases_corrected"] == 1
    held = offset_gemm_inputs(trans_a, seed=50)
    want = run_ort(model, held)["y"]
    err = lambda q: float(np.abs((run_ort(q, held)["y"] - want).mean(axis=0)).mean())
    assert err(corrected) < 0.5 * err(plain)


def test_gemm_with_negative_beta_gets_no_bias_correction():
    """Gemm with beta != 1 scales its bias: subtracting the shift would add the error; the bias is left alone."""
    model = offset_gemm(0, 1, beta=-1.0)
    calib = _stacked([offset_gemm_inputs(0, seed=s) for s in range(1, 9)])
    default, rec = quantize_on(model, calib)
    plain, _ = quantize_on(model, calib, bias_correction=False)
    assert rec.counters.get("biases_corrected", 0) == 0
    held = offset_gemm_inputs(0, seed=50)
    np.testing.assert_array_equal(run_ort(default, held)["y"], run_ort(plain, held)["y"])


def transposed_gemm() -> onnx.ModelProto:
    """x (n x 32) -> Transpose -> Gemm(transA=1): the Gemm's input holds the batch on axis 1."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], name="t", perm=[1, 0]),
             helper.make_node("Gemm", ["xt", "w", "b"], ["y"], name="fc", transA=1)]
    return make_model(nodes, [vi("x", ["n", 32])], [vi("y", ["n", 16])],
                      [init("w", (rng.standard_normal((32, 16)) * 0.2).astype(np.float32)),
                       init("b", rng.standard_normal(16).astype(np.float32))])


def transposed_gemm_inputs(n: int = 20) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {"x": (rng.uniform(2.0, 4.0, 32) + 0.05 * rng.standard_normal((n, 32))).astype(np.float32)}


def test_gemm_trans_a_bias_correction_uses_the_transposed_input():
    """Gemm(transA=1): input vectors are the columns of A; the int32 bias is b - (W_q - W)^T E[x] (first 16 samples)."""
    model, feeds = transposed_gemm(), transposed_gemm_inputs()
    out, rec = quantize_on(model, feeds, batch_size=2)
    assert rec.counters["biases_corrected"] == 1 and rec.counters["rounding_samples"] == 16
    inits = inits_of(out)
    fc = next(n for n in out.graph.node if n.name == "fc")
    wdq, bdq = producer(out, fc.input[1]), producer(out, fc.input[2])
    w_deq = inits[wdq.input[0]].astype(np.float64) * inits[wdq.input[1]]
    w = onnx.numpy_helper.to_array(model.graph.initializer[0]).astype(np.float64)
    b = onnx.numpy_helper.to_array(model.graph.initializer[1]).astype(np.float64)
    want = b - feeds["x"][:16].mean(axis=0) @ (w_deq - w)
    bias_scale = inits[bdq.input[1]]
    np.testing.assert_allclose(inits[bdq.input[0]] * bias_scale, want, atol=float(bias_scale.max()))


def test_gemm_trans_a_with_a_batch_size_not_dividing_the_moment_samples():
    """--calib-batch-size 3 on a Gemm(transA=1) model: the last moment batch is cut on the input's sample
    axis (1: the input is K x M), so it quantizes like batch size 2 (moments over the first 16 samples).
    Failed with a reshape error when the cut went along axis 0."""
    model, feeds = transposed_gemm(), transposed_gemm_inputs()
    out3, rec = quantize_on(model, feeds, batch_size=3)
    assert rec.counters["biases_corrected"] == 1 and rec.counters["rounding_samples"] == 16
    out2, _ = quantize_on(model, feeds, batch_size=2)
    bias3, bias2 = (inits_of(o)[producer(o, next(n for n in o.graph.node if n.name == "fc").input[2]).input[0]]
                    for o in (out3, out2))
    np.testing.assert_array_equal(bias3, bias2)  # the same 16 samples' mean input, cut right


def test_auto_pad_conv_has_no_input_layout():
    """Conv with auto_pad other than NOTSET: no input layout (its weights are rounded to nearest)."""
    w = np.ones((4, 2, 3, 3), np.float32)
    x, y = gs.Variable("x", np.float32), gs.Variable("y", np.float32)
    same = gs.Node("Conv", "c", attrs={"auto_pad": "SAME_UPPER"}, inputs=[x, gs.Constant("w", w)], outputs=[y])
    assert input_layout(same, 1) is None
    plain = gs.Node("Conv", "d", attrs={"pads": [1, 1, 1, 1]}, inputs=[x, gs.Constant("w2", w)], outputs=[gs.Variable("z")])
    assert input_layout(plain, 1) == InputLayout("x", 1, 18, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1))


# --------------------------------------------------------------------------------------------
# plan.py / rules.py


def conv_transpose_model(group: int = 1) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((8, 16 // group, 2, 2)) * 0.3).astype(np.float32)  # Cin x Cout/group x kh x kw
    nodes = [helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], name="up", strides=[2, 2], group=group)]
    return make_model(nodes, [vi("x", [1, 8, 4, 4])], [vi("y", [1, 16, 8, 8])],
                      [init("w", w), init("b", rng.standard_normal(16).astype(np.float32))])


def test_conv_transpose_weights_are_per_output_channel():
    """ConvTranspose weights (Cin, Cout, kh, kw): per-channel scales along axis 1, and an int32 bias."""
    model = conv_transpose_model()
    out, rec = quantize(model, samples=16)
    up = next(n for n in out.graph.node if n.name == "up")
    wdq, inits = producer(out, up.input[1]), inits_of(out)
    assert [a.i for a in wdq.attribute if a.name == "axis"] == [1]
    assert inits[wdq.input[1]].shape == (16,)
    assert rec.counters["biases_int32"] == 1
    assert sqnr_db(model, out) > 30.0


def test_elementwise_op_writing_a_graph_output_stays_float():
    """A Sigmoid whose output is a graph output (and read by an int8 Conv) stays float: that output is exact."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"], name="sig"), helper.make_node("Conv", ["s", "w"], ["y"], name="conv")]
    model = make_model(nodes, [vi("x", [1, 8, 4, 4])], [vi("s", [1, 8, 4, 4]), vi("y", [1, 16, 4, 4])],
                       [init("w", rng.standard_normal((16, 8, 1, 1)).astype(np.float32))])
    out, rec = quantize(model, samples=8)
    assert rec.counters["int8_layers"] == 1  # the Conv only
    feeds = {"x": rng.standard_normal((1, 8, 4, 4)).astype(np.float32)}
    np.testing.assert_array_equal(run_ort(out, feeds)["s"], run_ort(model, feeds)["s"])


def test_exclude_regex_must_match_the_whole_name():
    """--exclude patterns match whole names: 'conv' excludes no node of conv0..conv2 (it only warns)."""
    _, rec = quantize(resnet_block(), exclude=("conv",))
    assert rec.counters["weights_quantized"] == 4 and rec.counters["int8_layers"] >= 4
    _, rec = quantize(resnet_block(), exclude=("conv.",))
    assert rec.counters["weights_quantized"] == 1  # the Gemm only


def matmul_model(k: int, n: int) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    return make_model(nodes, [vi("x", [4, k])], [vi("y", [4, n])], [init("w", rng.standard_normal((k, n)).astype(np.float32))])


@pytest.mark.parametrize("k,n,int8", [(32, 32, False), (32, 128, False), (128, 32, False), (64, 64, True)])
def test_tensorrt_leaves_small_matmuls_in_float(k, n, int8):
    """TensorRT rules: a MatMul weight under 64 on either side stays float; 64x64 goes int8."""
    out, rec = quantize(matmul_model(k, n), target="tensorrt", device="cuda", samples=8)
    assert rec.counters.get("int8_layers", 0) == int(int8)
    assert ("QuantizeLinear" in op_counts(out)) == int8


@pytest.mark.parametrize("target,device,act,symmetric,bias_int32", [
    ("ort", "x86", np.uint8, False, True), ("ort", "arm", np.int8, False, True), ("ort", "cuda", np.int8, False, True),
    ("tensorrt", "cuda", np.int8, True, False), ("tensorrt", "x86", np.int8, True, False), ("tensorrt", "arm", np.int8, True, False)])
def test_rules_per_target_and_device(target, device, act, symmetric, bias_int32):
    """Each (target, device) gets its backend's activation type, symmetry and bias type."""
    r = rules_for(target, device)
    assert (r.activation_dtype, r.symmetric_activations, r.bias_int32) == (act, symmetric, bias_int32)


# --------------------------------------------------------------------------------------------
# sensitivity.py


class StubProbe:
    """Scores a 'model' (the set of layers left in float) by a table: no onnxruntime involved."""

    def __init__(self, score):
        self.score_of = score
        self.evaluations = 0

    def score(self, model):
        self.evaluations += 1
        return self.score_of(model)


SENSITIVITY = {"a": 10.0, "b": 25.0, "c": 15.0, "d": 40.0, "e": 35.0}  # SQNR (dB) with the layer alone in int8


def stub_score(fallback: frozenset) -> Score:
    """Model SQNR: each int8 layer adds noise 10**(-sqnr/10)."""
    noise = sum(10 ** (-s / 10) for name, s in SENSITIVITY.items() if name not in fallback)
    return Score(1.0 - noise, 10 * np.log10(1 / noise) if noise else np.inf)


def test_fallback_takes_the_fewest_most_sensitive_layers():
    """find_fallback: ranks by alone-SQNR, returns the shortest most-sensitive prefix that meets the budget."""
    layers = {name: "compute" for name in SENSITIVITY}
    layers["pool"] = "move"
    budget = ErrorBudget("sqnr", 30.0)  # needs a, c and b in float (3 of 5: 4 would be too many)
    result = find_fallback(lambda extra: extra, layers, StubProbe(stub_score), budget)
    assert result.fallback == ["a", "c", "b"] and result.met
    assert [r["layer"] for r in result.rows] == ["a", "c", "b", "e", "d"]  # not the data-movement op
    assert result.after.sqnr_db >= 30.0


def test_no_fallback_when_the_full_model_meets_the_budget():
    """A budget the fully quantized model meets: nothing falls back, one evaluation."""
    probe = StubProbe(stub_score)
    result = find_fallback(lambda extra: extra, {n: "compute" for n in SENSITIVITY}, probe, ErrorBudget("sqnr", 5.0))
    assert result.fallback == [] and result.met and probe.evaluations == 1


def test_fidelity_is_the_worst_output():
    """FidelityProbe scores a model by its worst output (cosine and SQNR), not its best."""
    x = vi("x", [1, 8])
    ref = make_model([helper.make_node("Identity", ["x"], ["a"]), helper.make_node("Identity", ["x"], ["b"])],
                     [x], [vi("a", [1, 8]), vi("b", [1, 8])])
    bad = make_model([helper.make_node("Identity", ["x"], ["a"]), helper.make_node("Neg", ["x"], ["b"])],
                     [x], [vi("a", [1, 8]), vi("b", [1, 8])])
    feeds = [{"x": np.random.default_rng(0).standard_normal((1, 8)).astype(np.float32)}]
    score = FidelityProbe(ref, feeds).score(bad)
    assert score.cosine == pytest.approx(-1.0, abs=1e-6)
    assert score.sqnr_db < 0  # error twice the signal: -6 dB


def test_sensitivity_ranks_only_layers_with_weights():
    """With a budget not met, only compute layers (convs, Gemm) are measured and ranked, not MaxPool/Add/GAP."""
    model = resnet_block()
    _, rec = quantize(model, samples=8, max_error="sqnr=200", method="minmax")
    ranked = {r["layer"] for r in rec.details if r["detail"] == "sensitivity"}
    assert ranked == {"conv0", "conv1", "conv2", "fc"}


# --------------------------------------------------------------------------------------------
# options.py


def test_budget_is_met_at_equality():
    """--quant-max-error cosine=V / sqnr=V hold when the measured value equals V."""
    assert ErrorBudget("cosine", 0.99).met(0.99, 0.0)
    assert ErrorBudget("sqnr", 30.0).met(0.0, 30.0)
    assert not ErrorBudget("sqnr", 30.0).met(1.0, 29.999)


@pytest.mark.parametrize("call,message", [
    (lambda: parse_percentile(50), "--calib-percentile: expected a number in (50, 100], got 50"),
    (lambda: parse_bins(65537), "--calib-bins: expected 512..65536, got 65537"),
    (lambda: parse_budget("sqnr=inf"), "--quant-max-error: sqnr must be a positive number of dB, got 'inf'"),
    (lambda: parse_positive("1_000", "--calib-batch-size"), "--calib-batch-size: expected a positive integer, got '1_000'"),
    (lambda: parse_positive("08", "--calib-batch-size"), "--calib-batch-size: expected a positive integer, got '08'"),
])
def test_option_bounds_are_usage_errors(call, message):
    """Out-of-range or malformed option values: UsageError with the exact one-line message."""
    with pytest.raises(UsageError) as err:
        call()
    assert str(err.value) == message


def test_option_values_at_the_edges_are_accepted():
    """Edges inside the documented ranges parse as given."""
    assert parse_percentile(100) == 100.0 and parse_bins(65536) == 65536 and parse_bins(512) == 512
    assert parse_positive("+3", "x") == 3 and parse_budget("sqnr=0.5").value == 0.5


def test_override_patterns_match_whole_names_and_split_at_the_last_equals():
    """--calib-override: NAME_OR_REGEX=METHOD split at the last '='; a regex must match the whole name."""
    o = parse_override("r1=minmax")
    assert o.matches("r1") and not o.matches("r10") and not o.matches("xr1")
    o = parse_override("(?=conv)conv1=percentile:99.9")
    assert o.pattern == "(?=conv)conv1" and o.method == MethodSpec("percentile", 99.9)
    assert Override("c.*", MethodSpec("minmax")).matches("conv1")


def test_quant_option_defaults():
    """Moment samples default to 64 for gptq and 16 for bias correction alone; histogram_sample 0 means all values."""
    assert QuantOptions(rounding="gptq").moment_samples == 64
    assert QuantOptions().moment_samples == 16
    assert QuantOptions(rounding="gptq", rounding_samples=8).moment_samples == 8
    assert QuantOptions.from_dict({"histogram_sample": 0}).histogram_sample == 0
    assert QuantOptions.from_dict({"histogram_sample": "0"}).histogram_sample == 0
    assert QuantOptions.from_dict({"histogram_sample": 100}).histogram_sample == 100


# --------------------------------------------------------------------------------------------
# insert_qdq.py


def test_nodes_sharing_a_name_are_each_quantized():
    """Two MatMuls with the same name: both are renamed apart, both weights quantized, output still right."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm"), helper.make_node("MatMul", ["h", "w2"], ["y"], name="mm")]
    model = make_model(nodes, [vi("x", [1, 16])], [vi("y", [1, 16])],
                       [init("w1", rng.standard_normal((16, 16)).astype(np.float32) / 4),
                        init("w2", rng.standard_normal((16, 16)).astype(np.float32) / 4)])
    out, rec = quantize(model, samples=16)
    assert rec.counters["weights_quantized"] == 2 and rec.counters["int8_layers"] == 2
    assert len({n.name for n in out.graph.node if n.op_type == "MatMul"}) == 2
    reference = onnx.ModelProto()
    reference.CopyFrom(model)
    reference.graph.node[1].name = "mm_second"  # onnxruntime refuses the duplicate names of the original
    assert sqnr_db(reference, out) > 25.0
