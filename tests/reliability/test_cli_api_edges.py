"""Tests written to kill mutants that survived the suite (io, cli, api, config, reporting,
calibration data, pipeline): each pins one behaviour that a small source change broke silently.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxslim import io
from onnxslim.errors import InputModelError
from tests.helpers import init, make_model, vi
from tests.reporting.conftest import invoke


def _two_weights(n: int = 64) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "a"], ["h"]), helper.make_node("MatMul", ["h", "b"], ["y"])]
    return make_model(nodes, [vi("x", [1, n])], [vi("y", [1, n])], [init("a", a), init("b", b)])


# --------------------------------------------------------------------------------------------
# io


def test_truncated_external_data_of_the_second_tensor_is_named(tmp_path):
    """A data file long enough for the last tensor's *length* but not its offset+length is truncated."""
    path = tmp_path / "m.onnx"
    onnx.save_model(_two_weights(), path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="m.data", size_threshold=0)
    raw = onnx.load(path, load_external_data=False)
    info = {t.name: onnx.external_data_helper.ExternalDataInfo(t) for t in raw.graph.initializer}
    assert (info["a"].offset or 0) == 0 and info["b"].offset == 16384 and info["b"].length == 16384
    data = tmp_path / "m.data"
    data.write_bytes(data.read_bytes()[:20000])  # >= 16384 (one length), < 32768 (offset + length)
    with pytest.raises(InputModelError) as err:
        io.load(path)
    assert str(err.value) == "tensor 'b': external data file 'm.data' is truncated (20000 bytes, needs 32768)"


def test_streaming_write_page_aligns_large_external_tensors(tmp_path):
    """A tensor of >= 1 MiB starts on a 4096-byte boundary of the .data file (zero padding before it)."""
    small = numpy_helper.from_array(np.arange(500, dtype=np.float32), "small")  # 2000 bytes: external, unaligned
    big_arr = np.random.default_rng(0).standard_normal(2**18).astype(np.float32)  # exactly 1 MiB
    big = numpy_helper.from_array(big_arr, "big")
    header = make_model([helper.make_node("Add", ["small", "small"], ["s"]), helper.make_node("ReduceSum", ["big"], ["y"])],
                        [], [vi("s", [500]), vi("y", [1])], [small, big])
    del header.graph.initializer[:]
    files = io.write_streaming(header, iter([small, big]), tmp_path / "m.onnx", True)
    assert [f.name for f in files] == ["m.onnx", "m.onnx.data"]
    raw = onnx.load(tmp_path / "m.onnx", load_external_data=False)
    offsets = {t.name: int(onnx.external_data_helper.ExternalDataInfo(t).offset) for t in raw.graph.initializer}
    assert offsets == {"small": 0, "big": 4096}
    assert (tmp_path / "m.onnx.data").stat().st_size == 4096 + 2**20
    loaded = onnx.load(tmp_path / "m.onnx")
    np.testing.assert_array_equal(numpy_helper.to_array(loaded.graph.initializer[1]), big_arr)


def test_skeleton_does_not_declare_an_input_twice():
    """An initializer that is already a graph input (a default value) is not added as a second input."""
    w = np.ones((32, 32), np.float32)  # 4 KiB: above the inline limit
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [vi("x", [1, 32]), vi("w", [32, 32])],
                       [vi("y", [1, 32])], [init("w", w)])
    skel = io.skeleton(model)
    assert [i.name for i in skel.graph.input] == ["x", "w"]
    assert len(skel.graph.initializer) == 0


