"""prune_channels: exact dependency groups per coupling kind, numeric exactness on dead channels,
reasons for groups left alone, option validation, reconstruction."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper

from onnxslim.errors import UsageError
from onnxslim.graph import import_model
from onnxslim.pipeline import PassContext, get_pass
from onnxslim.pruning.groups import discover
from onnxslim.stages.prune import PruneStage, parse_prune
from tests.helpers import apply_passes, assert_equivalent, init, make_model, op_counts, random_feeds, run_ort, vi

RNG = np.random.default_rng(0)


def _w(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * 0.3


def _conv(x, y, w, name=None, **attrs):
    return helper.make_node("Conv", [x, w], [y], name=name or f"conv_{y}", **attrs)


def _graph(model):
    graph = import_model(model)
    get_pass("infer_shapes")().run(graph, PassContext())
    return graph


def _groups(model):
    """{frozenset(slot tensor names): (units, movable units)} for every group."""
    cg = discover(_graph(model))
    return {frozenset(g.slots): (int(g.units.size), g.movable_units(cg.frozen)) for g in cg.groups}, cg


def _prune(model, **options):
    ctx = PassContext(options={"prune_channels": options})
    return apply_passes(model, "infer_shapes,prune_channels,infer_shapes", ctx)


X = vi("x", [1, 3, 8, 8])
Y = vi("y", [1, 4, 8, 8])


# --------------------------------------------------------------------------------------------
# Group discovery: one small graph per coupling kind, exact groups


def test_conv_bn_relu_chain_is_one_group():
    nodes = [_conv("x", "a", "w1"), helper.make_node("BatchNormalization", ["a", "s", "b", "m", "v"], ["bn"]),
             helper.make_node("Relu", ["bn"], ["r"]), _conv("r", "y", "w2")]
    inits = [init("w1", _w(8, 3, 1, 1)), init("w2", _w(4, 8, 1, 1)), init("s", np.ones(8, np.float32)),
             init("b", np.zeros(8, np.float32)), init("m", np.zeros(8, np.float32)), init("v", np.ones(8, np.float32))]
    groups, _ = _groups(make_model(nodes, [X], [Y], inits))
    assert groups == {frozenset({"a", "bn", "r"}): (8, 8), frozenset({"y"}): (4, 0)}


def test_depthwise_conv_couples_input_and_output():
    nodes = [_conv("x", "a", "w1"), helper.make_node("Relu", ["a"], ["r"]), _conv("r", "d", "wd", group=8, pads=[1, 1, 1, 1]),
             _conv("d", "y", "w2")]
    inits = [init("w1", _w(8, 3, 1, 1)), init("wd", _w(8, 1, 3, 3)), init("w2", _w(4, 8, 1, 1))]
    groups, _ = _groups(make_model(nodes, [X], [Y], inits))
    assert groups[frozenset({"a", "r", "d"})] == (8, 8)


def test_grouped_conv_units_are_whole_groups():
    nodes = [_conv("x", "a", "w1"), _conv("a", "g", "wg", group=2), _conv("g", "y", "w2")]
    inits = [init("w1", _w(8, 3, 1, 1)), init("wg", _w(6, 4, 1, 1)), init("w2", _w(4, 6, 1, 1))]
    groups, _ = _groups(make_model(nodes, [X], [Y], inits))
    assert groups[frozenset({"a", "g"})] == (2, 2)  # 2 groups: 4 inputs + 3 outputs each


def test_residual_add_couples_all_branches():
    nodes = [_conv("x", "a", "w1"), _conv("x", "b", "w2"), helper.make_node("Add", ["a", "b"], ["s"]),
             helper.make_node("Relu", ["s"], ["r"]), _conv("r", "c", "w3"), helper.make_node("Sub", ["r", "c"], ["d"]),
             _conv("d", "y", "w4")]
    inits = [init("w1", _w(8, 3, 1, 1)), init("w2", _w(8, 3, 1, 1)), init("w3", _w(8, 8, 1, 1)), init("w4", _w(4, 8, 1, 1))]
    groups, _ = _groups(make_model(nodes, [X], [Y], inits))
    assert groups[frozenset({"a", "b", "s", "r", "c", "d"})] == (8, 8)


def test_concat_segments_and_split_offsets():
    nodes = [_conv("x", "a", "w1"), _conv("x", "b", "w2"), helper.make_node("Concat", ["a", "b"], ["cat"], axis=1),
             helper.make_node("Split", ["cat", "sizes"], ["s1", "s2"], axis=1),
             _conv("s1", "c1", "w3"), _conv("s2", "c2", "w4"), helper.make_node("Add", ["c1", "c2"], ["y"])]
    inits = [init("w1", _w(4, 3, 1, 1)), init("w2", _w(6, 3, 1, 1)), init("sizes", np.array([5, 5])),
             init("w3", _w(4, 5, 1, 1)), init("w4", _w(4, 5, 1, 1))]
    groups, cg = _groups(make_model(nodes, [X], [Y], inits))
    assert groups[frozenset({"a", "b", "cat", "s1", "s2"})] == (10, 10)
    # a[4] (the first channel of b) and s2[0] are the same unit: offsets are exact
    assert cg.unit_of[cg.slots["b"].offset] == cg.unit_of[cg.slots["cat"].offset + 4] == cg.unit_of[cg.slots["s1"].offset + 4]
    assert cg.unit_of[cg.slots["b"].offset + 1] == cg.unit_of[cg.slots["s2"].offset]


def test_slice_on_channel_axis():
    nodes = [_conv("x", "a", "w1"), helper.make_node("Slice", ["a", "st", "en", "ax"], ["s"]), _conv("s", "y", "w2")]
    inits = [init("w1", _w(8, 3, 1, 1)), init("st", np.array([2])), init("en", np.array([6])), init("ax", np.array([1])),
             init("w2", _w(4, 4, 1, 1))]
    groups, cg = _groups(make_model(nodes, [X], [Y], inits))
    assert groups[frozenset({"a", "s"})] == (8, 8)
    assert cg.unit_of[cg.slots["s"].offset] == cg.unit_of[cg.slots["a"].offset + 2]


def test_flatten_into_gemm_maps_channel_to_feature_block():
    nodes = [_conv("x", "a", "w1", strides=[4, 4]), helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"], axis=1), helper.make_node("Gemm", ["f", "wg"], ["y"], transB=1)]
    inits = [init("w1", _w(6, 3, 1, 1)), init("wg", _w(5, 24))]
    groups, cg = _groups(make_model(nodes, [X], [vi("y", [1, 5])], inits))
    assert groups[frozenset({"a", "r", "f"})] == (6, 6)
    f = cg.slots["f"].offset
    assert len({int(u) for u in cg.unit_of[f:f + 4]}) == 1 and cg.unit_of[f + 4] != cg.unit_of[f]


def test_reshape_into_matmul_and_pooling_resize_pad():
    nodes = [_conv("x", "a", "w1"), helper.make_node("Resize", ["a", "", "scales"], ["u"], mode="nearest"),
             helper.make_node("Pad", ["u", "pads"], ["p"]), helper.make_node("MaxPool", ["p"], ["m"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("GlobalAveragePool", ["m"], ["g"]), helper.make_node("Reshape", ["g", "shape"], ["f"]),
             helper.make_node("MatMul", ["f", "wm"], ["y"])]
    inits = [init("w1", _w(6, 3, 1, 1)), init("scales", np.array([1, 1, 2, 2], np.float32)),
             init("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1])), init("shape", np.array([1, 6])), init("wm", _w(6, 5))]
    groups, _ = _groups(make_model(nodes, [X], [vi("y", [1, 5])], inits))
    assert groups[frozenset({"a", "u", "p", "m", "g", "f"})] == (6, 6)


def test_squeeze_excitation_block():
    nodes = [_conv("x", "a", "w1"), helper.make_node("ReduceMean", ["a", "axes"], ["rm"], keepdims=1),
             _conv("rm", "s1", "ws1"), helper.make_node("Relu", ["s1"], ["s1r"]), _conv("s1r", "s2", "ws2"),
             helper.make_node("Sigmoid", ["s2"], ["sg"]), helper.make_node("Mul", ["a", "sg"], ["se"]), _conv("se", "y", "w2")]
    inits = [init("w1", _w(8, 3, 1, 1)), init("axes", np.array([2, 3])), init("ws1", _w(2, 8, 1, 1)),
             init("ws2", _w(8, 2, 1, 1)), init("w2", _w(4, 8, 1, 1))]
    groups, _ = _groups(make_model(nodes, [X], [Y], inits))
    assert groups[frozenset({"a", "rm", "s2", "sg", "se"})] == (8, 8)
    assert groups[frozenset({"s1", "s1r"})] == (2, 2)


def test_per_channel_constants_are_coupled_not_blocking():
    nodes = [_conv("x", "a", "w1"), helper.make_node("Add", ["a", "bias"], ["b"]), helper.make_node("Mul", ["b", "scale"], ["c"]),
             helper.make_node("Add", ["c", "one"], ["d"]), _conv("d", "y", "w2")]
    inits = [init("w1", _w(8, 3, 1, 1)), init("bias", _w(1, 8, 1, 1)), init("scale", _w(8, 1, 1)),
             init("one", np.ones(1, np.float32)), init("w2", _w(4, 8, 1, 1))]
    model = make_model(nodes, [X], [Y], inits)
    groups, _ = _groups(model)
    assert groups[frozenset({"a", "b", "c", "d"})] == (8, 8)
    out, records = _prune(model, ratio=0.5)
    shapes = {i.name: list(i.dims) for i in out.graph.initializer}
    assert sorted(v for v in shapes.values() if v[:2] in ([1, 4], [4, 1])) == [[1, 4, 1, 1], [4, 1, 1]]


# --------------------------------------------------------------------------------------------
# Groups left alone, and why


def test_model_output_graph_input_and_unknown_op_are_left_alone_with_reasons():
    nodes = [_conv("x", "a", "w1"), helper.make_node("LRN", ["a"], ["l"], size=3), _conv("l", "b", "w2"),
             helper.make_node("Add", ["b", "x8"], ["y"])]
    inits = [init("w1", _w(8, 3, 1, 1)), init("w2", _w(4, 8, 1, 1))]
    model = make_model(nodes, [X, vi("x8", [1, 4, 8, 8])], [Y], inits)
    groups, cg = _groups(model)
    assert groups[frozenset({"a"})] == (8, 0)
    assert groups[frozenset({"b", "x8", "y"})] == (4, 0)
    reasons = {g.name: " ".join(g.reasons) for g in cg.groups}
    assert "LRN" in reasons["conv_a"] and "cannot be reasoned about" in reasons["conv_a"]
    assert "model output" in reasons["conv_b"] and "model input" in reasons["conv_b"]
    ctx = PassContext(options={"prune_channels": {"ratio": 0.5}})
    out, records = apply_passes(model, "infer_shapes,prune_channels", ctx)
    record = records[-1]
    assert not record.changed
    assert {r["group"]: r["status"] for r in record.details} == {"conv_a": "left alone", "conv_b": "left alone"}
    assert all(r["reason"] for r in record.details)
    assert {n["where"] for n in ctx.notes} == {"conv_a"}  # an LRN: noted; the model output/input: expected
    assert_equivalent(model, out)


def test_shape_reading_channel_count_blocks_but_batch_read_does_not():
    def build(index):
        nodes = [_conv("x", "a", "w1"), helper.make_node("Shape", ["a"], ["sh"]),
                 helper.make_node("Gather", ["sh", "idx"], ["n"], axis=0), helper.make_node("Cast", ["n"], ["nf"], to=1),
                 helper.make_node("Mul", ["a", "nf"], ["m"]), _conv("m", "y", "w2")]
        inits = [init("w1", _w(8, 3, 1, 1)), init("w2", _w(4, 8, 1, 1)), init("idx", np.array(index))]
        return make_model(nodes, [X], [Y], inits)

    assert _groups(build(0))[0][frozenset({"a", "m"})] == (8, 8)
    groups, cg = _groups(build(1))
    assert groups[frozenset({"a", "m"})] == (8, 0)
    assert "Shape" in cg.groups[0].reasons[0]


# --------------------------------------------------------------------------------------------
# Rewrites: structure and numerics


def _dead_channel_model(dead=(1, 4, 6)):
    """Residual + concat model whose ``dead`` channels are zero in every producer and consumer."""
    w1, w2, w3 = _w(8, 3, 3, 3, seed=1), _w(8, 3, 1, 1, seed=2), _w(8, 8, 1, 1, seed=3)
    w4, wd = _w(4, 16, 1, 1, seed=4), _w(8, 1, 3, 3, seed=5)
    for w in (w1, w2):
        w[list(dead)] = 0
    b1 = _w(8, seed=6)
    b1[list(dead)] = 0
    w3[:, list(dead)] = 0
    w3[list(dead)] = 0
    w4[:, list(dead)] = 0
    w4[:, [8 + d for d in dead]] = 0
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["a"], pads=[1, 1, 1, 1], name="c1"),
             _conv("x", "b", "w2", name="c2"), helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Relu", ["s"], ["r"]),
             _conv("r", "c", "w3", name="c3"), _conv("r", "dw", "wd", name="dw", group=8, pads=[1, 1, 1, 1]),
             helper.make_node("Concat", ["c", "dw"], ["cat"], axis=1), _conv("cat", "y", "w4", name="c4")]
    inits = [init("w1", w1), init("b1", b1), init("w2", w2), init("w3", w3), init("w4", w4), init("wd", wd)]
    return make_model(nodes, [X], [Y], inits)


def test_pruning_dead_channels_leaves_outputs_unchanged():
    model = _dead_channel_model()
    out, records = _prune(model, per_layer={"c3": 3 / 8})  # c3 writes into the Concat: same group as c1
    assert records[-2].changed
    assert op_counts(out) == op_counts(model)
    weights = {i.name: list(i.dims) for i in out.graph.initializer}
    assert sorted(weights.values()) == sorted([[5, 3, 3, 3], [5], [5, 3, 1, 1], [5, 5, 1, 1], [5, 1, 3, 3], [4, 10, 1, 1]])
    assert_equivalent(model, out)


def test_ratio_shrinks_every_group_and_round_to_keeps_multiples():
    model = _dead_channel_model(dead=())
    out, records = _prune(model, ratio=0.3, round_to=4)
    dims = {i.name: list(i.dims) for i in out.graph.initializer}
    assert [d for d in dims.values() if len(d) == 4 and d[1] == 3] == [[8, 3, 3, 3], [8, 3, 1, 1]]  # 8*0.7 -> 8 (multiple of 4)
    out, records = _prune(model, ratio=0.5, round_to=4)
    assert {tuple(d) for d in (list(i.dims) for i in out.graph.initializer) if len(d) == 4} == {
        (4, 3, 3, 3), (4, 3, 1, 1), (4, 4, 1, 1), (4, 1, 3, 3), (4, 8, 1, 1)}
    onnx.checker.check_model(out, full_check=True)
    assert run_ort(out, random_feeds(model))["y"].shape == (1, 4, 8, 8)


def test_macs_budget_removes_at_least_the_target():
    model = _dead_channel_model(dead=())
    _, records = _prune(model, macs=0.4)
    c = records[-2].counters
    assert 1 - c["macs_after"] / c["macs_before"] >= 0.4
    assert c["macs_after"] < c["macs_before"]


def test_bn_criterion_uses_gamma_and_falls_back_when_folded():
    gamma = np.array([1, 0.01, 1, 0.02, 1, 1, 0.03, 1], np.float32)
    nodes = [_conv("x", "a", "w1"), helper.make_node("BatchNormalization", ["a", "s", "b", "m", "v"], ["bn"]),
             helper.make_node("Relu", ["bn"], ["r"]), _conv("r", "y", "w2")]
    inits = [init("w1", _w(8, 3, 1, 1)), init("w2", _w(4, 8, 1, 1)), init("s", gamma), init("b", np.zeros(8, np.float32)),
             init("m", np.zeros(8, np.float32)), init("v", np.ones(8, np.float32))]
    model = make_model(nodes, [X], [Y], inits)
    out, records = _prune(model, ratio=3 / 8, criterion="bn")
    scale = next(onnx.numpy_helper.to_array(i) for i in out.graph.initializer if list(i.dims) == [5] and np.all(onnx.numpy_helper.to_array(i) == 1))
    assert scale.shape == (5,)  # the three small gammas went
    assert records[-2].details[0]["criterion"] == "bn"
    ctx = PassContext(options={"prune_channels": {"ratio": 3 / 8, "criterion": "bn"}})
    _, records = apply_passes(model, "infer_shapes,fuse_conv_bn,prune_channels", ctx)
    assert records[-1].details[0]["criterion"].startswith("bn (fell back to l1")


def test_reconstruction_refits_next_layer_and_lowers_error():
    rng = np.random.default_rng(3)
    mix = rng.standard_normal((8, 8)).astype(np.float32)
    w1 = (mix @ _w(8, 3, seed=1)).reshape(8, 3, 1, 1)  # correlated channels: removed ones are predictable
    nodes = [_conv("x", "a", "w1"), _conv("a", "y", "w2")]
    model = make_model(nodes, [X], [Y], [init("w1", w1), init("w2", _w(4, 8, 1, 1, seed=2))])
    from onnxslim.calibration import synthetic

    calib = synthetic(model, 16, seed=5)
    holdout = [random_feeds(model, seed=s) for s in range(3)]

    def error(reconstruct):
        ctx = PassContext(options={"prune_channels": {"ratio": 0.5, "reconstruct": reconstruct}}, data={"calibration": calib})
        out, records = apply_passes(model, "infer_shapes,prune_channels", ctx)
        errs = [np.linalg.norm(run_ort(out, f)["y"] - run_ort(model, f)["y"]) / np.linalg.norm(run_ort(model, f)["y"]) for f in holdout]
        return float(np.mean(errs)), records[-1]

    plain, _ = error(False)
    refit, record = error(True)
    assert record.counters["layers_reconstructed"] == 1
    assert refit < plain * 0.1  # 3 input features span everything: the refit is near exact
    row = next(r for r in record.details if "layer" in r)
    assert row["recon_err_after"] < row["recon_err_before"]


# --------------------------------------------------------------------------------------------
# Options


@pytest.mark.parametrize("bad", ["1.5", "-0.1", "garbage", "1", "nan", ""])
def test_bad_ratios_are_usage_errors(bad):
    with pytest.raises(UsageError):
        parse_prune(bad)
    with pytest.raises(UsageError):
        PruneStage().configure({"prune_macs": bad}, onnx.ModelProto(), PassContext())


def test_stage_configures_pass_and_rejects_conflicts(tmp_path):
    ctx = PassContext()
    steps = PruneStage().configure({"prune": "0.3", "prune_round_to": 8, "prune_criterion": "l2"}, onnx.ModelProto(), ctx)
    assert steps[0] == "prune_channels"
    assert ctx.options["prune_channels"] == {"ratio": 0.3, "per_layer": None, "criterion": "l2", "round_to": 8, "reconstruct": None}
    for values in ({"prune": "0.3", "prune_macs": "0.5"}, {"prune_round_to": 8}, {"prune": "0.3", "prune_round_to": 0}):
        with pytest.raises(UsageError):
            PruneStage().configure(values, onnx.ModelProto(), PassContext())
    table = tmp_path / "ratios.json"
    table.write_text(json.dumps({"c1": 0.5, "*": 0.25}))
    assert parse_prune(str(table)) == (None, {"c1": 0.5, "*": 0.25})
    table.write_text(json.dumps({"c1": 2}))
    with pytest.raises(UsageError):
        parse_prune(str(table))
    with pytest.raises(UsageError):
        _prune(_dead_channel_model(), per_layer={"no_such_layer": 0.5})


def test_cli_prune_writes_smaller_model_and_group_rows(tmp_path):
    from click.testing import CliRunner

    from onnxslim.cli import main

    src, dst, report = tmp_path / "m.onnx", tmp_path / "m.pruned.onnx", tmp_path / "r.json"
    onnx.save(_dead_channel_model(dead=()), src)
    result = CliRunner().invoke(main, ["optimize", str(src), "-o", str(dst), "--prune", "0.5", "--report", str(report), "-q"])
    assert result.exit_code == 0, result.output
    rows = [r for p in json.loads(report.read_text())["passes"] if p["name"] == "prune_channels" for r in p["details"]]
    assert {"group", "channels_before", "channels_after", "criterion", "macs_before", "macs_after", "params_before",
            "params_after"} <= set(rows[0])
    assert onnx.load(dst).graph.initializer
    for bad in ("1.5", "-0.1", "garbage"):
        assert CliRunner().invoke(main, ["optimize", str(src), "-o", str(dst), "--prune", bad]).exit_code == 2
