"""fold_shapes: Shape/Size of static shapes, Gather/Slice of a Shape where the selected dims are
static (others may be symbolic), and the cases that must stay dynamic."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.helpers import apply_passes, assert_equivalent, init, make_model, op_counts, vi

DIMS = {"N": 3}


def _fold(model: onnx.ModelProto, pipeline: str = "fold_shapes"):
    out, records = apply_passes(model, pipeline)
    return out, records[-1]


def _inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _shape_into_reshape(x_shape, select: list[onnx.NodeProto], inits=(), shape_attrs=None, y_rank: int = 3) -> onnx.ModelProto:
    """x -> Shape -> <select: s -> sel> -> Concat(sel, [-1]) -> Reshape(x) -> y (rank len(sel)+1)."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], **(shape_attrs or {})),
        *select,
        helper.make_node("Concat", ["sel", "m1"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"]),
    ]
    y_shape = [f"d{i}" for i in range(y_rank)]
    return make_model(nodes, [vi("x", x_shape)], [vi("y", y_shape)], [init("m1", np.array([-1], np.int64)), *inits])


def test_static_shape_becomes_constant():
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Cast", ["s"], ["sf"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["x", "sf"], ["y"])]
    model = make_model(nodes, [vi("x", [2, 3, 3])], [vi("y", [2, 3, 3])])
    out, record = _fold(model)
    assert op_counts(out) == {"Cast": 1, "Add": 1} and record.counters["shapes_folded"] == 1
    assert np.array_equal(_inits(out)["s"], [2, 3, 3]) and _inits(out)["s"].dtype == np.int64
    assert_equivalent(model, out)


def test_shape_as_graph_output_keeps_its_name():
    model = make_model([helper.make_node("Shape", ["x"], ["y"])], [vi("x", [2, 3])], [vi("y", [2], TensorProto.INT64)])
    out, record = _fold(model)
    assert op_counts(out) == {"Constant": 1} and [o.name for o in out.graph.output] == ["y"]
    assert_equivalent(model, out)


def test_shape_start_end_selects_static_dims_only():
    sel = [helper.make_node("Identity", ["s"], ["sel"])]
    model = _shape_into_reshape(["N", 3, 4], sel, shape_attrs={"start": 1})
    out, record = _fold(model)
    assert record.counters["shapes_folded"] == 1
    assert op_counts(out) == {"Identity": 1, "Concat": 1, "Reshape": 1}
    assert np.array_equal(_inits(out)["s"], [3, 4])
    assert_equivalent(model, out, dims=DIMS)


def test_shape_with_symbolic_dim_is_kept():
    sel = [helper.make_node("Identity", ["s"], ["sel"])]
    model = _shape_into_reshape(["N", 3, 4], sel, shape_attrs={"end": -1})
    out, record = _fold(model)
    assert not record.changed and op_counts(out) == op_counts(model)


@pytest.mark.parametrize("indices, expected", [(np.array([1, 2], np.int64), [3, 4]), (np.array([-1], np.int64), [4])])
def test_gather_of_static_dims_folds_while_batch_is_symbolic(indices, expected):
    sel = [helper.make_node("Gather", ["s", "idx"], ["sel"], axis=0)]
    model = _shape_into_reshape(["N", 3, 4], sel, [init("idx", indices)], y_rank=len(expected) + 1)
    out, record = _fold(model)
    assert record.counters["gathers_folded"] == 1
    assert op_counts(out) == {"Concat": 1, "Reshape": 1}
    assert np.array_equal(_inits(out)["sel"], expected)
    assert_equivalent(model, out, dims=DIMS)


def test_gather_of_scalar_index_gives_scalar():
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "i"], ["g"], axis=0),
             helper.make_node("Cast", ["g"], ["gf"], to=TensorProto.FLOAT), helper.make_node("Mul", ["x", "gf"], ["y"])]
    model = make_model(nodes, [vi("x", ["N", 5])], [vi("y", ["N", 5])], [init("i", np.array(1, np.int64))])
    out, _ = _fold(model)
    assert op_counts(out) == {"Cast": 1, "Mul": 1} and _inits(out)["g"].shape == ()
    assert_equivalent(model, out, dims=DIMS)


def test_gather_of_symbolic_dim_is_kept():
    sel = [helper.make_node("Gather", ["s", "idx"], ["sel"], axis=0)]
    model = _shape_into_reshape(["N", 3, 4], sel, [init("idx", np.array([0, 1], np.int64))])
    out, record = _fold(model)
    assert not record.changed and op_counts(out) == op_counts(model)


