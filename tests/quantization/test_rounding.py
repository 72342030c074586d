"""Data-aware weight rounding (GPTQ) and bias correction: NumPy references and INT8 accuracy on small models."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from onnxslim.calibration import CalibrationSet
from onnxslim.calibration.data import model_inputs
from onnxslim.errors import UsageError
from onnxslim.pipeline import PassContext
from onnxslim.quantization.emit import quantize_weight
from onnxslim.quantization.moments import InputLayout, InputMoments, _strided_sums
from onnxslim.quantization.options import QuantOptions
from onnxslim.quantization.rounding import BLOCK, gptq
from tests.helpers import apply_passes, init, make_model, run_ort, vi


def reference_gptq(w: np.ndarray, h: np.ndarray, scale: np.ndarray, damp: float = 0.01) -> np.ndarray:
    """Optimal brain quantization written out: explicit inverse, one Schur complement per column."""
    diag = np.diag(h).copy()
    h = h + damp * diag.mean() * np.eye(len(h))
    order = np.argsort(-diag, kind="stable")
    w = w[:, order].astype(np.float64).copy()
    inv = np.linalg.inv(h[np.ix_(order, order)])
    codes = np.zeros_like(w)
    for i in range(w.shape[1]):
        codes[:, i] = np.clip(np.round(w[:, i] / scale), -127, 127)
        err = (w[:, i] - codes[:, i] * scale) / inv[0, 0]
        w[:, i + 1:] -= np.outer(err, inv[0, 1:])
        inv = inv[1:, 1:] - np.outer(inv[1:, 0], inv[0, 1:]) / inv[0, 0]
    out = np.empty_like(codes)
    out[:, order] = codes
    return out


def correlated(rows: int, width: int, seed: int) -> np.ndarray:
    """Inputs with strongly correlated features (a low-rank signal plus a little noise), non-zero mean."""
    basis = np.random.default_rng(width).standard_normal((width // 4, width))  # one distribution per width
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((rows, width // 4)) @ basis + 0.1 * rng.standard_normal((rows, width)) + 0.5).astype(np.float32)


def output_error(w, codes, scale, x):
    e = (codes * scale[:, None] - w) @ x.T
    return float(np.mean(e**2))


@pytest.mark.parametrize("width", [24, BLOCK + 37])
def test_gptq_matches_reference_and_beats_nearest(width):
    rng = np.random.default_rng(width)
    w = rng.standard_normal((12, width)).astype(np.float32)
    x = correlated(4 * width, width, seed=1)
    h = x.T.astype(np.float64) @ x / len(x)
    _, scale = quantize_weight(w, 0)
    codes = gptq(w[None], h[None], scale[None].astype(np.float64))[0]
    want = reference_gptq(w, h, scale.astype(np.float64))
    assert np.mean(codes == want) > 0.999  # the blocked, batched version is the same algorithm
    nearest = np.clip(np.round(w / scale[:, None]), -127, 127)
    held = correlated(2000, width, seed=2)  # held-out inputs from the same distribution
    gain_db = 10 * np.log10(output_error(w, nearest, scale, held) / output_error(w, codes, scale, held))
    assert gain_db > 3.0, gain_db
    assert np.abs(codes).max() <= 127


def test_gptq_with_uncorrelated_inputs_is_nearest():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 40)).astype(np.float32)
    _, scale = quantize_weight(w, 0)
    h = np.diag(rng.uniform(0.5, 2.0, 40))  # independent inputs: nothing to compensate
    codes = gptq(w[None], h[None], scale[None].astype(np.float64))[0]
    np.testing.assert_array_equal(codes, np.clip(np.round(w / scale[:, None]), -127, 127))


def test_gptq_groups_are_independent():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((3, 2, 9)).astype(np.float32)
    xs = [correlated(200, 9, seed=s) for s in range(3)]
    hs = np.stack([x.T.astype(np.float64) @ x / len(x) for x in xs])
    scale = np.abs(w).max(axis=2) / 127
    together = gptq(w, hs, scale)
    for g in range(3):
        np.testing.assert_array_equal(together[g], gptq(w[g:g + 1], hs[g:g + 1], scale[g:g + 1])[0])


# --------------------------------------------------------------------------------------------
# Input layouts: the patches a Conv weight multiplies


@pytest.mark.parametrize("group,stride,pads,dilation", [(1, 1, [1, 1, 1, 1], 1), (2, 2, [0, 1, 2, 0], 1),
                                                        (4, 1, [2, 2, 2, 2], 2)])
def test_conv_patches_reproduce_conv(group, stride, pads, dilation):
    rng = np.random.default_rng(group)
    c, o, k = 4, 6 if group != 4 else 4, 3
    w = rng.standard_normal((o, c // group, k, k)).astype(np.float32)
    model = make_model([helper.make_node("Conv", ["x", "w"], ["y"], group=group, strides=[stride, stride], pads=pads,
                                         dilations=[dilation, dilation])],
                       [vi("x", [2, c, 9, 10])], [vi("y", [None] * 4)], [init("w", w)])
    x = rng.standard_normal((2, c, 9, 10)).astype(np.float32)
    y = run_ort(model, {"x": x})["y"]
    layout = InputLayout("x", group, c // group * k * k, (k, k), (stride, stride), tuple(pads), (dilation, dilation))
    v = layout.vectors(x, 0)  # rows (sample-major), groups, width
    rows_w = w.reshape(group, o // group, -1)
    got = np.einsum("rgd,gkd->rgk", v, rows_w).reshape(2, -1, o).transpose(0, 2, 1)
    np.testing.assert_allclose(got, y.reshape(2, o, -1), rtol=1e-4, atol=1e-4)
    count, total = layout.patch_sums(x)  # the exact mean path agrees with the patches
    assert count == len(v)
    np.testing.assert_allclose(total, v.sum(axis=0), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size", [1, 2, 7, 12, 13])
def test_strided_sums_match_slices(size):
    """Every span a kernel offset can read (any start, stop and step, empty ones too) sums as the slice does."""
    x = np.random.default_rng(size).standard_normal((2, 3, 4, size)).astype(np.float32)
    spans = [slice(a, b, s) for s in (1, 2, 3) for a in range(size) for b in range(a, size + 1)] + [slice(0, 0)]
    for span, got in zip(spans, _strided_sums(x, spans)):
        np.testing.assert_allclose(got, x[..., span].astype(np.float64).sum(axis=-1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel,stride,pads", [((1, 1), (1, 1), (0, 0, 0, 0)), ((3, 3), (2, 2), (1, 1, 1, 1)),
                                                ((5, 3), (3, 2), (2, 0, 1, 2)), ((3, 3), (1, 1), (4, 4, 4, 4))])
def test_patch_sums_match_patches(kernel, stride, pads):
    x = np.random.default_rng(3).standard_normal((3, 2, 11, 9)).astype(np.float32) + 0.5
    layout = InputLayout("x", 1, 2 * kernel[0] * kernel[1], kernel, stride, pads, (1, 1))
    v = layout.vectors(x, 0)
    count, total = layout.patch_sums(x)
    assert count == len(v)
    np.testing.assert_allclose(total, v.astype(np.float64).sum(axis=0), rtol=1e-5, atol=1e-4)


def test_moments_do_not_depend_on_batching():
    layout = InputLayout("x", 1, 3 * 9, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1))
    x = np.random.default_rng(0).standard_normal((6, 3, 12, 12)).astype(np.float32)
    one, three = InputMoments(layout, outer=True), InputMoments(layout, outer=True)
    for i in range(6):
        one.update(x[i:i + 1], 40)
    for i in range(0, 6, 3):
        three.update(x[i:i + 3], 40)
    assert one.count == three.count == 6 * 40
    np.testing.assert_allclose(one.second, three.second, rtol=1e-5, atol=1e-6)  # float32 products, summed per batch
    np.testing.assert_allclose(one.mean, three.mean, rtol=1e-6, atol=1e-9)


# --------------------------------------------------------------------------------------------
# End to end through insert_qdq


def calibration(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> CalibrationSet:
    return CalibrationSet("test arrays", model_inputs(model), [lambda: feeds])


def quantize(model, feeds, **options):
    ctx = PassContext(target="ort", device="x86", options={"insert_qdq": {"progress": False, **options}})
    ctx.data["calibration"] = calibration(model, feeds)
    out, records = apply_passes(model, "infer_shapes,insert_qdq", ctx)
    return out, records[-1]


def sqnr_db(model, quantized, feeds):
    want, got = run_ort(model, feeds), run_ort(quantized, feeds)
    (k,) = want
    return float(10 * np.log10(np.sum(want[k].astype(np.float64) ** 2) / np.sum((want[k] - got[k]) ** 2.0)))


def offset_conv_model(seed: int = 0) -> onnx.ModelProto:
    """A 1x1 Conv with a bias over inputs far from zero: its rounding error is mostly a constant shift."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((16, 32, 1, 1)) * 0.2).astype(np.float32)
    return make_model([helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv")],
                      [vi("x", [None, 32, 6, 6])], [vi("y", [None] * 4)],
                      [init("w", w), init("b", rng.standard_normal(16).astype(np.float32))])


def offset_inputs(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    means = rng.uniform(2.0, 4.0, (1, 32, 1, 1))
    return {"x": (means + 0.05 * rng.standard_normal((n, 32, 6, 6))).astype(np.float32)}


def test_bias_correction_removes_the_mean_rounding_error():
    model = offset_conv_model()
    calib, held = offset_inputs(16, seed=1), offset_inputs(16, seed=2)
    plain, _ = quantize(model, calib, bias_correction=False)
    corrected, record = quantize(model, calib)  # on by default with real calibration data
    assert record.counters["biases_corrected"] == 1
    # NumPy reference: the shift is (W_q - W) E[x], E[x] over the calibration inputs.
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in corrected.graph.initializer}
    w = onnx.numpy_helper.to_array(model.graph.initializer[0])[:, :, 0, 0]
    codes = next(v for k, v in inits.items() if v.dtype == np.int8 and v.ndim == 4)[:, :, 0, 0]
    w_scale = next(v for k, v in inits.items() if v.dtype == np.float32 and v.shape == (16,) and k.endswith("w_scale"))
    bias_q = next(v for v in inits.values() if v.dtype == np.int32)
    bias_scale = next(v for k, v in inits.items() if k.endswith("b_scale"))
    shift = (codes * w_scale[:, None] - w) @ calib["x"].mean(axis=(0, 2, 3))
    b = onnx.numpy_helper.to_array(model.graph.initializer[1])
    np.testing.assert_allclose(bias_q * bias_scale, b - shift, atol=float(bias_scale.max()))
    mean_error = lambda q: np.abs((run_ort(q, held)["y"] - run_ort(model, held)["y"]).mean(axis=(0, 2, 3))).mean()
    assert mean_error(corrected) < 0.5 * mean_error(plain)
    assert sqnr_db(model, corrected, held) > sqnr_db(model, plain, held) + 3.0


def test_bias_correction_off_on_synthetic_calibration():
    from onnxslim.calibration import synthetic

    model = offset_conv_model()
    ctx = PassContext(target="ort", device="x86", options={"insert_qdq": {"progress": False}})
    ctx.data["calibration"] = synthetic(model, 4, seed=0)
    _, records = apply_passes(model, "infer_shapes,insert_qdq", ctx)
    assert "biases_corrected" not in records[-1].counters


def correlated_matmul_model(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((64, 48)) * 0.2).astype(np.float32)
    w[0] *= 30  # one large input weight per output: coarse int8 steps for all the others
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
             helper.make_node("Add", ["m", "b"], ["y"], name="bias")]
    return make_model(nodes, [vi("x", [None, 8, 64])], [vi("y", [None] * 3)],
                      [init("w", w), init("b", rng.standard_normal(48).astype(np.float32))])


