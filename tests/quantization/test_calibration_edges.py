"""Tests added by a mutation audit of calibration (collect.py, calibrate.py) and of the insert_qdq
pass and its plan: each pins a behaviour that a hand-made mutant of the source changed without any
other test noticing. Three of them showed bugs the audit found (a met --quant-max-error budget
changed the ranges; TensorRT 'alone' scores read an unobserved tensor as float; failing samples
numbered without the left-out ones), fixed with them."""

from __future__ import annotations

import logging
import threading

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxslim.calibration import ActivationCollector, load_calibration, synthetic
from onnxslim.errors import UsageError
from onnxslim.quantization.calibrate import Rider, collect_stats, merged
from onnxslim.quantization.histogram import TensorStats
from onnxslim.quantization.sensitivity import FidelityProbe
from tests.helpers import init, make_model, op_counts, run_ort, vi
from tests.passes.test_insert_qdq import quantize, resnet_block, sqnr_db
from tests.quantization.test_collect import reference, small_net


def tensor_rows(record) -> dict[str, dict]:
    return {r["tensor"]: r for r in record.details if r["detail"] == "tensor"}


def by_name(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {n.name: n for n in model.graph.node}


def producer_op(model: onnx.ModelProto, tensor: str) -> str | None:
    return next((n.op_type for n in model.graph.node if tensor in n.output), None)


def quantized_tensors(model: onnx.ModelProto) -> set[str]:
    return {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}


def rng_weights(seed: int, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


# --------------------------------------------------------------------------------------------
# collect.py: the activation collector


def test_collector_ignores_feeds_the_model_does_not_take():
    """ActivationCollector.run: feed entries that are no input of the model are dropped, not passed to onnxruntime."""
    model = small_net()
    x = np.random.default_rng(1).standard_normal((3, 32)).astype(np.float32)
    collector = ActivationCollector(model, ["y"], threads=1)
    got = collector.run({"x": x, "attention_mask": np.ones((3, 32), np.int64)})["y"]
    np.testing.assert_allclose(got, reference(model, ["y"], {"x": x})[0], rtol=1e-6, atol=1e-6)


def test_collector_ignores_a_given_weight_of_another_dtype():
    """weights=: an array whose dtype differs from the initializer's (float64 for float32) is not used."""
    model = small_net()
    w1 = onnx.numpy_helper.to_array(model.graph.initializer[0])
    x = np.random.default_rng(2).standard_normal((3, 32)).astype(np.float32)
    got = ActivationCollector(model, ["y"], threads=1, weights={"w1": w1.astype(np.float64) * 3}).run({"x": x})["y"]
    np.testing.assert_allclose(got, reference(model, ["y"], {"x": x})[0], rtol=1e-6, atol=1e-6)


def test_collect_runs_a_fixed_batch_model_at_its_batch():
    """ActivationCollector.collect on a batch-1 model runs one sample at a time, whatever batch size is asked."""
    model = resnet_block(c=8, batch=1)
    data = synthetic(model, 5, seed=0)
    shapes = []
    collector = ActivationCollector(model, ["r0"], threads=1)
    assert collector.fixed_batch == 1
    assert collector.collect(data, lambda name, v: shapes.append(v.shape), batch_size=4) == 5
    assert shapes == [(1, 8, 16, 16)] * 5


# --------------------------------------------------------------------------------------------
# calibrate.py: collect_stats, riders, lanes, merged


def test_histogram_sample_cap_applies_per_sample():
    """sample_cap=100: each sample gives its histogram every 21st of its 256 pixels, 8 channels each
    (104 values), min/max see all (8 channels: onnxruntime pads them to its NCHWc block, left out)."""
    model = resnet_block(c=8, batch="n")
    stats, seen = collect_stats(model, ["r0"], synthetic(model, 12, seed=5), batch_size=4, sample_cap=100)
    s = stats["r0"]  # 8 channels x 16 x 16 = 2048 values per sample
    assert seen == 12 and s.count == 12 * 2048
    assert int(s.counts.sum()) == 12 * 8 * len(range(0, 256, 21))


def test_riders_alone_are_fed_without_observed_tensors():
    """collect_stats with no tensors to observe still runs the calibration for its riders."""
    model = small_net()
    got = []
    rider = Rider(["r"], lambda name, value: got.append(len(value)), samples=6)
    stats, seen = collect_stats(model, [], synthetic(model, 10, seed=2), batch_size=4, riders=[rider])
    assert stats == {} and seen == 10
    assert rider.seen == 6 and got == [4, 2]


class _Batches:
    """A calibration set of given batches."""

    def __init__(self, batches):
        self._batches = batches

    def batches(self, size):
        yield from self._batches


def test_a_batch_computed_before_another_lanes_failure_is_not_observed(monkeypatch):
    """Two lanes: batch 2 finishes its run, then batch 1's run fails: batch 2 is given up, never observed."""
    model = small_net()
    batches = [{"x": np.full((4, 32), float(i), np.float32)} for i in range(4)]
    second_done = threading.Event()
    run = ActivationCollector.run_raw

    def patched(self, feeds):
        which = int(feeds["x"][0, 0])
        if which == 1:
            assert second_done.wait(30), "batch 2 never ran"
            raise RuntimeError("batch 1 failed")
        out = run(self, feeds)
        if which == 2:
            second_done.set()
        return out

    monkeypatch.setattr(ActivationCollector, "run_raw", patched)
    seen = []
    rider = Rider(["r"], lambda name, value: seen.append(float(value.sum())), samples=100)
    with pytest.raises(RuntimeError, match="batch 1 failed"):
        collect_stats(model, ["y"], _Batches(batches), batch_size=4, riders=[rider])
    assert second_done.is_set()
    assert len(seen) == 1  # batch 0 only


def test_merged_pools_every_member_and_skips_empty_ones():
    """merged(): min, max and count of all members' values; an empty member is skipped (the result is the other)."""
    parts = {"a": np.array([-1.0, 2.0]), "b": np.array([-5.0, 0.5]), "c": np.array([7.0, 1.0, 0.0])}
    stats = {}
    for name, values in parts.items():
        stats[name] = TensorStats(2048)
        stats[name].update(values.astype(np.float32))
    pooled = merged(stats, ["a", "b", "c"])
    assert (pooled.minimum, pooled.maximum, pooled.count) == (-5.0, 7.0, 7)
    only = TensorStats(2048)
    only.update(np.array([3.0, -2.0], np.float32))
    assert merged({"e": TensorStats(2048), "o": only}, ["e", "o"]) is only
    assert merged({"e": TensorStats(2048)}, ["e", "missing"]) is None


def _batch2_gather(folder, bad_sample: int, batch: int | str = 2):
    """A Gather+MatMul model with its batch fixed at ``batch`` (2); 3 samples of length 4, then 3 of length 8
    (batches: 0-1, [2] left out, 3-4, [5] left out); token 1000 (out of range) in ``bad_sample``."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["e"], name="embed"), helper.make_node("MatMul", ["e", "w"], ["y"], name="mm")]
    model = make_model(nodes, [vi("ids", [batch, "seq"], TensorProto.INT64)], [vi("y", [batch, "seq", 16])],
                       [init("emb", rng_weights(1, 10, 16)), init("w", rng_weights(2, 16, 16))])
    ids = [rng.integers(0, 10, (3, 4)).astype(np.int64), rng.integers(0, 10, (3, 8)).astype(np.int64)]
    ids[bad_sample // 3][bad_sample % 3, 1] = 1000
    np.savez(folder / "a.npz", ids=ids[0])
    np.savez(folder / "b.npz", ids=ids[1])
    return model, load_calibration(folder, model)


def test_failing_samples_are_numbered_past_short_batches(tmp_path):
    """Dynamic batch, batch size 2: batches are cut where the length changes (0-1, 2, 3-4, 5); a bad
    token in sample 4 is reported in samples 3-4."""
    model, data = _batch2_gather(tmp_path, bad_sample=4, batch="n")
    with pytest.raises(UsageError, match=r"onnxruntime cannot run the model on samples 3-4 "):
        collect_stats(model, ["y"], data, batch_size=2)


def test_failing_samples_are_numbered_past_left_out_ones(tmp_path):
    """The failing batch's sample numbers count the samples left out before it (fixed batch 2, sample 2 left out)."""
    model, data = _batch2_gather(tmp_path, bad_sample=4)
    with pytest.raises(UsageError, match=r"onnxruntime cannot run the model on samples 3-4 "):
        collect_stats(model, ["y"], data, batch_size=2)


# --------------------------------------------------------------------------------------------
# plan.py: placement


def split_model(dynamic: bool) -> onnx.ModelProto:
    """MatMul -> Split (sizes [64, 64]: an Identity of a constant when ``dynamic``) -> two MatMuls."""
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
             helper.make_node("Split", ["h", "s" if dynamic else "sizes"], ["a", "b"], name="split", axis=1),
             helper.make_node("MatMul", ["a", "w2"], ["ya"], name="mm2"),
             helper.make_node("MatMul", ["b", "w3"], ["yb"], name="mm3")]
    if dynamic:
        nodes.insert(1, helper.make_node("Identity", ["sizes"], ["s"], name="sizes_at_run_time"))
    inits = [init("w1", rng_weights(1, 128, 128, scale=1 / 8)), init("sizes", np.array([64, 64], np.int64)),
             init("w2", rng_weights(2, 64, 64, scale=1 / 8)), init("w3", rng_weights(3, 64, 64, scale=1 / 8))]
    return make_model(nodes, [vi("x", [1, 128])], [vi("ya", [1, 64]), vi("yb", [1, 64])], inits)


@pytest.mark.parametrize("target,device", [("ort", "x86"), ("tensorrt", "cuda")])
def test_split_with_run_time_sizes_stays_float(target, device):
    """A Split whose sizes are computed at run time stays float (its outputs get their own Q/DQ); with
    constant sizes it moves int8 values on its input's grid."""
    model = split_model(dynamic=True)
    out, rec = quantize(model, target=target, device=device, samples=16)
    assert rec.counters["int8_layers"] == 3 and "split" not in {r.get("layer") for r in rec.details}
    assert quantized_tensors(out) == {"x", "a", "b"}
    assert sqnr_db(model, out) > 25.0
    const, rec = quantize(split_model(dynamic=False), target=target, device=device, samples=16)
    assert rec.counters["int8_layers"] == 4 and quantized_tensors(const) == {"x", "h", "a", "b"}


def relu_two_readers() -> onnx.ModelProto:
    """conv -> c; c read by a Relu (r -> conv_r) and by conv_c: the Relu is not folded into c's Q."""
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c"], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w1"], ["y1"], name="conv_r"),
             helper.make_node("Conv", ["c", "w2"], ["y2"], name="conv_c")]
    inits = [init("w0", rng_weights(1, 8, 8, 1, 1)), init("w1", rng_weights(2, 8, 8, 1, 1)), init("w2", rng_weights(3, 8, 8, 1, 1))]
    return make_model(nodes, [vi("x", [1, 8, 4, 4])], [vi("y1", [1, 8, 4, 4]), vi("y2", [1, 8, 4, 4])], inits)


