"""eliminate_identity: structural (op counts, counters) and numeric (onnxruntime) checks per rule,
plus the cases where a node looks like a no-op but is not (graph unchanged, changed=False)."""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxslim.pipeline import PassContext
from tests.helpers import apply_passes, assert_equivalent, init, make_model, op_counts, vi

INT64_MAX = np.iinfo(np.int64).max
PIPELINE = "infer_shapes,eliminate_identity"
DIMS = {"N": 3, "M": 2}


def _run(model: onnx.ModelProto, ctx: PassContext | None = None):
    out, records = apply_passes(model, PIPELINE, ctx)
    return out, records[-1]


def _i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def _f32(value: float, shape: tuple[int, ...] = ()) -> np.ndarray:
    return np.full(shape, value, dtype=np.float32)


def _sandwich(
    node: onnx.NodeProto,
    shape=(2, 3, 4),
    out_shape=None,
    inits=(),
    extra_inputs=(),
    opset: int = 18,
    out_dtype: int = TensorProto.FLOAT,
    dtype: int = TensorProto.FLOAT,
) -> onnx.ModelProto:
    """``x -> Relu -> a -> node -> b -> Neg -> y``: the node under test sits between two ops."""
    nodes = [helper.make_node("Relu", ["x"], ["a"]), node, helper.make_node("Neg", ["b"], ["y"])]
    outputs = [vi("y", out_shape if out_shape is not None else shape, out_dtype)]
    return make_model(nodes, [vi("x", shape, dtype), *extra_inputs], outputs, list(inits), opset=opset)


def _node(op: str, inputs: list[str], outputs=("b",), **attrs) -> onnx.NodeProto:
    return helper.make_node(op, inputs, list(outputs), name=f"{op.lower()}_under_test", **attrs)


# --------------------------------------------------------------------------------------------
# Positive cases: (counter key, model builder). Built on demand, not at import time.

