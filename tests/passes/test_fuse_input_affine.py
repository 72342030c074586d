"""fuse_input_affine: a constant per-channel Mul/Add/Sub before a Conv goes into its weights and
bias (op counts, onnxruntime outputs); an added constant before a padding Conv, constants that are
not per input channel and non-candidates are left alone."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from onnxslim.pipeline import PassContext
from tests.helpers import apply_passes, assert_equivalent, init, make_model, op_counts, vi

CIN, COUT, HW = 4, 6, 7


def _run(model: onnx.ModelProto, ctx: PassContext | None = None):
    out, records = apply_passes(model, "infer_shapes,fuse_input_affine", ctx)
    return out, records[-1]


def _model(affines, kernel=1, pads=0, group=1, bias=True, cout=COUT, extra_output=None):
    """x -> affine ops (op, constant shape, constant first) -> Conv(kernel, pads, group) -> y."""
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i, (op, shape, const_first) in enumerate(affines):
        k = rng.uniform(0.5, 2.0, shape).astype(np.float32) * rng.choice([-1, 1], shape).astype(np.float32)
        inits.append(init(f"k{i}", k))
        nodes.append(helper.make_node(op, [f"k{i}", prev] if const_first else [prev, f"k{i}"], [f"a{i}"], name=f"{op.lower()}{i}"))
        prev = f"a{i}"
    inits.append(init("w", rng.standard_normal((cout, CIN // group, kernel, kernel)).astype(np.float32)))
    conv_in = [prev, "w"]
    if bias:
        inits.append(init("b", rng.standard_normal(cout).astype(np.float32)))
        conv_in.append("b")
    nodes.append(helper.make_node("Conv", conv_in, ["y"], name="conv", pads=[pads] * 4, group=group))
    out_hw = HW + 2 * pads - kernel + 1
    outputs = [vi("y", [1, cout, out_hw, out_hw])] + ([vi(extra_output, [1, CIN, HW, HW])] if extra_output else [])
    return make_model(nodes, [vi("x", [1, CIN, HW, HW])], outputs, inits)


@pytest.mark.parametrize("shape", [(), (1,), (CIN, 1, 1), (1, CIN, 1, 1)])
@pytest.mark.parametrize("kernel,pads", [(1, 0), (3, 1)])
@pytest.mark.parametrize("const_first", [False, True])
def test_mul_folds_with_any_padding(shape, kernel, pads, const_first):
    model = _model([("Mul", shape, const_first)], kernel=kernel, pads=pads)
    out, record = _run(model)
    assert op_counts(out) == {"Conv": 1}
    assert record.counters == {"mul": 1}
    assert_equivalent(model, out)


@pytest.mark.parametrize("op,const_first", [("Add", False), ("Add", True), ("Sub", False), ("Sub", True)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(), (CIN, 1, 1)])
def test_add_sub_fold_into_the_bias_of_an_unpadded_conv(op, const_first, bias, shape):
    model = _model([(op, shape, const_first)], kernel=3, pads=0, bias=bias)
    out, record = _run(model)
    assert op_counts(out) == {"Conv": 1}
    assert record.counters == {"add": 1}
    assert_equivalent(model, out)


def test_learnable_affine_block_chain_folds_in_one_run():
    # LCNet's y * a + b (scalars) before a pointwise conv
    model = _model([("Mul", (), False), ("Add", (), False)])
    out, record = _run(model)
    assert op_counts(out) == {"Conv": 1}
    assert record.counters == {"add": 1, "mul": 1}
    assert_equivalent(model, out)


@pytest.mark.parametrize("group,cout", [(2, COUT), (CIN, CIN), (CIN, 2 * CIN)])
@pytest.mark.parametrize("op,pads", [("Mul", 1), ("Add", 0)])
def test_grouped_and_depthwise_convs(group, cout, op, pads):
    model = _model([(op, (1, CIN, 1, 1), False)], kernel=3, pads=pads, group=group, cout=cout)
    out, _ = _run(model)
    assert op_counts(out) == {"Conv": 1}
    assert_equivalent(model, out)


def test_add_before_a_padding_conv_is_declined():
    model = _model([("Add", (CIN, 1, 1), False)], kernel=3, pads=1)
    ctx = PassContext()
    out, record = _run(model, ctx)
    assert op_counts(out) == {"Add": 1, "Conv": 1} and not record.changed
    assert [n["reason"] for n in ctx.notes] == ["Add -> Conv: the Conv pads its input (an added constant does not commute with zero padding)"]


def test_mul_then_add_before_a_padding_conv_keeps_both():
    # the Add sits between the Mul and the Conv: it blocks, so neither folds
    model = _model([("Mul", (), False), ("Add", (), False)], kernel=3, pads=1)
    out, _ = _run(model)
    assert op_counts(out) == {"Mul": 1, "Add": 1, "Conv": 1}


def test_add_then_mul_before_a_padding_conv_folds_the_mul():
    model = _model([("Add", (), False), ("Mul", (), False)], kernel=3, pads=1)
    out, record = _run(model)
    assert op_counts(out) == {"Add": 1, "Conv": 1} and record.counters == {"mul": 1}
    assert_equivalent(model, out)


@pytest.mark.parametrize("auto_pad,folds", [("VALID", True), ("SAME_UPPER", False)])
def test_auto_pad(auto_pad, folds):
    model = _model([("Add", (), False)], kernel=3)
    conv = model.graph.node[-1]
    del conv.attribute[:]
    conv.attribute.extend([helper.make_attribute("auto_pad", auto_pad)])
    model.graph.output[0].CopyFrom(vi("y", None))
    out, _ = _run(model)
    assert ("Add" not in op_counts(out)) == folds
    assert_equivalent(model, out)


@pytest.mark.parametrize("shape", [(1, 1, HW, 1), (1, CIN, HW, HW), (HW,)])
def test_constant_not_per_input_channel_is_kept(shape):
    model = _model([("Mul", shape, False)], kernel=3, pads=1)
    model.graph.output[0].CopyFrom(vi("y", None))
    ctx = PassContext()
    out, record = _run(model, ctx)
    assert op_counts(out) == {"Mul": 1, "Conv": 1} and not record.changed
    assert "not per input channel" in ctx.notes[0]["reason"]


def test_residual_add_is_not_a_candidate():
    # two variable operands: nothing to fold, and no decline note (so --strict does not fail)
    nodes = [helper.make_node("Add", ["x", "z"], ["s"]), helper.make_node("Conv", ["s", "w"], ["y"])]
    w = init("w", np.ones((COUT, CIN, 1, 1), np.float32))
    model = make_model(nodes, [vi("x", [1, CIN, HW, HW]), vi("z", [1, CIN, HW, HW])], [vi("y", [1, COUT, HW, HW])], [w])
    ctx = PassContext(strict=True)
    out, record = _run(model, ctx)
    assert op_counts(out) == {"Add": 1, "Conv": 1} and not record.changed and ctx.notes == []


def test_affine_output_read_elsewhere_is_kept():
    model = _model([("Mul", (), False)], extra_output="a0")
    out, record = _run(model)
    assert op_counts(out) == {"Mul": 1, "Conv": 1} and not record.changed


def test_non_constant_weight_is_declined():
    model = _model([("Mul", (), False)])
    w = next(i for i in model.graph.initializer if i.name == "w")
    model.graph.initializer.remove(w)
    model.graph.input.append(vi("w", [COUT, CIN, 1, 1]))
    ctx = PassContext()
    out, record = _run(model, ctx)
    assert op_counts(out) == {"Mul": 1, "Conv": 1} and not record.changed
    assert ctx.notes[0]["reason"] == "Mul -> Conv: Conv weight is not a constant float tensor"


def test_in_the_default_pipeline_after_the_output_side_folds():
    from onnxslim.pipeline import CLEANUP_PASSES, registry

    assert "fuse_input_affine" in registry()
    assert CLEANUP_PASSES.index("fuse_conv_affine") < CLEANUP_PASSES.index("fuse_input_affine")