def test_streaming_write_keeps_string_tensors_inline(tmp_path):
    """With external data, a string tensor over the threshold stays in the model file, with its values."""
    words = np.array([f"word-{i:04d}" for i in range(200)], dtype=object)
    strings = numpy_helper.from_array(words, "words")
    assert strings.ByteSize() > 1024
    floats = numpy_helper.from_array(np.ones(1024, np.float32), "ones")
    header = make_model([helper.make_node("Identity", ["words"], ["y"]), helper.make_node("Identity", ["ones"], ["z"])],
                        [], [vi("y", [200], TensorProto.STRING), vi("z", [1024])], [strings, floats])
    del header.graph.initializer[:]
    io.write_streaming(header, iter([strings, floats]), tmp_path / "m.onnx", True)
    raw = onnx.load(tmp_path / "m.onnx", load_external_data=False)
    located = {t.name: t.data_location for t in raw.graph.initializer}
    assert located == {"words": TensorProto.DEFAULT, "ones": TensorProto.EXTERNAL}
    assert (tmp_path / "m.onnx.data").stat().st_size == 4096
    loaded = onnx.load(tmp_path / "m.onnx")
    got = numpy_helper.to_array(next(t for t in loaded.graph.initializer if t.name == "words"))
    assert [s.decode() if isinstance(s, bytes) else s for s in got.tolist()] == words.tolist()


# --------------------------------------------------------------------------------------------
# cli


def test_input_shape_for_a_name_with_a_colon(tmp_path):
    """--input-shape splits at the last ':' so TensorFlow-style names ('x:0') can be fixed."""
    model = make_model([helper.make_node("Relu", ["x:0"], ["y"])], [vi("x:0", ["n", 4])], [vi("y", ["n", 4])])
    src = tmp_path / "tf.onnx"
    onnx.save_model(model, src)
    out = tmp_path / "tf.opt.onnx"
    result = invoke("optimize", src, "-o", out, "-q", "--input-shape", "x:0:2,4")
    assert result.exit_code == 0, result.output
    dims = [d.dim_value for d in onnx.load(out).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [2, 4]


def test_input_shape_accepts_x_as_a_separator():
    """'NAME:1x3x8x8' means the same dims as 'NAME:1,3,8,8'."""
    from onnxslim.cli import parse_input_shapes

    assert parse_input_shapes(("x:1x3x8x8", "z:2,5")) == {"x": [1, 3, 8, 8], "z": [2, 5]}


def _relu_model() -> onnx.ModelProto:
    nodes = [helper.make_node("Identity", ["x"], ["i"]), helper.make_node("Relu", ["i"], ["y"])]
    return make_model(nodes, [vi("x", [1, 4])], [vi("y", [1, 4])])


def test_summary_change_column_is_relative_to_before():
    """The summary's change column is (after - before) / before: 10 -> 8 nodes is -20.0 %."""
    from onnxslim.cli import format_summary
    from onnxslim.report import Report
    from onnxslim.stats import ModelStats

    before = ModelStats(nodes=10, ops={"Relu": 10}, parameters=1000, constant_bytes=4000, macs=2000, macs_exact=True)
    after = ModelStats(nodes=8, ops={"Relu": 8}, parameters=500, constant_bytes=4000, macs=2500, macs_exact=True)
    lines = format_summary(Report(pipeline="x", before=before, after=after)).splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:6]}
    assert rows["nodes"] == ["10", "8", "-20.0%"]
    assert rows["parameters"][-1] == "-50.0%" and rows["MACs"][-1] == "+25.0%" and rows["weight"][-1] == "+0.0%"
    assert "ops: Relu 10->8" in lines


def test_verify_command_exits_2_when_the_original_cannot_run(tmp_path):
    """`onnxslim verify` on a model onnxruntime cannot run on synthesized inputs: 'skipped', exit 2."""
    shape = init("shape", np.array([3], np.int64))
    model = make_model([helper.make_node("Reshape", ["x", "shape"], ["y"])], [vi("x", [4])], [vi("y", [3])], [shape], check=False)
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save_model(model, a)
    onnx.save_model(model, b)
    result = invoke("verify", a, b)
    assert result.exit_code == 2, result.output
    assert "verification skipped: the original model does not run in onnxruntime on synthesized inputs" in result.stdout


