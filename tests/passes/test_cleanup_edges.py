"""Tests written from a mutation audit of the cleanup passes: each pins a behaviour that a
one-line change in the pass (a dropped guard, a flipped index, a wrong constant) altered while
the rest of the suite stayed green. Numbers are exact: op counts, counters, decline messages,
onnxruntime outputs at the per-dtype tolerances of tests/helpers.py."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxslim.graph import export_model, import_model
from onnxslim.passes.infer_shapes import merge_shape
from onnxslim.pipeline import PassContext, Pipeline
from tests.helpers import apply_passes, assert_equivalent, init, make_model, op_counts, run_ort, vi

F = TensorProto.FLOAT
I64 = TensorProto.INT64


def _record(records, name):
    return next(r for r in records if r.name == name)


def _notes(ctx: PassContext, pass_name: str) -> list[str]:
    return [note["reason"] for note in ctx.notes if note["pass"] == pass_name]


def _declined(model: onnx.ModelProto, pipeline: str, ops: dict[str, int]) -> tuple[onnx.ModelProto, list[str]]:
    """Run ``pipeline``: its last pass changes nothing and the ops stay ``ops``; the model and that pass's notes."""
    ctx = PassContext()
    out, records = apply_passes(model, pipeline, ctx)
    assert not records[-1].changed and op_counts(out) == ops
    return out, _notes(ctx, records[-1].name)


def _inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


# --------------------------------------------------------------------------------------------
# fold_constants: the size guard, sequences, the nodes_folded counter


def _tile_model(times: int) -> onnx.ModelProto:
    """y = x + Tile(c, [times]) with c 10000 float32 (40000 bytes): the limit is 2 x 40008 bytes."""
    c = np.arange(10000, dtype=np.float32)
    nodes = [helper.make_node("Tile", ["c", "reps"], ["t"]), helper.make_node("Add", ["x", "t"], ["y"])]
    inits = [init("c", c), init("reps", np.array([times], np.int64))]
    return make_model(nodes, [vi("x", [10000 * times])], [vi("y", [10000 * times])], inits)


@pytest.mark.parametrize("pipeline, verb", [("fold_constants", "takes"), ("infer_shapes,fold_constants", "would take")])
def test_size_guard_is_twice_the_bytes_the_value_depends_on(pipeline, verb):
    """A constant output may take 2 x the bytes of the constants it is computed from (40008 here):
    Tile x2 (80000 bytes) folds, Tile x3 (120000) is declined, before evaluation when the shape is
    known and after it otherwise, with the exact byte counts in the note."""
    out, records = apply_passes(_tile_model(2), pipeline)
    assert op_counts(out) == {"Add": 1} and records[-1].counters["bytes_materialized"] == 80000
    ctx = PassContext()
    model = _tile_model(3)
    out, records = apply_passes(model, pipeline, ctx)
    assert op_counts(out) == {"Tile": 1, "Add": 1} and not records[-1].changed
    assert _notes(ctx, "fold_constants") == [f"output {verb} 120000 bytes (limit 80016)"]
    assert_equivalent(model, out, seeds=(0,))


def test_size_guard_after_evaluation_uses_the_64k_floor():
    """Without a static shape the guard runs on the evaluated value: ConstantOfShape([200, 200])
    (160000 bytes from 16 bytes of shape) is over the 65536-byte floor and stays a node."""
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["big"], value=helper.make_tensor("v", F, [1], [0.5])),
             helper.make_node("Add", ["x", "big"], ["y"])]
    model = make_model(nodes, [vi("x", [200, 200])], [vi("y", [200, 200])], [init("shape", np.array([200, 200], np.int64))])
    ctx = PassContext()
    out, records = apply_passes(model, "fold_constants", ctx)
    assert op_counts(out) == {"ConstantOfShape": 1, "Add": 1} and not records[-1].changed
    assert _notes(ctx, "fold_constants") == ["output takes 160000 bytes (limit 65536)"]


def test_sequence_values_are_never_folded():
    """A constant sequence read by a non-constant SequenceInsert stays a sequence (folding it would
    turn it into a tensor the SequenceInsert cannot read)."""
    nodes = [
        helper.make_node("SequenceConstruct", ["a", "b"], ["seq"]),
        helper.make_node("SequenceInsert", ["seq", "x"], ["seq2"]),
        helper.make_node("ConcatFromSequence", ["seq2"], ["y"], axis=0),
    ]
    inits = [init("a", np.ones((1, 3), np.float32)), init("b", np.full((1, 3), 2.0, np.float32))]
    model = make_model(nodes, [vi("x", [1, 3])], [vi("y", [3, 3])], inits)
    out, records = apply_passes(model, "fold_constants")
    assert not records[-1].changed and op_counts(out) == op_counts(model)
    assert_equivalent(model, out)


