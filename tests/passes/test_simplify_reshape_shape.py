"""simplify_reshape_shape: Reshape targets computed from Shape become constants with 0 / -1."""

import numpy as np
import pytest
from onnx import TensorProto, helper

from tests.helpers import apply_passes, assert_equivalent, init, make_model, op_counts, vi

I64 = TensorProto.INT64


def _flatten_model(cast: bool = False, from_other: bool = False):
    """Reshape(x, Concat(Unsqueeze(Gather(Shape(src), 0)), [C*H*W])) with a dynamic batch."""
    src = "y" if from_other else "x"
    nodes = [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Shape", [src], ["s"])]
    if cast:
        nodes += [helper.make_node("Cast", ["s"], ["s32"], to=TensorProto.INT32),
                  helper.make_node("Cast", ["s32"], ["s64"], to=I64)]
    nodes += [
        helper.make_node("Gather", ["s64" if cast else "s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
        helper.make_node("Concat", ["n1", "rest"], ["target"], axis=0),
        helper.make_node("Reshape", ["y", "target"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["out"]),
    ]
    inits = [init("zero", np.array(0, np.int64)), init("axes", np.array([0], np.int64)),
             init("rest", np.array([24], np.int64)), init("w", np.ones((24, 5), np.float32))]
    return make_model(nodes, [vi("x", ["N", 2, 3, 4])], [vi("out", ["N", 5])], inits)


@pytest.mark.parametrize("cast", [False, True])
@pytest.mark.parametrize("from_other", [False, True])
def test_flatten_with_dynamic_batch_gets_constant_target(cast, from_other):
    model = _flatten_model(cast, from_other)
    out, records = apply_passes(model, "infer_shapes,simplify_reshape_shape")
    assert op_counts(out) == {"Relu": 1, "Reshape": 1, "MatMul": 1}
    target = next(i for i in out.graph.initializer if i.name.endswith("_shape"))
    from onnx import numpy_helper

    assert numpy_helper.to_array(target).tolist() == [0, 24]
    assert records[-1].counters == {"reshapes_simplified": 1}
    assert_equivalent(model, out, dims={"N": 3})


def test_two_copied_dims_and_one_inferred():
    # Reshape x[B, S, 768] -> [B, S, 12, 64] built from Shape(x)[0:2] and constants.
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], end=2),
        helper.make_node("Concat", ["s", "heads"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"]),
    ]
    model = make_model(nodes, [vi("x", ["B", "S", 12])], [vi("y", ["B", "S", 3, 4])],
                       [init("heads", np.array([3, 4], np.int64))])
    out, _ = apply_passes(model, "infer_shapes,simplify_reshape_shape")
    assert op_counts(out) == {"Reshape": 1}
    assert_equivalent(model, out, dims={"B": 2, "S": 5})


def test_unknown_dim_of_another_tensor_becomes_minus_one():
    # The batch comes from a different input whose dim is unrelated symbolically: use -1.
    nodes = [
        helper.make_node("Shape", ["z"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
        helper.make_node("Concat", ["n1", "rest"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"]),
    ]
    model = make_model(nodes, [vi("x", ["N", 6]), vi("z", ["M", 1])], [vi("y", ["M", 2, 3])],
                       [init("zero", np.array(0, np.int64)), init("axes", np.array([0], np.int64)), init("rest", np.array([2, 3], np.int64))])
    out, _ = apply_passes(model, "infer_shapes,simplify_reshape_shape")
    from onnx import numpy_helper

    targets = [numpy_helper.to_array(i).tolist() for i in out.graph.initializer if i.name.endswith("_shape")]
    assert targets == [[-1, 2, 3]]
    assert_equivalent(model, out, dims={"N": 4, "M": 4})


def test_two_unknowns_are_declined_and_allowzero_left_alone():
    nodes = [
        helper.make_node("Shape", ["z"], ["s"]),
        helper.make_node("Reshape", ["x", "s"], ["y"]),
    ]
    model = make_model(nodes, [vi("x", ["N", 6]), vi("z", ["A", "B"])], [vi("y", ["A", "B"])])
    out, records = apply_passes(model, "infer_shapes,simplify_reshape_shape")
    assert op_counts(out) == {"Shape": 1, "Reshape": 1} and records[-1].changed is False

    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Reshape", ["x", "s"], ["y"], allowzero=1)]
    model = make_model(nodes, [vi("x", ["N", 6])], [vi("y", ["N", 6])])
    out, records = apply_passes(model, "infer_shapes,simplify_reshape_shape")
    assert records[-1].changed is False
