"""collapse_reshapes: structural (op counts, counters) and numeric (onnxruntime) checks per rule,
plus chains that must stay as they are (graph unchanged, changed=False)."""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnxslim.pipeline import PassContext
from tests.helpers import apply_passes, assert_equivalent, init, make_model, op_counts, vi

PIPELINE = "infer_shapes,collapse_reshapes"
DIMS = {"N": 3}


def _run(model: onnx.ModelProto, ctx: PassContext | None = None):
    out, records = apply_passes(model, PIPELINE, ctx)
    return out, records[-1]


def _i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def _chain(
    *ops: tuple[str, dict, np.ndarray | None],
    shape=(2, 3, 4),
    opset: int = 18,
    extra_outputs=(),
) -> onnx.ModelProto:
    """``x -> Relu -> op1 -> op2 -> ... -> Neg -> y``; each op is (op_type, attrs, second input or None)."""
    nodes = [helper.make_node("Relu", ["x"], ["t0"])]
    inits = []
    for i, (op, attrs, operand) in enumerate(ops, start=1):
        inputs = [f"t{i - 1}"]
        if operand is not None:
            inits.append(init(f"k{i}", operand))
            inputs.append(f"k{i}")
        nodes.append(helper.make_node(op, inputs, [f"t{i}"], name=f"{op.lower()}{i}", **attrs))
    nodes.append(helper.make_node("Neg", [f"t{len(ops)}"], ["y"]))
    outputs = [vi("y", None)] + [vi(name, None) for name in extra_outputs]
    return _declare_output_shapes(make_model(nodes, [vi("x", list(shape))], outputs, inits, opset=opset, check=False))


def _declare_output_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give graph outputs declared without a shape the shape ONNX infers for them."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    known = {v.name: v for v in (*inferred.graph.value_info, *inferred.graph.output)}
    for output in model.graph.output:
        if not output.type.tensor_type.HasField("shape"):
            output.CopyFrom(known[output.name])
    onnx.checker.check_model(model, full_check=True)
    return model


def reshape(*shape: int, **attrs) -> tuple[str, dict, np.ndarray]:
    return "Reshape", attrs, _i64(*shape)


def unsqueeze(*axes: int, opset: int = 18) -> tuple[str, dict, np.ndarray | None]:
    return ("Unsqueeze", {}, _i64(*axes)) if opset >= 13 else ("Unsqueeze", {"axes": list(axes)}, None)


def squeeze(*axes: int, opset: int = 18) -> tuple[str, dict, np.ndarray | None]:
    return ("Squeeze", {}, _i64(*axes)) if opset >= 13 else ("Squeeze", {"axes": list(axes)}, None)


def transpose(*perm: int) -> tuple[str, dict, None]:
    return "Transpose", ({"perm": list(perm)} if perm else {}), None


# --------------------------------------------------------------------------------------------
# Positive cases: (counter key, op counts after, builder). Built on demand, not at import time.

POSITIVE: dict[str, tuple[str, dict[str, int], Callable[[], onnx.ModelProto]]] = {
    "reshape_reshape": ("reshape_reshape_merged", {"Reshape": 1}, lambda: _chain(reshape(6, 4), reshape(4, -1))),
    "reshape_reshape_dynamic": (
        "reshape_reshape_merged",
        {"Reshape": 1},
        lambda: _chain(reshape(-1, 12), reshape(-1, 4, 3), shape=["N", 3, 4]),
    ),
    "reshape_reshape_allowzero": (
        "reshape_reshape_merged",
        {"Reshape": 1},
        lambda: _chain(reshape(6, 4), reshape(4, -1, allowzero=1)),
    ),
    "reshape_reshape_zero_static": (
        "reshape_reshape_merged",
        {"Reshape": 1},
        lambda: _chain(reshape(6, 4), reshape(0, 2, 2)),
    ),
    "flatten_reshape": (
        "flatten_reshape_merged",
        {"Reshape": 1},
        lambda: _chain(("Flatten", {"axis": 2}, None), reshape(3, 8)),
    ),
    "squeeze_reshape": (
        "squeeze_reshape_merged",
        {"Reshape": 1},
        lambda: _chain(squeeze(1), reshape(4, -1), shape=[2, 1, 6]),
    ),
    "unsqueeze_reshape": (
        "unsqueeze_reshape_merged",
        {"Reshape": 1},
        lambda: _chain(unsqueeze(0), reshape(-1, 2), shape=["N", 4]),
    ),
    "squeeze_reshape_opset11": (
        "squeeze_reshape_merged",
        {"Reshape": 1},
        lambda: _chain(squeeze(1, opset=11), reshape(12), shape=[2, 1, 6], opset=11),
    ),
    "reshape_reshape_cancel": (
        "reshape_reshape_cancelled",
        {},
        lambda: _chain(reshape(6, 4), reshape(2, 3, 4)),
    ),
    "unsqueeze_squeeze": (
        "unsqueeze_squeeze_cancelled",
        {},
        lambda: _chain(unsqueeze(-1), squeeze(2), shape=["N", 3]),
    ),
    "squeeze_unsqueeze": (
        "squeeze_unsqueeze_cancelled",
        {},
        lambda: _chain(squeeze(1), unsqueeze(-2), shape=["N", 1, 3]),
    ),
    "unsqueeze_squeeze_opset11": (
        "unsqueeze_squeeze_cancelled",
        {},
        lambda: _chain(unsqueeze(0, 2, opset=11), squeeze(2, 0, opset=11), shape=["N", 3], opset=11),
    ),
    "squeeze_unsqueeze_opset11": (
        "squeeze_unsqueeze_cancelled",
        {},
        lambda: _chain(squeeze(0, opset=11), unsqueeze(0, opset=11), shape=[1, "N"], opset=11),
    ),
    "transpose_transpose": (
        "transpose_transpose_merged",
        {"Transpose": 1},
        lambda: _chain(transpose(1, 0, 2), transpose(0, 2, 1)),
    ),
    "transpose_transpose_cancel": (
        "transpose_transpose_cancelled",
        {},
        lambda: _chain(transpose(0, 2, 1, 3), transpose(0, 2, 1, 3), shape=["N", 2, 3, 4]),
    ),
    "transpose_default_perms_cancel": (
        "transpose_transpose_cancelled",
        {},
        lambda: _chain(transpose(), transpose()),
    ),
    "transpose_inverse_perms_cancel": (
        "transpose_transpose_cancelled",
        {},
        lambda: _chain(transpose(1, 2, 0), transpose(2, 0, 1)),
    ),
}