def correlated_inputs(n: int, seed: int) -> dict[str, np.ndarray]:
    return {"x": correlated(n * 8, 64, seed).reshape(n, 8, 64)}


def test_gptq_raises_sqnr_of_a_linear_layer():
    model = correlated_matmul_model()
    calib, held = correlated_inputs(64, seed=1), correlated_inputs(32, seed=2)
    nearest, _ = quantize(model, calib, rounding_samples=64)
    rounded, record = quantize(model, calib, rounding="gptq", rounding_samples=64)
    assert record.counters["weights_rounded_gptq"] == 1
    assert record.counters["biases_corrected"] == 1  # the Add after the MatMul holds the bias
    (row,) = [d for d in record.details if d["detail"] == "rounding"]
    assert row["layer"] == "mm" and row["rounding"] == "gptq" and row["bias_shift_max"] > 0
    assert sqnr_db(model, rounded, held) > sqnr_db(model, nearest, held) + 3.0


def test_corrected_float_bias_is_a_new_constant_when_shared():
    model = correlated_matmul_model()
    graph = model.graph
    graph.node.append(helper.make_node("Add", ["y", "b"], ["z"], name="reuse"))  # a second reader of the bias
    graph.output[0].CopyFrom(vi("z", [None] * 3))
    out, record = quantize(model, correlated_inputs(16, seed=1), bias_correction=True)
    assert record.counters["biases_corrected"] == 1
    reuse = next(n for n in out.graph.node if n.name == "reuse")
    assert reuse.input[1] == "b"
    values = {t.name: onnx.numpy_helper.to_array(t) for t in out.graph.initializer}
    np.testing.assert_array_equal(values["b"], onnx.numpy_helper.to_array(model.graph.initializer[1]))


