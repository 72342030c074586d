"""Mutation-audit tests for prune_channels / factorize_svd: each pins one behaviour that a
hand-made mutant of onnxslim/pruning, onnxslim/svd or the two passes changed without any other
test noticing (rounding, MAC accounting, couplings that must block, rewrites of structural
inputs, importance, reconstruction write-back, rank caps, size and MAC guards)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from onnx import helper, numpy_helper

from onnxslim.calibration import synthetic
from onnxslim.graph import import_model
from onnxslim.pipeline import PassContext, get_pass
from onnxslim.pruning.groups import discover
from onnxslim.svd import SvdSpec
from onnxslim.svd.linalg import Moments, decompose
from tests.helpers import apply_passes, assert_equivalent, init, make_model, op_counts, random_feeds, run_ort, vi

X = vi("x", [1, 3, 8, 8])


def _w(*shape, seed=0):
    return (np.random.default_rng(seed).standard_normal(shape) * 0.3).astype(np.float32)


def _conv(x, y, w, name=None, **attrs):
    return helper.make_node("Conv", [x, w], [y], name=name or f"conv_{y}", **attrs)


def _prune(model, data=None, **options):
    ctx = PassContext(options={"prune_channels": options}, data=data or {})
    out, records = apply_passes(model, "infer_shapes,prune_channels,infer_shapes", ctx)
    return out, records[1], ctx


def _inits(model):
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _shapes(model):
    return sorted(list(i.dims) for i in model.graph.initializer)


def _rows(record):
    return {r["group"]: r for r in record.details if "group" in r}


def _rel_err(model, out, seeds=range(4)):
    errs = []
    for s in seeds:
        feeds = random_feeds(model, seed=100 + s)
        want, got = run_ort(model, feeds), run_ort(out, feeds)
        name = next(iter(want))
        errs.append(np.linalg.norm(got[name] - want[name]) / np.linalg.norm(want[name]))
    return float(np.mean(errs))


def _chain(mid=8, out=4):
    """x -> 1x1 Conv (mid) -> Relu -> 1x1 Conv (out) -> y (a model output)."""
    nodes = [_conv("x", "a", "w1", name="c1"), helper.make_node("Relu", ["a"], ["r"]), _conv("r", "y", "w2", name="c2")]
    return make_model(nodes, [X], [vi("y", [1, out, 8, 8])], [init("w1", _w(mid, 3, 1, 1, seed=1)), init("w2", _w(out, mid, 1, 1, seed=2))])


# --------------------------------------------------------------------------------------------
# Selection and MAC accounting (onnxslim/pruning/select.py)


def test_round_to_never_rounds_a_class_below_round_to():
    """--prune 0.9 --prune-round-to 4 on 8 channels keeps 4 (a multiple of 4), not 1."""
    out, record, _ = _prune(_chain(), ratio=0.9, round_to=4)
    assert record.changed
    assert _shapes(out) == [[4, 3, 1, 1], [4, 4, 1, 1]]
    assert record.counters["channels_removed"] == 4


def test_prune_macs_finds_the_smallest_ratio_that_reaches_the_target():
    """--prune-macs 0.2 on one 8-channel group: 2 channels (25% of MACs) at ratio 0.25, not more."""
    out, record, _ = _prune(_chain(), macs=0.2)
    c = record.counters
    assert c["ratio"] == pytest.approx(0.25, abs=1e-4)
    assert c["channels_removed"] == 2
    assert c["macs_after"] == 0.75 * c["macs_before"] == 0.75 * (8 * 64 * 3 + 4 * 64 * 8)
    assert _shapes(out) == [[4, 6, 1, 1], [6, 3, 1, 1]]


def test_depthwise_conv_macs_follow_its_output_channels_only():
    """A depthwise Conv that loses half its channels loses half its MACs (not three quarters)."""
    nodes = [_conv("x", "a", "w1", name="c1"), _conv("a", "d", "wd", name="dw", group=8, pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["d"], ["r"]), _conv("r", "y", "w2", name="c2")]
    model = make_model(nodes, [X], [vi("y", [1, 4, 8, 8])], [init("w1", _w(8, 3, 1, 1)), init("wd", _w(8, 1, 3, 3)),
                                                          init("w2", _w(4, 8, 1, 1))])
    out, record, _ = _prune(model, ratio=0.5)
    before = 8 * 64 * 3 + 8 * 64 * 9 + 4 * 64 * 8  # c1 + depthwise 3x3 + c2
    after = 4 * 64 * 3 + 4 * 64 * 9 + 4 * 64 * 4
    assert (record.counters["macs_before"], record.counters["macs_after"]) == (before, after)
    assert _rows(record)["c1"]["macs_after"] == 4 * 64 * 3 + 4 * 64 * 9
    assert _shapes(out) == [[4, 1, 3, 3], [4, 3, 1, 1], [4, 4, 1, 1]]


def test_shared_weight_sliced_differently_without_growth_is_pruned():
    """Two groups slicing one shared 8-filter weight in different halves: the two copies hold
    exactly as many parameters as the original (no growth), so both groups are pruned."""
    nodes = [helper.make_node("Neg", ["x"], ["nx"]), _conv("x", "a", "w1", name="c1"), _conv("nx", "b", "w1", name="c2"),
             helper.make_node("Relu", ["a"], ["ra"]), _conv("ra", "y1", "w2", name="c3"),
             helper.make_node("Relu", ["b"], ["rb"]), _conv("rb", "y2", "w3", name="c4")]
    w2, w3 = _w(4, 8, 1, 1, seed=6), _w(4, 8, 1, 1, seed=7)
    w2[:, 4:] *= 0.01  # c1 keeps channels 0-3, c2 keeps 4-7
    w3[:, :4] *= 0.01
    model = make_model(nodes, [X], [vi("y1", [1, 4, 8, 8]), vi("y2", [1, 4, 8, 8])],
                       [init("w1", _w(8, 3, 1, 1, seed=5)), init("w2", w2), init("w3", w3)])
    out, record, _ = _prune(model, ratio=0.5)
    statuses = _rows(record)
    assert statuses["c1"]["status"] == statuses["c2"]["status"] == "pruned"
    assert _shapes(out) == [[4, 3, 1, 1], [4, 3, 1, 1], [4, 4, 1, 1], [4, 4, 1, 1]]
    assert record.counters["params_removed"] == 16 + 16  # w2 and w3 lose half; w1 (24) becomes 12 + 12


# --------------------------------------------------------------------------------------------
# Constants sliced per slot (onnxslim/pruning/params.py)


def test_matmul_chain_slices_weight_columns_then_rows():
    """MatMul [16->8] -> Relu -> MatMul [8->6]: the first weight loses columns, the second rows."""
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="m1"), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="m2")]
    model = make_model(nodes, [vi("x", [1, 4, 16])], [vi("y", [1, 4, 6])], [init("w1", _w(16, 8, seed=1)), init("w2", _w(8, 6, seed=2))])
    out, record, _ = _prune(model, ratio=0.5)
    assert record.changed and _shapes(out) == [[4, 6], [16, 4]]
    kept = [c for c in range(8) if any(np.array_equal(_inits(out)["m1_pruned"][:, j], _inits(model)["w1"][:, c]) for j in range(4))]
    assert len(kept) == 4
    assert np.array_equal(_inits(out)["m2_pruned"], _inits(model)["w2"][kept])
    assert run_ort(out, random_feeds(model))["y"].shape == (1, 4, 6)


# --------------------------------------------------------------------------------------------
# Couplings that must broadcast or block (onnxslim/pruning/couplings.py, shape_ops.py)


def test_channel_broadcast_operand_does_not_block_the_group():
    """Conv output * a [1,1,H,W] spatial mask (broadcast on channels): the group is still pruned."""
    nodes = [_conv("x", "a", "w1", name="c1"), helper.make_node("ReduceMean", ["x", "axes"], ["mx"], keepdims=1),
             helper.make_node("Sigmoid", ["mx"], ["m"]), helper.make_node("Mul", ["a", "m"], ["b"]), _conv("b", "y", "w2", name="c2")]
    model = make_model(nodes, [X], [vi("y", [1, 4, 8, 8])],
                       [init("w1", _w(8, 3, 1, 1)), init("w2", _w(4, 8, 1, 1)), init("axes", np.array([1]))])
    out, record, _ = _prune(model, ratio=0.5)
    assert _rows(record)["c1"]["status"] == "pruned" and "reason" not in _rows(record)["c1"]
    assert _shapes(out) == [[1], [4, 3, 1, 1], [4, 4, 1, 1]]


def _left_alone(nodes, inits, y_shape=(1, 4, 8, 8), opset=18):
    model = make_model(nodes, [X], [vi("y", list(y_shape))], inits, opset=opset)
    out, record, _ = _prune(model, ratio=0.5)
    assert not record.changed
    assert_equivalent(model, out)
    return _rows(record)["c1"]


def test_reduce_over_the_channel_axis_blocks_with_its_reason():
    """ReduceSum over axis 1 (keepdims=0) reading a Conv output: left alone, 'reduces the channel axis'."""
    nodes = [_conv("x", "a", "w1", name="c1"), helper.make_node("ReduceSum", ["a", "axes"], ["s"], keepdims=0),
             helper.make_node("Unsqueeze", ["s", "axes"], ["su"]), helper.make_node("Add", ["a", "su"], ["b"]),
             _conv("b", "y", "w2", name="c2")]
    row = _left_alone(nodes, [init("w1", _w(8, 3, 1, 1)), init("w2", _w(4, 8, 1, 1)), init("axes", np.array([1]))])
    assert row["status"] == "left alone" and "ReduceSum" in row["reason"] and "reduces the channel axis" in row["reason"]


def test_softmax_over_the_channel_axis_blocks():
    """Softmax(axis=1) after a Conv mixes every channel: the group is left alone, outputs unchanged."""
    nodes = [_conv("x", "a", "w1", name="c1"), helper.make_node("Softmax", ["a"], ["s"], axis=1), _conv("s", "y", "w2", name="c2")]
    row = _left_alone(nodes, [init("w1", _w(8, 3, 1, 1)), init("w2", _w(4, 8, 1, 1))])
    assert row["status"] == "left alone" and "normalizes over the channel axis" in row["reason"]


def test_pad_on_the_channel_axis_blocks_with_its_reason():
    """Pad adding 2 channels after a Conv: left alone because it 'pads the channel axis'."""
    nodes = [_conv("x", "a", "w1", name="c1"), helper.make_node("Pad", ["a", "pads"], ["p"]), _conv("p", "y", "w2", name="c2")]
    row = _left_alone(nodes, [init("w1", _w(8, 3, 1, 1)), init("w2", _w(4, 10, 1, 1)),
                              init("pads", np.array([0, 2, 0, 0, 0, 0, 0, 0]))])
    assert row["status"] == "left alone" and "pads the channel axis" in row["reason"]


def test_batchnorm_whose_running_mean_is_read_blocks():
    """BatchNormalization (training_mode=1) whose running-mean output is read: left alone, so the
    8-entry running mean keeps its shape; outputs unchanged."""
    nodes = [_conv("x", "a", "w1", name="c1"),
             helper.make_node("BatchNormalization", ["a", "s", "b", "m", "v"], ["bn", "rm", "rv"], training_mode=1),
             helper.make_node("Identity", ["rm"], ["rm_out"]), helper.make_node("Relu", ["bn"], ["r"]), _conv("r", "y", "w2", name="c2")]
    inits = [init("w1", _w(8, 3, 1, 1)), init("w2", _w(4, 8, 1, 1)), init("s", np.ones(8, np.float32)),
             init("b", np.zeros(8, np.float32)), init("m", np.zeros(8, np.float32)), init("v", np.ones(8, np.float32))]
    model = make_model(nodes, [X], [vi("y", [1, 4, 8, 8]), vi("rm_out", [8])], inits)
    out, record, _ = _prune(model, ratio=0.5)
    row = _rows(record)["c1"]
    assert not record.changed and row["status"] == "left alone" and "training mode or extra outputs" in row["reason"]
    assert run_ort(out, random_feeds(model))["rm_out"].shape == (8,)
    assert_equivalent(model, out)


def test_strided_slice_of_the_channel_axis_blocks():
    """Slice a[:, ::2] (step 2 on channels) is not an offset map: left alone, outputs unchanged."""
    nodes = [_conv("x", "a", "w1", name="c1"), helper.make_node("Slice", ["a", "st", "en", "ax", "sp"], ["s"]),
             _conv("s", "y", "w2", name="c2")]
    row = _left_alone(nodes, [init("w1", _w(8, 3, 1, 1)), init("w2", _w(4, 4, 1, 1)), init("st", np.array([0])),
                              init("en", np.array([8])), init("ax", np.array([1])), init("sp", np.array([2]))])
    assert row["status"] == "left alone" and "strided slice" in row["reason"]


def test_transpose_to_channels_last_then_matmul_is_one_group():
    """Conv -> Transpose(0,2,3,1) -> MatMul on the last axis: channel c of the Conv is feature c
    of the MatMul; dead channels are removed without changing the output."""
    w1, wm = _w(8, 3, 1, 1, seed=1), _w(8, 5, seed=2)
    w1[[1, 5]] = 0
    wm[[1, 5]] = 0
    nodes = [_conv("x", "a", "w1", name="c1"), helper.make_node("Transpose", ["a"], ["t"], perm=[0, 2, 3, 1]),
             helper.make_node("MatMul", ["t", "wm"], ["y"], name="mm")]
    model = make_model(nodes, [X], [vi("y", [1, 8, 8, 5])], [init("w1", w1), init("wm", wm)])
    cg = discover(_graph(model))
    assert {frozenset(g.slots) for g in cg.groups} >= {frozenset({"a", "t"})}
    assert cg.slots["t"].axis == 3
    out, record, _ = _prune(model, ratio=0.25)
    assert record.changed and _shapes(out) == [[6, 3, 1, 1], [6, 5]]
    assert_equivalent(model, out)


def test_reduce_with_keepdims_maps_the_channels_last_axis():
    """Conv -> Transpose to NHWC -> ReduceMean over H, W (keepdims=1) -> MatMul: channel c stays
    axis 3 of [1,1,1,8]; dead channels 2 and 6 are removed without changing the output."""
    w1, wm = _w(8, 3, 1, 1, seed=1), _w(8, 5, seed=2)
    w1[[2, 6]] = 0
    wm[[2, 6]] = 0
    nodes = [_conv("x", "a", "w1", name="c1"), helper.make_node("Transpose", ["a"], ["t"], perm=[0, 2, 3, 1]),
             helper.make_node("ReduceMean", ["t", "axes"], ["m"], keepdims=1), helper.make_node("MatMul", ["m", "wm"], ["y"], name="mm")]
    model = make_model(nodes, [X], [vi("y", [1, 1, 1, 5])], [init("w1", w1), init("wm", wm), init("axes", np.array([1, 2]))])
    out, record, _ = _prune(model, ratio=0.25)
    assert _rows(record)["c1"]["status"] == "pruned" and _shapes(out) == [[2], [6, 3, 1, 1], [6, 5]]
    assert_equivalent(model, out)


def test_concat_with_a_constant_on_the_channel_axis_blocks():
    """Concat(conv output, constant [1,2,8,8]) on channels: left alone (the constant's channels
    cannot follow), outputs unchanged."""
    nodes = [_conv("x", "a", "w1", name="c1"), helper.make_node("Concat", ["a", "k"], ["cat"], axis=1),
             _conv("cat", "y", "w2", name="c2")]
    row = _left_alone(nodes, [init("w1", _w(8, 3, 1, 1)), init("k", _w(1, 2, 8, 8, seed=3)), init("w2", _w(4, 10, 1, 1))])
    assert row["status"] == "left alone" and "concatenates a constant" in row["reason"]


def test_uneven_split_by_num_outputs_uses_ceil_sized_chunks():
    """Split(num_outputs=2) of 7 channels is [4, 3]: pruning dead channels 1 and 5 gives [3, 2], outputs equal."""
    w1, w2, w3 = _w(7, 3, 1, 1, seed=1), _w(4, 4, 1, 1, seed=2), _w(4, 3, 1, 1, seed=3)
    w1[[1, 5]] = 0
    w2[:, 1] = 0
    w3[:, 1] = 0  # s2[1] is a[5]
    nodes = [_conv("x", "a", "w1", name="c1"), helper.make_node("Split", ["a"], ["s1", "s2"], axis=1, num_outputs=2),
             _conv("s1", "o1", "w2", name="c2"), _conv("s2", "o2", "w3", name="c3"), helper.make_node("Add", ["o1", "o2"], ["y"])]
    model = make_model(nodes, [X], [vi("y", [1, 4, 8, 8])], [init("w1", w1), init("w2", w2), init("w3", w3)])
    out, record, _ = _prune(model, ratio=0.34)
    split = next(n for n in out.graph.node if n.op_type == "Split")
    assert record.counters["channels_removed"] == 2 and _inits(out)[split.input[1]].tolist() == [3, 2]
    assert_equivalent(model, out)


def test_constants_that_lose_nothing_are_not_copied():
    """A bias shared by a Conv reading pruned channels and one that does not stays one initializer
    ('b'): only constants that lose entries are replaced."""
    nodes = [_conv("x", "a", "w1", name="c1"), helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Conv", ["r", "w2", "b"], ["y1"], name="c2"), helper.make_node("Conv", ["x", "w3", "b"], ["y2"], name="c3")]
    model = make_model(nodes, [X], [vi("y1", [1, 4, 8, 8]), vi("y2", [1, 4, 8, 8])],
                       [init("w1", _w(8, 3, 1, 1)), init("w2", _w(4, 8, 1, 1, seed=1)), init("w3", _w(4, 3, 1, 1, seed=2)),
                        init("b", _w(4, seed=3))])
    out, record, _ = _prune(model, ratio=0.5)
    assert record.changed
    assert [list(n.input[2:]) for n in out.graph.node if n.op_type == "Conv"] == [[], ["b"], ["b"]]
    assert sum(int(np.prod(i.dims)) for i in out.graph.initializer) == 4 * 3 + 4 * 4 + 4 * 3 + 4


def test_node_that_blocks_one_slot_freezes_all_its_slots():
    """Mul(8-channel conv output, 1-channel conv output): the 1-channel side blocks the Mul, so
    (one node: fully understood or fully frozen) the 8-channel group is left alone too."""
    nodes = [_conv("x", "a", "w1", name="c1"), _conv("x", "g", "wg", name="cg"), helper.make_node("Sigmoid", ["g"], ["sg"]),
             helper.make_node("Mul", ["a", "sg"], ["b"]), _conv("b", "y", "w2", name="c2")]
    row = _left_alone(nodes, [init("w1", _w(8, 3, 1, 1)), init("wg", _w(1, 3, 1, 1, seed=1)), init("w2", _w(4, 8, 1, 1))])
    assert row["status"] == "left alone" and "also touches a blocked tensor" in row["reason"]


def _graph(model):
    graph = import_model(model)
    get_pass("infer_shapes")().run(graph, PassContext())
    return graph


# --------------------------------------------------------------------------------------------
# Structural inputs rewritten after pruning (onnxslim/pruning/rewrite.py)


def test_channel_slice_start_moves_with_removed_channels_before_it():
    """a[:, 2:6] after pruning a's dead channels 0 and 3: the slice becomes a'[:, 1:4], outputs equal."""
    w1, wy1, wy2 = _w(8, 3, 1, 1, seed=1), _w(4, 8, 1, 1, seed=2), _w(4, 4, 1, 1, seed=3)
    w1[[0, 3]] = 0
    wy1[:, [0, 3]] = 0
    wy2[:, 1] = 0  # s[1] is a[3]
    nodes = [_conv("x", "a", "w1", name="c1"), helper.make_node("Slice", ["a", "st", "en", "ax"], ["s"]),
             _conv("a", "y1", "wy1", name="c2"), _conv("s", "y2", "wy2", name="c3")]
    model = make_model(nodes, [X], [vi("y1", [1, 4, 8, 8]), vi("y2", [1, 4, 8, 8])],
                       [init("w1", w1), init("wy1", wy1), init("wy2", wy2), init("st", np.array([2])), init("en", np.array([6])),
                        init("ax", np.array([1]))])
    out, record, _ = _prune(model, ratio=0.25)
    assert record.changed and record.counters["channels_removed"] == 2
    slice_node = next(n for n in out.graph.node if n.op_type == "Slice")
    values = _inits(out)
    assert (values[slice_node.input[1]].tolist(), values[slice_node.input[2]].tolist()) == ([1], [4])
    assert_equivalent(model, out)


def test_split_with_num_outputs_gets_explicit_sizes():
    """Opset-18 Split(num_outputs=2) of a pruned tensor: sizes become an input, num_outputs goes."""
    nodes = [_conv("x", "a", "w1", name="c1"), helper.make_node("Split", ["a"], ["s1", "s2"], axis=1, num_outputs=2),
             _conv("s1", "c1o", "w2", name="c2"), _conv("s2", "c2o", "w3", name="c3"), helper.make_node("Add", ["c1o", "c2o"], ["y"])]
    model = make_model(nodes, [X], [vi("y", [1, 4, 8, 8])], [init("w1", _w(8, 3, 1, 1)), init("w2", _w(4, 4, 1, 1, seed=1)),
                                                          init("w3", _w(4, 4, 1, 1, seed=2))])
    out, record, _ = _prune(model, ratio=0.5)
    split = next(n for n in out.graph.node if n.op_type == "Split")
    assert [a.name for a in split.attribute] == ["axis"]
    assert _inits(out)[split.input[1]].tolist() == [2, 2]
    assert run_ort(out, random_feeds(model))["y"].shape == (1, 4, 8, 8)


def test_reshape_target_follows_the_kept_channels():
    """GlobalAveragePool -> Reshape [1, 6] -> MatMul: after pruning half, the target is [1, 3]."""
    nodes = [_conv("x", "a", "w1", name="c1"), helper.make_node("GlobalAveragePool", ["a"], ["g"]),
             helper.make_node("Reshape", ["g", "shape"], ["f"]), helper.make_node("MatMul", ["f", "wm"], ["y"], name="mm")]
    model = make_model(nodes, [X], [vi("y", [1, 5])], [init("w1", _w(6, 3, 1, 1)), init("shape", np.array([1, 6])),
                                                     init("wm", _w(6, 5))])
    out, record, _ = _prune(model, ratio=0.5)
    reshape = next(n for n in out.graph.node if n.op_type == "Reshape")
    assert _inits(out)[reshape.input[1]].tolist() == [1, 3]
    assert run_ort(out, random_feeds(model))["y"].shape == (1, 5)


def test_resize_sizes_follow_the_kept_channels():
    """Resize with constant sizes [1, 6, 16, 16] after pruning half: sizes become [1, 3, 16, 16]."""
    nodes = [_conv("x", "a", "w1", name="c1"), helper.make_node("Resize", ["a", "", "", "sizes"], ["u"], mode="nearest"),
             _conv("u", "y", "w2", name="c2")]
    model = make_model(nodes, [X], [vi("y", [1, 4, 16, 16])], [init("w1", _w(6, 3, 1, 1)), init("w2", _w(4, 6, 1, 1)),
                                                             init("sizes", np.array([1, 6, 16, 16]))])
    out, record, _ = _prune(model, ratio=0.5)
    resize = next(n for n in out.graph.node if n.op_type == "Resize")
    assert _inits(out)[resize.input[3]].tolist() == [1, 3, 16, 16]
    assert run_ort(out, random_feeds(model))["y"].shape == (1, 4, 16, 16)


# --------------------------------------------------------------------------------------------
# Importance (onnxslim/pruning/importance.py)


def _scored_chain(filter_l1, column_l1, bias=None):
    """x -> Conv c1 (4 filters with the given L1 norms, optional bias) -> Conv c2 (columns with the given L1)."""
    w1 = np.stack([np.full((3, 1, 1), v / 3, np.float32) for v in filter_l1])
    w2 = np.stack([np.full((2, 1, 1), v / 2, np.float32) for v in column_l1], axis=1)
    ins = ["x", "w1", "b1"] if bias is not None else ["x", "w1"]
    nodes = [helper.make_node("Conv", ins, ["a"], name="c1"), _conv("a", "y", "w2", name="c2")]
    inits = [init("w1", w1), init("w2", w2)] + ([init("b1", np.asarray(bias, np.float32))] if bias is not None else [])
    return make_model(nodes, [X], [vi("y", [1, 2, 8, 8])], inits), w1


def _kept_filters(model, out, w1):
    w = next(v for v in _inits(out).values() if v.shape == (3, 3, 1, 1))
    return [c for c in range(w1.shape[0]) if any(np.array_equal(w[j], w1[c]) for j in range(3))]


def test_l1_scores_are_normalised_per_weight_before_summing():
    """Filters with L1 [1,2,3,4] x 1000 and consumer columns [8,1,1,1]: each weight is divided by
    its mean (0.4+2.9, 0.8+0.4, ...), so channel 1 goes, not channel 0 (raw sums favour the big layer)."""
    model, w1 = _scored_chain([1000, 2000, 3000, 4000], [8, 1, 1, 1])
    out, _, _ = _prune(model, ratio=0.25)
    assert _kept_filters(model, out, w1) == [0, 2, 3]


def test_l1_scores_ignore_the_bias():
    """Only weights score a channel: a huge bias on the filter with the smallest L1 does not save it."""
    model, w1 = _scored_chain([1, 2, 3, 4], [1, 1, 1, 1], bias=[10, 0.1, 0.1, 0.1])
    out, _, _ = _prune(model, ratio=0.25)
    assert _kept_filters(model, out, w1) == [1, 2, 3]


def test_calibration_data_makes_activation_the_default_criterion():
    """With calibration data and no --prune-criterion, channels are scored by activation."""
    model = _chain()
    _, record, _ = _prune(model, data={"calibration": synthetic(model, 4, seed=0)}, ratio=0.5, reconstruct=False)
    assert _rows(record)["c1"]["criterion"] == "activation"


# --------------------------------------------------------------------------------------------
# Reconstruction (onnxslim/pruning/reconstruct.py)


def _refit_error(model, reconstruct, samples=16):
    ctx_data = {"calibration": synthetic(model, samples, seed=5)}
    out, record, _ = _prune(model, data=ctx_data, ratio=0.5, reconstruct=reconstruct, criterion="l1")
    return _rel_err(model, out), record, out


def test_reconstruction_of_a_3x3_consumer_uses_whole_kernels():
    """A 3x3 Conv reading 8 channels that span 3 dimensions: refit on the 4 kept channels (36
    features) is near exact, far better than plain slicing."""
    mix = np.random.default_rng(3).standard_normal((8, 8)).astype(np.float32)
    w1 = (mix @ _w(8, 3, seed=1)).reshape(8, 3, 1, 1)
    nodes = [_conv("x", "a", "w1", name="c1"), _conv("a", "y", "w2", name="c2", pads=[1, 1, 1, 1])]
    model = make_model(nodes, [X], [vi("y", [1, 4, 8, 8])], [init("w1", w1), init("w2", _w(4, 8, 3, 3, seed=2))])
    plain, _, _ = _refit_error(model, False)
    refit, record, _ = _refit_error(model, True)
    assert record.counters["layers_reconstructed"] == 1
    assert plain > 0.1 and refit < 1e-2


def test_reconstruction_writes_back_gemm_with_alpha_and_beta():
    """Refit weights of a Gemm with alpha=2, beta=3 and C: stored so the Gemm computes them
    (relative error < 0.02 where plain slicing gives 0.22; beta becomes 1, the bias is in C)."""
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["a"], name="g1", transB=1),
             helper.make_node("Gemm", ["a", "w2", "c2"], ["y"], name="g2", transB=1, alpha=2.0, beta=3.0)]
    model = make_model(nodes, [vi("x", [1, 3])], [vi("y", [1, 4])],
                       [init("w1", _w(8, 3, seed=1)), init("w2", _w(4, 8, seed=2)), init("c2", _w(4, seed=3))])
    plain, _, _ = _refit_error(model, False, samples=32)
    refit, record, out = _refit_error(model, True, samples=32)
    assert record.counters["layers_reconstructed"] == 1
    assert plain > 0.2 and refit < 0.02  # the ridge (1e-3 of the mean diagonal) keeps it from exact
    g2 = next(n for n in out.graph.node if n.name == "g2")
    assert {a.name: helper.get_attribute_value(a) for a in g2.attribute}["beta"] == 1.0


def test_reconstruction_folds_matmul_bias_into_the_following_add():
    """MatMul + Add(bias) consumer of an affine tensor: the refit bias goes into the Add constant."""
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="m1"), helper.make_node("Add", ["h", "c1"], ["a"]),
             helper.make_node("MatMul", ["a", "w2"], ["m"], name="m2"), helper.make_node("Add", ["m", "c2"], ["y"])]
    model = make_model(nodes, [vi("x", [1, 3])], [vi("y", [1, 4])],
                       [init("w1", _w(3, 8, seed=1)), init("c1", _w(8, seed=4) * 10), init("w2", _w(8, 4, seed=2)),
                        init("c2", _w(4, seed=3))])
    refit, record, out = _refit_error(model, True, samples=32)
    assert record.counters["layers_reconstructed"] == 1
    assert refit < 0.05  # without the refit bias: 0.4
    assert op_counts(out) == op_counts(model)


# --------------------------------------------------------------------------------------------
# prune_channels options (passes/prune_channels.py)


def test_shared_weight_scales_only_groups_written_by_several_layers():
    """shared_weight=0.5: a residual group (two writers) gets half the ratio, a plain chain the full one."""
    from onnxslim.passes.prune_channels import _shared_weight

    nodes = [_conv("x", "a", "w1", name="c1"), _conv("x", "b", "w2", name="c2"), helper.make_node("Add", ["a", "b"], ["s"]),
             _conv("s", "c", "w3", name="c3"), helper.make_node("Relu", ["c"], ["r"]), _conv("r", "y", "w4", name="c4")]
    model = make_model(nodes, [X], [vi("y", [1, 4, 8, 8])], [init("w1", _w(8, 3, 1, 1)), init("w2", _w(8, 3, 1, 1, seed=1)),
                                                          init("w3", _w(6, 8, 1, 1)), init("w4", _w(4, 6, 1, 1))])
    cg = discover(_graph(model))
    weight = _shared_weight(cg, 0.5)
    assert {g.name: weight(g) for g in cg.groups} == {"c1": 0.5, "c3": 1.0, "c4": 1.0}


def test_per_layer_table_of_zeros_is_a_no_op_with_its_warning(caplog):
    """A --prune file whose ratios are all 0: warned about as such, no counters, model unchanged."""
    model = _chain()
    with caplog.at_level(logging.WARNING, logger="onnxslim"):
        out, record, _ = _prune(model, per_layer={"*": 0.0, "c1": 0})
    assert not record.changed and record.counters == {}
    assert "the pruning amount is 0 (every ratio in the --prune file)" in caplog.text
    assert out.graph.initializer == model.graph.initializer


# --------------------------------------------------------------------------------------------
# factorize_svd (onnxslim/svd, passes/factorize_svd.py)


K, N, M = 48, 40, 6


def _low_rank(rows, cols, rank, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((rows, rank)) @ rng.standard_normal((rank, cols)) / np.sqrt(rank)).astype(np.float32)


def _svd(model, **settings):
    settings.setdefault("min_size", 1)
    ctx = PassContext(options={"factorize_svd": settings})
    out, records = apply_passes(model, "factorize_svd", ctx)
    return out, records[-1]


def _matmul(weight, a_shape=(M, K), weight_first=False):
    ins = ["w", "x"] if weight_first else ["x", "w"]
    out_shape = [*a_shape[:-2], weight.shape[0], a_shape[-1]] if weight_first else [*a_shape[:-1], weight.shape[1]]
    return make_model([helper.make_node("MatMul", ins, ["y"], name="mm")], [vi("x", list(a_shape))], [vi("y", out_shape)],
                      [init("w", weight)])


def test_fixed_rank_above_full_rank_is_capped():
    """rank=100 on a 48x40 weight is rank 40 (min(K, N)), with all the energy kept."""
    out, record = _svd(_matmul(_low_rank(K, N, 4)), rule="rank", value=100, min_saving=-10.0)
    (row,) = record.details
    assert (row["rank"], row["full_rank"], row["energy_kept"]) == (40, 40, 1.0)
    assert _shapes(out) == [[40, 40], [48, 40]]


def test_whitening_damping_is_relative_to_the_activation_scale():
    """Scaling every activation by 1000 scales the whitened singular values by 1000 exactly."""
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((64, 12)) @ rng.standard_normal((12, 12))
    weight = rng.standard_normal((12, 8))
    decs = []
    for scale in (1.0, 1000.0):
        moments = Moments(12)
        moments.add(rows * scale)
        decs.append(decompose(weight, calib=moments, whiten=True, damp=0.5))
    np.testing.assert_allclose(decs[1].s, 1000.0 * decs[0].s, rtol=1e-9)


def test_svd_cache_is_keyed_by_the_held_out_set_too():
    """One svd_cache, one calibration set, two different held-out sets: each run reports the
    held-out error of its own held-out samples (as onnxruntime measures it)."""
    rng = np.random.default_rng(12)
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], [vi("x", [1, K])], [vi("y", [1, N])],
                       [init("w", rng.standard_normal((K, N)).astype(np.float32))])
    mix = rng.standard_normal((8, K)).astype(np.float32)
    calib = [{"x": (rng.standard_normal((1, 8)) @ mix).astype(np.float32)} for _ in range(16)]
    holdouts = [[{"x": (rng.standard_normal((1, 8)) @ mix).astype(np.float32)} for _ in range(4)],
                [{"x": rng.standard_normal((1, K)).astype(np.float32)} for _ in range(4)]]
    cache: dict = {}
    reported, measured = [], []
    for holdout in holdouts:
        ctx = PassContext(options={"factorize_svd": {"rule": "rank", "value": 8, "min_size": 1, "method": "whiten", "batch_size": 1}},
                          data={"calibration": calib, "holdout": holdout, "svd_cache": cache})
        out, records = apply_passes(model, "factorize_svd", ctx)
        reported.append(records[-1].details[0]["holdout_error"])
        err = sum(float(np.sum((run_ort(out, f)["y"] - run_ort(model, f)["y"]) ** 2)) for f in holdout)
        measured.append(np.sqrt(err / sum(float(np.sum(run_ort(model, f)["y"] ** 2)) for f in holdout)))
    assert reported == pytest.approx(measured, rel=1e-3)
    assert reported[0] < 0.05 < 0.5 < reported[1]


@pytest.mark.parametrize("a_shape, count", [((K, 7), 7), ((3, K, 7), 21)])
def test_constant_first_matmul_macs(a_shape, count):
    """MatMul(W, x): one output row per column of x (and per batch): MACs = count * K * N."""
    out, record = _svd(_matmul(_low_rank(N, K, 3, seed=2), a_shape=a_shape, weight_first=True), rule="rank", value=3)
    (row,) = record.details
    assert (row["macs_before"], row["macs_after"]) == (count * K * N, count * 3 * (K + N))
    assert record.counters["macs_removed"] == count * (K * N - 3 * (K + N))


def test_gemm_with_constant_first_operand_macs():
    """Gemm(W [N,K], x [K,M]) -> [N, M]: M output columns, MACs = M * K * N."""
    node = helper.make_node("Gemm", ["w", "x"], ["y"], name="gemm")
    model = make_model([node], [vi("x", [K, M])], [vi("y", [N, M])], [init("w", _low_rank(N, K, 5, seed=6))])
    out, record = _svd(model, rule="rank", value=5)
    (row,) = record.details
    assert row["kind"] == "gemm_left" and (row["macs_before"], row["macs_after"]) == (M * K * N, M * 5 * (K + N))
    assert_equivalent(model, out)


def test_min_size_is_inclusive():
    """min_size=40 on a 48x40 weight: min(K, N) = 40 is not below it, so the layer is factorized."""
    out, record = _svd(_matmul(_low_rank(K, N, 4)), rule="rank", value=4, min_size=40)
    assert record.changed and record.details[0]["factorized"]
    assert op_counts(out) == {"MatMul": 2}


def test_spatial_svd_that_would_add_macs_is_declined():
    """3x3 Conv with stride 8 along W: the kh x 1 Conv runs at full input width, so rank 8 shrinks
    the parameters (768 vs 2304) but raises the MACs (13824 vs 9216 per output row): declined."""
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="c", strides=[1, 8])
    model = make_model([node], [vi("x", [1, 16, 8, 32])], [vi("y", [1, 16, 6, 4])], [init("w", _w(16, 16, 3, 3))])
    out, record = _svd(model, rule="rank", value=8, spatial=True)
    (row,) = record.details
    assert not record.changed and not row["factorized"]
    assert (row["params_before"], row["params_after"]) == (2304, 768)
    assert (row["macs_before"], row["macs_after"]) == (6 * 9216, 6 * 13824)
    assert row["reason"] == "rank 8: MACs would not drop by 10% (82944 vs 55296)"
    assert op_counts(out) == {"Conv": 1}


def test_macs_removed_counter_sums_the_rows():
    """layers_factorized=1 on MatMul [6x48] @ [48x40] at rank 4: macs_removed = 6 * (48*40 - 4*88)."""
    _, record = _svd(_matmul(_low_rank(K, N, 4)), rule="rank", value=4)
    assert record.counters["macs_removed"] == M * (K * N - 4 * (K + N)) == 9408


def test_default_min_size_is_256():
    """--svd rank=4 without --svd-min-size leaves a 200x200 MatMul alone (below 256)."""
    spec = SvdSpec.parse("rank=4")
    ctx = PassContext(options={"factorize_svd": spec.to_options()})
    model = _matmul(_low_rank(200, 200, 4), a_shape=(2, 200))
    out, records = apply_passes(model, "factorize_svd", ctx)
    (row,) = records[-1].details
    assert not records[-1].changed and row["reason"] == "200x200 is smaller than the minimum size 256"