def test_nodes_folded_counts_nothing_when_every_output_is_declined():
    """Tile(Tile(c)) where both outputs exceed the size guard: nothing folds, and nodes_folded is 0
    (the inner Tile is still read by the outer one, which keeps computing)."""
    nodes = [helper.make_node("Tile", ["c", "r3"], ["t1"]), helper.make_node("Tile", ["t1", "r2"], ["t2"]),
             helper.make_node("Add", ["x", "t2"], ["y"])]
    inits = [init("c", np.arange(10000, dtype=np.float32)), init("r3", np.array([3], np.int64)), init("r2", np.array([2], np.int64))]
    model = make_model(nodes, [vi("x", [60000])], [vi("y", [60000])], inits)
    ctx = PassContext()
    out, records = apply_passes(model, "fold_constants", ctx)
    assert op_counts(out) == {"Tile": 2, "Add": 1}
    assert records[-1].counters == {"constants_converted": 0, "nodes_folded": 0, "bytes_materialized": 0}
    assert not records[-1].changed
    assert len(_notes(ctx, "fold_constants")) == 2


# --------------------------------------------------------------------------------------------
# dedupe


def test_dedupe_empty_optional_inputs_are_one_key():
    """Two Clip(x, <absent min>, max) nodes are the same computation: one is merged away."""
    nodes = [helper.make_node("Clip", ["x", "", "mx"], ["a"]), helper.make_node("Clip", ["x", "", "mx"], ["b"]),
             helper.make_node("Add", ["a", "b"], ["y"])]
    model = make_model(nodes, [vi("x", [2, 3])], [vi("y", [2, 3])], [init("mx", np.array(0.5, np.float32))])
    out, records = apply_passes(model, "dedupe")
    assert records[0].counters["nodes_merged"] == 1 and op_counts(out) == {"Clip": 1, "Add": 1}
    assert_equivalent(model, out)


def test_dedupe_keeps_nodes_whose_present_outputs_differ():
    """MaxPool -> y and MaxPool -> (y2, indices) compute different outputs: nothing is merged
    (merging would leave the indices without a producer)."""
    nodes = [
        helper.make_node("MaxPool", ["x"], ["p1"], kernel_shape=[2, 2]),
        helper.make_node("MaxPool", ["x"], ["p2", "idx"], kernel_shape=[2, 2]),
        helper.make_node("Add", ["p1", "p2"], ["y"]),
    ]
    model = make_model(nodes, [vi("x", [1, 1, 4, 4])], [vi("y", [1, 1, 3, 3]), vi("idx", [1, 1, 3, 3], I64)])
    out, records = apply_passes(model, "dedupe")
    assert records[0].counters["nodes_merged"] == 0 and op_counts(out) == {"MaxPool": 2, "Add": 1}
    assert_equivalent(model, out)


def test_dedupe_third_duplicate_of_a_merged_graph_output_is_declined():
    """Relu(x) three times, two of them graph outputs: the first output merge happens, then the
    kept Relu is itself a graph output, so the third is declined (no Identity is added)."""
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Neg", ["a"], ["z"]),
             helper.make_node("Relu", ["x"], ["y2"]), helper.make_node("Relu", ["x"], ["y3"])]
    model = make_model(nodes, [vi("x", [2])], [vi("z", [2]), vi("y2", [2]), vi("y3", [2])])
    ctx = PassContext()
    out, records = apply_passes(model, "dedupe", ctx)
    assert records[0].counters["nodes_merged"] == 1
    assert op_counts(out) == {"Relu": 2, "Neg": 1}
    assert _notes(ctx, "dedupe") == ["y3 and y2 are both graph outputs"]
    assert [o.name for o in out.graph.output] == ["z", "y2", "y3"]
    assert_equivalent(model, out)


