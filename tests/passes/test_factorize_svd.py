"""factorize_svd: structure and numerics of every site kind, rank rules, declines, options, data-aware SVD."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from onnxslim import cli
from onnxslim.calibration import load_calibration
from onnxslim.errors import UsageError
from onnxslim.pipeline import PassContext
from onnxslim.stages.svd import SvdStage
from onnxslim.svd import SvdSpec
from tests.helpers import apply_passes, assert_equivalent, init, make_model, op_counts, run_ort, vi

K, N, M = 48, 40, 6


def low_rank(rows: int, cols: int, rank: int, seed: int = 0, dtype=np.float32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((rows, rank)) @ rng.standard_normal((rank, cols)) / np.sqrt(rank)).astype(dtype)


def ctx_for(rule: str = "energy", value: float = 1.0, **settings) -> PassContext:
    settings.setdefault("min_size", 1)
    return PassContext(options={"factorize_svd": {"rule": rule, "value": value, **settings}})


def factorize(model: onnx.ModelProto, ctx: PassContext):
    out, records = apply_passes(model, "factorize_svd", ctx)
    return out, records[-1]


def matmul_model(weight: np.ndarray, a_shape=(M, K), weight_first=False, dtype=TensorProto.FLOAT) -> onnx.ModelProto:
    inputs = ["w", "x"] if weight_first else ["x", "w"]
    out_shape = [weight.shape[0], a_shape[-1]] if weight_first else [*a_shape[:-1], weight.shape[1]]
    if weight_first and len(a_shape) > 2:
        out_shape = [*a_shape[:-2], weight.shape[0], a_shape[-1]]
    node = helper.make_node("MatMul", inputs, ["y"], name="mm")
    return make_model([node], [vi("x", list(a_shape), dtype)], [vi("y", out_shape, dtype)], [init("w", weight)])


# --------------------------------------------------------------------------- MatMul


def test_low_rank_matmul_becomes_two_matmuls_exactly():
    model = matmul_model(low_rank(K, N, 4))
    out, record = factorize(model, ctx_for("energy", 1.0))
    assert op_counts(model) == {"MatMul": 1} and op_counts(out) == {"MatMul": 2}
    assert record.changed and record.counters["layers_factorized"] == 1
    assert record.counters["params_removed"] == K * N - 4 * (K + N)
    (row,) = record.details
    assert row["rank"] == 4 and row["factorized"] and row["shape"] == [K, N]
    assert row["macs_before"] == M * K * N and row["macs_after"] == M * 4 * (K + N) and row["macs_exact"]
    assert row["bytes_before"] == 4 * K * N and row["bytes_after"] == 4 * 4 * (K + N)
    assert [o.name for o in out.graph.output] == ["y"]
    assert_equivalent(model, out)


def test_full_rank_factorization_reconstructs_exactly():
    """r = min(K, N) (forced past the size check): equal to the original at fp32 tolerance."""
    weight = np.random.default_rng(1).standard_normal((K, N)).astype(np.float32)
    model = matmul_model(weight, a_shape=(2, M, K))
    out, record = factorize(model, ctx_for("rank", min(K, N), min_saving=-10.0))
    assert op_counts(out) == {"MatMul": 2}
    assert record.details[0]["rank"] == min(K, N)
    assert_equivalent(model, out, seeds=(0, 1, 2))


@pytest.mark.parametrize("a_shape", [(K, 7), (3, K, 7)])
def test_constant_first_matmul_operand(a_shape):
    weight = low_rank(N, K, 3, seed=2)  # y = W @ x, W is N x K
    model = matmul_model(weight, a_shape=a_shape, weight_first=True)
    out, record = factorize(model, ctx_for("rank", 3))
    assert op_counts(out) == {"MatMul": 2}
    assert record.details[0]["kind"] == "matmul_left" and record.details[0]["shape"] == [K, N]
    assert_equivalent(model, out)


def test_float16_weights():
    model = matmul_model(low_rank(K, N, 4, dtype=np.float16), dtype=TensorProto.FLOAT16)
    out, _ = factorize(model, ctx_for("rank", 4))
    assert op_counts(out) == {"MatMul": 2}
    assert_equivalent(model, out)


def test_rank_by_energy_matches_numpy_reference():
    rng = np.random.default_rng(3)
    weight = (rng.standard_normal((K, N)) * np.geomspace(1, 0.01, N)).astype(np.float32)
    s = np.linalg.svd(weight.astype(np.float64), compute_uv=False)
    cumulative = np.cumsum(s**2) / np.sum(s**2)
    for energy in (0.5, 0.8, 0.9, 0.95, 0.99):
        expected = int(np.argmax(cumulative >= energy)) + 1
        _, record = factorize(matmul_model(weight), ctx_for("energy", energy, min_saving=-10.0))
        row = record.details[0]
        assert row["rank"] == expected, energy
        assert row["energy_kept"] == pytest.approx(cumulative[expected - 1], abs=1e-6)


def test_rank_by_ratio():
    _, record = factorize(matmul_model(low_rank(K, N, 30)), ctx_for("ratio", 0.5))
    assert record.details[0]["rank"] == int(0.5 * K * N / (K + N))


# --------------------------------------------------------------------------- Gemm

GEMM_CASES = [
    # weight operand, transA, transB, alpha, beta, C shape (None: no C)
    ("B", 0, 0, 1.0, 1.0, (N,)),
    ("B", 1, 0, 0.5, 2.0, (1, N)),
    ("B", 0, 1, 1.5, 0.5, (M, N)),
    ("B", 1, 1, 2.0, 1.0, (M, 1)),
    ("B", 0, 0, 1.0, 3.0, ()),
    ("B", 0, 1, 0.7, 1.0, None),
    ("A", 0, 0, 1.0, 1.0, (N, 1)),
    ("A", 1, 1, 0.5, 2.0, (1, M)),
    ("A", 0, 1, 1.0, 1.0, None),
    ("A", 1, 0, 2.0, 0.5, (N, M)),
]


def gemm_model(operand, trans_a, trans_b, alpha, beta, c_shape, opset=18):
    rng = np.random.default_rng(4)
    if operand == "B":  # y = alpha op(x) op(W) + beta C: x is M x K (or K x M), W is K x N (or N x K)
        w = low_rank(K, N, 5, seed=5)
        w = w.T.copy() if trans_b else w
        x_shape = [K, M] if trans_a else [M, K]
        names, out_shape = ["x", "w"], [M, N]
    else:  # y = alpha op(W) op(x) + beta C: W is N x K (or K x N), x is K x M (or M x K)
        w = low_rank(N, K, 5, seed=6)
        w = w.T.copy() if trans_a else w
        x_shape = [M, K] if trans_b else [K, M]
        names, out_shape = ["w", "x"], [N, M]
    inits = [init("w", w)]
    if c_shape is not None:
        inits.append(init("c", rng.standard_normal(c_shape).astype(np.float32)))
        names.append("c")
    node = helper.make_node("Gemm", names, ["y"], name="gemm", alpha=alpha, beta=beta, transA=trans_a, transB=trans_b)
    return make_model([node], [vi("x", x_shape)], [vi("y", out_shape)], inits, opset=opset)


@pytest.mark.parametrize("operand,trans_a,trans_b,alpha,beta,c_shape", GEMM_CASES)
def test_gemm_variants(operand, trans_a, trans_b, alpha, beta, c_shape):
    model = gemm_model(operand, trans_a, trans_b, alpha, beta, c_shape)
    out, record = factorize(model, ctx_for("rank", 5))
    assert record.changed and record.details[0]["kind"] == ("gemm" if operand == "B" else "gemm_left")
    counts = op_counts(out)
    assert sum(counts.values()) == 2 and set(counts) <= {"Gemm", "MatMul"}
    trans = trans_b if operand == "A" else trans_a
    assert counts.get("Gemm", 0) == int(c_shape is not None) + int(bool(trans))
    assert_equivalent(model, out, seeds=(0, 1, 2))


def test_gemm_opset_9_without_transpose():
    model = gemm_model("B", 0, 1, 0.5, 2.0, (N,), opset=9)
    out, _ = factorize(model, ctx_for("rank", 5))
    assert op_counts(out) == {"MatMul": 1, "Gemm": 1}
    assert_equivalent(model, out)


def test_gemm_opset_9_with_transposed_activation_is_declined():
    model = gemm_model("B", 1, 0, 1.0, 1.0, (N,), opset=9)
    ctx = ctx_for("rank", 5)
    out, record = factorize(model, ctx)
    assert not record.changed and op_counts(out) == {"Gemm": 1}
    assert "opset >= 11" in ctx.notes[0]["reason"]


# --------------------------------------------------------------------------- Conv


def conv_model(weight, bias=True, x_hw=(9, 9), **attrs):
    cout, cin = weight.shape[:2]
    names = ["x", "w", "b"] if bias else ["x", "w"]
    inits = [init("w", weight)] + ([init("b", np.random.default_rng(7).standard_normal(cout).astype(np.float32))] if bias else [])
    node = helper.make_node("Conv", names, ["y"], name="conv", **attrs)
    graph = helper.make_graph([node], "g", [vi("x", [2, cin, *x_hw])], [vi("y", None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model)


@pytest.mark.parametrize("attrs", [{}, {"strides": [2, 2], "pads": [1, 0, 1, 0]}, {"kernel_shape": [1, 1], "strides": [2, 1]}])
def test_pointwise_conv_becomes_two_pointwise_convs(attrs):
    weight = low_rank(N, K, 4, seed=8).reshape(N, K, 1, 1)
    model = conv_model(weight, **attrs)
    out, record = factorize(model, ctx_for("rank", 4))
    assert op_counts(out) == {"Conv": 2}
    convs = list(out.graph.node)
    assert [list(onnx.numpy_helper.to_array(i).shape) for i in out.graph.initializer if i.name != "b"] == [[4, K, 1, 1], [N, 4, 1, 1]]
    assert len(convs[1].input) == 3 and convs[1].input[2] == "b"
    assert record.details[0]["kind"] == "conv" and record.details[0]["macs_exact"]
    assert_equivalent(model, out)


def test_spatial_svd_splits_kxk_conv():
    cout, cin, kh, kw, r = 32, 24, 3, 3, 4
    matrix = low_rank(cin * kh, cout * kw, r, seed=9)  # [(c,i), (o,j)]
    weight = np.ascontiguousarray(matrix.reshape(cin, kh, cout, kw).transpose(2, 0, 1, 3))
    model = conv_model(weight, strides=[2, 1], pads=[1, 2, 0, 1], dilations=[1, 2])
    out, record = factorize(model, ctx_for("rank", r, spatial=True))
    assert op_counts(out) == {"Conv": 2}
    kernels = [tuple(a.ints) for n in out.graph.node for a in n.attribute if a.name == "kernel_shape"]
    assert kernels == [(3, 1), (1, 3)]
    assert record.details[0]["kind"] == "conv_spatial"
    assert_equivalent(model, out)
    # Without spatial=1 a 3x3 Conv is not a candidate at all.
    _, plain = factorize(model, ctx_for("rank", r))
    assert not plain.changed and plain.details == []


def test_grouped_conv_is_declined():
    model = conv_model(low_rank(N, K // 2, 2).reshape(N, K // 2, 1, 1), group=2)
    ctx = ctx_for("rank", 2)
    out, record = factorize(model, ctx)
    assert not record.changed and op_counts(out) == {"Conv": 1}
    assert "grouped" in ctx.notes[0]["reason"]


# --------------------------------------------------------------------------- declines


def test_layer_that_would_not_shrink_is_left_alone():
    weight = np.random.default_rng(10).standard_normal((K, N)).astype(np.float32)  # flat spectrum
    model = matmul_model(weight)
    ctx = ctx_for("energy", 0.99)
    out, record = factorize(model, ctx)
    assert not record.changed
    assert out.graph == model.graph
    (row,) = record.details
    assert not row["factorized"] and "would not shrink" in row["reason"]
    assert row["rank"] * (K + N) > 0.9 * K * N
    assert ctx.notes and ctx.notes[0]["pass"] == "factorize_svd"
    assert record.counters == {"layers_factorized": 0, "layers_declined": 1}


def test_small_layers_and_other_nodes_are_left_alone():
    w = low_rank(K, N, 2)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["a"], name="small"),  # below min_size
        helper.make_node("MatMul", ["a", "x2"], ["b"], name="dynamic"),  # no constant operand
        helper.make_node("MatMul", ["b", "w2"], ["c"], name="custom", domain="com.example"),
    ]
    graph = helper.make_graph(nodes, "g", [vi("x", [M, K]), vi("x2", [N, N])], [vi("c", [M, N])],
                              [init("w", w), init("w2", low_rank(N, N, 2))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.example", 1)])
    model.ir_version = 8
    ctx = ctx_for("rank", 2, min_size=64)
    out, records = apply_passes(model, "factorize_svd", ctx, check=False)  # the checker does not know com.example
    assert not records[-1].changed and out.graph == model.graph
    assert not ctx.notes  # a size filter is the user's choice, not a failed rewrite (--strict passes)
    (row,) = records[-1].details
    assert row["layer"] == "small" and not row["factorized"] and "minimum size 64" in row["reason"]


def test_shared_and_integer_weights_are_declined():
    w = low_rank(K, N, 2)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"], name="one"), helper.make_node("MatMul", ["x", "w"], ["b"], name="two"),
             helper.make_node("MatMul", ["xi", "wi"], ["c"], name="int")]
    model = make_model(nodes, [vi("x", [M, K]), vi("xi", [M, K], TensorProto.INT32)],
                       [vi("a", [M, N]), vi("b", [M, N]), vi("c", [M, N], TensorProto.INT32)],
                       [init("w", w), init("wi", np.ones((K, N), np.int32))])
    ctx = ctx_for("rank", 2)
    out, record = factorize(model, ctx)
    assert not record.changed and out.graph == model.graph
    reasons = {n["where"]: n["reason"] for n in ctx.notes}
    assert "shared by 2 nodes" in reasons["one"] and "shared by 2 nodes" in reasons["two"]
    assert "int32" in reasons["int"]


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize("text", ["energy=1.5", "energy=0", "rank=0", "rank=2.5", "ratio=2", "ratio=1", "error=0",
                                  "garbage", "energy", "energy=abc", "", "rank=4,rank=5", "energy=0.9,ratio=0.5",
                                  "rank=4,method=magic", "rank=4,colour=red", "rank=4,min_saving=-1", "rank=4,spatial=maybe"])
def test_bad_svd_values_are_usage_errors(text):
    with pytest.raises(UsageError, match="--svd"):
        SvdSpec.parse(text)


def test_spec_parsing_and_stage():
    spec = SvdSpec.parse("energy=0.9, method=plain, damp=0.1, spatial=1", min_size=64)
    assert (spec.rule, spec.value, spec.method, spec.damp, spec.spatial, spec.min_size) == ("energy", 0.9, "plain", 0.1, True, 64)
    ctx = PassContext()
    stage = SvdStage()
    assert stage.configure({"svd": None}, onnx.ModelProto(), ctx) == [] and not ctx.options
    assert stage.configure({"svd": "rank=8", "svd_min_size": 32}, onnx.ModelProto(), ctx) == ["factorize_svd", "infer_shapes"]
    assert SvdSpec.from_options(ctx.options["factorize_svd"]) == SvdSpec("rank", 8, min_size=32)
    with pytest.raises(UsageError, match="only applies with --svd"):
        stage.configure({"svd": None, "svd_min_size": 32}, onnx.ModelProto(), ctx)
    with pytest.raises(UsageError, match="min-size"):
        stage.configure({"svd": "rank=8", "svd_min_size": 0}, onnx.ModelProto(), ctx)


def test_pass_without_options_is_a_usage_error():
    with pytest.raises(UsageError, match="--svd"):
        factorize(matmul_model(low_rank(K, N, 2)), PassContext())


@pytest.mark.parametrize("value", ["energy=1.5", "rank=0", "ratio=2", "garbage"])
def test_cli_bad_svd_value_exits_2(tmp_path, value):
    path = tmp_path / "m.onnx"
    onnx.save_model(matmul_model(low_rank(K, N, 2)), path)
    result = CliRunner().invoke(cli.main, ["optimize", str(path), "--svd", value], catch_exceptions=False)
    assert result.exit_code == 2 and "--svd" in result.output
    assert not (tmp_path / "m.opt.onnx").exists()


# --------------------------------------------------------------------------- data-aware


def correlated_model_and_data(tmp_path: Path, latent: int = 6, samples: int = 64):
    """A model whose MatMul inputs live near a low-dimensional subspace, with calibration data from it."""
    rng = np.random.default_rng(11)
    mix = rng.standard_normal((latent, K))
    weight = rng.standard_normal((K, N)).astype(np.float32)

    def draw(n):
        z = rng.standard_normal((n, 4, latent))
        return (z @ mix + 0.05 * rng.standard_normal((n, 4, K))).astype(np.float32)

    nodes = [helper.make_node("Neg", ["x"], ["h"], name="neg"), helper.make_node("MatMul", ["h", "w"], ["y"], name="mm")]
    model = make_model(nodes, [vi("x", ["batch", 4, K])], [vi("y", ["batch", 4, N])], [init("w", weight)])
    np.savez(tmp_path / "calib.npz", x=draw(samples))
    return model, load_calibration(tmp_path / "calib.npz", model), [{"x": draw(1)} for _ in range(16)]


def heldout_error(model, out, holdout) -> float:
    err = ref = 0.0
    for feeds in holdout:
        want, got = run_ort(model, feeds)["y"], run_ort(out, feeds)["y"]
        err, ref = err + float(np.sum((want - got) ** 2)), ref + float(np.sum(want**2))
    return float(np.sqrt(err / ref))


def test_data_aware_beats_plain_svd_at_the_same_rank(tmp_path):
    model, calib, holdout = correlated_model_and_data(tmp_path)
    results = {}
    for method in ("plain", "whiten"):
        ctx = ctx_for("rank", 8, method=method, damp=1e-3)
        ctx.data.update(calibration=calib, holdout=holdout)
        out, record = factorize(model, ctx)
        row = record.details[0]
        assert row["method"] == method and row["rank"] == 8 and op_counts(out) == {"Neg": 1, "MatMul": 2}
        measured = heldout_error(model, out, holdout)
        assert row["holdout_error"] == pytest.approx(measured, rel=1e-3, abs=1e-5)  # the report is the truth
        results[method] = measured
    assert results["whiten"] < 0.05 < 0.5 < results["plain"], results


def test_error_budget_picks_the_smallest_rank_within_it(tmp_path):
    model, calib, holdout = correlated_model_and_data(tmp_path, latent=10)
    ctx = ctx_for("error", 0.05, method="whiten", damp=1e-4)
    ctx.data.update(calibration=calib, holdout=holdout)
    _, record = factorize(model, ctx)
    row = record.details[0]
    assert row["calib_error"] <= 0.05
    smaller = ctx_for("rank", row["rank"] - 1, method="whiten", damp=1e-4, min_saving=-10.0)
    smaller.data.update(calibration=calib, holdout=holdout)
    _, record = factorize(model, smaller)
    assert record.details[0]["calib_error"] > 0.05


def test_shared_activation_statistics_and_cache(tmp_path, caplog):
    """Q/K/V-like MatMuls read one activation; a cache dict lets a sweep skip recollection."""
    rng = np.random.default_rng(12)
    nodes = [helper.make_node("MatMul", ["x", f"w{i}"], [f"y{i}"], name=f"mm{i}") for i in range(3)]
    inits = [init(f"w{i}", rng.standard_normal((K, N)).astype(np.float32)) for i in range(3)]
    model = make_model(nodes, [vi("x", ["batch", K])], [vi(f"y{i}", ["batch", N]) for i in range(3)], inits)
    np.savez(tmp_path / "calib.npz", x=(rng.standard_normal((40, 5)) @ rng.standard_normal((5, K))).astype(np.float32))
    calib = load_calibration(tmp_path / "calib.npz", model)
    cache: dict = {}
    holdout: list = []
    for rank in (5, 6):
        ctx = ctx_for("rank", rank)
        ctx.data.update(calibration=calib, holdout=holdout, svd_cache=cache)
        with caplog.at_level(logging.WARNING, logger="onnxslim"):
            out, record = factorize(model, ctx)
        assert op_counts(out) == {"MatMul": 6} and all(r["method"] == "whiten" for r in record.details)
    assert sum(1 for key in cache if key != "_sources" and key[1][0] == "moments") == 1
    assert sum(1 for key in cache if key != "_sources" and key[1][0] == "decomposition") == 3
    assert caplog.text.count("fewer calibration rows than dimensions (e.g. 'x': 40 rows for 48 dims)") == 1  # once: then cached


def test_whiten_without_calibration_warns_and_uses_synthetic_data(caplog):
    model = matmul_model(low_rank(K, N, 3), a_shape=("batch", K))
    with caplog.at_level(logging.WARNING, logger="onnxslim"):
        out, record = factorize(model, ctx_for("rank", 3, method="whiten"))
    assert "SYNTHETIC" in caplog.text
    assert record.details[0]["method"] == "whiten"
    assert_equivalent(model, out, dims={"batch": 3})


def test_ort_optimizer_keeps_the_factorization(tmp_path):
    model = matmul_model(low_rank(K, N, 4), a_shape=("batch", 16, K))
    bias = helper.make_node("Add", ["y", "bias"], ["z"], name="add")
    model.graph.node.append(bias)
    model.graph.initializer.append(init("bias", np.ones(N, np.float32)))
    model.graph.output[0].CopyFrom(vi("z", ["batch", 16, N]))
    out, _ = factorize(model, ctx_for("rank", 4))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(tmp_path / "ort.onnx")
    ort.InferenceSession(out.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    optimized = onnx.load(tmp_path / "ort.onnx")
    shapes = sorted(tuple(t.dims) for t in optimized.graph.initializer if len(t.dims) == 2)
    assert shapes == [(4, N), (K, 4)], shapes
    assert sum(1 for n in optimized.graph.node if "MatMul" in n.op_type or n.op_type == "Gemm") == 2


def test_cli_end_to_end_with_calibration(tmp_path):
    model, _, _ = correlated_model_and_data(tmp_path)
    path = tmp_path / "m.onnx"
    onnx.save_model(model, path)
    report = tmp_path / "r.json"
    result = CliRunner().invoke(cli.main, ["optimize", str(path), "--svd", "rank=8", "--svd-min-size", "16", "--calib-data",
                                           str(tmp_path / "calib.npz"), "--min-cosine", "0.99", "-o", str(tmp_path / "o.onnx"),
                                           "--report", str(report)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert op_counts(onnx.load(tmp_path / "o.onnx")) == {"Neg": 1, "MatMul": 2}
    assert "fidelity within budget" in result.output


def test_one_pipeline_with_quantization(tmp_path):
    """--svd then --quantize: the stages order factorize_svd (20) before insert_qdq (30)."""
    from onnxslim.pipeline import registry

    if "insert_qdq" not in registry():
        pytest.skip("no quantization pass in this tree")
    model, _, _ = correlated_model_and_data(tmp_path)
    onnx.save_model(model, tmp_path / "m.onnx")
    report = tmp_path / "r.json"
    result = CliRunner().invoke(cli.main, ["optimize", str(tmp_path / "m.onnx"), "--svd", "rank=8", "--svd-min-size", "16",
                                           "--quantize", "int8", "--calib-data", str(tmp_path / "calib.npz"),
                                           "-o", str(tmp_path / "q.onnx"), "--report", str(report)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert report.read_text().count('"factorize_svd"') >= 1
    counts = op_counts(onnx.load(tmp_path / "q.onnx"))
    assert counts["MatMul"] == 2 and counts["DequantizeLinear"] >= 2


def _layout_cases():
    """name -> (nodes, activation shape, axis of the activation holding K, initializers)."""
    rng = np.random.default_rng(13)
    w = rng.standard_normal((K, N)).astype(np.float32)
    c_row = rng.standard_normal(N).astype(np.float32)
    c_col = rng.standard_normal((N, 1)).astype(np.float32)
    gemm = lambda ins, **a: helper.make_node("Gemm", ins, ["y"], name="layer", **a)  # noqa: E731
    conv = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="layer", strides=[2, 2])
    return {
        "matmul 3-D": ([helper.make_node("MatMul", ["x", "w"], ["y"], name="layer")], [2, 5, K], -1, [init("w", w)]),
        "matmul constant first": ([helper.make_node("MatMul", ["w", "x"], ["y"], name="layer")], [2, K, 5], -2, [init("w", w.T.copy())]),
        "gemm transA": ([gemm(["x", "w", "c"], transA=1, alpha=0.5)], [K, 7], 0, [init("w", w), init("c", c_row)]),
        "gemm_left": ([gemm(["w", "x", "c"], beta=2.0)], [K, 7], 0, [init("w", w.T.copy()), init("c", c_col)]),
        "gemm_left transB": ([gemm(["w", "x", "c"], transB=1)], [7, K], -1, [init("w", w.T.copy()), init("c", c_col)]),
        "conv strided": ([conv], [1, K, 6, 5], 1, [init("w", w.T.reshape(N, K, 1, 1).copy()), init("b", c_row)]),
    }


@pytest.mark.parametrize("case", list(_layout_cases()))
def test_reported_layer_errors_match_measured_ones(case):
    """Every site's activation layout is right: the errors in the report equal those ORT measures."""
    nodes, x_shape, axis, inits = _layout_cases()[case]
    graph = helper.make_graph(nodes, "g", [vi("x", x_shape)], [vi("y", None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    model = onnx.shape_inference.infer_shapes(model)
    rng = np.random.default_rng(14)
    mix = rng.standard_normal((K, K)) * np.geomspace(1, 0.01, K)[:, None]  # correlated channels
    channels_last = list(np.moveaxis(np.empty(x_shape), axis, -1).shape)

    def sample():
        return {"x": np.moveaxis(rng.standard_normal(channels_last) @ mix, -1, axis).astype(np.float32)}

    calib, holdout = [sample() for _ in range(12)], [sample() for _ in range(6)]
    ctx = ctx_for("rank", 6, method="whiten", batch_size=1)  # samples are whole inputs: never stacked
    ctx.data.update(calibration=calib, holdout=holdout)
    out, record = factorize(model, ctx)
    (row,) = record.details
    assert row["factorized"] and row["method"] == "whiten"
    for feeds_list, key in ((calib, "calib_error"), (holdout, "holdout_error")):
        assert row[key] == pytest.approx(heldout_error(model, out, feeds_list), rel=1e-3), key


def test_held_out_samples_of_different_lengths_are_never_stacked():
    from onnxslim.calibration.data import regroup  # what factorize_svd's held-out batches come from

    samples = [{"x": np.full((1, 4), i, np.float32)} for i in range(3)] + [{"x": np.full((1, 8), i, np.float32)} for i in range(3)]
    batches = list(regroup(samples, 2))
    assert [b["x"].shape for b in batches] == [(2, 4), (1, 4), (2, 8), (1, 8)]
    assert np.concatenate([b["x"][:, 0] for b in batches]).tolist() == [0, 1, 2, 0, 1, 2]  # every sample, in order
