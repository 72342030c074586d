"""ActivationCollector: one session, many outputs, the caller's model untouched and not copied."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from onnxslim.calibration import ActivationCollector, synthetic
from tests.helpers import init, make_model, vi


def small_net(seed: int = 0) -> onnx.ModelProto:
    """MatMul-Add-Relu-MatMul with large weights, plus a Shape branch (an int64 tensor)."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Add", ["h", "b1"], ["hb"]),
        helper.make_node("Relu", ["hb"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["y"]),
        helper.make_node("Shape", ["r"], ["shape"]),
        helper.make_node("Cast", ["shape"], ["shape_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["shape_f"], ["s"], keepdims=0),
    ]
    inits = [init("w1", rng.standard_normal((32, 64)).astype(np.float32)), init("b1", np.full(64, 0.1, np.float32)),
             init("w2", rng.standard_normal((64, 8)).astype(np.float32))]
    return make_model(nodes, [vi("x", ["n", 32])], [vi("y", ["n", 8]), vi("s", [])], inits)


def reference(model: onnx.ModelProto, names: list[str], feeds: dict) -> list[np.ndarray]:
    full = onnx.ModelProto()
    full.CopyFrom(model)
    full = onnx.shape_inference.infer_shapes(full)
    known = {v.name: v for v in full.graph.value_info}
    full.graph.output.extend(known[n] for n in names if n in known)
    sess = ort.InferenceSession(full.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(names, feeds)


@pytest.mark.parametrize("level", [ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL])
def test_activations_match_a_plain_session(level):
    model = small_net()
    names = ["h", "r", "shape", "y"]  # no value_info: typed by onnxruntime, int64 included
    feeds = {"x": np.random.default_rng(1).standard_normal((3, 32)).astype(np.float32)}
    collector = ActivationCollector(model, names, threads=1, optimization_level=level)
    got = collector.run(feeds)
    for name, want in zip(names, reference(model, names, feeds)):
        assert got[name].dtype == want.dtype
        np.testing.assert_allclose(got[name], want, rtol=1e-6, atol=1e-6)
    assert collector.session.get_session_options().graph_optimization_level == level


def test_the_model_is_borrowed_unchanged():
    model = small_net()
    before = model.SerializeToString()
    collector = ActivationCollector(model, ["r"], threads=1)
    assert model.SerializeToString() == before
    # The large weights reach onnxruntime as arrays, not inside the session's model bytes.
    assert {"w1", "w2"} <= set(collector._external) and "b1" not in collector._external


def test_weights_that_are_also_graph_inputs():
    model = small_net()
    model.graph.input.extend([vi("w2", [64, 8])])  # IR < 4 style: an overridable initializer
    feeds = {"x": np.ones((2, 32), np.float32)}
    got = ActivationCollector(model, ["y"], threads=1).run(feeds)["y"]
    np.testing.assert_allclose(got, reference(model, ["y"], feeds)[0], rtol=1e-6)


def test_collect_streams_every_batch():
    model = small_net()
    data = synthetic(model, 10, seed=0)
    seen: dict[str, int] = {}
    n = ActivationCollector(model, ["r", "y"], threads=1).collect(data, lambda name, v: seen.__setitem__(
        name, seen.get(name, 0) + v.shape[0]), batch_size=4)
    assert n == 10 and seen == {"r": 10, "y": 10}


def test_through_a_file_when_the_skeleton_is_too_large(monkeypatch):
    import onnxslim.calibration.collect as collect

    monkeypatch.setattr(collect, "TWO_GB", 0)  # as if node constants alone passed protobuf's limit
    model = small_net()
    feeds = {"x": np.ones((2, 32), np.float32)}
    got = collect.ActivationCollector(model, ["y"], threads=1).run(feeds)["y"]
    np.testing.assert_allclose(got, reference(model, ["y"], feeds)[0], rtol=1e-6)


def test_given_weight_arrays_are_taken_as_they_are():
    from onnx import numpy_helper

    model = small_net()
    arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    feeds = {"x": np.random.default_rng(2).standard_normal((3, 32)).astype(np.float32)}
    plain = ActivationCollector(model, ["h", "y"], threads=1).run(feeds)
    given = ActivationCollector(model, ["h", "y"], threads=1, weights=arrays)
    assert given._external["w1"].data_ptr() == arrays["w1"].ctypes.data  # no copy
    for name, value in given.run(feeds).items():
        assert np.array_equal(value, plain[name])
    wrong = ActivationCollector(model, ["y"], threads=1, weights={"w1": arrays["w1"].T.copy()})  # shape mismatch: ignored
    assert np.array_equal(wrong.run(feeds)["y"], plain["y"])