def test_from_report_warns_when_the_output_differs_from_the_recorded_one(tmp_path):
    """A rerun whose output sha256 differs from the report's logs a warning; an identical one does not."""
    src = tmp_path / "m.onnx"
    onnx.save_model(_relu_model(), src)
    assert invoke("optimize", src, "-o", tmp_path / "a.onnx", "--report", tmp_path / "r.json", "-q").exit_code == 0
    same = invoke("optimize", "--from-report", tmp_path / "r.json", "-o", tmp_path / "b.onnx")
    assert same.exit_code == 0 and "differs" not in same.stderr, same.stderr
    data = json.loads((tmp_path / "r.json").read_text())
    data["output"]["sha256"] = "0" * 64
    (tmp_path / "edited.json").write_text(json.dumps(data))
    result = invoke("optimize", "--from-report", tmp_path / "edited.json", "-o", tmp_path / "c.onnx")
    assert result.exit_code == 0, result.output
    assert "onnxslim: WARNING: the output differs from the recorded one (recorded with python " in result.stderr


@pytest.mark.parametrize("flags, level", [(["-v"], "INFO"), (["-vv"], "DEBUG"), ([], "WARNING"), (["-v", "-q"], "ERROR")])
def test_verbosity_flags_set_the_log_level(tmp_path, flags, level):
    """-v logs INFO, -vv DEBUG, none WARNING, and -q wins over -v (ERROR only)."""
    import logging

    src = tmp_path / "m.onnx"
    onnx.save_model(_relu_model(), src)
    root = logging.getLogger()
    saved = root.level
    try:
        result = invoke("optimize", src, "-o", tmp_path / "o.onnx", *flags)
        assert result.exit_code == 0, result.output
        assert logging.getLevelName(root.level) == level
    finally:
        root.setLevel(saved)


# --------------------------------------------------------------------------------------------
# api


def test_api_seed_must_be_below_2_to_the_32():
    """seed=2**32 is one past the range onnxruntime/numpy seeds and the CLI accept: a UsageError."""
    from onnxslim.api import optimize
    from onnxslim.errors import UsageError

    with pytest.raises(UsageError) as err:
        optimize(_relu_model(), seed=2**32)
    assert str(err.value) == "option seed: expected an integer in [0, 2**32), got 4294967296"
    _, report = optimize(_relu_model(), seed=2**32 - 1)
    assert report.options["seed"] == 2**32 - 1


def test_min_cosine_is_a_floor_a_cosine_equal_to_it_passes(monkeypatch):
    """--min-cosine fails only *below* the budget: a worst cosine equal to it passes, just under fails."""
    from types import SimpleNamespace

    from onnxslim import api
    from onnxslim.pipeline import PassContext

    model = _relu_model()
    ctx = PassContext()
    ctx.data["holdout"] = [{"x": np.ones((1, 4), np.float32)}]
    monkeypatch.setattr(api, "measure_fidelity", lambda a, b, feeds: [SimpleNamespace(cosine=0.75), SimpleNamespace(cosine=0.9)])
    at = api._lossy_verification(model, model, ctx, model, None, None, 0.75, 0, 8)
    assert (at.status, at.reason) == ("passed", "worst cosine 0.75000 vs budget 0.75")
    above = api._lossy_verification(model, model, ctx, model, None, None, 0.7500001, 0, 8)
    assert above.status == "failed" and above.samples_from == "holdout" and above.samples == 1


# --------------------------------------------------------------------------------------------
# reporting: --fail-if, report


def test_fail_if_seconds_is_the_total_wall_time_not_the_sum_of_phases():
    """'seconds' reads seconds.total (3.5), not load+passes+total added up (7.0)."""
    from onnxslim.reporting.failif import evaluate, parse_conditions

    report = {"seconds": {"load": 1.0, "passes": 2.5, "total": 3.5}}
    rows = evaluate(parse_conditions(["seconds<4", "seconds>3"]), report)
    assert [(r["holds"], r["value"]) for r in rows] == [(True, "seconds is 3.5"), (True, "seconds is 3.5")]
    assert evaluate(parse_conditions(["seconds>3"]), {"seconds": {"load": 1.0, "passes": 2.5}})[0]["value"] == "seconds is 3.5"


def test_fail_if_bytes_counts_external_data():
    """bytes / bytes-increased compare total_bytes (model file + .data), not the .onnx file alone."""
    from onnxslim.reporting.failif import evaluate, parse_conditions

    report = {"input": {"bytes": 100, "total_bytes": 1000}, "output": {"bytes": 200, "total_bytes": 500}}
    rows = evaluate(parse_conditions(["bytes-increased", "bytes>400", "bytes-reduction<0.5"]), report)
    assert [(r["holds"], r["value"]) for r in rows] == [
        (False, "bytes 1000 -> 500"), (True, "bytes is 500"), (False, "bytes-reduction is 0.5")]


