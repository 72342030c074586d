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


# --------------------------------------------------------------------------------------------
# Direct collectors: NCHWc activations without onnxruntime's output reorders


def conv_net(c: int) -> onnx.ModelProto:
    from tests.passes.test_insert_qdq import resnet_block

    return resnet_block(c=c, batch="n")


@pytest.mark.parametrize("channels", [8, 16, 24])
def test_direct_collector_gives_the_same_activations(channels):
    """run() of a direct collector equals a plain ORT_ENABLE_ALL session's outputs bit for bit; run_raw
    hands the NCHWc ones over blocked (channels padded to the machine's block) when onnxruntime uses it."""
    from onnxslim.calibration.collect import nchwc_block

    model = conv_net(channels)
    names = ["r0", "c1", "r1", "c2", "a2", "r2", "g", "y"]
    feeds = {"x": np.random.default_rng(channels).standard_normal((3, 3, 16, 16)).astype(np.float32)}
    level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    plain = ActivationCollector(model, names, threads=1, optimization_level=level)
    direct = ActivationCollector(model, names, threads=1, optimization_level=level, direct=True)
    assert plain.blocked == {}
    want, got, raw = plain.run(feeds), direct.run(feeds), direct.run_raw(feeds)
    for name in names:
        assert got[name].shape == want[name].shape
        np.testing.assert_array_equal(got[name], want[name])
    block = nchwc_block()
    if not block:  # no NCHWc on this machine (e.g. no AVX2): nothing to take out
        assert direct.blocked == {}
        return
    assert {"r0", "r1"} <= set(direct.blocked)  # (which others onnxruntime blocks is its choice)
    for name, layout in direct.blocked.items():
        assert layout.channels == channels and layout.block == block
        assert raw[name].shape[1] == -(-channels // block) * block
        np.testing.assert_array_equal(layout.to_nchw(raw[name]), want[name])


def test_direct_collector_falls_back_to_a_plain_session(monkeypatch):
    """A failure while building the direct session (onnxruntime's optimized file) costs nothing but speed."""
    from onnxslim.calibration import collect

    def broken(model, names):
        raise RuntimeError("cannot read the optimized graph")

    monkeypatch.setattr(collect, "_unreorder_outputs", broken)
    model = conv_net(16)
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)}
    level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    direct = ActivationCollector(model, ["r1", "y"], threads=1, optimization_level=level, direct=True)
    assert direct.blocked == {}
    assert direct.session.get_session_options().graph_optimization_level == level
    want = ActivationCollector(model, ["r1", "y"], threads=1, optimization_level=level).run(feeds)
    got = direct.run_raw(feeds)
    for name in ("r1", "y"):
        np.testing.assert_array_equal(got[name], want[name])


def test_no_direct_session_without_convolutions(monkeypatch):
    """A model without Conv never pays for writing onnxruntime's optimized graph."""
    from onnxslim.calibration import collect

    monkeypatch.setattr(collect.ActivationCollector, "_open_direct", lambda *a: pytest.fail("direct session attempted"))
    model = small_net()
    collector = ActivationCollector(model, ["h", "y"], threads=1, optimization_level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                                    direct=True)
    assert collector.blocked == {}


def test_no_direct_session_for_1d_convolutions(monkeypatch):
    """onnxruntime runs only 2-D convolutions in NCHWc: a Conv1d model keeps the plain session."""
    from onnxslim.calibration import collect

    monkeypatch.setattr(collect.ActivationCollector, "_open_direct", lambda *a: pytest.fail("direct session attempted"))
    w = np.random.default_rng(0).standard_normal((16, 8, 3)).astype(np.float32)
    model = make_model([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1]), helper.make_node("Relu", ["y"], ["r"])],
                       [vi("x", ["n", 8, 32])], [vi("r", ["n", 16, 32])], [init("w", w)])
    collector = ActivationCollector(model, ["y", "r"], threads=1, optimization_level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                                    direct=True)
    assert collector.blocked == {}


def test_no_direct_session_for_a_transformer_with_a_convolutional_stem(monkeypatch):
    """A 2-D Conv holding a small share of the weights (ViT's patch embedding): writing every weight
    to a file would cost more than the one reorder it spares."""
    from onnxslim.calibration import collect

    monkeypatch.setattr(collect.ActivationCollector, "_open_direct", lambda *a: pytest.fail("direct session attempted"))
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w"], ["p"], strides=[4, 4]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("MatMul", ["f", "m"], ["y"])]
    inits = [init("w", rng.standard_normal((8, 3, 4, 4)).astype(np.float32)),  # 1.5 KB
             init("m", rng.standard_normal((128, 256)).astype(np.float32))]  # 128 KB
    model = make_model(nodes, [vi("x", ["n", 3, 16, 16])], [vi("y", ["n", 256])], inits)
    collector = ActivationCollector(model, ["p", "y"], threads=1, optimization_level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                                    direct=True)
    assert collector.blocked == {}