def test_dedupe_keeps_a_node_whose_output_a_subgraph_returns():
    """In a gs graph a branch may return an outer tensor by name (gs holds it as a separate
    object, read by no node): the duplicate Relu producing it is not merged away."""
    x, c = gs.Variable("x", np.float32, [2]), gs.Variable("c", np.bool_, [])
    a, b, i, y = (gs.Variable(n, np.float32, [2]) for n in ("a", "b", "i", "y"))
    then = gs.Graph(nodes=[], outputs=[gs.Variable("b", np.float32, [2])], name="then")
    e = gs.Variable("e", np.float32, [2])
    els = gs.Graph(nodes=[gs.Node("Neg", inputs=[x], outputs=[e])], outputs=[e], name="else")
    graph = gs.Graph(
        nodes=[
            gs.Node("Relu", inputs=[x], outputs=[a]),
            gs.Node("Relu", inputs=[x], outputs=[b]),
            gs.Node("If", inputs=[c], outputs=[i], attrs={"then_branch": then, "else_branch": els}),
            gs.Node("Sum", inputs=[a, i], outputs=[y]),
        ],
        inputs=[x, c],
        outputs=[y],
        opset=18,
    )
    ctx = PassContext()
    records = Pipeline("dedupe").run(graph, ctx)
    assert records[0].counters["nodes_merged"] == 0
    assert [n.op for n in graph.nodes] == ["Relu", "Relu", "If", "Sum"] and b.inputs and b.inputs[0].op == "Relu"
    assert _notes(ctx, "dedupe") == ["b is read inside a subgraph"]


# --------------------------------------------------------------------------------------------
# eliminate_identity: near misses that must stay


def _single(op: str, inputs, x_shape, y_shape, inits=(), opset: int = 18, **attrs) -> onnx.ModelProto:
    node = helper.make_node(op, ["x", *inputs], ["t"], **attrs)
    return make_model([node, helper.make_node("Neg", ["t"], ["y"])], [vi("x", x_shape)], [vi("y", y_shape)], list(inits), opset=opset)


def _slice(starts, ends, steps=None, x_shape=(4, 3), y_shape=("M", 3)):
    inputs = ["st", "en", "ax"] + (["sp"] if steps else [])
    inits = [init("st", np.array(starts, np.int64)), init("en", np.array(ends, np.int64)), init("ax", np.array([0], np.int64))]
    if steps:
        inits.append(init("sp", np.array(steps, np.int64)))
    return _single("Slice", inputs, list(x_shape), list(y_shape), inits)


KEPT = {
    "transpose_rank2_no_perm": lambda: _single("Transpose", [], [2, 3], [3, 2]),
    "slice_step_2": lambda: _slice([0], [4], [2]),
    "slice_negative_start": lambda: _slice([-1], [4]),
    "slice_negative_end": lambda: _slice([0], [-1]),
    "slice_start_1_unknown_dim": lambda: _slice([1], [2**63 - 1], x_shape=("N", 3)),
    "flatten_rank3": lambda: _single("Flatten", [], [2, 3, 4], [2, 12], axis=1),
    "add_broadcast_symbolic": lambda: _single("Add", ["z"], ["N"], [3], [init("z", np.zeros(3, np.float32))]),
    "expand_symbolic": lambda: _single("Expand", ["s"], ["N"], [3], [init("s", np.array([3], np.int64))]),
    "reshape_allowzero_literal_zero": lambda: _single("Reshape", ["s"], [0, 3], [0, 0], [init("s", np.array([0, 0], np.int64))],
                                                      allowzero=1),
}


@pytest.mark.parametrize("case", sorted(KEPT))
def test_eliminate_identity_keeps_near_misses(case):
    """Each op here changes its input (order, elements or shape); it must survive, numerically
    unchanged (symbolic dims fed as 1 so that broadcasting would show)."""
    model = KEPT[case]()
    out, records = apply_passes(model, "infer_shapes,eliminate_identity")
    assert not _record(records, "eliminate_identity").changed
    assert op_counts(out) == op_counts(model)
    assert_equivalent(model, out, dims={"N": 1})


# --------------------------------------------------------------------------------------------
# dedupe: the digest cache follows a constant's values


def test_dedupe_digest_cache_sees_replaced_values():
    """One Dedupe instance (as in a fixed-point loop): after a constant's values are replaced by
    a copy of its twin's, the next run merges them (a cached digest of the old values would not)."""
    from onnxslim.passes.dedupe import Dedupe

    x = gs.Variable("x", np.float32, [2])
    w1 = gs.Constant("w1", np.array([1.0, 2.0], np.float32))
    w2 = gs.Constant("w2", np.array([5.0, 6.0], np.float32))
    a, b, y = (gs.Variable(n, np.float32, [2]) for n in ("a", "b", "y"))
    graph = gs.Graph(nodes=[gs.Node("Add", inputs=[x, w1], outputs=[a]), gs.Node("Mul", inputs=[x, w2], outputs=[b]),
                            gs.Node("Sub", inputs=[a, b], outputs=[y])], inputs=[x], outputs=[y], opset=18)
    dedupe = Dedupe()
    assert dedupe.run(graph, PassContext()).counters["initializers_merged"] == 0
    w2.values = np.array([1.0, 2.0], np.float32)
    result = dedupe.run(graph, PassContext())
    assert result.counters["initializers_merged"] == 1 and result.counters["bytes_saved"] == 8
    assert graph.nodes[1].inputs[1] is w1