POSITIVE: dict[str, tuple[str, Callable[[], onnx.ModelProto]]] = {
    "identity": ("identity", lambda: _sandwich(_node("Identity", ["a"]))),
    "dropout": ("dropout", lambda: _sandwich(_node("Dropout", ["a"]))),
    "dropout_unused_mask": ("dropout", lambda: _sandwich(_node("Dropout", ["a"], ("b", "mask")))),
    "dropout_training_false": (
        "dropout",
        lambda: _sandwich(_node("Dropout", ["a", "r", "t"]), inits=[init("r", _f32(0.5)), init("t", np.array(False))]),
    ),
    "dropout_opset11": ("dropout", lambda: _sandwich(_node("Dropout", ["a"], ratio=0.3), opset=11)),
    "cast": ("cast", lambda: _sandwich(_node("Cast", ["a"], to=TensorProto.FLOAT))),
    "cast_like": ("cast_like", lambda: _sandwich(_node("CastLike", ["a", "like"]), inits=[init("like", _f32(0, (1,)))])),
    "reshape_static": ("reshape", lambda: _sandwich(_node("Reshape", ["a", "s"]), inits=[init("s", _i64(2, 3, 4))])),
    "reshape_symbolic_zero": (
        "reshape",
        lambda: _sandwich(_node("Reshape", ["a", "s"]), shape=["N", 3, 4], inits=[init("s", _i64(0, 3, -1))]),
    ),
    "reshape_symbolic_minus_one": (
        "reshape",
        lambda: _sandwich(_node("Reshape", ["a", "s"]), shape=["N", 3, 4], inits=[init("s", _i64(-1, 3, 4))]),
    ),
    "transpose": ("transpose", lambda: _sandwich(_node("Transpose", ["a"], perm=[0, 1, 2]))),
    "expand": ("expand", lambda: _sandwich(_node("Expand", ["a", "s"]), inits=[init("s", _i64(1, 3, 1))])),
    "expand_ones_dynamic": (
        "expand",
        lambda: _sandwich(_node("Expand", ["a", "s"]), shape=["N", 3, 4], inits=[init("s", _i64(1, 1))]),
    ),
    "slice_full": (
        "slice",
        lambda: _sandwich(
            _node("Slice", ["a", "st", "en", "ax", "sp"]),
            shape=["N", 3, 4],
            inits=[init("st", _i64(0, -3)), init("en", _i64(INT64_MAX, 3)), init("ax", _i64(0, -2)), init("sp", _i64(1, 1))],
        ),
    ),
    "slice_opset9": ("slice", lambda: _sandwich(_node("Slice", ["a"], starts=[0], ends=[100], axes=[2]), opset=9)),
    "pad": (
        "pad",
        lambda: _sandwich(_node("Pad", ["a", "p"], mode="reflect"), inits=[init("p", _i64(0, 0, 0, 0, 0, 0))]),
    ),
    "pad_opset10": ("pad", lambda: _sandwich(_node("Pad", ["a"], pads=[0] * 6), opset=10)),
    "concat": ("concat", lambda: _sandwich(_node("Concat", ["a"], axis=1))),
    "split": ("split", lambda: _sandwich(_node("Split", ["a", "sp"], axis=1), inits=[init("sp", _i64(3))])),
    "squeeze_no_one_dims": ("squeeze", lambda: _sandwich(_node("Squeeze", ["a"]))),
    "squeeze_opset11": ("squeeze", lambda: _sandwich(_node("Squeeze", ["a"]), opset=11)),
    "unsqueeze_empty_axes": (
        "unsqueeze",
        lambda: _sandwich(_node("Unsqueeze", ["a", "ax"]), inits=[init("ax", np.zeros((0,), np.int64))]),
    ),
    "flatten_rank2": ("flatten", lambda: _sandwich(_node("Flatten", ["a"], axis=1), shape=["N", 5])),
    "flatten_negative_axis": ("flatten", lambda: _sandwich(_node("Flatten", ["a"], axis=-1), shape=[2, "M"])),
    "flatten_static": ("flatten", lambda: _sandwich(_node("Flatten", ["a"], axis=0), shape=[1, 5])),
    "tile": ("tile", lambda: _sandwich(_node("Tile", ["a", "r"]), inits=[init("r", _i64(1, 1, 1))])),
    "resize_scales": (
        "resize",
        lambda: _sandwich(_node("Resize", ["a", "", "sc"], mode="linear"), shape=[1, 2, 3, 3], inits=[init("sc", _f32(1, (4,)))]),
    ),
    "resize_sizes": (
        "resize",
        lambda: _sandwich(
            _node("Resize", ["a", "", "", "sz"], mode="cubic"), shape=[1, 2, 3, 3], inits=[init("sz", _i64(1, 2, 3, 3))]
        ),
    ),
    "resize_sizes_axes": (
        "resize",
        lambda: _sandwich(
            _node("Resize", ["a", "", "", "sz"], axes=[-1, 2]), shape=[1, 2, 3, 5], inits=[init("sz", _i64(5, 3))]
        ),
    ),
    "upsample_opset9": (
        "upsample",
        lambda: _sandwich(_node("Upsample", ["a", "sc"]), shape=[1, 2, 3, 3], inits=[init("sc", _f32(1, (4,)))], opset=9),
    ),
    "add_zero": ("add", lambda: _sandwich(_node("Add", ["a", "c"]), inits=[init("c", _f32(0, (1, 4)))])),
    "zero_add": ("add", lambda: _sandwich(_node("Add", ["c", "a"]), inits=[init("c", _f32(0, (3, 4)))])),
    "add_scalar_zero_dynamic": ("add", lambda: _sandwich(_node("Add", ["a", "c"]), shape=["N", "M"], inits=[init("c", _f32(0))])),
    "sub_zero": ("sub", lambda: _sandwich(_node("Sub", ["a", "c"]), inits=[init("c", _f32(0))])),
    "mul_one": ("mul", lambda: _sandwich(_node("Mul", ["a", "c"]), inits=[init("c", _f32(1, (1, 1, 1)))])),
    "one_mul": ("mul", lambda: _sandwich(_node("Mul", ["c", "a"]), inits=[init("c", _f32(1))])),
    "div_one": ("div", lambda: _sandwich(_node("Div", ["a", "c"]), inits=[init("c", _f32(1, (4,)))])),
    "pow_one": ("pow", lambda: _sandwich(_node("Pow", ["a", "c"]), inits=[init("c", _f32(1))])),
    "pow_int_one": ("pow", lambda: _sandwich(_node("Pow", ["a", "c"]), inits=[init("c", _i64(1))])),
    "add_zero_int32": (
        "add",
        lambda: _sandwich(
            _node("Add", ["a", "c"]),
            inits=[init("c", np.zeros((), np.int32))],
            dtype=TensorProto.INT32,
            out_dtype=TensorProto.INT32,
        ),
    ),
}


@pytest.mark.parametrize("case", sorted(POSITIVE))
def test_removes_no_op(case):
    kind, build = POSITIVE[case]
    model = build()
    assert len(model.graph.node) == 3
    out, record = _run(model)
    assert record.changed
    assert record.counters == {kind: 1}
    assert op_counts(out) == {"Relu": 1, "Neg": 1}
    assert out.graph.node[1].input[0] == out.graph.node[0].output[0]


@pytest.mark.parametrize("case", sorted(POSITIVE))
def test_removal_keeps_outputs(case):
    model = POSITIVE[case][1]()
    out, _ = _run(model)
    assert_equivalent(model, out, dims=DIMS)