def test_gather_with_non_constant_indices_is_kept():
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "i"], ["y"], axis=0)]
    model = make_model(nodes, [vi("x", ["N", 3]), vi("i", [1], TensorProto.INT64)], [vi("y", [1], TensorProto.INT64)])
    out, record = _fold(model)
    assert not record.changed


@pytest.mark.parametrize(
    "starts, ends, steps, expected",
    [([1], [3], None, [3, 4]), ([-2], [np.iinfo(np.int64).max], None, [3, 4]), ([2], [0], [-1], [4, 3])],
)
def test_slice_of_static_dims_folds(starts, ends, steps, expected):
    inits = [init("st", np.array(starts, np.int64)), init("en", np.array(ends, np.int64)), init("ax", np.array([0], np.int64))]
    inputs = ["s", "st", "en", "ax"]
    if steps is not None:
        inits.append(init("sp", np.array(steps, np.int64)))
        inputs.append("sp")
    model = _shape_into_reshape(["N", 3, 4], [helper.make_node("Slice", inputs, ["sel"])], inits)
    out, record = _fold(model)
    assert record.counters["slices_folded"] == 1 and op_counts(out) == {"Concat": 1, "Reshape": 1}
    assert np.array_equal(_inits(out)["sel"], expected)
    assert_equivalent(model, out, dims=DIMS)


def test_slice_attributes_before_opset_10():
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Slice", ["s"], ["y"], starts=[1], ends=[3])]
    model = make_model(nodes, [vi("x", ["N", 3, 4])], [vi("y", [2], TensorProto.INT64)], opset=9)
    out, record = _fold(model)
    assert record.counters["slices_folded"] == 1 and op_counts(out) == {"Constant": 1}
    assert_equivalent(model, out, dims=DIMS)


def test_slice_reaching_a_symbolic_dim_is_kept():
    inits = [init("st", np.array([0], np.int64)), init("en", np.array([2], np.int64))]
    model = _shape_into_reshape(["N", 3, 4], [helper.make_node("Slice", ["s", "st", "en"], ["sel"])], inits)
    out, record = _fold(model)
    assert not record.changed and op_counts(out) == op_counts(model)


def test_size_of_static_shape():
    nodes = [helper.make_node("Size", ["x"], ["n"]), helper.make_node("Cast", ["n"], ["nf"], to=TensorProto.FLOAT),
             helper.make_node("Div", ["x", "nf"], ["y"])]
    model = make_model(nodes, [vi("x", [2, 3])], [vi("y", [2, 3])])
    out, record = _fold(model)
    assert record.counters["sizes_folded"] == 1 and op_counts(out) == {"Cast": 1, "Div": 1}
    assert _inits(out)["n"].shape == () and int(_inits(out)["n"]) == 6
    assert_equivalent(model, out)


def test_size_of_dynamic_shape_is_kept():
    nodes = [helper.make_node("Size", ["x"], ["y"])]
    model = make_model(nodes, [vi("x", ["N", 3])], [vi("y", [], TensorProto.INT64)])
    _, record = _fold(model)
    assert not record.changed


def test_dynamic_batch_keeps_what_depends_on_it_and_folds_the_rest():
    """Reshape(x, [N, 3*4]) with N symbolic: the 3*4 branch folds, the N branch stays."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "i0"], ["d0"], axis=0),
        helper.make_node("Gather", ["s", "i1"], ["d1"], axis=0),
        helper.make_node("Gather", ["s", "i2"], ["d2"], axis=0),
        helper.make_node("Mul", ["d1", "d2"], ["d12"]),
        helper.make_node("Unsqueeze", ["d0", "ax"], ["u0"]),
        helper.make_node("Unsqueeze", ["d12", "ax"], ["u12"]),
        helper.make_node("Concat", ["u0", "u12"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"]),
    ]
    inits = [init(f"i{k}", np.array(k, np.int64)) for k in range(3)] + [init("ax", np.array([0], np.int64))]
    model = make_model(nodes, [vi("x", ["N", 3, 4])], [vi("y", ["N", 12])], inits)
    out, records = apply_passes(model, "infer_shapes,[fold_constants,fold_shapes,eliminate_dead,infer_shapes]")
    assert op_counts(out) == {"Shape": 1, "Gather": 1, "Unsqueeze": 1, "Concat": 1, "Reshape": 1}
    assert np.array_equal(_inits(out)["u12"], [12])
    assert not records[-1].changed
    assert_equivalent(model, out, dims=DIMS)
