"""Guards of ``--prune`` / ``--prune-macs`` / ``--svd``: bad calibration data, silent no-ops, huge
values and the numbers of their report rows.

Every error is one line on stderr (exit 2, no traceback); every request that does nothing, or
less than asked, says so in a warning; report numbers are checked against hand counts on
two-convolution models.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper

from onnxslim import cli
from onnxslim.errors import UsageError
from onnxslim.pipeline import PassContext
from onnxslim.pruning.reconstruct import Layer, refit
from onnxslim.svd.linalg import Moments, decompose
from tests.helpers import apply_passes, init, make_model, vi
from tests.reliability.test_bad_inputs import error_line

RNG = np.random.default_rng(0)


def _w(*shape, seed=0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * 0.3).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Models (hand counts in the docstrings)


def two_conv(batch=1, h=8) -> onnx.ModelProto:
    """x [b,3,8,8] -> Conv 3x3 (8, bias) -> Relu -> Conv 3x3 (4, bias) -> y; pads 1.

    c1: 8*8*8 outputs x 27 = 13824 MACs, 216 + 8 params; c2: 4*8*8 x 72 = 18432 MACs, 288 + 4."""
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["a"], name="c1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Conv", ["r", "w2", "b2"], ["y"], name="c2", pads=[1, 1, 1, 1])]
    inits = [init("w1", _w(8, 3, 3, 3, seed=1)), init("b1", _w(8, seed=2)), init("w2", _w(4, 8, 3, 3, seed=3)),
             init("b2", _w(4, seed=4))]
    return make_model(nodes, [vi("x", [batch, 3, h, h])], [vi("y", [batch, 4, h, h])], inits)


def flatten_gemm() -> onnx.ModelProto:
    """x [1,3,8,8] -> 1x1 Conv stride 4 (6 ch, 2x2) -> Relu -> Flatten (24 features) -> Gemm (5)."""
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="c1", strides=[4, 4]), helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"], axis=1), helper.make_node("Gemm", ["f", "wg"], ["y"], name="fc", transB=1)]
    return make_model(nodes, [vi("x", [1, 3, 8, 8])], [vi("y", [1, 5])], [init("w1", _w(6, 3, 1, 1)), init("wg", _w(5, 24))])


def shared_weight(both_prunable: bool = False) -> onnx.ModelProto:
    """Two Convs read one initializer w1 on different inputs (x and -x)."""
    nodes = [helper.make_node("Neg", ["x"], ["nx"]),
             helper.make_node("Conv", ["x", "w1"], ["a"], name="c1", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["nx", "w1"], ["b"], name="c2", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["ra"]), helper.make_node("Conv", ["ra", "w2"], ["y1"], name="c3")]
    inits = [init("w1", _w(8, 3, 3, 3, seed=5)), init("w2", _w(4, 8, 1, 1, seed=6))]
    outputs = [vi("y1", [1, 4, 8, 8])]
    if both_prunable:
        nodes += [helper.make_node("Relu", ["b"], ["rb"]), helper.make_node("Conv", ["rb", "w3"], ["y2"], name="c4")]
        inits.append(init("w3", _w(4, 8, 1, 1, seed=7)))
        outputs.append(vi("y2", [1, 4, 8, 8]))
    else:
        outputs.append(vi("b", [1, 8, 8, 8]))  # c2's channels are a model output: left alone
    return make_model(nodes, [vi("x", [1, 3, 8, 8])], outputs, inits)


def spatial_conv() -> onnx.ModelProto:
    """x [1,16,8,8] -> 3x3 Conv (16), pads 1: 16*8*8 x 144 = 147456 MACs."""
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="c", pads=[1, 1, 1, 1])
    return make_model([node], [vi("x", [1, 16, 8, 8])], [vi("y", [1, 16, 8, 8])], [init("w", _w(16, 16, 3, 3))])


def matmul(batch=None, k=32, n=24) -> onnx.ModelProto:
    """x [batch, 32] -> Neg -> MatMul (a rank-4 32x24 weight) -> y."""
    weight = (RNG.standard_normal((k, 4)) @ RNG.standard_normal((4, n))).astype(np.float32)
    nodes = [helper.make_node("Neg", ["x"], ["h"]), helper.make_node("MatMul", ["h", "w"], ["y"], name="mm")]
    b = batch if batch is not None else "n"
    return make_model(nodes, [vi("x", [b, k])], [vi("y", [b, n])], [init("w", weight)])


# --------------------------------------------------------------------------------------------
# Running


def optimize(tmp_path: Path, model: onnx.ModelProto, *args, calib: np.ndarray | None = None):
    """Run ``onnxslim optimize`` with a report; returns (exit code, stderr, report or None, output model or None)."""
    src, out, report = tmp_path / "m.onnx", tmp_path / "out.onnx", tmp_path / "r.json"
    for stale in (out, report):
        stale.unlink(missing_ok=True)
    onnx.save(model, src)
    extra = list(args)
    if calib is not None:
        np.savez(tmp_path / "calib.npz", x=calib)
        extra += ["--calib-data", str(tmp_path / "calib.npz")]
    result = CliRunner().invoke(cli.main, ["optimize", str(src), "-o", str(out), "--report", str(report), *map(str, extra)],
                                catch_exceptions=False)
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    loaded = json.loads(report.read_text()) if report.exists() else None
    return result.exit_code, result.stderr, loaded, onnx.load(out) if out.exists() else None


one_error_line = error_line  # one line on stderr, ours


def only_our_lines(stderr: str) -> None:
    """Nothing but our own messages on stderr: no numpy RuntimeWarning, no onnxruntime dump."""
    for line in stderr.strip().splitlines():
        assert line.startswith("onnxslim: "), f"stray line on stderr: {line!r}\n{stderr}"


def rows(report: dict, name: str) -> tuple[dict, list[dict]]:
    records = [p for p in report["passes"] if p["name"] == name]
    record = next((p for p in records if p["changed"]), records[0])
    return record["counters"], record["details"]


def params(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer)


# --------------------------------------------------------------------------------------------
# 1. MACs after SVD of a spatial Conv


def test_svd_spatial_conv_reports_hand_counted_macs(tmp_path):
    code, stderr, report, _ = optimize(tmp_path, spatial_conv(), "--svd", "rank=2,spatial=1", "--svd-min-size", "1")
    assert code == 0, stderr
    # kh x 1 Conv: 2 x 16 x 8 x 8 outputs x (16 x 3); 1 x kw Conv: 16 x 8 x 8 outputs x (2 x 3)
    hand = 2 * 64 * 16 * 3 + 16 * 64 * 2 * 3
    assert hand == 12288
    assert report["stats"]["before"]["macs"] == 147456
    assert report["stats"]["after"]["macs"] == hand and report["stats"]["after"]["macs_exact"]
    _, details = rows(report, "factorize_svd")
    assert details[0]["macs_after"] == hand
    assert any(p["name"] == "infer_shapes" for p in report["passes"][-2:])  # the stage asks for shapes after the pass


# --------------------------------------------------------------------------------------------
# 2. Calibration samples that do not fit the model


STAGES = [("--prune", "0.5"), ("--svd", "rank=2,method=whiten"), ("--quantize", "int8")]


@pytest.mark.parametrize("option", STAGES, ids=["prune", "svd", "quantize"])
def test_fixed_batch_with_too_few_samples_is_one_line(tmp_path, option):
    model = matmul(batch=4) if option[0] == "--svd" else two_conv(batch=4)
    sample = (3, 32) if option[0] == "--svd" else (3, 3, 8, 8)
    extra = ("--svd-min-size", "1") if option[0] == "--svd" else ()
    code, stderr, _, out = optimize(tmp_path, model, *option, *extra, calib=RNG.standard_normal(sample).astype(np.float32))
    line = one_error_line(stderr)  # quantization calibrated on nothing before, without a word
    assert code == 2 and out is None
    assert "'x'" in line and str([3, *sample[1:]]) in line and str([4, *sample[1:]]) in line, line
    assert "fixed at 4" in line and "give at least 4" in line


def test_input_shape_that_calibration_does_not_match_is_one_line(tmp_path):
    model = two_conv(batch="n", h="h")
    model.graph.input[0].type.tensor_type.shape.dim[3].dim_param = "w"
    code, stderr, _, out = optimize(tmp_path, model, "--prune", "0.5", "--input-shape", "x:1,3,16,16",
                                    calib=RNG.standard_normal((6, 3, 8, 8)).astype(np.float32))
    line = one_error_line(stderr)
    assert code == 2 and out is None
    assert "'x' has shape [" in line and ", 3, 8, 8]" in line and "expects [1, 3, 16, 16]" in line, line


@pytest.mark.parametrize("option", STAGES, ids=["prune", "svd", "quantize"])
def test_fixed_batch_takes_whole_batches_and_verifies(tmp_path, option):
    """13 samples, batch fixed at 2: 2 held out, 11 calibrate (one left out); collection and the
    fidelity check run in batches of 2 (quantization failed its fidelity check before: 'model does not run')."""
    model = matmul(batch=2) if option[0] == "--svd" else two_conv(batch=2)
    shape = (13, 32) if option[0] == "--svd" else (13, 3, 8, 8)
    extra = ("--svd-min-size", "1") if option[0] == "--svd" else ()
    code, stderr, report, out = optimize(tmp_path, model, *option, *extra, calib=RNG.standard_normal(shape).astype(np.float32))
    assert code == 0, stderr
    only_our_lines(stderr)
    assert "left out" in stderr  # 13 - 2 held out = 11: one sample does not fill a batch
    assert report["verification"]["status"] == "measured" and report["verification"]["samples_from"] == "holdout"
    assert report["verification"]["samples"] == 2


def test_onnxruntime_failure_while_collecting_is_one_line():
    """The safety net behind the up-front check (a caller handing the pass mismatched samples)."""
    model = two_conv()
    bad = [{"x": np.zeros((1, 3, 5, 5), np.float32)} for _ in range(4)]
    ctx = PassContext(options={"prune_channels": {"ratio": 0.5, "criterion": "activation"}}, data={"calibration": bad})
    with pytest.raises(UsageError) as info:
        apply_passes(model, "infer_shapes,prune_channels", ctx)
    assert len(str(info.value).splitlines()) == 1 and "onnxruntime cannot run" in str(info.value)


# --------------------------------------------------------------------------------------------
# 3. No silent no-ops


def test_prune_zero_warns_and_leaves_the_model(tmp_path):
    code, stderr, report, out = optimize(tmp_path, two_conv(), "--prune", "0")
    assert code == 0 and "nothing to prune" in stderr and "--prune 0" in stderr
    assert params(out) == params(two_conv())


def test_ratio_too_small_for_any_group_warns(tmp_path):
    code, stderr, _, out = optimize(tmp_path, two_conv(), "--prune", "0.05")
    assert code == 0 and "--prune 0.05 removes no channel" in stderr
    assert params(out) == params(two_conv())


def test_unreachable_mac_target_says_how_much_was_reached(tmp_path):
    code, stderr, report, _ = optimize(tmp_path, two_conv(), "--prune-macs", "0.95")
    assert code == 0
    counters, _ = rows(report, "prune_channels")
    reached = 1 - counters["macs_after"] / counters["macs_before"]
    assert reached < 0.95
    assert f"--prune-macs 0.95 cannot be reached: {100 * reached:.1f}% of the MACs removed" in stderr


def test_bn_criterion_without_batchnorm_warns_about_the_fallback(tmp_path):
    code, stderr, report, _ = optimize(tmp_path, two_conv(), "--prune", "0.5", "--prune-criterion", "bn")
    assert code == 0
    assert "--prune-criterion bn" in stderr and "fall back to l1" in stderr and "--skip fuse_conv_bn" in stderr
    _, details = rows(report, "prune_channels")
    assert details[0]["criterion"].startswith("bn (fell back to l1")


def test_svd_whiten_on_spatial_conv_warns(tmp_path):
    code, stderr, report, _ = optimize(tmp_path, spatial_conv(), "--svd", "rank=2,spatial=1,method=whiten", "--svd-min-size", "1")
    assert code == 0 and "method=whiten does not apply to spatial" in stderr
    assert rows(report, "factorize_svd")[1][0]["method"] == "plain"


def test_prune_pass_without_an_amount_is_a_usage_error(tmp_path):
    code, stderr, _, out = optimize(tmp_path, two_conv(), "--passes", "infer_shapes,prune_channels")
    line = one_error_line(stderr)
    assert code == 2 and out is None and "--prune" in line


@pytest.mark.parametrize("option, name", [(("--prune", "0.5"), "prune_channels"), (("--svd", "rank=2"), "factorize_svd")])
def test_pass_in_passes_and_stage_option_runs_once(tmp_path, option, name):
    model = two_conv() if name == "prune_channels" else matmul()
    extra = ("--svd-min-size", "1") if name == "factorize_svd" else ()
    code, stderr, report, out = optimize(tmp_path, model, "--passes", f"infer_shapes,{name}", *option, *extra)
    assert code == 0 and report["pipeline"].count(name) == 1  # the stage does not add it a second time
    assert sum(p["name"] == name and p["changed"] for p in report["passes"]) == 1
    code, stderr, report, out = optimize(tmp_path, model, "--passes", f"infer_shapes,{name},{name}", *option, *extra)
    assert code == 0 and "runs once" in stderr  # named twice by the user: the second run declines, with a word
    assert sum(p["name"] == name and p["changed"] for p in report["passes"]) == 1
    if name == "prune_channels":  # 8 -> 4 channels, not 8 -> 4 -> 2
        assert sorted(list(t.dims) for t in out.graph.initializer if len(t.dims) == 4) == [[4, 3, 3, 3], [4, 4, 3, 3]]


def test_shared_weight_that_would_grow_the_model_is_left_alone(tmp_path):
    code, stderr, report, out = optimize(tmp_path, shared_weight(), "--prune", "0.5")
    assert code == 0
    assert "'w1' is shared by c1, c2" in stderr and "would grow by 108 parameters" in stderr
    assert report["stats"]["after"]["parameters"] <= report["stats"]["before"]["parameters"]
    statuses = {r["group"]: r["status"] for r in rows(report, "prune_channels")[1] if "group" in r}
    assert statuses["c1"] == "left alone"


@pytest.mark.parametrize("build", [two_conv, flatten_gemm, shared_weight, lambda: shared_weight(True)],
                         ids=["two-conv", "flatten-gemm", "shared-frozen", "shared-both"])
@pytest.mark.parametrize("amount", [("--prune", "0.3"), ("--prune", "0.6"), ("--prune-macs", "0.5")], ids=["0.3", "0.6", "macs"])
def test_pruning_never_makes_the_model_bigger(tmp_path, build, amount):
    model = build()
    code, stderr, report, out = optimize(tmp_path, model, *amount)
    assert code == 0, stderr
    assert params(out) <= params(model)
    assert report["stats"]["after"]["parameters"] <= report["stats"]["before"]["parameters"]


def test_identically_sliced_shared_weight_stays_shared():
    """Two Convs on x and -x share w1 and their outputs are added: one group, one sliced copy."""
    nodes = [helper.make_node("Neg", ["x"], ["nx"]), helper.make_node("Conv", ["x", "w1"], ["a"], name="c1"),
             helper.make_node("Conv", ["nx", "w1"], ["b"], name="c2"), helper.make_node("Add", ["a", "b"], ["s"]),
             helper.make_node("Conv", ["s", "w2"], ["y"], name="c3")]
    model = make_model(nodes, [vi("x", [1, 3, 8, 8])], [vi("y", [1, 4, 8, 8])],
                       [init("w1", _w(8, 3, 1, 1)), init("w2", _w(4, 8, 1, 1))])
    ctx = PassContext(options={"prune_channels": {"ratio": 0.5}})
    out, records = apply_passes(model, "infer_shapes,prune_channels", ctx)
    assert records[-1].changed
    convs = [n for n in out.graph.node if n.op_type == "Conv"]
    assert convs[0].input[1] == convs[1].input[1]  # one sliced copy
    assert params(out) == 4 * 3 + 4 * 4


# --------------------------------------------------------------------------------------------
# 4. Huge calibration values


def test_svd_with_huge_calibration_values_falls_back_to_plain(tmp_path):
    calib = (RNG.standard_normal((20, 32)) * 1e30).astype(np.float32)
    code, stderr, report, _ = optimize(tmp_path, matmul(), "--svd", "rank=2,method=whiten", "--svd-min-size", "1", calib=calib)
    assert code == 0, stderr
    only_our_lines(stderr)
    assert "overflow" in stderr
    row = rows(report, "factorize_svd")[1][0]
    assert row["factorized"] and row["method"] == "plain" and row["calib_error"] is None and "overflow" in row["note"]


def test_prune_with_huge_calibration_values_skips_reconstruction(tmp_path):
    calib = np.full((8, 3, 8, 8), 1e30, np.float32)
    code, stderr, report, _ = optimize(tmp_path, two_conv(), "--prune", "0.5", calib=calib)
    assert code == 0, stderr
    only_our_lines(stderr)
    assert "reconstruction skipped" in stderr and "overflow" in stderr
    refits = [r for r in rows(report, "prune_channels")[1] if "layer" in r]
    assert refits and not refits[0]["refit"] and "overflow" in refits[0]["reconstruction"]


def test_linear_algebra_on_overflowed_statistics_is_one_line():
    moments = Moments(4)
    moments.add(np.full((3, 4), 1e30, np.float32))
    assert not moments.finite()
    with pytest.raises(np.linalg.LinAlgError) as info:
        decompose(np.ones((4, 6)), calib=moments, whiten=True)
    assert len(str(info.value).splitlines()) == 1
    layer = Layer(None, np.ones((2, 3)), np.zeros(2), fit=np.full((4, 4), np.inf), val=np.eye(4))
    assert refit(layer, np.array([True, False, True]), np.ones(2, bool)) is None
    assert "overflow" in layer.result["reconstruction"]


# --------------------------------------------------------------------------------------------
# 5. Report rows against hand counts


def test_prune_rows_of_two_convs_match_hand_counts(tmp_path):
    code, stderr, report, out = optimize(tmp_path, two_conv(), "--prune", "0.5")
    assert code == 0, stderr
    counters, details = rows(report, "prune_channels")
    by_group = {r["group"]: r for r in details}
    c1, c2 = by_group["c1"], by_group["c2"]
    assert (c1["status"], c1["channels_before"], c1["channels_after"]) == ("pruned", 8, 4)
    assert (c1["macs_before"], c1["macs_after"], c1["params_before"], c1["params_after"]) == (13824, 6912, 224, 112)
    # c2 keeps its channels (a model output) but reads half as many: not "left alone"/"unchanged"
    assert (c2["status"], c2["channels_before"], c2["channels_after"]) == ("inputs pruned", 4, 4)
    assert (c2["macs_before"], c2["macs_after"], c2["params_before"], c2["params_after"]) == (18432, 9216, 292, 148)
    assert counters["channels_removed"] == 4 and counters["groups_pruned"] == 1 and counters["groups_left_alone"] == 1
    assert (counters["macs_before"], counters["macs_after"]) == (13824 + 18432, 6912 + 9216)
    assert counters["params_removed"] == params(two_conv()) - params(out) == 256
    # every layer counted once: rows add up to the totals
    assert sum(r["macs_before"] for r in details) == counters["macs_before"]
    assert sum(r["macs_after"] for r in details) == counters["macs_after"]
    assert report["stats"]["after"]["macs"] == counters["macs_after"]


def test_flatten_into_gemm_counts_channels_not_features(tmp_path):
    code, stderr, report, out = optimize(tmp_path, flatten_gemm(), "--prune", "0.5")
    assert code == 0, stderr
    counters, details = rows(report, "prune_channels")
    c1, fc = ({r["group"]: r for r in details}[g] for g in ("c1", "fc"))
    assert (c1["channels_before"], c1["channels_after"], c1["units_before"], c1["units_after"]) == (6, 3, 6, 3)
    assert counters["channels_removed"] == 3
    # the Gemm lost 3 channels x 2 x 2 = 12 of its 24 input features
    assert [list(t.dims) for t in out.graph.initializer if len(t.dims) == 2] == [[5, 12]]
    assert (fc["params_before"], fc["params_after"], fc["macs_before"], fc["macs_after"]) == (120, 60, 120, 60)
    assert (c1["macs_before"], c1["macs_after"]) == (6 * 4 * 3, 3 * 4 * 3)
    assert sum(r["macs_before"] for r in details) == counters["macs_before"] == 72 + 120


def test_shared_weight_is_counted_once_and_statuses_match_the_numbers():
    model = shared_weight(both_prunable=True)
    for table in ({"c1": 0.5, "*": 0.0}, {"*": 0.5}):  # c1 alone would need its own copy of w1: left alone
        ctx = PassContext(options={"prune_channels": {"per_layer": table}})
        out, records = apply_passes(model, "infer_shapes,prune_channels", ctx)
        details = [r for r in records[-1].details if "group" in r]
        # w1 (216) + w2 (32) + w3 (32): each constant in exactly one row
        assert sum(r["params_before"] for r in details) == 216 + 32 + 32 == params(model)
        assert sum(r["params_before"] - r["params_after"] for r in details) == params(model) - params(out)
        for r in details:
            numbers = ("macs", "params", "channels")
            same = all(r[f"{k}_after"] == r[f"{k}_before"] for k in numbers)
            assert same == (r["status"] in ("unchanged", "left alone")), r
            assert (r["channels_after"] < r["channels_before"]) == (r["status"] == "pruned"), r
        statuses = {r["group"]: r["status"] for r in details}
        if "c1" in table:
            assert statuses["c1"] == "left alone" and not records[-1].changed


def test_every_svd_candidate_has_a_row_with_a_reason():
    w = (RNG.standard_normal((32, 24))).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"], name="one"), helper.make_node("MatMul", ["x", "w"], ["b"], name="two"),
             helper.make_node("Conv", ["xc", "wg"], ["c"], name="grouped", group=2)]
    model = make_model(nodes, [vi("x", [4, 32]), vi("xc", [1, 32, 4, 4])],
                       [vi("a", [4, 24]), vi("b", [4, 24]), vi("c", [1, 24, 4, 4])],
                       [init("w", w), init("wg", _w(24, 16, 1, 1))])
    ctx = PassContext(options={"factorize_svd": {"rule": "rank", "value": 2, "min_size": 1}})
    _, records = apply_passes(model, "factorize_svd", ctx)
    reasons = {r["layer"]: r["reason"] for r in records[-1].details}
    assert set(reasons) == {"one", "two", "grouped"}
    assert "shared by 2 nodes" in reasons["one"] and "grouped" in reasons["grouped"]
    assert not any(r["factorized"] for r in records[-1].details)
    assert records[-1].counters["layers_declined"] == 3