def test_override_does_not_reach_past_a_relu_it_is_not_folded_into():
    """--calib-override conv=minmax: c's own Q gets minmax; the Relu's output r (c has two readers, so
    the plan does not look through the Relu) keeps the default method: one override, one group."""
    model = relu_two_readers()
    out, rec = quantize(model, samples=16, method="percentile", percentile=90, overrides=("conv=minmax",))
    rows = tensor_rows(rec)
    assert rows["c"]["method"] == "minmax" and rows["c"]["range"][1] == pytest.approx(rows["c"]["observed_max"])
    assert rows["r"]["method"].startswith("percentile") and rows["r"]["range"][1] < rows["r"]["observed_max"]


def test_an_excluded_relu_is_not_looked_through():
    """--exclude relu1: the plan does not look through it, so conv1's own output c1 gets a Q/DQ pair
    (QLinearConv has no float output) besides r1's; the other ReLUs fold as usual."""
    model = resnet_block()
    out, rec = quantize(model, exclude=("relu1",))
    assert set(tensor_rows(rec)) == {"x", "r0", "p0", "c1", "r1", "c2", "r2", "g", "f"} and rec.counters["qdq_pairs"] == 9
    _, rec = quantize(model)
    assert set(tensor_rows(rec)) == {"x", "r0", "p0", "r1", "c2", "r2", "g", "f"} and rec.counters["qdq_pairs"] == 8
    assert sqnr_db(model, out) > 20.0