# --------------------------------------------------------------------------------------------
# fuse_conv_bn: training-mode BatchNormalization stays


def _conv_bn(opset: int, bn_outputs: list[str], **bn_attrs) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [init("w", rng.standard_normal((4, 3, 3, 3)).astype(np.float32)),
             init("s", rng.uniform(0.5, 2.0, 4).astype(np.float32)), init("bb", rng.standard_normal(4).astype(np.float32)),
             init("m", rng.standard_normal(4).astype(np.float32)), init("v", rng.uniform(0.5, 2.0, 4).astype(np.float32))]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("BatchNormalization", ["c", "s", "bb", "m", "v"], bn_outputs, name="bn", **bn_attrs)]
    return make_model(nodes, [vi("x", [2, 3, 5, 5])], [vi("y", [2, 4, 3, 3])], inits, opset=opset)


@pytest.mark.parametrize("opset, outputs, attrs, reason", [
    (15, ["y", "", ""], {"training_mode": 1}, "training_mode=1"),
    (12, ["y", "mean_out", "var_out", "saved_mean", "saved_var"], {}, "optional statistics outputs are present (training mode)"),
])
def test_training_batch_norm_is_not_folded(opset, outputs, attrs, reason):
    """A BN normalizing with batch statistics (training_mode=1, or running-stat outputs before
    opset 14) is not an affine map of constants: it stays, declined with its reason."""
    model = _conv_bn(opset, outputs, **attrs)
    out, notes = _declined(model, "infer_shapes,fuse_conv_bn", {"Conv": 1, "BatchNormalization": 1})
    assert notes == [f"{reason}"]


# --------------------------------------------------------------------------------------------
# fuse_conv_affine: constants that would grow the output


def test_matmul_mul_with_unknown_rank_accepts_only_vectors():
    """MatMul whose rank is unknown (no shape inference): Mul by a [1, N] constant could add a
    dimension (a 1-D activation gives [N] * [1, N] = [1, N]), so it is declined."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("MatMul", ["a", "w"], ["m"], name="mm"),
             helper.make_node("Mul", ["m", "k"], ["y"], name="mul")]
    inits = [init("w", rng.standard_normal((5, 4)).astype(np.float32)), init("k", rng.standard_normal((1, 4)).astype(np.float32))]
    model = make_model(nodes, [vi("x", [5])], [vi("y", [1, 4])], inits)
    out, notes = _declined(model, "fuse_conv_affine", {"Relu": 1, "MatMul": 1, "Mul": 1})
    assert notes == ["MatMul -> Mul: constant of shape [1, 4] is not per output column (output rank 1)"]
    assert_equivalent(model, out)


def test_conv_mul_by_higher_rank_constant_is_kept():
    """Conv output [1, 2, 3, 3] times k [1, 2, 1, 1, 1] broadcasts to rank 5: not per channel."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), helper.make_node("Mul", ["c", "k"], ["y"], name="mul")]
    inits = [init("w", rng.standard_normal((2, 2, 3, 3)).astype(np.float32)), init("k", np.array([2.0, -3.0], np.float32).reshape(1, 2, 1, 1, 1))]
    model = make_model(nodes, [vi("x", [1, 2, 5, 5])], [vi("y", [1, 2, 2, 3, 3])], inits)
    out, notes = _declined(model, "infer_shapes,fuse_conv_affine", {"Conv": 1, "Mul": 1})
    assert notes == ["Conv -> Mul: constant of shape [1, 2, 1, 1, 1] is not per output channel"]
    assert_equivalent(model, out)


# --------------------------------------------------------------------------------------------
# fuse_gemm, fuse_pad


def test_fuse_gemm_keeps_matmul_whose_output_is_a_graph_output():
    """MatMul -> Add where the MatMul output is also a graph output: fusing would lose it."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["a", "w"], ["m"]), helper.make_node("Add", ["m", "c"], ["y"])]
    inits = [init("w", rng.standard_normal((5, 4)).astype(np.float32)), init("c", rng.standard_normal(4).astype(np.float32))]
    model = make_model(nodes, [vi("a", [3, 5])], [vi("y", [3, 4]), vi("m", [3, 4])], inits)
    out, records = apply_passes(model, "infer_shapes,fuse_gemm")
    assert not records[-1].changed and op_counts(out) == {"MatMul": 1, "Add": 1}
    assert [o.name for o in out.graph.output] == ["y", "m"]
    assert_equivalent(model, out)


def test_fuse_pad_keeps_pad_of_the_channel_end():
    """Pad adding one channel at the end ([0,0,0,0, 0,1,0,0]) cannot move into Conv's spatial pads."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"]), helper.make_node("Conv", ["p", "w"], ["y"], kernel_shape=[3, 3])]
    inits = [init("pads", np.array([0, 0, 0, 0, 0, 1, 0, 0], np.int64)), init("w", rng.standard_normal((2, 3, 3, 3)).astype(np.float32))]
    model = make_model(nodes, [vi("x", [1, 2, 5, 5])], [vi("y", [1, 2, 3, 3])], inits)
    out, notes = _declined(model, "infer_shapes,fuse_pad", {"Pad": 1, "Conv": 1})
    assert notes == ["Pad -> Conv: batch or channel dimension padded"]
    assert_equivalent(model, out)


