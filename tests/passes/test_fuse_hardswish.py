"""fuse_hardswish: the elementwise spellings of HardSigmoid/HardSwish become the ops (op counts,
onnxruntime outputs on inputs that cover both saturated ends), and lookalikes are left alone."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxslim.pipeline import PassContext
from tests.helpers import apply_passes, init, make_model, op_counts, run_ort, vi

SHAPE = [2, 3, 4, 5]
SIXTH32 = np.float32(1 / 6)


def _run(model: onnx.ModelProto, ctx: PassContext | None = None):
    out, records = apply_passes(model, "infer_shapes,fuse_hardswish", ctx)
    return out, records[-1]


def _feeds(model: onnx.ModelProto, dtype=np.float32) -> dict[str, np.ndarray]:
    # -8..8 reaches both Clip bounds (x + 3 <= 0 and >= 6), with 0 and +-3 on the grid
    x = np.linspace(-8, 8, int(np.prod(SHAPE))).reshape(SHAPE).astype(dtype)
    return {model.graph.input[0].name: x}


def _assert_same(before: onnx.ModelProto, after: onnx.ModelProto, dtype=np.float32) -> None:
    feeds = _feeds(before, dtype)
    want, got = run_ort(before, feeds), run_ort(after, feeds)
    assert list(want) == list(got)
    tol = {np.float16: 2e-3, np.float32: 2e-6, np.float64: 1e-12}[dtype]
    for name in want:
        assert want[name].shape == got[name].shape and want[name].dtype == got[name].dtype
        np.testing.assert_allclose(got[name], want[name], rtol=tol, atol=tol, err_msg=name)


def _consts(dtype=np.float32, three=3.0, lo=0.0, hi=6.0, six=6.0, sixth=None, shape=()):
    c = lambda v: np.full(shape, v, dtype)  # noqa: E731
    return [init("three", c(three)), init("lo", c(lo)), init("hi", c(hi)), init("six", c(six)),
            init("sixth", c(np.asarray(1 / 6, dtype) if sixth is None else sixth))]


def _h(x="x"):
    """h = Clip(x + 3, 0, 6) (paddle2onnx's spelling)."""
    return [helper.make_node("Add", [x, "three"], ["a"], name="add3"),
            helper.make_node("Clip", ["a", "lo", "hi"], ["h"], name="clip")]


def _model(nodes, dtype=np.float32, opset=17, out="y", extra_outputs=(), **const_kw):
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    outputs = [vi(out, SHAPE, elem)] + [vi(n, SHAPE, elem) for n in extra_outputs]
    return make_model(nodes, [vi("x", SHAPE, elem)], outputs, _consts(dtype, **const_kw), opset=opset)


def _paddle_hardswish():
    """y = (x * h) / 6, as PP-OCR's paddle2onnx export writes it."""
    return _h() + [helper.make_node("Mul", ["x", "h"], ["m"], name="mul"),
                   helper.make_node("Div", ["m", "six"], ["y"], name="div")]


HARDSWISH_FORMS = {
    "x*h/6": _paddle_hardswish,
    "h*x/6": lambda: _h() + [helper.make_node("Mul", ["h", "x"], ["m"]), helper.make_node("Div", ["m", "six"], ["y"])],
    "(x*h)*(1/6)": lambda: _h() + [helper.make_node("Mul", ["x", "h"], ["m"]), helper.make_node("Mul", ["m", "sixth"], ["y"])],
    "x*(h/6)": lambda: _h() + [helper.make_node("Div", ["h", "six"], ["s"]), helper.make_node("Mul", ["x", "s"], ["y"])],
    "((1/6)*h)*x": lambda: _h() + [helper.make_node("Mul", ["sixth", "h"], ["s"]), helper.make_node("Mul", ["s", "x"], ["y"])],
    "3+x": lambda: [helper.make_node("Add", ["three", "x"], ["a"]), helper.make_node("Clip", ["a", "lo", "hi"], ["h"]),
                    helper.make_node("Mul", ["x", "h"], ["m"]), helper.make_node("Div", ["m", "six"], ["y"])],
}


@pytest.mark.parametrize("form", sorted(HARDSWISH_FORMS))
def test_hardswish_forms_become_one_node(form):
    model = _model(HARDSWISH_FORMS[form]())
    out, record = _run(model)
    assert op_counts(out) == {"HardSwish": 1}
    assert record.changed and record.counters == {"hardswish": 1}
    assert [o.name for o in out.graph.output] == ["y"]
    _assert_same(model, out)


def test_float16():
    model = _model(_paddle_hardswish(), dtype=np.float16)
    out, _ = _run(model)
    assert op_counts(out) == {"HardSwish": 1}
    _assert_same(model, out, np.float16)


def test_double_is_left_alone():
    # onnxruntime has no double HardSigmoid/HardSwish kernel: the fused model would not load
    model = _model(_paddle_hardswish(), dtype=np.float64)
    out, record = _run(model)
    assert op_counts(out) == op_counts(model) and not record.changed
    _assert_same(model, out, np.float64)


@pytest.mark.parametrize("spelling", ["div", "mul"])
def test_hard_sigmoid_alone(spelling):
    tail = helper.make_node("Div", ["h", "six"], ["y"]) if spelling == "div" else helper.make_node("Mul", ["h", "sixth"], ["y"])
    model = _model(_h() + [tail])
    out, record = _run(model)
    assert op_counts(out) == {"HardSigmoid": 1}
    assert record.counters == {"hardsigmoid": 1}
    (node,) = out.graph.node
    alpha, beta = (helper.get_attribute_value(a) for a in sorted(node.attribute, key=lambda a: a.name))
    assert np.float32(alpha) == SIXTH32 and beta == 0.5
    _assert_same(model, out)


def test_below_opset_14_becomes_x_times_hardsigmoid():
    model = _model(_paddle_hardswish(), opset=12)  # PP-OCRv4 det is opset 12: no HardSwish there
    out, record = _run(model)
    assert op_counts(out) == {"HardSigmoid": 1, "Mul": 1}
    assert record.counters == {"hardsigmoid": 1}
    assert out.opset_import[0].version == 12
    _assert_same(model, out)


def test_existing_hardsigmoid_times_x():
    nodes = [helper.make_node("HardSigmoid", ["x"], ["s"], alpha=1 / 6, beta=0.5), helper.make_node("Mul", ["s", "x"], ["y"])]
    model = _model(nodes)
    out, record = _run(model)
    assert op_counts(out) == {"HardSwish": 1}
    assert record.counters == {"hardswish": 1}
    _assert_same(model, out)


def test_paddle_default_hardsigmoid_slope_is_not_hardswish():
    # Paddle's hardsigmoid (slope 0.2) times x is a different function
    nodes = [helper.make_node("HardSigmoid", ["x"], ["s"], alpha=0.2, beta=0.5), helper.make_node("Mul", ["s", "x"], ["y"])]
    out, record = _run(_model(nodes))
    assert op_counts(out) == {"HardSigmoid": 1, "Mul": 1} and not record.changed


def test_two_activations_in_a_chain():
    first = _paddle_hardswish()
    first[-1].output[0] = "y1"
    second = [helper.make_node("Add", ["y1", "three"], ["a2"]), helper.make_node("Clip", ["a2", "lo", "hi"], ["h2"]),
              helper.make_node("Mul", ["y1", "h2"], ["m2"]), helper.make_node("Div", ["m2", "six"], ["y"])]
    model = _model(first + second)
    out, record = _run(model)
    assert op_counts(out) == {"HardSwish": 2} and record.counters == {"hardswish": 2}
    _assert_same(model, out)


@pytest.mark.parametrize("kw", [{"three": 3.5}, {"lo": -1.0}, {"hi": 5.0}, {"six": 5.0}])
def test_other_constants_are_left_alone(kw):
    model = _model(_paddle_hardswish(), **kw)
    out, record = _run(model)
    assert op_counts(out) == op_counts(model) and not record.changed


def test_a_sixth_off_by_one_ulp_is_left_alone():
    nodes = _h() + [helper.make_node("Mul", ["x", "h"], ["m"]), helper.make_node("Mul", ["m", "sixth"], ["y"])]
    model = _model(nodes, sixth=np.nextafter(SIXTH32, np.float32(1)))
    out, _ = _run(model)
    assert op_counts(out) == op_counts(model)


@pytest.mark.parametrize("tensor", ["a", "h", "m"])
def test_intermediate_read_elsewhere_is_left_alone(tensor):
    model = _model(_paddle_hardswish(), extra_outputs=(tensor,))
    out, _ = _run(model)
    assert op_counts(out) == op_counts(model)
    _assert_same(model, out)


def test_h_of_another_tensor_is_not_hardswish():
    # z * Clip(x + 3, 0, 6) / 6 with z != x
    elem = TensorProto.FLOAT
    nodes = _h() + [helper.make_node("Mul", ["z", "h"], ["m"]), helper.make_node("Div", ["m", "six"], ["y"])]
    model = make_model(nodes, [vi("x", SHAPE, elem), vi("z", SHAPE, elem)], [vi("y", SHAPE, elem)], _consts())
    out, record = _run(model)
    assert op_counts(out) == op_counts(model) and not record.changed


def test_constant_of_higher_rank_is_left_alone():
    # a [1,1,1,1,1] constant broadcasts the output up to rank 5: HardSwish(x) would be rank 4
    elem = TensorProto.FLOAT
    nodes = _paddle_hardswish()
    model = make_model(nodes, [vi("x", SHAPE, elem)], [vi("y", [1, *SHAPE], elem)], _consts(shape=(1, 1, 1, 1, 1)))
    out, _ = _run(model)
    assert op_counts(out) == op_counts(model)


def test_integer_tensors_are_left_alone():
    elem = TensorProto.INT64
    consts = [init("three", np.int64(3)), init("lo", np.int64(0)), init("hi", np.int64(6)), init("six", np.int64(6))]
    model = make_model(_paddle_hardswish(), [vi("x", SHAPE, elem)], [vi("y", SHAPE, elem)], consts)
    out, _ = _run(model)
    assert op_counts(out) == op_counts(model)


def test_clip_bounds_as_attributes_below_opset_11():
    nodes = [helper.make_node("Add", ["x", "three"], ["a"]), helper.make_node("Clip", ["a"], ["h"], min=0.0, max=6.0),
             helper.make_node("Mul", ["x", "h"], ["m"]), helper.make_node("Div", ["m", "six"], ["y"])]
    model = _model(nodes, opset=10)
    out, _ = _run(model)
    assert op_counts(out) == {"HardSigmoid": 1, "Mul": 1}
    _assert_same(model, out)


def test_in_the_default_pipeline():
    from onnxslim.pipeline import CLEANUP_PASSES

    assert "fuse_hardswish" in CLEANUP_PASSES