def test_graph_output_keeps_its_name():
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Identity", ["a"], ["y"])]
    model = make_model(nodes, [vi("x", [2, 3])], [vi("y", [2, 3])])
    out, record = _run(model)
    assert record.counters == {"identity": 1}
    assert op_counts(out) == {"Relu": 1}
    assert [o.name for o in out.graph.output] == ["y"]
    assert out.graph.node[0].output[0] == "y"
    assert_equivalent(model, out)


def test_chain_of_no_ops_goes_in_one_run():
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Identity", ["a"], ["b"]),
        helper.make_node("Cast", ["b"], ["c"], to=TensorProto.FLOAT),
        helper.make_node("Dropout", ["c"], ["d"]),
        helper.make_node("Identity", ["d"], ["y"]),
    ]
    model = make_model(nodes, [vi("x", [2, 3])], [vi("y", [2, 3])])
    out, record = _run(model)
    assert record.counters == {"identity": 2, "cast": 1, "dropout": 1}
    assert op_counts(out) == {"Relu": 1}
    assert_equivalent(model, out)


def test_second_run_reports_no_change():
    model = POSITIVE["identity"][1]()
    _, records = apply_passes(model, "infer_shapes,eliminate_identity,eliminate_identity")
    assert records[1].changed and not records[2].changed


# --------------------------------------------------------------------------------------------
# Negative cases: the node changes its input (or cannot be proven not to): graph unchanged.

NEGATIVE: dict[str, Callable[[], onnx.ModelProto]] = {
    "cast_to_other_dtype": lambda: _sandwich(_node("Cast", ["a"], to=TensorProto.DOUBLE), out_dtype=TensorProto.DOUBLE),
    "cast_like_other_dtype": lambda: _sandwich(
        _node("CastLike", ["a", "like"]), inits=[init("like", np.zeros((1,), np.float64))], out_dtype=TensorProto.DOUBLE
    ),
    "reshape_changes_shape": lambda: _sandwich(_node("Reshape", ["a", "s"]), out_shape=[6, 4], inits=[init("s", _i64(6, 4))]),
    "reshape_unprovable_dynamic": lambda: _sandwich(
        _node("Reshape", ["a", "s"]), shape=["N", "M"], out_shape=None, inits=[init("s", _i64(3, -1))]
    ),
    "transpose_perm": lambda: _sandwich(_node("Transpose", ["a"], perm=[1, 0, 2]), out_shape=[3, 2, 4]),
    "transpose_default_perm": lambda: _sandwich(_node("Transpose", ["a"]), out_shape=[4, 3, 2]),
    "expand_broadcasts": lambda: _sandwich(
        _node("Expand", ["a", "s"]), shape=[2, 1, 4], out_shape=[2, 3, 4], inits=[init("s", _i64(2, 3, 4))]
    ),
    "expand_adds_rank": lambda: _sandwich(
        _node("Expand", ["a", "s"]), out_shape=[1, 2, 3, 4], inits=[init("s", _i64(1, 1, 1, 1))]
    ),
    "slice_partial": lambda: _sandwich(
        _node("Slice", ["a", "st", "en", "ax"]),
        out_shape=[2, 2, 4],
        inits=[init("st", _i64(0)), init("en", _i64(2)), init("ax", _i64(1))],
    ),
    "slice_reverse": lambda: _sandwich(
        _node("Slice", ["a", "st", "en", "ax", "sp"]),
        inits=[init("st", _i64(-1)), init("en", _i64(-INT64_MAX)), init("ax", _i64(1)), init("sp", _i64(-1))],
    ),
    "slice_unknown_dim_small_end": lambda: _sandwich(
        _node("Slice", ["a", "st", "en", "ax"]),
        shape=["N", 3],
        inits=[init("st", _i64(0)), init("en", _i64(1000)), init("ax", _i64(0))],
    ),
    "pad_nonzero": lambda: _sandwich(_node("Pad", ["a", "p"]), out_shape=[2, 3, 5], inits=[init("p", _i64(0, 0, 0, 0, 0, 1))]),
    "concat_two_inputs": lambda: _sandwich(_node("Concat", ["a", "a"], axis=0), out_shape=[4, 3, 4]),
    "squeeze_drops_one_dim": lambda: _sandwich(_node("Squeeze", ["a"]), shape=[2, 1, 4], out_shape=[2, 4]),
    "squeeze_dynamic_dims": lambda: _sandwich(_node("Squeeze", ["a"]), shape=["N", 3], out_shape=None),
    "squeeze_opset11_axes": lambda: _sandwich(_node("Squeeze", ["a"], axes=[1]), shape=[2, 1, 4], out_shape=[2, 4], opset=11),
    "unsqueeze_axes": lambda: _sandwich(_node("Unsqueeze", ["a", "ax"]), out_shape=[1, 2, 3, 4], inits=[init("ax", _i64(0))]),
    "flatten_changes_shape": lambda: _sandwich(_node("Flatten", ["a"], axis=0), shape=[2, 3], out_shape=[1, 6]),
    "tile_repeats": lambda: _sandwich(_node("Tile", ["a", "r"]), out_shape=[2, 6, 4], inits=[init("r", _i64(1, 2, 1))]),
    "resize_scale_two": lambda: _sandwich(
        _node("Resize", ["a", "", "sc"]),
        shape=[1, 2, 3, 3],
        out_shape=[1, 2, 6, 6],
        inits=[init("sc", np.array([1, 1, 2, 2], np.float32))],
    ),
    "resize_tf_crop": lambda: _sandwich(
        _node("Resize", ["a", "roi", "sc"], coordinate_transformation_mode="tf_crop_and_resize", mode="linear"),
        shape=[1, 1, 4, 4],
        inits=[init("roi", np.array([0, 0, 0, 0, 1, 1, 0.5, 0.5], np.float32)), init("sc", _f32(1, (4,)))],
    ),
    "add_zero_broadcasts": lambda: _sandwich(
        _node("Add", ["a", "c"]), shape=[3, 4], out_shape=[2, 3, 4], inits=[init("c", _f32(0, (2, 3, 4)))]
    ),
    "add_zero_widens_dim": lambda: _sandwich(
        _node("Add", ["a", "c"]), shape=[2, 1, 4], out_shape=[2, 3, 4], inits=[init("c", _f32(0, (3, 1)))]
    ),
    "add_one": lambda: _sandwich(_node("Add", ["a", "c"]), inits=[init("c", _f32(1))]),
    "zero_minus_x": lambda: _sandwich(_node("Sub", ["c", "a"]), inits=[init("c", _f32(0))]),
    "one_over_x": lambda: _sandwich(_node("Div", ["c", "a"]), inits=[init("c", _f32(1))]),
    "one_pow_x": lambda: _sandwich(_node("Pow", ["c", "a"]), inits=[init("c", _f32(1))]),
    "mul_mixed": lambda: _sandwich(_node("Mul", ["a", "c"]), inits=[init("c", np.array([1, 1, 1, 2], np.float32))]),
    "dropout_training_true": lambda: _sandwich(
        _node("Dropout", ["a", "r", "t"]), inits=[init("r", _f32(0.0)), init("t", np.array(True))]
    ),
    "dropout_training_input": lambda: _sandwich(
        _node("Dropout", ["a", "", "t"]), extra_inputs=[vi("t", [], TensorProto.BOOL)]
    ),
}