def test_clip_with_a_run_time_bound_is_not_looked_through():
    """Conv -> Clip(min computed at run time) -> Conv: the Q after the Clip cannot stand in for it, so the
    conv's own output gets a pair (QLinearConv has no float output) and the Clip stays."""
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], name="conv1"),
             helper.make_node("Identity", ["lo"], ["lo_t"], name="lo_at_run_time"),
             helper.make_node("Clip", ["h", "lo_t"], ["c"], name="clip"),
             helper.make_node("Conv", ["c", "w2"], ["y"], name="conv2")]
    model = make_model(nodes, [vi("x", [1, 8, 4, 4])], [vi("y", [1, 8, 4, 4])],
                       [init("w1", rng_weights(1, 8, 8, 1, 1)), init("lo", np.float32(0.5)),
                        init("w2", rng_weights(2, 8, 8, 1, 1, scale=0.25))])
    out, rec = quantize(model, samples=32)
    assert op_counts(out)["Clip"] == 1 and rec.counters["activations_folded"] == 0
    assert set(tensor_rows(rec)) == {"x", "h", "c"} and rec.counters["qdq_pairs"] == 3
    assert sqnr_db(model, out) > 25.0


def test_a_conv_output_that_is_a_graph_output_gets_no_pair_of_its_own():
    """conv0's output c is a graph output read by a Relu -> conv1: one Q reads c for the folded Relu
    (2 pairs: x and that one); c itself gets no extra pair and stays exactly what the int8 conv gives."""
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c"], name="conv0"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w1"], ["y"], name="conv1")]
    model = make_model(nodes, [vi("x", [1, 8, 4, 4])], [vi("c", [1, 8, 4, 4]), vi("y", [1, 8, 4, 4])],
                       [init("w0", rng_weights(1, 8, 8, 1, 1)), init("w1", rng_weights(2, 8, 8, 1, 1))])
    out, rec = quantize(model, samples=16)
    assert rec.counters["qdq_pairs"] == 2 and quantized_tensors(out) == {"x", "c"}
    assert producer_op(out, "c") == "Conv"
    assert sqnr_db(model, out) > 25.0