@pytest.mark.parametrize("case", sorted(POSITIVE))
def test_collapses_chain(case):
    kind, after, build = POSITIVE[case]
    model = build()
    out, record = _run(model)
    assert record.changed
    assert record.counters == {kind: 1}
    assert op_counts(out) == {"Relu": 1, "Neg": 1, **after}


@pytest.mark.parametrize("case", sorted(POSITIVE))
def test_collapse_keeps_outputs(case):
    model = POSITIVE[case][2]()
    out, _ = _run(model)
    assert_equivalent(model, out, dims=DIMS)


def _shape_of_reshape(model: onnx.ModelProto) -> list[int]:
    (node,) = [n for n in model.graph.node if n.op_type == "Reshape"]
    (shape,) = [t for t in model.graph.initializer if t.name == node.input[1]]
    return numpy_helper.to_array(shape).tolist()


def test_merged_reshape_with_zero_gets_static_shape():
    out, _ = _run(POSITIVE["reshape_reshape_zero_static"][2]())
    assert _shape_of_reshape(out) == [6, 2, 2]


def test_merged_reshape_keeps_minus_one_when_dynamic():
    out, _ = _run(POSITIVE["reshape_reshape_dynamic"][2]())
    assert _shape_of_reshape(out) == [-1, 4, 3]


def test_merged_transpose_composes_perms():
    out, _ = _run(POSITIVE["transpose_transpose"][2]())
    (node,) = [n for n in out.graph.node if n.op_type == "Transpose"]
    assert list(helper.get_attribute_value(node.attribute[0])) == [1, 2, 0]


def test_long_chain_collapses_in_one_run():
    model = _chain(reshape(6, 4), ("Flatten", {"axis": 1}, None), reshape(24), unsqueeze(0), reshape(4, 6))
    out, record = _run(model)
    assert op_counts(out) == {"Relu": 1, "Neg": 1, "Reshape": 1}
    assert record.counters == {"flatten_reshape_merged": 1, "reshape_reshape_merged": 2, "unsqueeze_reshape_merged": 1}
    assert _shape_of_reshape(out) == [4, 6]
    assert_equivalent(model, out)


def test_second_run_reports_no_change():
    model = POSITIVE["reshape_reshape"][2]()
    _, records = apply_passes(model, "infer_shapes,collapse_reshapes,collapse_reshapes")
    assert records[1].changed and not records[2].changed


def test_computed_target_with_static_result_becomes_constant():
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Reshape", ["a", "k"], ["b"]),
        helper.make_node("Shape", ["like"], ["s"]),
        helper.make_node("Reshape", ["b", "s"], ["c"]),
        helper.make_node("Neg", ["c"], ["y"]),
    ]
    model = make_model(nodes, [vi("x", [2, 3, 4]), vi("like", [4, 6])], [vi("y", [4, 6])], [init("k", _i64(6, 4))])
    out, record = _run(model)
    assert record.counters == {"reshape_reshape_merged": 1}
    assert op_counts(out) == {"Relu": 1, "Reshape": 1, "Neg": 1}
    assert _shape_of_reshape(out) == [4, 6]
    assert_equivalent(model, out)


def test_transpose_chain_of_three():
    model = _chain(transpose(1, 0, 2), transpose(2, 1, 0), transpose(0, 2, 1))
    out, _ = _run(model)
    assert op_counts(out) == {"Relu": 1, "Neg": 1, "Transpose": 1}
    assert_equivalent(model, out)


