"""Loading, atomic and streaming saves, external data, weight-free skeletons."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnxslim import io
from onnxslim.errors import InputModelError, OutputError
from onnxslim.graph import export_model, export_parts, import_model
from tests.helpers import init, make_model, run_ort, vi


def _mlp(n: int = 256) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((n, n)).astype(np.float32)
    w2 = rng.standard_normal((n, 8)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["m"]), helper.make_node("Add", ["m", "tiny"], ["y"])]
    return make_model(nodes, [vi("x", [2, n])], [vi("y", [2, 8])], [init("w1", w1), init("w2", w2), init("tiny", np.ones(8, np.float32))])


@pytest.mark.parametrize("external", [False, True])
def test_streaming_write_equals_plain_export(tmp_path, external):
    model = _mlp()
    graph = import_model(model)
    plain = export_model(graph, model)
    header, inits = export_parts(graph, model)
    path = tmp_path / "m.onnx"
    files = io.write_streaming(header, inits, path, external)
    assert [f.name for f in files] == (["m.onnx", "m.onnx.data"] if external else ["m.onnx"])
    loaded = onnx.load(path)
    onnx.checker.check_model(loaded, full_check=True)
    assert {t.name for t in loaded.graph.initializer} == {t.name for t in plain.graph.initializer}
    for a, b in zip(sorted(loaded.graph.initializer, key=lambda t: t.name), sorted(plain.graph.initializer, key=lambda t: t.name)):
        np.testing.assert_array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))
    assert list(loaded.graph.node) == list(plain.graph.node)
    assert loaded.opset_import == plain.opset_import and loaded.ir_version == plain.ir_version
    x = {"x": np.random.default_rng(1).standard_normal((2, 256)).astype(np.float32)}
    np.testing.assert_array_equal(run_ort(loaded, x)["y"], run_ort(model, x)["y"])
    if external:
        raw = onnx.load(path, load_external_data=False)
        big = next(t for t in raw.graph.initializer if t.name == "w1")
        assert big.data_location == onnx.TensorProto.EXTERNAL
        assert next(t for t in raw.graph.initializer if t.name == "tiny").HasField("raw_data")
        assert path.stat().st_size < 4096 < (tmp_path / "m.onnx.data").stat().st_size


def test_streaming_write_is_deterministic(tmp_path):
    model = _mlp(64)
    outs = []
    for i in range(2):
        header, inits = export_parts(import_model(model), model)
        io.write_streaming(header, inits, tmp_path / f"{i}.onnx", False)
        outs.append((tmp_path / f"{i}.onnx").read_bytes())
    assert outs[0] == outs[1]


def test_save_and_load_round_trip_with_external_data(tmp_path):
    model = _mlp()
    path = io.save(model, tmp_path / "ext.onnx", external_data=True)
    assert (tmp_path / "ext.onnx.data").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ext.onnx", "ext.onnx.data"], "no staging leftovers"
    loaded = io.load(path)
    assert numpy_helper.to_array(loaded.graph.initializer[0]).shape == (256, 256)


def test_missing_and_truncated_external_data_are_named(tmp_path):
    io.save(_mlp(), tmp_path / "ext.onnx", external_data=True)
    data = tmp_path / "ext.onnx.data"
    data.write_bytes(data.read_bytes()[:1000])
    with pytest.raises(InputModelError, match="truncated"):
        io.load(tmp_path / "ext.onnx")
    data.unlink()
    with pytest.raises(InputModelError, match="'w1': external data file 'ext.onnx.data' not found"):
        io.load(tmp_path / "ext.onnx")


def test_skeleton_has_structure_but_no_weights():
    model = _mlp()
    skel = io.skeleton(model)
    assert [t.name for t in skel.graph.initializer] == ["tiny"]
    assert {i.name for i in skel.graph.input} == {"x", "w1", "w2"}
    assert list(skel.graph.node) == list(model.graph.node)
    onnx.checker.check_model(skel)
    assert skel.ByteSize() < 2000 < model.ByteSize()


def test_check_output_path_rules(tmp_path):
    src = tmp_path / "a.onnx"
    src.write_bytes(b"x")
    with pytest.raises(OutputError, match="is the input"):
        io.check_output_path(src, [src])
    with pytest.raises(OutputError, match="is a directory"):
        io.check_output_path(tmp_path, [src])
    with pytest.raises(OutputError, match="does not exist"):
        io.check_output_path(tmp_path / "x" / "b.onnx", [src])
    assert io.check_output_path(tmp_path / "b.onnx", [src]) == tmp_path / "b.onnx"


def test_unchanged_model_does_not_grow_by_a_byte(tmp_path):
    """Nothing to optimize: the output is no larger than the input (no framing overhead,
    no default-valued fields made explicit, no shape annotations the input did not have)."""
    from onnxslim.api import optimize_file

    model = _mlp()
    model.graph.ClearField("value_info")
    src = tmp_path / "in.onnx"
    src.write_bytes(model.SerializeToString())
    optimize_file(src, tmp_path / "out.onnx")
    assert (tmp_path / "out.onnx").stat().st_size <= src.stat().st_size


def test_ctrl_c_while_committing_waits_until_model_and_data_match(tmp_path, monkeypatch):
    """SIGINT between moving the new .data and the new model used to leave the new data beside
    the old model (a pair that does not match); now both land, then KeyboardInterrupt."""
    import os
    import signal

    def model_with(value: float) -> onnx.ModelProto:
        w = np.full((64, 64), value, np.float32)
        return make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [vi("x", [1, 64])], [vi("y", [1, 64])], [init("w", w)])

    dest = tmp_path / "m.onnx"
    io.save(model_with(1.0), dest, external_data=True)
    real_replace, moves = os.replace, []

    def replace_then_interrupt(src, dst):
        real_replace(src, dst)
        moves.append(str(dst))
        if len(moves) == 1:  # right after the data file, before the model
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(io.os, "replace", replace_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        io.save(model_with(2.0), dest, external_data=True)
    assert moves == [str(tmp_path / "m.onnx.data"), str(dest)]
    loaded = onnx.load(dest)  # reads the .data beside it
    assert float(numpy_helper.to_array(loaded.graph.initializer[0])[0, 0]) == 2.0
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back


def test_a_save_without_external_data_removes_the_data_file_the_old_model_read(tmp_path):
    w = np.ones((64, 64), np.float32)
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [vi("x", [1, 64])], [vi("y", [1, 64])], [init("w", w)])
    dest = tmp_path / "m.onnx"
    io.save(model, dest, external_data=True)
    assert (tmp_path / "m.onnx.data").is_file()
    io.save(model, dest, external_data=False)
    assert not (tmp_path / "m.onnx.data").exists()  # was left behind, read by nothing
    # a '<name>.data' the old file did not read is someone else's: kept
    (tmp_path / "r.json").write_text("{}")
    (tmp_path / "r.json.data").write_text("mine")
    io.save(model, tmp_path / "r.json", external_data=False)
    assert (tmp_path / "r.json.data").read_text() == "mine"