def test_rounding_options():
    assert QuantOptions.from_dict({"rounding": "GPTQ"}).rounding == "gptq"
    with pytest.raises(UsageError, match="--quant-rounding"):
        QuantOptions.from_dict({"rounding": "stochastic"})
    with pytest.raises(UsageError, match="--quant-rounding-samples"):
        QuantOptions.from_dict({"rounding_samples": 0})


def test_cli_rounding_flags(tmp_path):
    from click.testing import CliRunner

    from onnxslim.cli import main

    model_path, calib = tmp_path / "m.onnx", tmp_path / "calib.npz"
    onnx.save(offset_conv_model(), model_path)
    np.savez(calib, **offset_inputs(12, seed=1))

    def counters(*flags):
        report = tmp_path / "r.json"
        result = CliRunner().invoke(main, ["optimize", str(model_path), "--quantize", "int8", "--calib-data", str(calib),
                                           *flags, "-o", str(tmp_path / "q.onnx"), "--report", str(report)])
        assert result.exit_code == 0, result.output
        import json

        return next(p for p in json.loads(report.read_text())["passes"] if p["name"] == "insert_qdq")["counters"]

    assert counters()["biases_corrected"] == 1
    assert "biases_corrected" not in counters("--no-quant-bias-correction")
    gptq = counters("--quant-rounding", "gptq", "--quant-rounding-samples", "8")
    assert gptq["weights_rounded_gptq"] == 1 and gptq["rounding_samples"] == 8
    bad = CliRunner().invoke(main, ["optimize", str(model_path), "--quant-rounding", "gptq"])
    assert bad.exit_code == 2 and "only applies with --quantize" in bad.output
    bad = CliRunner().invoke(main, ["optimize", str(model_path), "--quantize", "int8", "--quant-rounding-samples", "0"])
    assert bad.exit_code == 2 and "--quant-rounding-samples" in bad.output


@pytest.mark.parametrize("channels,block", [(16, 16), (24, 16), (12, 8)])
@pytest.mark.parametrize("kernel,stride,pads", [((1, 1), (1, 1), (0, 0, 0, 0)), ((3, 3), (2, 2), (1, 1, 1, 1))])
def test_moments_from_blocked_activations(channels, block, kernel, stride, pads):
    """Bias-correction means from onnxruntime's NCHWc layout equal those from NCHW (padding left out)."""
    from onnxslim.calibration.collect import Blocked
    from tests.quantization.test_histogram import nchwc

    x = np.random.default_rng(channels).standard_normal((2, channels, 10, 9)).astype(np.float32) + 1.0
    layout = InputLayout("x", 1, channels * kernel[0] * kernel[1], kernel, stride, pads, (1, 1))
    plain, blocked = InputMoments(layout, outer=False), InputMoments(layout, outer=False)
    plain.update(x, 0)
    blocked.update(nchwc(x, block), 0, Blocked(channels, block))
    assert blocked.count == plain.count
    np.testing.assert_allclose(blocked.total, plain.total, rtol=1e-6, atol=1e-5)