@pytest.mark.parametrize("case", sorted(NEGATIVE))
def test_leaves_real_ops(case):
    model = NEGATIVE[case]()
    out, record = _run(model)
    assert not record.changed
    assert record.counters == {}
    assert op_counts(out) == op_counts(model)


def test_dropout_with_used_mask_declines():
    nodes = [helper.make_node("Relu", ["x"], ["a"]), _node("Dropout", ["a"], ("y", "mask"))]
    model = make_model(nodes, [vi("x", [2, 3])], [vi("y", [2, 3]), vi("mask", [2, 3], TensorProto.BOOL)])
    ctx = PassContext()
    out, record = _run(model, ctx)
    assert not record.changed
    assert op_counts(out) == {"Relu": 1, "Dropout": 1}
    assert any(n["pass"] == "eliminate_identity" and "mask" in n["reason"] for n in ctx.notes)


def test_graph_input_to_graph_output_is_kept():
    model = make_model([helper.make_node("Identity", ["x"], ["y"])], [vi("x", [2, 3])], [vi("y", [2, 3])])
    ctx = PassContext()
    out, record = _run(model, ctx)
    assert not record.changed
    assert op_counts(out) == {"Identity": 1}
    assert any(n["pass"] == "eliminate_identity" for n in ctx.notes)


def test_constant_to_graph_output_is_kept():
    model = make_model(
        [helper.make_node("Add", ["x", "c"], ["y"]), helper.make_node("Identity", ["c"], ["z"])],
        [vi("x", [2])],
        [vi("y", [2]), vi("z", [2])],
        [init("c", _f32(0, (2,)))],
    )
    out, record = _run(model)
    assert not record.changed  # both would need an Identity to keep the output names
    assert op_counts(out) == {"Add": 1, "Identity": 1}


def test_custom_domain_is_left_alone():
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Identity", ["a"], ["b"], domain="com.example"),
        helper.make_node("Neg", ["b"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "t", [vi("x", [2])], [vi("y", [2])])
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.example", 1)]
    )
    out, records = apply_passes(model, "eliminate_identity", check=False)
    assert not records[-1].changed
    assert op_counts(out) == {"Relu": 1, "Identity": 1, "Neg": 1}
