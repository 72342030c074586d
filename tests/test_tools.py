"""Fast tests of the benchmark tooling in tools/: zoo registry and CLI, input synthesis, wheel
reading, the measuring runner, the bench's evaluation and table. No torch export, no venvs."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tests.helpers import init, make_model, vi

TOOLS = Path(__file__).resolve().parents[1] / "tools"
sys.path.insert(0, str(TOOLS))

import _measure  # noqa: E402
import bench  # noqa: E402
import bench_eval  # noqa: E402
import bench_tools  # noqa: E402
import zoo  # noqa: E402
import zoo_feeds  # noqa: E402
import zoo_wheels  # noqa: E402


def tiny_model(path: Path | None = None):
    """y = relu(identity(x @ W)), with a symbolic batch dimension."""
    model = make_model(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"]),
            helper.make_node("Identity", ["h"], ["i"]),
            helper.make_node("Relu", ["i"], ["y"]),
        ],
        [vi("x", ["batch", 4])],
        [vi("y", ["batch", 3])],
        [init("W", np.arange(12, dtype=np.float32).reshape(4, 3) / 10)],
    )
    if path is not None:
        path.write_bytes(model.SerializeToString())
    return model


# --------------------------------------------------------------------------- zoo


def test_zoo_registry_names_and_files():
    assert {"resnet50", "mobilenetv2", "efficientnet_b0", "vit_b16", "bert_base", "minilm_l6"} <= set(zoo.MODELS)
    assert {"ppocr_det", "ppocr_rec", "ppocr_cls"} <= set(zoo.MODELS)
    assert zoo.MODELS["resnet50"].files(["dynamo", "legacy"]) == [("resnet50.dynamo.onnx", "dynamo"), ("resnet50.legacy.onnx", "legacy")]
    assert zoo.MODELS["ppocr_cls"].files(["dynamo", "legacy"]) == [("ppocr_cls.onnx", None)]
    assert zoo.EXPORTERS == {"dynamo": 18, "legacy": 17}


def test_zoo_select_models():
    assert [m.name for m in zoo.select_models(None, quick=False)] == list(zoo.MODELS)
    assert [m.name for m in zoo.select_models(None, quick=True)] == list(zoo.QUICK)
    assert [m.name for m in zoo.select_models(" bert_base,resnet50 ", quick=True)] == ["bert_base", "resnet50"]
    with pytest.raises(SystemExit, match="unknown model"):
        zoo.select_models("resnet50,alexnet", quick=False)


def test_zoo_args_defaults_and_list(capsys):
    args = zoo.parse_args([])
    assert (args.out, args.exporter, args.force, args.static) == (Path("zoo"), "both", False, False)
    assert zoo.main(["--list", "--exporter", "legacy", "--models", "mobilenetv2,ppocr_det"]) == 0
    out = capsys.readouterr().out
    assert "mobilenetv2.legacy.onnx" in out and "ppocr_det.onnx" in out and "dynamo" not in out


def test_zoo_dynamic_axes():
    image = zoo.TorchNet(None, lambda b: (), ("input",), ("logits",))
    text = zoo.TorchNet(None, lambda b: (), ("input_ids", "attention_mask"), ("emb",), text=True)
    assert image.dynamic_axes() == {"input": {0: "batch"}, "logits": {0: "batch"}}
    assert text.dynamic_axes()["attention_mask"] == {0: "batch", 1: "sequence"}
    assert text.dynamic_axes()["emb"] == {0: "batch"}


def test_zoo_table_and_manifest_roundtrip(tmp_path):
    records = [
        {"file": "a.dynamo.onnx", "nodes": 12, "bytes": 2_500_000, "build_s": 1.25, "status": "built"},
        {"file": "b.onnx", "build_s": None, "status": "error: ValueError: boom"},
    ]
    table = zoo.render_table(records).splitlines()
    assert table[2] == "| a.dynamo.onnx | 12 | 2.5 | 1.2 | built |"
    assert table[3] == "| b.onnx |  |  |  | error: ValueError: boom |"
    zoo.save_manifest(tmp_path, {"files": {"a.dynamo.onnx": records[0]}})
    assert zoo.load_manifest(tmp_path)["files"]["a.dynamo.onnx"]["nodes"] == 12
    assert zoo.load_manifest(tmp_path / "missing") == {"files": {}}


def test_zoo_present_files_are_kept(tmp_path, capsys):
    tiny_model(tmp_path / "ppocr_cls.onnx")
    assert zoo.main(["--out", str(tmp_path), "--models", "ppocr_cls"]) == 0
    assert "| ppocr_cls.onnx |" in (out := capsys.readouterr().out) and out.rstrip().endswith("| present |")


# --------------------------------------------------------------------------- feeds, wheels


def test_feeds_shapes_and_text_inputs():
    model = make_model(
        [helper.make_node("Cast", ["input_ids"], ["y"], to=TensorProto.FLOAT), helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
         helper.make_node("Cast", ["token_type_ids"], ["t"], to=TensorProto.FLOAT), helper.make_node("Identity", ["img"], ["i"])],
        [vi("input_ids", ["batch", "sequence"], TensorProto.INT64), vi("attention_mask", ["batch", "sequence"], TensorProto.INT64),
         vi("token_type_ids", ["batch", "sequence"], TensorProto.INT64), vi("img", [None, 3, "h", "w"])],
        [vi("y", ["batch", "sequence"]), vi("m", ["batch", "sequence"]), vi("t", ["batch", "sequence"]), vi("i", [None, 3, "h", "w"])],
    )
    feeds = zoo_feeds.synthesize_feeds(model, shapes={"img": [1, 3, 8, 8]}, dims={"batch": 2, "sequence": 8}, ranges={"input_ids": [5, 9]})
    assert feeds["input_ids"].shape == (2, 8) and feeds["input_ids"].dtype == np.int64
    assert feeds["input_ids"].min() >= 5 and feeds["input_ids"].max() < 9
    assert feeds["attention_mask"].tolist() == [[1] * 6 + [0] * 2] * 2
    assert not feeds["token_type_ids"].any()
    assert feeds["img"].shape == (1, 3, 8, 8) and feeds["img"].dtype == np.float32
    again = zoo_feeds.synthesize_feeds(model, shapes={"img": [1, 3, 8, 8]}, dims={"batch": 2, "sequence": 8}, ranges={"input_ids": [5, 9]})
    assert np.array_equal(feeds["img"], again["img"])


def test_feeds_text_image():
    model = make_model([helper.make_node("Identity", ["x"], ["y"])], [vi("x", [None, 3, 48, 96])], [vi("y", [None, 3, 48, 96])])
    feeds = zoo_feeds.synthesize_feeds(model, text_image={"mean": [0.5] * 3, "std": [0.5] * 3})
    image = feeds["x"]
    assert image.shape == (1, 3, 48, 96) and image.dtype == np.float32
    pytest.importorskip("PIL")
    assert image.max() == pytest.approx(1.0) and image.min() < -0.5  # white page, black glyphs


def test_feeds_unknown_dims_default_to_one():
    feeds = zoo_feeds.synthesize_feeds(tiny_model())
    assert feeds["x"].shape == (1, 4)


def test_wheel_file_read_from_cached_wheel(tmp_path):
    wheel = tmp_path / "some_pkg-1.2.3-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("some_pkg/models/m.onnx", b"bytes")
    assert zoo_wheels.read_package_file("some-pkg", "1.2.3", "some_pkg/models/m.onnx", tmp_path) == b"bytes"
    with pytest.raises(zoo_wheels.WheelError, match="not in"):
        zoo_wheels.read_package_file("some-pkg", "1.2.3", "some_pkg/other.onnx", tmp_path)


def test_safetensors_reader():
    torch = pytest.importorskip("torch")
    import io
    import zoo_nets

    data = np.arange(6, dtype=np.float32).tobytes() + np.array([7], np.int64).tobytes()
    header = json.dumps({"__metadata__": {}, "w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
                         "i": {"dtype": "I64", "shape": [1], "data_offsets": [24, 32]}}).encode()
    blob = len(header).to_bytes(8, "little") + header + data
    tensors = zoo_nets.read_safetensors(io.BytesIO(blob))
    assert torch.equal(tensors["w"], torch.arange(6, dtype=torch.float32).reshape(2, 3))
    assert tensors["i"].tolist() == [7]


# --------------------------------------------------------------------------- measuring runner


def test_measure_reports_peak_rss_and_time():
    result = _measure.run_measured([sys.executable, "-c", "b = bytearray(150 * 2**20); b[::4096] = b'x' * len(b[::4096])"])
    assert result.ok and result.returncode == 0
    assert 150 <= result.peak_rss_mb < 400
    assert 0 < result.wall_s < 10


def test_measure_failures_are_data():
    failed = _measure.run_measured([sys.executable, "-c", "import sys; sys.stderr.write('boom\\n'); sys.exit(3)"])
    assert (failed.returncode, failed.ok, failed.error_line()) == (3, False, "exit 3: boom")
    missing = _measure.run_measured(["/nonexistent/tool"])
    assert missing.returncode == 127 and "No such file" in missing.stderr_tail
    slow = _measure.run_measured([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5)
    assert slow.timed_out and slow.wall_s < 10 and slow.error_line().startswith("timed out")


def test_measure_cli_prints_json():
    done = subprocess.run([sys.executable, str(TOOLS / "_measure.py"), "--", sys.executable, "-c", "print('hi')"], capture_output=True, text=True)
    result = json.loads(done.stdout)
    assert result["returncode"] == 0 and result["stdout_tail"] == "hi\n" and result["peak_rss_mb"] > 0


# --------------------------------------------------------------------------- bench pieces


def test_compare_outputs():
    ref = {"y": np.array([1.0, 2.0, np.nan], np.float32)}
    assert bench_eval.compare(ref, ["y"], [np.array([1.0, 2.0, np.nan], np.float32)]) == {"max_abs_diff": 0.0, "match": True}
    close = bench_eval.compare(ref, ["renamed"], [np.array([1.0, 2.00001, np.nan], np.float32)])
    assert close["match"] and close["max_abs_diff"] == pytest.approx(1e-5, rel=0.1)
    assert not bench_eval.compare(ref, ["y"], [np.array([1.0, 2.5, np.nan], np.float32)])["match"]
    assert bench_eval.compare(ref, ["y"], [np.array([1.0, 2.0, 0.0], np.float32)])["max_abs_diff"] == np.inf
    assert "shape" in bench_eval.compare(ref, ["y"], [np.zeros(2, np.float32)])["note"]
    assert "2 outputs" in bench_eval.compare(ref, ["y", "z"], [np.zeros(3), np.zeros(3)])["note"]


def test_arrays_roundtrip_with_awkward_names(tmp_path):
    arrays = {"file": np.ones(2), "a/b:0": np.arange(3), "save_infer_model/scale_0.tmp_1": np.zeros((1, 2), np.float32)}
    bench_eval.save_arrays(tmp_path / "x.npz", arrays)
    loaded = bench_eval.load_arrays(tmp_path / "x.npz")
    assert list(loaded) == list(arrays) and all(np.array_equal(loaded[k], arrays[k]) for k in arrays)


def test_render_markdown():
    rows = [
        bench.Row("m", "input", nodes=100, bytes=2_000_000, latency_ms=10.0, latency_min_ms=9.0),
        bench.Row("m", "ours", nodes=80, bytes=1_900_000, wall_s=1.23, peak_rss_mb=210.4, latency_ms=8.0, latency_min_ms=7.2, max_abs_diff=1e-6, match=True),
        bench.Row("m", "peer", nodes=90, wall_s=2.0, peak_rss_mb=300.0, latency_ms=12.5, latency_min_ms=11.25, max_abs_diff=0.5, match=False),
        bench.Row("m", "broken", status="error: exit 1: ValueError: a|b"),
    ]
    lines = bench.render_markdown(rows, {"threads": 1, "runs": 5}).splitlines()
    assert lines[4].startswith("| model | tool | nodes | Δ nodes |")
    assert lines[6] == "| m | input | 100 |  | 2.0 |  |  | 10.00 | 9.00 |  |  |  | ok |"
    assert lines[7] == "| m | ours | 80 | -20 | 1.9 | 1.2 | 210 | 8.00 | 7.20 | 1.25x | 1.0e-06 | yes | ok |"
    assert "| 12.50 | 11.25 | 0.80x | 5.0e-01 | NO | ok |" in lines[8]
    assert lines[9].endswith("| error: exit 1: ValueError: a\\|b |")


def test_error_line_prefers_the_exception():
    measured = {"timed_out": False, "returncode": 1, "stdout_tail": "", "stderr_tail": "Traceback\n  File x\nRuntimeError: bad attr\n==> Context: node 3\n"}
    assert bench.error_line(measured) == "exit 1: RuntimeError: bad attr"
    assert bench.error_line({**measured, "stderr_tail": "just words\n"}) == "exit 1: just words"
    assert bench.error_line({**measured, "timed_out": True, "wall_s": 60.2}) == "timed out after 60 s"


def test_tools_commands_and_env(tmp_path, monkeypatch):
    assert [t.name for t in bench_tools.select_tools(None)] == ["ours", "onnxslim-peer", "onnxsim", "onnxoptimizer", "ort-basic"]
    with pytest.raises(SystemExit):
        bench_tools.select_tools("ours,nope")
    src, dst = tmp_path / "in.onnx", tmp_path / "out.onnx"
    ours = bench_tools.tool_command(bench_tools.TOOLS["ours"], tmp_path, src, dst, tmp_path)
    assert ours[0] == sys.executable and ours[3:] == ["optimize", str(src), "-o", str(dst), "--report", str(tmp_path / "out.report.json")]
    peer = bench_tools.tool_command(bench_tools.TOOLS["onnxslim-peer"], tmp_path, src, dst, tmp_path)
    assert peer == [str(tmp_path / "onnxslim-peer" / "bin" / "onnxslim"), str(src), str(dst)]
    assert all("==" in r for t in bench_tools.TOOLS.values() for r in t.requirements)
    monkeypatch.setenv("PYTHONPATH", "/somewhere")
    assert "PYTHONPATH" not in bench_tools.peer_env()


def test_ensure_venv_skips_when_pins_match(tmp_path):
    tool = bench_tools.TOOLS["onnxsim"]
    stamp = bench_tools.venv_dir(tool, tmp_path) / "bench-requirements.txt"
    stamp.parent.mkdir()
    stamp.write_text("\n".join(tool.requirements) + "\n")
    bench_tools.ensure_venv(tool, tmp_path)  # would need the network if it did not skip
    bench_tools.ensure_venv(bench_tools.TOOLS["ort-basic"], tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnxsim"]


def test_resolve_models_and_spec(tmp_path):
    tiny_model(tmp_path / "a.dynamo.onnx")
    (tmp_path / "manifest.json").write_text(json.dumps({"files": {"a.dynamo.onnx": {"shapes": {"x": [2, 4]}, "nodes": 3}}}))
    assert bench.resolve_models([], tmp_path, quick=False) == [tmp_path / "a.dynamo.onnx"]
    assert bench.resolve_models(["a.dynamo"], tmp_path, quick=False) == [tmp_path / "a.dynamo.onnx"]
    with pytest.raises(SystemExit, match="zoo.py --quick"):
        bench.resolve_models([], tmp_path, quick=True)
    with pytest.raises(SystemExit, match="not found"):
        bench.resolve_models(["b"], tmp_path, quick=False)
    assert bench.model_spec(tmp_path / "a.dynamo.onnx") == {"shapes": {"x": [2, 4]}}


def test_bench_end_to_end_with_ort_basic(tmp_path):
    tiny_model(tmp_path / "tiny.onnx")
    md, js = tmp_path / "bench.md", tmp_path / "bench.json"
    code = bench.main([str(tmp_path / "tiny.onnx"), "--tools", "ort-basic", "--out", str(tmp_path / "out"), "--runs", "2", "--md", str(md), "--json", str(js)])
    assert code == 0
    rows = json.loads(js.read_text())["rows"]
    assert [(r["tool"], r["status"], r["nodes"]) for r in rows] == [("input", "ok", 3), ("ort-basic", "ok", 2)]
    assert rows[1]["match"] is True and rows[1]["max_abs_diff"] == 0.0 and rows[1]["latency_ms"] >= rows[1]["latency_min_ms"] > 0
    assert rows[1]["peak_rss_mb"] > 10 and rows[1]["wall_s"] > 0
    assert "| tiny | ort-basic | 2 | -1 |" in md.read_text()


def test_failing_tool_becomes_an_error_row(tmp_path):
    opts = bench.parse_args(["--out", str(tmp_path), "--runs", "1"])
    crash = bench_tools.Tool("crash", "raises", lambda b, i, o, w: [sys.executable, "-c", "raise ValueError('bad graph')"])
    silent = bench_tools.Tool("silent", "writes nothing", lambda b, i, o, w: [sys.executable, "-c", "pass"])
    src = tmp_path / "tiny.onnx"
    tiny_model(src)
    row, output = bench.run_tool(crash, "tiny", src, tmp_path, {}, opts)
    assert output is None and row.status == "error: exit 1: ValueError: bad graph" and row.wall_s > 0
    row, output = bench.run_tool(silent, "tiny", src, tmp_path, {}, opts)
    assert output is None and row.status == "error: no output file written"
    row, _ = bench.run_tool(silent, "tiny", src, tmp_path, {"silent": "setup: pip failed"}, opts)
    assert row.status == "error: setup: pip failed" and row.wall_s is None


def test_quant_digests_are_stable_and_name_the_file(tmp_path, monkeypatch):
    import bench_quant
    import quant_digests

    model = make_model([helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
                       [vi("x", ["batch", 8])], [vi("y", ["batch", 8])],
                       [init("W", np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32))])
    onnx.save_model(model, tmp_path / "tiny.onnx")
    samples = {"x": np.random.default_rng(1).standard_normal((16, 8)).astype(np.float32)}
    monkeypatch.setitem(bench_quant.MODELS, "tiny", "tiny.onnx")
    monkeypatch.setattr(bench_quant, "model_data", lambda name, zoo, m, calib, holdout: (samples, {}, {}))
    first = list(quant_digests.digests(tmp_path, tmp_path / "a", ["tiny"], ["minmax", "mse"], 16))
    again = list(quant_digests.digests(tmp_path, tmp_path / "b", ["tiny"], ["minmax", "mse"], 16))
    assert first == again and [(n, m) for n, m, _ in first] == [("tiny", "minmax"), ("tiny", "mse")]
    assert first[0][2] == hashlib.sha256((tmp_path / "b" / "tiny-minmax.onnx").read_bytes()).hexdigest()
    out = onnx.load(tmp_path / "b" / "tiny-minmax.onnx")
    assert {n.op_type for n in out.graph.node} >= {"QuantizeLinear", "DequantizeLinear"}  # it did quantize


def test_text_boxes_components_detect_and_f1():
    import text_boxes as tb

    mask = np.zeros((20, 30), bool)
    mask[2:5, 3:10] = True  # 3 x 7 = 21
    mask[5, 10] = True  # touches the first only diagonally: same component (8-connected)
    mask[10:14, 20:25] = True  # 4 x 5 = 20
    mask[0, 29] = True  # a speck
    comps = sorted(tb.components(mask))
    assert comps == [(3, 2, 11, 6, 22), (20, 10, 25, 14, 20), (29, 0, 30, 1, 1)]
    # U shape: two columns joined at the bottom row are one component though the rows above see two runs
    u = np.zeros((5, 5), bool)
    u[:, 0] = u[:, 4] = u[4, :] = True
    assert tb.components(u) == [(0, 0, 5, 5, 13)]

    prob = np.zeros((40, 60), np.float32)
    prob[10:20, 10:50] = 0.9  # 10 x 40: unclip distance 400 * 1.5 / 100 = 6
    prob[30, 30] = 0.9  # a speck under min_area
    assert tb.detect(prob) == [(4.0, 4.0, 56.0, 26.0)]
    assert tb.detect(prob * 0.3) == []  # at the threshold: nothing

    truth = [[(0, 0, 10, 10), (20, 0, 30, 10)], [(0, 0, 10, 10)]]
    preds = [[(0, 0, 10, 10), (50, 50, 60, 60)], [(1, 0, 10, 10)]]  # IoU 0.9 for the last
    assert tb.f1(preds, truth) == {"precision": 2 / 3, "recall": 2 / 3, "f1": pytest.approx(2 / 3)}
    assert tb.f1(preds, truth, min_iou=0.95)["recall"] == 1 / 3
    assert tb.f1([[]], [[(0, 0, 1, 1)]]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert tb.matches([(0, 0, 10, 10)], [(0, 0, 10, 10), (0, 0, 10, 9)]) == 1  # one-to-one


def test_ppocr_det_task_data_and_metric():
    import bench_quant
    import text_boxes as tb

    from bench_prune_data import text_pages

    model = onnx.helper.make_model(onnx.helper.make_graph([], "g", [vi("x", [1, 3, 320, 320])], []))
    calib, held, task = bench_quant.model_data("ppocr_det", Path("zoo"), model, 2, 3)
    assert calib["x"].shape == (2, 3, 320, 320) and held["x"].shape == (3, 3, 320, 320)
    pages, masks = text_pages(3, 2)
    np.testing.assert_array_equal(held["x"], pages)
    assert [len(b) for b in task["boxes"]] == [len(tb.mask_boxes(m)) for m in masks] and all(task["boxes"])
    for boxes, mask in zip(task["boxes"], masks):  # the boxes cover exactly the mask
        cover = np.zeros_like(mask)
        for x0, y0, x1, y1 in boxes:
            cover[y0:y1, x0:x1] = True
        np.testing.assert_array_equal(cover, mask)
    prob = np.zeros((1, 1, 320, 320), np.float32)
    prob[0, 0, 10:20, 10:50] = 0.9
    assert bench_quant.task_view(task, prob) == [(4.0, 4.0, 56.0, 26.0)]  # detect() on the map
    views = task["boxes"]  # boxes as task_view() gives them: here the right answer itself
    assert bench_quant.task_metric(task, views, views) == {"box_f1_fp32": 1.0, "box_f1": 1.0, "box_agreement": 1.0}
    lost_one = [views[0][1:]] + views[1:]  # one line of n missed
    n = sum(map(len, views))
    scores = bench_quant.task_metric(task, views, lost_one)
    assert scores["box_f1"] == pytest.approx(2 * (n - 1) / (2 * n - 1)) and scores["box_agreement"] == scores["box_f1"]
    assert bench_quant.task_metric(task, views, [[]] * 3)["box_f1"] == 0.0


def test_model_data_calibration_seed_picks_another_draw_and_never_the_held_out_one():
    import bench_quant

    from bench_prune_data import text_pages

    model = onnx.helper.make_model(onnx.helper.make_graph([], "g", [vi("x", [1, 3, 320, 320])], []))
    first, held, _ = bench_quant.model_data("ppocr_det", Path("zoo"), model, 2, 2)
    again, held_again, _ = bench_quant.model_data("ppocr_det", Path("zoo"), model, 2, 2, calib_seed=1)
    other, held_other, _ = bench_quant.model_data("ppocr_det", Path("zoo"), model, 2, 2, calib_seed=7)
    np.testing.assert_array_equal(first["x"], again["x"])  # seed 1 is the default draw
    np.testing.assert_array_equal(other["x"], text_pages(2, 7)[0])
    assert not np.array_equal(first["x"], other["x"])
    np.testing.assert_array_equal(held["x"], held_other["x"])  # the held-out set never moves
    with pytest.raises(SystemExit, match="held-out draw"):
        bench_quant.model_data("ppocr_det", Path("zoo"), model, 2, 2, calib_seed=bench_quant.HELD_OUT_SEED)


def test_bench_hands_a_suite_name_to_that_suite(monkeypatch):
    import bench_quant

    seen = []
    monkeypatch.setattr(bench_quant, "main", lambda argv: seen.append(argv) or 7)
    assert bench.main(["quant", "--models", "resnet50", "--runs", "3"]) == 7
    assert seen == [["--models", "resnet50", "--runs", "3"]]
    assert sorted(bench.SUITES) == ["prune", "quant", "svd", "targets"]
    for module in bench.SUITES.values():
        assert (TOOLS / f"{module}.py").is_file()


def test_calib_speed_floor_reruns_the_captured_loop_with_free_statistics(monkeypatch):
    import calib_speed

    import onnxslim.passes.insert_qdq as pass_module
    from onnxslim.calibration.data import synthetic
    from onnxslim.quantization import histogram
    from tests.quantization.test_collect import small_net

    model = small_net()
    box: dict = {}
    with calib_speed.captured_collection(box):
        stats, seen = pass_module.collect_stats(model, ["y"], synthetic(model, 6, seed=1), batch_size=2)
    assert pass_module.collect_stats is not None and "capture" not in pass_module.collect_stats.__name__
    assert seen == 6 and stats["y"].count == 6 * 8
    assert box["result"][0] is stats and box["result"][1] == 6  # the pass's own result is kept
    minmax_only: dict = {}
    with calib_speed.captured_collection(minmax_only, histogram=False):
        stats, _ = pass_module.collect_stats(model, ["y"], synthetic(model, 6, seed=1), batch_size=2)
    assert stats["y"].counts is None and minmax_only["kwargs"]["histogram"] is False  # called with the overrides
    calls = []
    original = histogram.TensorStats.update
    monkeypatch.setattr(histogram.TensorStats, "update", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    counting = histogram.TensorStats.update
    assert calib_speed.floor_seconds(box) > 0
    assert calls == [] and histogram.TensorStats.update is counting  # no update ran; the real one is back


def test_range_speed_fingerprints_the_ranges_it_times():
    import range_speed

    from onnxslim.quantization.histogram import TensorStats

    rng = np.random.default_rng(0)
    stats = {}
    for name, values in (("relu", np.maximum(rng.standard_normal(50_000), 0)), ("signed", rng.laplace(size=50_000))):
        stats[name] = TensorStats(512)
        stats[name].update(values.astype(np.float32))
    seconds, fingerprint = range_speed.time_ranges(stats, "entropy", 2)
    assert seconds > 0 and len(fingerprint) == 16
    assert range_speed.time_ranges(stats, "entropy", 1)[1] == fingerprint  # the same ranges every time
    assert range_speed.time_ranges(stats, "minmax", 1)[1] != fingerprint