# --------------------------------------------------------------------------------------------
# fold_shapes


def test_fold_shapes_honours_the_end_attribute():
    """Shape(x, end=2) of a static [2, 3, 4] folds to [2, 3]; Shape(x, end=-1) too."""
    for end in (2, -1):
        model = make_model([helper.make_node("Shape", ["x"], ["s"], end=end), helper.make_node("Identity", ["s"], ["y"])],
                           [vi("x", [2, 3, 4])], [vi("y", [2], I64)])
        out, records = apply_passes(model, "fold_shapes")
        assert records[0].counters["shapes_folded"] == 1
        assert [v.tolist() for v in _inits(out).values()] == [[2, 3]]
        assert_equivalent(model, out)


@pytest.mark.parametrize("index", [2, -3, [1, 5]])
def test_fold_shapes_leaves_out_of_range_gather_to_the_runtime(index):
    """Gather(Shape(x), i) with i out of range for x of shape [N, 3]: not folded, no exception."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "i"], ["g"], axis=0),
             helper.make_node("Identity", ["g"], ["y"])]
    i = np.array(index, np.int64)
    model = make_model(nodes, [vi("x", ["N", 3])], [vi("y", list(i.shape), I64)], [init("i", i)])
    out, records = apply_passes(model, "fold_shapes")
    assert not records[0].changed and op_counts(out) == {"Shape": 1, "Gather": 1, "Identity": 1}


# --------------------------------------------------------------------------------------------
# simplify_reshape_shape


def _reshape_by(data: str, target_nodes, inputs, outputs, inits=()) -> onnx.ModelProto:
    nodes = [*target_nodes, helper.make_node("Reshape", [data, "target"], ["r"]), helper.make_node("Identity", ["r"], ["y"])]
    return make_model(nodes, inputs, outputs, list(inits))


def _simplify(model: onnx.ModelProto, ctx: PassContext | None = None):
    out, records = apply_passes(model, "infer_shapes,simplify_reshape_shape", ctx)
    target = next(n for n in out.graph.node if n.op_type == "Reshape").input[1]
    value = _inits(out).get(target)
    return out, _record(records, "simplify_reshape_shape"), None if value is None else value.tolist()


def test_reshape_target_with_a_constant_minus_one_and_an_unknown_is_declined():
    """Target [dim0 of z, -1] (z unrelated to x): the unknown cannot become a second -1."""
    nodes = [helper.make_node("Shape", ["z"], ["sz"]), helper.make_node("Concat", ["sz", "m1"], ["target"], axis=0)]
    model = _reshape_by("x", nodes, [vi("x", ["N", 6]), vi("z", ["M"])], [vi("y", ["M", "K"])], [init("m1", np.array([-1], np.int64))])
    ctx = PassContext()
    out, record, target = _simplify(model, ctx)
    assert not record.changed and target is None and op_counts(out)["Concat"] == 1
    assert _notes(ctx, "simplify_reshape_shape") == ["the computed shape has more than one unknown element"]
    assert_equivalent(model, out, dims={"N": 2, "M": 3})


def test_reshape_target_from_a_strided_slice_of_a_shape_is_left_alone():
    """Slice(Shape(x), 0, 3, step 2) picks dims 0 and 2: not understood, so not rewritten."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Slice", ["s", "st", "en", "ax", "sp"], ["target"])]
    inits = [init(n, np.array([v], np.int64)) for n, v in (("st", 0), ("en", 3), ("ax", 0), ("sp", 2))]
    model = _reshape_by("w", nodes, [vi("x", ["N", 3, 2]), vi("w", ["N", 2])], [vi("y", ["N", 2])], inits)
    out, record, target = _simplify(model)
    assert not record.changed and target is None
    assert_equivalent(model, out, dims={"N": 3})


