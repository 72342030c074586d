"""Streaming calibration: batch invariance, image folders, the --quantize stage through the CLI."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxslim.calibration import load_calibration, synthetic
from onnxslim.cli import main
from onnxslim.pipeline import PassContext
from onnxslim.quantization.calibrate import Rider, collect_stats
from tests.helpers import apply_passes, op_counts
from tests.passes.test_insert_qdq import resnet_block


def quantized_scales(model, calib, batch_size, method, **options):
    ctx = PassContext(options={"insert_qdq": {"method": method, "batch_size": batch_size, **options}})
    ctx.data["calibration"] = calib
    out, records = apply_passes(model, "infer_shapes,insert_qdq", ctx)
    rows = [r for r in records[-1].details if r["detail"] == "tensor"]
    return {r["tensor"]: (r["range"], r["scale"], r["zero_point"]) for r in rows}


@pytest.mark.parametrize("method,sample", [("minmax", 0), ("percentile", 0), ("entropy", 0), ("mse", 0), ("entropy", 100)])
def test_scales_bit_identical_for_batch_sizes(method, sample, tmp_path, monkeypatch):
    model = resnet_block(c=16, batch="n")  # a dynamic batch: the collector takes the batches it is given
    from onnxslim.calibration.collect import ActivationCollector
    from onnxslim.calibration.data import batch_rows

    run, rows = ActivationCollector.run_raw, []
    monkeypatch.setattr(ActivationCollector, "run_raw", lambda self, feeds: (rows.append(batch_rows(feeds)), run(self, feeds))[1])
    rng = np.random.default_rng(1)
    # Stored in uneven chunks (7 files of 1..16 samples) so chunking differs from batching too.
    sizes = [1, 16, 3, 9, 5, 14, 16]
    for i, n in enumerate(sizes):
        np.savez(tmp_path / f"part{i}.npz", x=rng.standard_normal((n, 3, 16, 16)).astype(np.float32))
    calib = load_calibration(tmp_path, model)
    assert len(calib) == sum(sizes) == 64
    # sample=100: histograms see every k-th value of each sample (a per-sample pattern)
    scales, batches = [], []
    for bs in (1, 8, 32):
        rows.clear()
        scales.append(quantized_scales(model, calib, bs, method, histogram_sample=sample))
        batches.append(sorted(set(rows)))
    assert batches == [[1], [8], [32]]  # the runs really were batched differently
    assert scales[0] == scales[1] == scales[2]
    assert len(scales[0]) >= 8


def test_calibration_limit_and_progress_off_without_tty(tmp_path):
    model = resnet_block()
    np.savez(tmp_path / "c.npz", x=np.random.default_rng(0).standard_normal((20, 3, 16, 16)).astype(np.float32))
    calib = load_calibration(tmp_path / "c.npz", model, limit=5)
    ctx = PassContext(options={"insert_qdq": {"progress": True}})
    ctx.data["calibration"] = calib
    _, records = apply_passes(model, "infer_shapes,insert_qdq", ctx)
    assert records[-1].counters["calib_samples"] == 5


def test_no_calibration_data_warns_loudly(caplog):
    ctx = PassContext()
    with caplog.at_level("WARNING"):
        apply_passes(resnet_block(), "infer_shapes,insert_qdq", ctx)
    assert any("NO CALIBRATION DATA" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------------------------
# Image folders


def test_image_folder_reader(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    for i in range(3):
        arr = np.full((20, 24, 3), 40 * i, dtype=np.uint8)
        arr[..., 1] = 255
        Image.fromarray(arr).save(tmp_path / f"im{i}.png")
    (tmp_path / "preprocess.json").write_text(json.dumps({"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}))
    calib = load_calibration(tmp_path, resnet_block())  # input x: [1, 3, 16, 16], NCHW
    samples = list(calib.samples())
    assert len(samples) == 3 and samples[0]["x"].shape == (1, 3, 16, 16) and samples[0]["x"].dtype == np.float32
    np.testing.assert_allclose(samples[0]["x"][0, 1], 1.0, atol=1e-6)  # green 255 -> (1 - 0.5) / 0.5
    np.testing.assert_allclose(samples[2]["x"][0, 0], (80 / 255 - 0.5) / 0.5, atol=1e-6)


def test_image_folder_needs_resize_for_dynamic_inputs(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    model = resnet_block()
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "h"
    from onnxslim.errors import UsageError
    with pytest.raises(UsageError, match="resize"):
        load_calibration(tmp_path, model)


# --------------------------------------------------------------------------------------------
# The CLI stage


@pytest.fixture()
def model_file(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(resnet_block(), path)
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((24, 3, 16, 16)).astype(np.float32))
    return path


def test_cli_quantize_int8(model_file, tmp_path):
    out = tmp_path / "m.int8.onnx"
    result = CliRunner().invoke(main, ["optimize", str(model_file), "--quantize", "int8", "--calib-data", str(tmp_path / "calib.npz"),
                                       "--calib-method", "mse", "--target", "ort", "--device", "x86", "-o", str(out),
                                       "--report", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    assert "fidelity" in result.output
    counts = op_counts(onnx.load(out))
    assert counts["QuantizeLinear"] == 8
    report = json.loads((tmp_path / "r.json").read_text())
    rows = [d for p in report["passes"] if p["name"] == "insert_qdq" for d in p["details"]]
    assert any(r["detail"] == "tensor" and r["method"] == "mse" for r in rows)


def test_cli_quantize_auto_method(model_file, tmp_path):
    out = tmp_path / "m.int8.onnx"
    result = CliRunner().invoke(main, ["optimize", str(model_file), "--quantize", "int8", "--calib-data", str(tmp_path / "calib.npz"),
                                       "--calib-method", "auto", "-o", str(out), "--report", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    rows = [d for p in report["passes"] if p["name"] == "insert_qdq" for d in p["details"]]
    choice = [r for r in rows if r["detail"] == "method_choice"]
    assert [r["method"] for r in choice] == ["minmax", "percentile", "entropy", "mse"] and sum(r["chosen"] for r in choice) == 1
    assert all(r["held_out"] == 4 for r in choice)  # 24 samples: a fifth, 4, held out
    kept = next(r["method"] for r in choice if r["chosen"])
    assert all(r["method"].startswith(kept) for r in rows if r["detail"] == "tensor")
    assert f"--calib-method auto kept {kept}; cosine on 4 held-out sample(s): minmax " in result.output


@pytest.mark.parametrize("holdout, scored", [("2", 2), ("100", 4), ("0", 8)])
def test_cli_holdout_sizes_the_jury_of_auto(model_file, tmp_path, holdout, scored):
    # 24 samples: at most a fifth (4) held out; 0 leaves none, and auto falls back to 8 synthetic inputs
    result = CliRunner().invoke(main, ["optimize", str(model_file), "--quantize", "int8", "--calib-data", str(tmp_path / "calib.npz"),
                                       "--calib-method", "auto", "--holdout", holdout, "-o", str(tmp_path / "q.onnx"),
                                       "--report", str(tmp_path / "r.json"), "--no-verify"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    rows = [d for p in report["passes"] if p["name"] == "insert_qdq" for d in p["details"] if d["detail"] == "method_choice"]
    assert {r["held_out"] for r in rows} == {scored}
    assert report["options"]["holdout"] == int(holdout)


@pytest.mark.parametrize("args,message", [
    (["--quantize", "int8", "--holdout", "-1"], "--holdout"),
    (["--quantize", "int8", "--calib-percentile", "300"], "calib-percentile"),
    (["--quantize", "int8", "--max-error", "cosine"], "max-error"),
    (["--quantize", "int8", "--calib-bins", "7"], "calib-bins"),
    (["--quantize", "int8", "--calib-override", "x"], "calib-override"),
    (["--quantize", "int8", "--quant-ops", "Gelu"], "quant-ops"),
    (["--quantize", "int8", "--target", "tvm"], "no QDQ placement rules"),
    (["--calib-method", "mse"], "only applies with --quantize"),
    (["--quantize", "int8", "--calib-override", "conv0=auto"], "unknown calibration method 'auto'"),
])
def test_cli_bad_values_exit_2(model_file, args, message):
    result = CliRunner().invoke(main, ["optimize", str(model_file), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_cli_already_quantized_exit_2(model_file, tmp_path):
    first = tmp_path / "q.onnx"
    ok = CliRunner().invoke(main, ["optimize", str(model_file), "--quantize", "int8", "-o", str(first), "--no-verify"])
    assert ok.exit_code == 0, ok.output
    again = CliRunner().invoke(main, ["optimize", str(first), "--quantize", "int8", "-o", str(tmp_path / "qq.onnx")])
    assert again.exit_code == 2 and "already quantized" in again.output


@pytest.mark.parametrize("sample", [0, 100])
def test_overlapped_statistics_equal_sequential(sample):
    model = resnet_block(c=8, batch="n")
    names = ["x", "r0", "p0", "r1", "a2", "f"]
    data = synthetic(model, 24, seed=5)
    runs = [collect_stats(model, names, data, batch_size=4, sample_cap=sample, overlap=overlap) for overlap in (False, True)]
    (seq, n_seq), (ovl, n_ovl) = runs
    assert n_seq == n_ovl == 24
    for name in names:
        a, b = seq[name], ovl[name]
        assert (a.minimum, a.maximum, a.count, a.exponent) == (b.minimum, b.maximum, b.count, b.exponent)
        assert np.array_equal(a.counts, b.counts)


@pytest.mark.parametrize("fixed", [1, 2, 3])
def test_a_fixed_batch_model_takes_full_batches_and_leaves_out_a_short_last_one(fixed, caplog):
    model = resnet_block(c=8, batch=fixed)
    data = synthetic(model, 3 * fixed + 1 if fixed > 1 else 7, seed=4)
    stats, seen = collect_stats(model, ["r0"], data, batch_size=4)
    full = (len(data) // fixed) * fixed
    assert seen == full
    assert stats["r0"].count == full * 8 * 16 * 16  # r0: 8 channels of 16x16 per sample
    assert ("left out" in caplog.text) == (full < len(data))


def test_a_rider_sees_the_first_samples_of_the_same_runs():
    from tests.quantization.test_collect import reference, small_net

    model = small_net()
    data = synthetic(model, 10, seed=2)
    got = []
    rider = Rider(["r"], lambda name, value: got.append(value.copy()), samples=6)
    stats, seen = collect_stats(model, ["y"], data, batch_size=4, riders=[rider])
    assert seen == 10 and rider.seen == 6 and [len(v) for v in got] == [4, 2]  # the second batch cut to fit
    assert set(stats) == {"y"} and stats["y"].count == 10 * 8  # rider tensors get no statistics
    first = {"x": np.concatenate([s["x"] for _, s in zip(range(6), data.samples())])}
    np.testing.assert_allclose(np.concatenate(got), reference(model, ["r"], first)[0], rtol=1e-5, atol=1e-5)


class _BadBatchAt:
    """A calibration set whose batch ``bad`` has the wrong element type (onnxruntime refuses it)."""

    def __init__(self, data, bad: int):
        self.data, self.bad = data, bad

    def batches(self, size: int):
        for i, feeds in enumerate(self.data.batches(size)):
            yield {k: v.astype(np.float64) for k, v in feeds.items()} if i == self.bad else feeds


def _in_thread(fn, timeout: float = 60.0):
    """Run ``fn`` in a thread; (finished in time, its exception or None)."""
    import threading

    box = {}

    def target():
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 (handed back to the test)
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    return not t.is_alive(), box.get("error")


@pytest.mark.parametrize("bad", [0, 1, 4])
@pytest.mark.parametrize("overlap", [False, True])
def test_a_failing_batch_raises_without_hanging_the_lanes(bad, overlap):
    model = resnet_block(c=8, batch="n")
    data = _BadBatchAt(synthetic(model, 20, seed=3), bad)
    done, error = _in_thread(lambda: collect_stats(model, ["r0", "f"], data, batch_size=4, overlap=overlap))
    assert done, "collect_stats hung after a failing batch"
    assert error is not None and "double" in str(error).lower(), error


def test_a_failing_observer_raises_without_hanging_the_lanes():
    from tests.quantization.test_collect import small_net

    model = small_net()
    calls = []

    def observe(name, value):
        calls.append(len(value))
        if len(calls) == 2:
            raise RuntimeError("observer failed")

    rider = Rider(["r"], observe, samples=40)
    done, error = _in_thread(lambda: collect_stats(model, ["y"], synthetic(model, 40, seed=1), batch_size=4, riders=[rider]))
    assert done and isinstance(error, RuntimeError) and str(error) == "observer failed"
    assert calls == [4, 4]  # no batch was observed after the failure


def test_turns_are_taken_in_order_whatever_order_the_lanes_arrive():
    import random
    import threading

    from onnxslim.quantization.calibrate import _Turns

    turns, taken = _Turns(), []
    indices = list(range(40))
    random.Random(0).shuffle(indices)

    def lane(i):
        if i % 7 == 3:
            turns.skip(i)  # a lane whose run failed gives its turn up
            return
        with turns.turn(i):
            taken.append(i)

    threads = [threading.Thread(target=lane, args=(i,)) for i in indices]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert taken == [i for i in range(40) if i % 7 != 3]


@pytest.mark.parametrize("batch_size", [1, 2, 3, 4, 8, 20])
def test_batches_regroup_chunks_in_order(batch_size):
    from onnxslim.calibration.data import CalibrationSet, InputSpec

    rng = np.random.default_rng(3)
    chunks = [{"x": rng.standard_normal((n, 2, 3)).astype(np.float32), "m": rng.integers(0, 9, (n, 4))} for n in (3, 8, 1, 5, 8)]
    data = CalibrationSet("chunks", [InputSpec("x", np.dtype(np.float32), (None, 2, 3)), InputSpec("m", np.dtype(np.int64), (None, 4))],
                          [lambda c=c: c for c in chunks], limit=22)
    got = list(data.batches(batch_size))
    assert [len(b["x"]) for b in got] == [batch_size] * (22 // batch_size) + ([22 % batch_size] if 22 % batch_size else [])
    for key in ("x", "m"):
        want = np.concatenate([c[key] for c in chunks])[:22]
        assert np.array_equal(np.concatenate([b[key] for b in got]), want)
        assert all(b[key].flags.c_contiguous for b in got)


def _batch2_sequences(folder, samples_per_length: int):
    """A MatMul whose batch is fixed at 2 and sequence length free, and calibration data in two
    files: ``samples_per_length`` samples of length 4, then as many of length 8."""
    from onnx import helper

    from tests.helpers import init, make_model, vi

    w = np.random.default_rng(0).standard_normal((16, 16)).astype(np.float32)
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], [vi("x", [2, "seq", 16])],
                       [vi("y", [2, "seq", 16])], [init("w", w)])
    rng = np.random.default_rng(1)
    np.savez(folder / "a.npz", x=rng.standard_normal((samples_per_length, 4, 16)).astype(np.float32))
    np.savez(folder / "b.npz", x=rng.standard_normal((samples_per_length, 8, 16)).astype(np.float32))
    return model, load_calibration(folder, model)


def test_a_fixed_batch_model_leaves_out_short_batches_at_shape_changes(tmp_path, caplog):
    # 3 samples of length 4, then 3 of length 8. Batches never mix lengths, so each file ends on
    # a short batch of 1; both are left out, said once.
    model, data = _batch2_sequences(tmp_path, 3)
    stats, seen = collect_stats(model, ["y"], data, batch_size=4)
    assert seen == 4 and stats["y"].count == 2 * 4 * 16 + 2 * 8 * 16
    warnings = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert warnings == ["calibration: the model's batch is fixed at 2; 2 sample(s) that do not fill a batch are left out"]


def test_a_fixed_batch_model_that_no_batch_fits_is_an_error(tmp_path):
    # One sample of length 4, one of length 8: no two samples share a batch.
    from onnxslim.errors import UsageError

    model, data = _batch2_sequences(tmp_path, 1)
    with pytest.raises(UsageError, match=r"batch is fixed at 2 and no 2 samples of the same shape could make a batch \(2 sample"):
        collect_stats(model, ["y"], data, batch_size=4)