def test_a_conv_output_read_past_a_relu_by_a_float_op_is_not_quantized_when_it_is_a_graph_output():
    """conv0 -> c (a graph output) -> Relu -> Sigmoid -> s: no int8 reader wants r, and c is an output:
    only x is quantized, and s is the float function of the int8 conv's exact output."""
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c"], name="conv0"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Sigmoid", ["r"], ["s"], name="sig")]
    model = make_model(nodes, [vi("x", [1, 8, 4, 4])], [vi("c", [1, 8, 4, 4]), vi("s", [1, 8, 4, 4])],
                       [init("w0", rng_weights(1, 8, 8, 1, 1))])
    out, rec = quantize(model, samples=16)
    assert quantized_tensors(out) == {"x"} and op_counts(out)["Relu"] == 1
    feeds = next(synthetic(model, 1, seed=9).batches(1))
    got = run_ort(out, feeds)
    np.testing.assert_allclose(got["s"], 1 / (1 + np.exp(-np.maximum(got["c"], 0))), rtol=1e-5, atol=1e-6)


def test_a_float_reader_of_a_quantized_graph_input_reads_it_exactly():
    """x read by an int8 MatMul and by a float Neg: x has no int8 producer, so only the MatMul reads the DQ copy."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"), helper.make_node("Neg", ["x"], ["n"], name="neg")]
    model = make_model(nodes, [vi("x", [1, 16])], [vi("y", [1, 16]), vi("n", [1, 16])], [init("w", rng_weights(1, 16, 16))])
    out, _ = quantize(model, samples=16)
    assert by_name(out)["neg"].input[0] == "x"
    feeds = next(synthetic(model, 1, seed=9).batches(1))
    np.testing.assert_array_equal(run_ort(out, feeds)["n"], -feeds["x"])


def test_opset_13_gets_per_channel_weights_without_conversion():
    """An opset-13 model: per-channel weight scales (16 for the convs, 10 for the Gemm), opset_raised_to = 0."""
    out, rec = quantize(resnet_block(opset=13), samples=8)
    assert rec.counters["opset_raised_to"] == 0
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in out.graph.initializer}
    shapes = sorted(inits[n.input[1]].shape for n in out.graph.node
                    if n.op_type == "DequantizeLinear" and inits.get(n.input[0], np.zeros(0)).dtype == np.int8)
    assert shapes == [(10,), (16,), (16,), (16,)]


def test_tensorrt_counts_grouped_conv_transpose_output_channels():
    """TensorRT: ConvTranspose group=2, weights (16, 8, 2, 2): 16 output channels (8 x group), so it is int8."""
    w = rng_weights(1, 16, 8, 2, 2, scale=0.3)
    nodes = [helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], name="up", group=2, strides=[2, 2])]
    model = make_model(nodes, [vi("x", [1, 16, 4, 4])], [vi("y", [1, 16, 8, 8])], [init("w", w), init("b", rng_weights(2, 16))])
    out, rec = quantize(model, target="tensorrt", device="cuda", samples=16)
    assert rec.counters["int8_layers"] == 1 and rec.counters["weights_quantized"] == 1
    assert sqnr_db(model, out) > 30.0


def trt_residual(second_reader: bool) -> onnx.ModelProto:
    """convA -> c; Add(c, x) -> convB; with ``second_reader`` c is also read by a Sigmoid (a graph output)."""
    nodes = [helper.make_node("Conv", ["x", "wa"], ["c"], name="convA", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c", "x"], ["a"], name="add"),
             helper.make_node("Conv", ["a", "wb"], ["y"], name="convB", pads=[1, 1, 1, 1])]
    outputs = [vi("y", [1, 16, 8, 8])]
    if second_reader:
        nodes.append(helper.make_node("Sigmoid", ["c"], ["s"], name="sig"))
        outputs.append(vi("s", [1, 16, 8, 8]))
    inits = [init("wa", rng_weights(1, 16, 16, 3, 3, scale=1 / 12)), init("wb", rng_weights(2, 16, 16, 3, 3, scale=1 / 12))]
    return make_model(nodes, [vi("x", [1, 16, 8, 8])], outputs, inits)


def test_tensorrt_residual_add_quantizes_a_conv_output_with_another_reader():
    """TensorRT fuses a conv into a residual Add only when the Add is its output's one reader: with a
    second reader both Add inputs get Q/DQ; with one, only the skip input."""
    out, _ = quantize(trt_residual(second_reader=True), target="tensorrt", device="cuda", samples=16)
    assert quantized_tensors(out) == {"x", "c", "a"}
    out, _ = quantize(trt_residual(second_reader=False), target="tensorrt", device="cuda", samples=16)
    assert quantized_tensors(out) == {"x", "a"}


def test_tensorrt_residual_add_after_an_excluded_conv_is_not_a_skip():
    """TensorRT, --exclude conv2: the residual Add has no conv to fuse into and nothing int8 reads its
    output, so it stays float: int8 layers are conv1 and the MaxPool only."""
    out, rec = quantize(resnet_block(), target="tensorrt", device="cuda", exclude=("conv2",))
    assert rec.counters["int8_layers"] == 2 and quantized_tensors(out) == {"p0", "r0"}


def test_tensorrt_warns_about_an_excluded_op_between_int8_layers(caplog):
    """TensorRT: an excluded MaxPool whose input and output stay quantized for int8 neighbours may still
    be fused: a warning names it. onnxruntime rules give it per-axis DQ inputs instead: no warning."""
    nodes = [helper.make_node("Conv", ["x", "wa"], ["c"], name="convA"),
             helper.make_node("MaxPool", ["c"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p", "wb"], ["y1"], name="convB"),
             helper.make_node("Conv", ["c", "wc"], ["y2"], name="convC")]
    inits = [init(n, rng_weights(i, 16, 16, 1, 1)) for i, n in enumerate(("wa", "wb", "wc"))]
    model = make_model(nodes, [vi("x", [1, 16, 8, 8])], [vi("y1", [1, 16, 4, 4]), vi("y2", [1, 16, 8, 8])], inits)
    message = "--exclude pool (MaxPool): its inputs and output stay quantized"
    with caplog.at_level(logging.WARNING, logger="onnxslim"):
        quantize(model, target="tensorrt", device="cuda", samples=8, exclude=("pool",))
    assert sum(message in r.getMessage() for r in caplog.records) == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="onnxslim"):
        quantize(model, samples=8, exclude=("pool",))
    assert not any(message in r.getMessage() for r in caplog.records)


def test_report_marks_only_shared_scale_groups_shared():
    """Report rows: r0 and p0 (MaxPool), g and f (Flatten) share groups, shared=True; r1 and r2 have their own."""
    _, rec = quantize(resnet_block())
    rows = tensor_rows(rec)
    assert rows["r0"]["shared"] and rows["p0"]["shared"] and rows["r0"]["group"] == rows["p0"]["group"]
    assert rows["f"]["shared"] and rows["g"]["group"] == rows["f"]["group"]
    assert not rows["r1"]["shared"] and not rows["r2"]["shared"]


# --------------------------------------------------------------------------------------------
# insert_qdq.py: --max-error with --exclude


def test_budget_search_and_result_keep_user_exclusions():
    """--exclude mm3 with --quant-max-error: mm3 is float in every model the search measures (mm1's
    'alone' row is the model with only mm1 int8; the budget row's result is the model delivered) and
    in the result after the fallback."""
    from tests.passes.test_insert_qdq_options import fragile_model

    model = fragile_model()
    held = list(synthetic(model, 16, seed=7).samples())
    out, rec = quantize(model, method="minmax", max_error="sqnr=30", holdout=held, exclude=("mm3",))
    assert [r["layer"] for r in rec.details if r["detail"] == "fallback"] == ["fragile"]
    mats = {n.name: n.input[1] for n in out.graph.node if n.op_type == "MatMul"}
    assert mats["mm3"] == "w3" and mats["fragile"] == "w2" and mats["mm1"] != "w1"
    probe = FidelityProbe(model, held)
    alone = next(r for r in rec.details if r["detail"] == "sensitivity" and r["layer"] == "mm1")
    only_mm1, _ = quantize(model, method="minmax", exclude=("fragile", "mm3"))
    assert alone["alone_sqnr_db"] == round(probe.score(only_mm1).sqnr_db, 2)
    budget = next(r for r in rec.details if r["detail"] == "budget")
    assert budget["met"] and budget["sqnr_after_db"] == pytest.approx(probe.score(out).sqnr_db, abs=1e-9)  # the model delivered


@pytest.mark.parametrize("method", ["percentile", "mse"])
def test_a_met_budget_gives_the_model_quantized_without_one(method):
    """A --quant-max-error budget the fully quantized model meets changes nothing: same model bytes."""
    model = resnet_block()
    held = list(synthetic(model, 8, seed=7).samples())
    plain, _ = quantize(model, method=method)
    budgeted, rec = quantize(model, method=method, max_error="sqnr=1", holdout=held)
    assert rec.counters["fallback_layers"] == 0
    assert tensor_rows(rec)["r0"]["range"] == tensor_rows(quantize(model, method=method)[1])["r0"]["range"]
    assert budgeted.SerializeToString() == plain.SerializeToString()


def test_tensorrt_alone_score_is_that_of_the_layer_quantized_alone():
    """TensorRT, budget not met: convB's alone SQNR equals the model quantized with convA excluded."""
    model = trt_residual(second_reader=False)
    held = list(synthetic(model, 8, seed=7).samples())
    _, rec = quantize(model, target="tensorrt", device="cuda", max_error="sqnr=200", holdout=held)
    alone = next(r for r in rec.details if r["detail"] == "sensitivity" and r["layer"] == "convB")
    only_b, _ = quantize(model, target="tensorrt", device="cuda", exclude=("convA",))
    assert alone["alone_sqnr_db"] == round(FidelityProbe(model, held).score(only_b).sqnr_db, 2)


def test_an_initializer_whose_bytes_live_in_a_file_is_left_to_onnxruntime():
    """A weight whose data is external (not loaded) is kept as it is, not decoded from its empty
    raw bytes; a loaded one of the same size is handed over as an array of its values."""
    from onnxslim.calibration.collect import _weight_array

    values = np.arange(1024, dtype=np.float32).reshape(32, 32)
    loaded = onnx.numpy_helper.from_array(values, "w")
    assert np.array_equal(_weight_array(loaded, {}), values)
    external = onnx.numpy_helper.from_array(values, "w")
    onnx.external_data_helper.set_external_data(external, location="w.data", offset=0, length=values.nbytes)
    external.ClearField("raw_data")
    external.data_location = onnx.TensorProto.EXTERNAL
    assert _weight_array(external, {}) is None


@pytest.mark.parametrize("blocked_ok", [False, True])
def test_riders_read_nchw_unless_they_take_blocked_arrays(blocked_ok):
    """A rider sees the model's own layout; one that takes blocked arrays gets them with their layout."""
    from onnxslim.calibration.collect import nchwc_block

    model = resnet_block(c=8, batch="n")
    data = synthetic(model, 4, seed=3)
    want = ActivationCollector(model, ["r1"], threads=1).run(next(iter(data.batches(4))))["r1"]
    got = []

    def observe(name, value, layout=None):
        got.append(value if layout is None else layout.to_nchw(value))
        if blocked_ok and nchwc_block():
            assert layout is not None and value.shape[1] == -(-8 // nchwc_block()) * nchwc_block()

    rider = Rider(["r1"], observe, samples=4, blocked_ok=blocked_ok)
    collect_stats(model, ["r0"], data, batch_size=4, riders=[rider])
    assert len(got) == 1
    np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-5)