@pytest.mark.parametrize("attrs, expected", [({"end": -1}, [0, 2]), ({"start": -2}, [2, 3])])
def test_reshape_target_from_shape_with_negative_start_or_end(attrs, expected):
    """Shape(x, end=-1) of [N, 2, 3] is [N, 2] -> target [0, 2] for data [N, 2];
    Shape(x, start=-2) is [2, 3] -> target [2, 3] for data [6]."""
    data_shape = ["N", 2] if "end" in attrs else [6]
    out_shape = ["N", 2] if "end" in attrs else [2, 3]
    nodes = [helper.make_node("Shape", ["x"], ["target"], **attrs)]
    model = _reshape_by("w", nodes, [vi("x", ["N", 2, 3]), vi("w", data_shape)], [vi("y", out_shape)])
    out, record, target = _simplify(model)
    assert record.counters == {"reshapes_simplified": 1} and target == expected
    assert_equivalent(model, out, dims={"N": 3})


def test_reshape_target_swapping_two_symbolic_dims_is_declined():
    """Reshape(x[A, B], [B, A]): neither element copies the dim at its own position."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "i1"], ["b"], axis=0),
             helper.make_node("Gather", ["s", "i0"], ["a"], axis=0), helper.make_node("Concat", ["b", "a"], ["target"], axis=0)]
    inits = [init("i1", np.array([1], np.int64)), init("i0", np.array([0], np.int64))]
    model = _reshape_by("x", nodes, [vi("x", ["A", "B"])], [vi("y", ["B", "A"])], inits)
    out, record, target = _simplify(model)
    assert not record.changed and target is None
    assert_equivalent(model, out, dims={"A": 2, "B": 3})


def test_reshape_target_does_not_trust_invented_unk_symbols():
    """Dims named ``unk__N`` (left in a file by an earlier shape inference) are not taken as equal
    across tensors: Reshape(x[unk__0, unk__1], [dim of z[unk__0], dim of w[unk__1]]) stays, and
    with x 2x3, z [3], w [2] it still gives 3x2."""
    nodes = [helper.make_node("Shape", ["z"], ["sz"]), helper.make_node("Shape", ["w"], ["sw"]),
             helper.make_node("Concat", ["sz", "sw"], ["target"], axis=0)]
    model = _reshape_by("x", nodes, [vi("x", ["unk__0", "unk__1"]), vi("z", ["unk__0"]), vi("w", ["unk__1"])], [vi("y", ["P", "Q"])])
    out, record, target = _simplify(model)
    assert not record.changed and target is None
    feeds = {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "z": np.zeros(3, np.float32), "w": np.zeros(2, np.float32)}
    assert run_ort(out, feeds)["y"].shape == (3, 2)


# --------------------------------------------------------------------------------------------
# inline_if


def test_constant_if_first_in_the_taken_branch_is_inlined_in_the_same_run():
    """The taken branch starts with another constant If: both are inlined in one run."""
    inner_then = helper.make_graph([helper.make_node("Neg", ["x"], ["it"])], "it", [], [vi("it", [2])])
    inner_else = helper.make_graph([helper.make_node("Abs", ["x"], ["ie"])], "ie", [], [vi("ie", [2])])
    then = helper.make_graph([helper.make_node("If", ["kc"], ["q"], then_branch=inner_then, else_branch=inner_else),
                              helper.make_node("Relu", ["q"], ["t"])], "then", [], [vi("t", [2])])
    els = helper.make_graph([helper.make_node("Sigmoid", ["x"], ["e"])], "else", [], [vi("e", [2])])
    model = make_model([helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=els)], [vi("x", [2])], [vi("y", [2])],
                       [init("c", np.array(True)), init("kc", np.array(False))])
    out, records = apply_passes(model, "inline_if")
    assert records[0].counters == {"ifs_inlined": 2, "nodes_inlined": 3, "identities_added": 0, "tensors_renamed": 0}
    assert op_counts(out) == {"Abs": 1, "Relu": 1}
    assert_equivalent(model, out)


def test_taken_over_branch_output_follows_by_name_references_in_nested_subgraphs():
    """The branch output ``t`` becomes the If output ``y1``; a nested subgraph that names ``t``
    with its own gs object then reads ``y1``."""
    x = gs.Variable("x", np.float32, [2])
    t, u, y1, y2, z = (gs.Variable(n, np.float32, [2]) for n in ("t", "u", "y1", "y2", "z"))
    t_ref = gs.Variable("t", np.float32, [2])
    it, ie = gs.Variable("it", np.float32, [2]), gs.Variable("ie", np.float32, [2])
    inner_then = gs.Graph(nodes=[gs.Node("Identity", inputs=[t_ref], outputs=[it])], outputs=[it], name="inner_then")
    inner_else = gs.Graph(nodes=[gs.Node("Neg", inputs=[t], outputs=[ie])], outputs=[ie], name="inner_else")
    b = gs.Variable("b", np.bool_, [])
    then = gs.Graph(nodes=[gs.Node("Relu", inputs=[x], outputs=[t]),
                           gs.Node("If", inputs=[b], outputs=[u], attrs={"then_branch": inner_then, "else_branch": inner_else})],
                    outputs=[t, u], name="then")
    e1, e2 = gs.Variable("e1", np.float32, [2]), gs.Variable("e2", np.float32, [2])
    els = gs.Graph(nodes=[gs.Node("Neg", inputs=[x], outputs=[e1]), gs.Node("Abs", inputs=[x], outputs=[e2])], outputs=[e1, e2], name="else")
    graph = gs.Graph(nodes=[gs.Node("If", inputs=[gs.Constant("c", np.array(True))], outputs=[y1, y2],
                                    attrs={"then_branch": then, "else_branch": els}),
                            gs.Node("Add", inputs=[y1, y2], outputs=[z])],
                     inputs=[x, b], outputs=[z], opset=18)
    records = Pipeline("inline_if").run(graph, PassContext())
    assert records[0].counters["ifs_inlined"] == 1 and records[0].counters["identities_added"] == 0
    assert inner_then.nodes[0].inputs[0] is y1
    model = export_model(graph)
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    xv = np.array([-1.0, 2.0], np.float32)
    relu = np.maximum(xv, 0)
    for bv in (True, False):
        np.testing.assert_allclose(run_ort(model, {"x": xv, "b": np.array(bv)})["z"], relu + (relu if bv else -relu))


# --------------------------------------------------------------------------------------------
# space_to_depth_stem


def test_stem_with_per_input_channel_weight_scale_is_declined():
    """A weight DequantizeLinear on axis 1 (per input channel) with as many scales as output
    channels (3 and 3) is not per output channel: declined, model unchanged."""
    from tests.passes.test_space_to_depth_stem import stem_model

    model = stem_model(channels=3, out_ch=3)
    dq_w = next(n for n in model.graph.node if n.output[0] == "w")
    next(a for a in dq_w.attribute if a.name == "axis").i = 1
    out, notes = _declined(model, "space_to_depth_stem", op_counts(model))
    assert notes == ["weight scale is neither per-tensor nor per-output-channel"]


# --------------------------------------------------------------------------------------------
# infer_shapes


def test_user_named_unk_symbol_is_kept():
    """A dim the model itself names ``unk__0`` is not an invented symbol: it propagates."""
    model = make_model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Neg", ["r"], ["y"])],
                       [vi("x", ["unk__0", 3])], [vi("y", ["unk__0", 3])])
    graph = import_model(model)
    Pipeline("infer_shapes").run(graph, PassContext())
    r = graph.tensors()["r"]
    assert r.dtype == np.float32 and list(r.shape) == ["unk__0", 3]


def test_shapes_are_written_inside_if_branches():
    """Tensors inside If branches get their inferred dtype and shape."""
    then = helper.make_graph([helper.make_node("Relu", ["x"], ["t1"]), helper.make_node("Neg", ["t1"], ["t"])], "then", [], [vi("t", [2, 3])])
    els = helper.make_graph([helper.make_node("Abs", ["x"], ["e1"]), helper.make_node("Neg", ["e1"], ["e"])], "else", [], [vi("e", [2, 3])])
    model = make_model([helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=els)],
                       [vi("x", [2, 3]), vi("c", [], TensorProto.BOOL)], [vi("y", [2, 3])])
    graph = import_model(model)
    records = Pipeline("infer_shapes").run(graph, PassContext())
    branches = graph.nodes[0].attrs
    t1, e1 = branches["then_branch"].tensors()["t1"], branches["else_branch"].tensors()["e1"]
    assert (t1.dtype, list(t1.shape)) == (np.float32, [2, 3]) and (e1.dtype, list(e1.shape)) == (np.float32, [2, 3])
    assert records[0].counters["tensors_updated"] == 2


def test_merge_shape_never_replaces_a_symbol_by_another():
    """An existing symbol stays when inference names the dim differently; an integer still wins."""
    assert merge_shape(["batch", None], ["N", "M"]) == ["batch", "M"]
    assert merge_shape(["batch"], [4]) == [4]


# --------------------------------------------------------------------------------------------
# collapse_reshapes


def test_reshape_copying_dims_of_an_empty_intermediate_is_not_merged():
    """Reshape(Unsqueeze(x[3, 0]), [0, 0, 0]) copies the dims of [1, 3, 0]; its static result has
    a 0, which a merged Reshape(x, [1, 3, 0]) would read as "copy dim 2 of x": declined."""
    nodes = [helper.make_node("Unsqueeze", ["x", "ax"], ["u"]), helper.make_node("Reshape", ["u", "s"], ["r"]),
             helper.make_node("Identity", ["r"], ["y"])]
    inits = [init("ax", np.array([0], np.int64)), init("s", np.array([0, 0, 0], np.int64))]
    model = make_model(nodes, [vi("x", [3, 0])], [vi("y", [1, 3, 0])], inits)
    out, notes = _declined(model, "infer_shapes,collapse_reshapes", {"Unsqueeze": 1, "Reshape": 1, "Identity": 1})
    assert notes == [
        "the second Reshape's shape copies dims (0) of the intermediate and the result shape "
        "has an empty (0) dim that a literal shape would not copy"]
    assert_equivalent(model, out)


def test_fold_shapes_treats_a_negative_dim_as_unknown():
    """Some exporters write dim_value -1 for a dynamic dim: Shape(x[-1, 3]) is not folded to [-1, 3]."""
    model = make_model([helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Identity", ["s"], ["y"])],
                       [vi("x", [-1, 3])], [vi("y", [2], I64)], check=False)
    out, records = apply_passes(model, "fold_shapes", check=False)
    assert not records[0].changed and op_counts(out) == {"Shape": 1, "Identity": 1}
    assert run_ort(out, {"x": np.zeros((4, 3), np.float32)})["y"].tolist() == [4, 3]


def test_optional_input_is_none_when_missing_or_named_empty():
    from onnxslim.graph import optional_input

    x, w, b = gs.Variable("x"), gs.Constant("w", np.ones((1, 1, 1, 1), np.float32)), gs.Constant("b", np.zeros(1, np.float32))
    full, empty, short = (gs.Node("Conv", inputs=ins) for ins in ([x, w, b], [x, w, gs.Variable("")], [x, w]))
    assert optional_input(full, 2) is b and optional_input(full, 1) is w
    assert optional_input(empty, 2) is None and optional_input(short, 2) is None and optional_input(short, 5) is None


def test_optional_constant_is_the_float64_value_none_when_absent_and_rejects_a_runtime_bias():
    from onnxslim.graph import Reject, optional_constant

    x, w = gs.Variable("x"), gs.Constant("w", np.ones((2, 1, 1, 1), np.float32))
    b = gs.Constant("b", np.array([0.5, -1.25], np.float32))
    with_bias, empty, computed = (gs.Node("Conv", inputs=ins) for ins in ([x, w, b], [x, w, gs.Variable("")], [x, w, gs.Variable("r")]))
    value = optional_constant(with_bias, 2, "Conv bias")
    assert value.dtype == np.float64 and value.tolist() == [0.5, -1.25]
    assert optional_constant(empty, 2, "Conv bias") is None and optional_constant(gs.Node("Conv", inputs=[x, w]), 2, "bias") is None
    with pytest.raises(Reject, match="^Conv bias is not constant$"):
        optional_constant(computed, 2, "Conv bias")
    pads = gs.Node("Pad", inputs=[x, gs.Constant("p", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))])
    stored = optional_constant(pads, 1, "input 1 of Pad", dtype=None)
    assert stored.dtype == np.int64 and stored.tolist() == [0, 0, 1, 1, 0, 0, 1, 1]


@pytest.mark.parametrize("passes, affine", [("fuse_conv_affine", "after"), ("fuse_input_affine", "before"), ("fuse_conv_bn", "bn")])
def test_conv_with_an_empty_bias_name_folds_as_a_conv_without_bias(passes, affine):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 1, 1)).astype(np.float32)
    k = rng.uniform(0.5, 2.0, (1, 4 if affine != "before" else 3, 1, 1)).astype(np.float32)
    inits = [init("w", w), init("k", k)]
    if affine == "before":
        nodes = [helper.make_node("Mul", ["x", "k"], ["xs"]), helper.make_node("Conv", ["xs", "w", ""], ["y"])]
    elif affine == "after":
        nodes = [helper.make_node("Conv", ["x", "w", ""], ["c"]), helper.make_node("Mul", ["c", "k"], ["y"])]
    else:
        inits += [init(n, rng.uniform(0.5, 2.0, 4).astype(np.float32)) for n in ("s", "t", "m", "v")]
        nodes = [helper.make_node("Conv", ["x", "w", ""], ["c"]), helper.make_node("BatchNormalization", ["c", "s", "t", "m", "v"], ["y"])]
    model = make_model(nodes, [vi("x", [1, 3, 5, 5])], [vi("y", [1, 4, 5, 5])], inits)
    out, _ = apply_passes(model, passes)
    assert op_counts(out) == {"Conv": 1}
    assert_equivalent(model, out)