def test_folder_digest_changes_when_a_file_is_renamed(tmp_path):
    """The calibration-folder digest covers file names: a renamed file (same order, same bytes) differs."""
    from onnxslim.report import path_digest

    folder = tmp_path / "calib"
    folder.mkdir()
    (folder / "a.npy").write_bytes(b"first")
    (folder / "b.npy").write_bytes(b"second")
    before = path_digest(folder)
    (folder / "a.npy").rename(folder / "a0.npy")
    after = path_digest(folder)
    assert (before["bytes"], before["files"]) == (after["bytes"], after["files"]) == (11, 2)
    assert before["sha256"] != after["sha256"]


def test_pass_totals_count_nodes_removed_as_before_minus_after():
    """pass_totals sums nodes_before - nodes_after per pass name: 10->7 then 7->8 is 2 removed."""
    from onnxslim.pipeline import PassRecord
    from onnxslim.report import Report

    records = [PassRecord("dedupe", 1, True, 0.5, 10, 7, {"merged": 3}), PassRecord("dedupe", 2, True, 0.25, 7, 8, {"merged": 1}),
               PassRecord("eliminate_dead", 1, False, 0.125, 8, 8, {})]
    totals = Report(pipeline="p", passes=records).pass_totals()
    assert totals == [
        {"name": "dedupe", "runs": 2, "changed": 2, "seconds": 0.75, "nodes_removed": 2, "counters": {"merged": 4}},
        {"name": "eliminate_dead", "runs": 1, "changed": 0, "seconds": 0.125, "nodes_removed": 0, "counters": {}},
    ]


def test_from_report_refuses_an_input_whose_external_data_changed(tmp_path):
    """Same .onnx bytes, different .data bytes: --from-report refuses to rerun (exit 2), naming the external data."""
    src = tmp_path / "m.onnx"
    onnx.save_model(_two_weights(16), src, save_as_external_data=True, location="m.data", size_threshold=0)
    assert invoke("optimize", src, "-o", tmp_path / "a.onnx", "--report", tmp_path / "r.json", "-q").exit_code == 0
    data = tmp_path / "m.data"
    raw = bytearray(data.read_bytes())
    raw[:4] = np.float32(7.0).tobytes()
    data.write_bytes(bytes(raw))
    result = invoke("optimize", "--from-report", tmp_path / "r.json", "-o", tmp_path / "b.onnx")
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == f"onnxslim: error: --from-report: the external data of {src} differs from the recorded input's"
    assert not (tmp_path / "b.onnx").exists()


def test_stages_end_with_an_output_stage_when_passes_after_the_lossy_one_changed_the_model():
    """StageRecorder.fill appends an 'output' stage only when the final stats differ from the last lossy stage's."""
    from onnxslim.graph import import_model
    from onnxslim.pipeline import PassContext, PassRecord
    from onnxslim.report import Report
    from onnxslim.reporting.recorder import StageRecorder
    from onnxslim.stats import compute

    model = _relu_model()
    graph = import_model(model)
    small = compute(import_model(make_model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [1, 4])], [vi("y", [1, 4])])))
    for after, names in ((small, ["input", "cleanup", "factorize_svd", "output"]), (None, ["input", "cleanup", "factorize_svd"])):
        recorder = StageRecorder(model, PassContext(), None)
        record = PassRecord("factorize_svd", 1, True, 0.1, 2, 2, {})
        recorder(record, graph)
        report = Report(pipeline="factorize_svd", passes=[record], before=compute(graph), after=after or compute(graph))
        recorder.fill(report)
        assert [s["name"] for s in report.stages] == names
        assert report.stages[-1]["stats"]["nodes"] == (1 if after else 2)


# --------------------------------------------------------------------------------------------
# calibration data