def test_cancel_at_graph_output_keeps_its_name():
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Unsqueeze", ["a", "ax"], ["b"]),
        helper.make_node("Squeeze", ["b", "ax"], ["y"]),
    ]
    model = make_model(nodes, [vi("x", [2, 3])], [vi("y", [2, 3])], [init("ax", _i64(1))])
    out, record = _run(model)
    assert record.counters == {"unsqueeze_squeeze_cancelled": 1}
    assert op_counts(out) == {"Relu": 1}
    assert [o.name for o in out.graph.output] == ["y"]
    assert_equivalent(model, out)


def test_cancel_with_shared_intermediate_still_removes_second():
    # Unsqueeze's output also feeds graph output z: the Squeeze goes, the Unsqueeze stays.
    model = _chain(unsqueeze(0), squeeze(0), extra_outputs=("t1",))
    out, record = _run(model)
    assert record.counters == {"unsqueeze_squeeze_cancelled": 1}
    assert op_counts(out) == {"Relu": 1, "Unsqueeze": 1, "Neg": 1}
    assert_equivalent(model, out)


# --------------------------------------------------------------------------------------------
# Negative cases: graph unchanged.

NEGATIVE: dict[str, Callable[[], onnx.ModelProto]] = {
    "lone_reshape_adds_one_dims": lambda: _chain(reshape(2, 1, 3, 1, 4)),
    "lone_reshape_removes_one_dims": lambda: _chain(reshape(3, 4), shape=[1, 3, 4]),
    "reshape_shared_intermediate": lambda: _chain(reshape(6, 4), reshape(4, 6), extra_outputs=("t1",)),
    "reshape_zero_dynamic": lambda: _chain(reshape(-1, 12), reshape(0, 4, 3), shape=["N", 3, 4]),
    "reshape_then_unsqueeze": lambda: _chain(reshape(6, 4), unsqueeze(0)),
    "unsqueeze_squeeze_other_axis": lambda: _chain(unsqueeze(0), squeeze(2), shape=["N", 1]),
    "squeeze_unsqueeze_other_axis": lambda: _chain(squeeze(1), unsqueeze(0), shape=[2, 1, 3]),
    "transpose_shared_intermediate": lambda: _chain(transpose(1, 0, 2), transpose(0, 2, 1), extra_outputs=("t1",)),
    "reshape_transpose": lambda: _chain(reshape(6, 4), transpose(1, 0)),
    "transpose_reshape": lambda: _chain(transpose(1, 0, 2), reshape(6, 4)),
}


@pytest.mark.parametrize("case", sorted(NEGATIVE))
def test_leaves_chain(case):
    model = NEGATIVE[case]()
    out, record = _run(model)
    assert not record.changed
    assert record.counters == {}
    assert op_counts(out) == op_counts(model)


def test_zero_copy_from_dynamic_intermediate_declines():
    ctx = PassContext()
    _run(NEGATIVE["reshape_zero_dynamic"](), ctx)
    assert any(n["pass"] == "collapse_reshapes" and "0" in n["reason"] for n in ctx.notes)


def test_graph_input_to_graph_output_declines():
    nodes = [helper.make_node("Unsqueeze", ["x", "ax"], ["b"]), helper.make_node("Squeeze", ["b", "ax"], ["y"])]
    model = make_model(nodes, [vi("x", [2, 3])], [vi("y", [2, 3])], [init("ax", _i64(0))])
    ctx = PassContext()
    out, record = _run(model, ctx)
    assert not record.changed
    assert op_counts(out) == {"Unsqueeze": 1, "Squeeze": 1}
    assert any(n["pass"] == "collapse_reshapes" for n in ctx.notes)


def test_custom_domain_is_left_alone():
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Transpose", ["a"], ["b"], perm=[1, 0], domain="com.example"),
        helper.make_node("Transpose", ["b"], ["c"], perm=[1, 0]),
        helper.make_node("Neg", ["c"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "t", [vi("x", [2, 3])], [vi("y", [2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.example", 1)])
    out, records = apply_passes(model, "collapse_reshapes", check=False)
    assert not records[-1].changed
    assert op_counts(out) == {"Relu": 1, "Transpose": 2, "Neg": 1}


@pytest.mark.parametrize("op", ["Reshape", "Transpose"])
def test_inverse_pair_between_graph_input_and_output_merges_instead(op):
    if op == "Reshape":
        nodes = [helper.make_node(op, ["x", "k"], ["b"]), helper.make_node(op, ["b", "back"], ["y"])]
    else:
        nodes = [helper.make_node(op, ["x"], ["b"], perm=[1, 0]), helper.make_node(op, ["b"], ["y"], perm=[1, 0])]
    model = make_model(nodes, [vi("x", [2, 3])], [vi("y", [2, 3])], [init("k", _i64(3, 2)), init("back", _i64(2, 3))])
    ctx = PassContext()
    out, record = _run(model, ctx)
    assert record.counters == {f"{op.lower()}_{op.lower()}_merged": 1}
    assert op_counts(out) == {op: 1}
    assert [o.name for o in out.graph.output] == ["y"]
    assert any(n["pass"] == "collapse_reshapes" for n in ctx.notes)
    assert_equivalent(model, out)