def _image_folder(tmp_path, preprocess: dict | None = None):
    pil = pytest.importorskip("PIL.Image")
    folder = tmp_path / "images"
    folder.mkdir()
    pixels = np.zeros((4, 4, 3), np.uint8)
    pixels[..., 0] = 255  # pure red
    pil.fromarray(pixels, "RGB").save(folder / "red.png")
    if preprocess is not None:
        (folder / "preprocess.json").write_text(json.dumps(preprocess))
    return folder


@pytest.mark.parametrize("color, channel", [("RGB", 0), ("BGR", 2)])
def test_image_color_order(tmp_path, color, channel):
    """"color": "BGR" puts the red channel last (NCHW channel 2); RGB keeps it first."""
    from onnxslim.calibration.data import load_calibration

    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [1, 3, 4, 4])], [vi("y", [1, 3, 4, 4])])
    chunk = next(load_calibration(_image_folder(tmp_path, {"color": color}), model).chunks())
    x = chunk["x"]
    assert x.shape == (1, 3, 4, 4) and x.dtype == np.float32
    np.testing.assert_allclose(x[0].mean(axis=(1, 2)), np.eye(3, dtype=np.float32)[channel], atol=1e-6)


def test_image_layout_defaults_to_nhwc_when_the_last_axis_has_3_channels(tmp_path):
    """No "layout" key and an input [1, 4, 4, 3]: images load as NHWC (channels last)."""
    from onnxslim.calibration.data import load_calibration

    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [1, 4, 4, 3])], [vi("y", [1, 4, 4, 3])])
    chunk = next(load_calibration(_image_folder(tmp_path), model).chunks())
    assert chunk["x"].shape == (1, 4, 4, 3)
    np.testing.assert_allclose(chunk["x"][0, 0, 0], [1.0, 0.0, 0.0], atol=1e-6)


def test_held_out_samples_are_regrouped_into_full_batches_only():
    """A model fixed at batch 2: 3 held-out samples give one batch of 2; the short remainder is left out."""
    from onnxslim.calibration.data import fit_to_model, synthetic

    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [2, 4])], [vi("y", [2, 4])])
    calibration = synthetic(make_model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", ["n", 4])], [vi("y", ["n", 4])]), 4)
    held = [{"x": np.full((1, 4), i, np.float32)} for i in range(3)]
    batches = fit_to_model(calibration, held, model)
    assert len(batches) == 1
    np.testing.assert_array_equal(batches[0]["x"], [[0] * 4, [1] * 4])


def test_fixed_batch_is_none_when_inputs_fix_different_batches():
    """Inputs fixing batch 2 and 4 have no common batch (None); one fixed and one free input give 2."""
    from onnxslim.calibration.data import InputSpec, fixed_batch

    f32 = np.dtype(np.float32)
    assert fixed_batch([InputSpec("a", f32, (2, 3)), InputSpec("b", f32, (4, 3))]) is None
    assert fixed_batch([InputSpec("a", f32, (2, 3)), InputSpec("b", f32, (None, 3))]) == 2
    assert fixed_batch([InputSpec("a", f32, (None, 3))]) is None


# --------------------------------------------------------------------------------------------
# pipeline


def test_fixed_point_goes_on_while_any_pass_in_the_group_changed(monkeypatch):
    """[count_down (changes three times), never]: the group repeats until a round where no pass changed (4 rounds)."""
    import onnx_graphsurgeon as gs

    from onnxslim import pipeline as pl
    from tests.test_pipeline import _CountDown

    class NeverChanges(pl.Pass):
        """Never reports a change."""

        name = "never"

        def run(self, graph, ctx):
            return pl.PassResult(False)

    monkeypatch.setattr(pl, "registry", lambda: {"count_down": _CountDown, "never": NeverChanges})
    x, y = gs.Variable("x", dtype=np.float32, shape=[1]), gs.Variable("y", dtype=np.float32, shape=[1])
    graph = gs.Graph(nodes=[gs.Node("Relu", inputs=[x], outputs=[y])], inputs=[x], outputs=[y])
    records = pl.Pipeline("[count_down,never]*10").run(graph, pl.PassContext())
    assert [(r.name, r.round, r.changed) for r in records] == [
        (name, rnd, name == "count_down" and rnd <= 3) for rnd in range(1, 5) for name in ("count_down", "never")]
