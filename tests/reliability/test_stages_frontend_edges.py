"""Tests written to kill mutants that survived the suite (torch frontend, optimize stages, HTML
report and charts, progress bars, usable_cores, SVD statistics collection): each pins one
behaviour that a small source change broke silently.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxslim.errors import UsageError
from onnxslim.frontends import torch as frontend
from tests.helpers import make_model, vi


def _torch():
    return pytest.importorskip("torch")


# --------------------------------------------------------------------------------------------
# frontends/torch.py: _check, the comparison of onnxruntime's outputs with torch's


def _identity_file(tmp_path, shape, dtype=TensorProto.FLOAT, outputs=1):
    """An ONNX file whose outputs are copies of its one input x."""
    nodes = [helper.make_node("Identity", ["x"], [f"y{i}"]) for i in range(outputs)]
    model = make_model(nodes, [vi("x", shape, dtype)], [vi(f"y{i}", shape, dtype) for i in range(outputs)])
    path = tmp_path / "m.onnx"
    onnx.save_model(model, path)
    return path


def test_check_returns_the_largest_error_over_outputs(tmp_path):
    """_check returns max |ORT - torch| over every output (here 0.25 and 0.5: 0.5), not 0."""
    path = _identity_file(tmp_path, [1, 2], outputs=2)
    x = np.zeros((1, 2), np.float32)
    worst = frontend._check(path, 18, [x], [np.array([[0.25, 0.0]], np.float32), np.array([[0.0, -0.5]], np.float32)], 1.0)
    assert worst == 0.5


def test_check_tolerance_is_absolute_below_one(tmp_path):
    """The bound is tolerance * max(1, max|torch|): outputs near 0.01 still get an absolute 1e-4."""
    path = _identity_file(tmp_path, [1, 2])
    x = np.array([[0.01, 0.02]], np.float32)
    want = (x.astype(np.float64) + 5e-5).astype(np.float32)  # error ~5e-5, relative 5e-3
    assert frontend._check(path, 18, [x], [want], 1e-4) == pytest.approx(5e-5, rel=0.05)
    with pytest.raises(frontend.ExportError, match=r"^output 0: max \|ORT - torch\| 5e-05 exceeds 1e-05$"):
        frontend._check(path, 18, [x], [want], 1e-5)


def test_check_a_nan_output_fails(tmp_path):
    """NaN from onnxruntime where torch gives a number is an error (a NaN error is not <= any bound)."""
    path = _identity_file(tmp_path, [1, 2])
    x = np.array([[np.nan, 1.0]], np.float32)
    with pytest.raises(frontend.ExportError, match=r"^output 0: max \|ORT - torch\| nan exceeds 1$"):
        frontend._check(path, 18, [x], [np.array([[0.0, 1.0]], np.float32)], 1.0)


def test_check_a_broadcastable_shape_mismatch_fails(tmp_path):
    """An output of shape [1, 3] where torch returned [3, 1] fails (numpy would broadcast them to 0 error)."""
    path = _identity_file(tmp_path, [1, 3])
    with pytest.raises(frontend.ExportError, match=r"^output 0: shape \[1, 3\] differs from torch's \[3, 1\]$"):
        frontend._check(path, 18, [np.ones((1, 3), np.float32)], [np.ones((3, 1), np.float32)], 1.0)


def test_check_integer_outputs_must_be_equal(tmp_path):
    """Integer outputs are compared exactly: 3 vs 4 in an int64 output fails."""
    path = _identity_file(tmp_path, [2], TensorProto.INT64)
    x = np.array([1, 3], np.int64)
    assert frontend._check(path, 18, [x], [x.copy()], 1.0) == 0.0
    with pytest.raises(frontend.ExportError, match=r"^output 0: integer outputs differ from torch's$"):
        frontend._check(path, 18, [x], [np.array([1, 4], np.int64)], 1.0)


def test_check_output_count_must_match(tmp_path):
    """One ONNX output where torch returned two is an error naming both counts."""
    path = _identity_file(tmp_path, [2])
    x = np.ones(2, np.float32)
    with pytest.raises(frontend.ExportError, match=r"^the model has 1 output\(s\), torch returned 2$"):
        frontend._check(path, 18, [x], [x, x], 1.0)


def test_check_a_newer_opset_than_asked_fails(tmp_path):
    """A file that declares opset 18 when 17 was asked for (what dynamo does) is refused."""
    path = _identity_file(tmp_path, [2])
    with pytest.raises(frontend.ExportError, match=r"^asked for opset 17, the file declares opset 18$"):
        frontend._check(path, 17, [np.ones(2, np.float32)], [np.ones(2, np.float32)], 1.0)


# --------------------------------------------------------------------------------------------
# frontends/torch.py: export


def test_export_refuses_a_model_that_dropped_an_unused_input(tmp_path):
    """forward(x, y) that ignores y: the legacy exporter drops y, and export says so instead of feeding x only."""
    torch = _torch()

    class Unused(torch.nn.Module):
        def forward(self, x, y):
            return x * 2

    with pytest.raises(frontend.ExportError, match=r"legacy \(opset 17\): the model has 1 input\(s\) for 2 example input\(s\)$"):
        frontend.export(Unused(), (torch.ones(2, 3), torch.ones(2, 3)), tmp_path / "m.onnx", exporter="legacy")
    assert list(tmp_path.iterdir()) == []


def test_export_an_empty_output_and_a_dict_of_outputs(tmp_path):
    """A zero-size output is checked by shape only; a dict output counts every value (2 outputs each)."""
    torch = _torch()

    class Empty(torch.nn.Module):
        def forward(self, x):
            return x[:, :0], x + 1

    class Named(torch.nn.Module):
        def forward(self, x):
            return {"a": x * 2, "b": x + 1}

    for module in (Empty(), Named()):
        result = frontend.export(module, torch.ones(2, 3), tmp_path / "m.onnx", exporter="legacy")
        assert (result.outputs, result.max_abs_error) == (2, 0.0)
        assert len(onnx.load(tmp_path / "m.onnx").graph.output) == 2


def test_export_with_zero_tolerance(tmp_path):
    """tolerance=0 is allowed (a number >= 0) and passes an exact export."""
    torch = _torch()

    class AddOne(torch.nn.Module):
        def forward(self, x):
            return x + 1

    result = frontend.export(AddOne(), torch.ones(2, 3), tmp_path / "m.onnx", exporter="legacy", tolerance=0)
    assert (result.exporter, result.max_abs_error) == ("legacy", 0.0)


@pytest.mark.parametrize("dtype", ["float8_e4m3fn", "complex64"])
def test_export_refuses_inputs_numpy_cannot_feed(tmp_path, dtype):
    """float8 and complex example inputs are a one-line UsageError naming the dtype."""
    torch = _torch()
    x = torch.ones(2, 3).to(getattr(torch, dtype))
    with pytest.raises(UsageError, match=rf"^example input 0 has dtype torch.{dtype}, which onnxruntime cannot be fed from NumPy$"):
        frontend.export(torch.nn.Identity(), x, tmp_path / "m.onnx", exporter="legacy")


@pytest.mark.parametrize("kwargs, message", [
    ({"input_names": [""]}, r"^input_names must be a list of non-empty strings, not \[''\]$"),
    ({"input_names": ["x"], "dynamic_axes": {"x": {-1: "b"}}}, r"^dynamic_axes\['x'\]: axis -1 is out of range for a 2-d input$"),
    ({"input_names": ["x"], "dynamic_axes": {"x": {True: "b"}}}, r"^dynamic_axes\['x'\] must map axis numbers to names"),
])
def test_export_refuses_names_and_axes_torch_would_misread(tmp_path, kwargs, message):
    """An empty name, a negative axis and a bool axis are UsageErrors, before any export."""
    torch = _torch()
    with pytest.raises(UsageError, match=message):
        frontend.export(torch.nn.Identity(), torch.ones(2, 3), tmp_path / "m.onnx", exporter="legacy", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_export_external_data_follows_the_parameter_size(tmp_path, monkeypatch):
    """external_data defaults to False for a small module and True once its bytes pass the limit."""
    torch = _torch()
    seen = []
    real = frontend._run_exporter

    def spy(*args):
        seen.append(args[-1])
        return real(*args)

    monkeypatch.setattr(frontend, "_run_exporter", spy)
    module = torch.nn.Linear(4, 3)  # 15 parameters, 60 bytes
    frontend.export(module, torch.ones(2, 4), tmp_path / "m.onnx", exporter="legacy")
    monkeypatch.setattr(frontend, "_EXTERNAL_DATA_BYTES", 59)
    frontend.export(module, torch.ones(2, 4), tmp_path / "m.onnx", exporter="legacy")
    assert seen == [False, True]


def test_each_attempt_traces_fresh_copies_of_the_inputs(tmp_path, monkeypatch):
    """An attempt that ran an in-place forward must not change what the next attempt traces with:
    the fallback export of a value-dependent forward still matches torch."""
    torch = _torch()

    class Doubling(torch.nn.Module):
        def forward(self, x):
            x.mul_(2)
            return x + 1 if float(x.sum()) > 20 else x - 1  # ones: 2s, sum 12 -> x - 1

    real = frontend._run_exporter

    def dynamo_runs_forward_then_fails(torch_, module, inputs, file, exporter, *args):
        if exporter == "dynamo":
            module(*inputs)
            raise RuntimeError("dynamo broke")
        return real(torch_, module, inputs, file, exporter, *args)

    monkeypatch.setattr(frontend, "_run_exporter", dynamo_runs_forward_then_fails)
    result = frontend.export(Doubling(), torch.ones(2, 3), tmp_path / "m.onnx")
    assert (result.exporter, result.max_abs_error) == ("legacy", 0.0)


# --------------------------------------------------------------------------------------------
# stages/prune.py


def test_prune_text_that_is_neither_a_ratio_nor_a_json_file(tmp_path):
    """'--prune half' is 'expects a fraction or a JSON file'; a missing 'x.json' is 'no such file'."""
    from onnxslim.stages.prune import parse_prune

    with pytest.raises(UsageError, match=r"^--prune expects a fraction in \[0, 1\) or a JSON file, got 'half'$"):
        parse_prune("half")
    missing = tmp_path / "ratios.json"
    with pytest.raises(UsageError, match=rf"^--prune {missing}: no such file$"):
        parse_prune(str(missing))


def test_prune_json_must_be_a_non_empty_object_of_numbers(tmp_path):
    """{} and a boolean ratio are UsageErrors (False would otherwise read as 0.0: prune nothing)."""
    from onnxslim.stages.prune import parse_prune

    table = tmp_path / "ratios.json"
    table.write_text("{}")
    with pytest.raises(UsageError, match=r"expected a JSON object of name -> ratio$"):
        parse_prune(str(table))
    table.write_text('{"*": false}')
    with pytest.raises(UsageError, match=r"ratio of '\*' is not a number$"):
        parse_prune(str(table))
    table.write_text('{"*": 0.5, "g1": 0}')
    assert parse_prune(str(table)) == (None, {"*": 0.5, "g1": 0.0})


# --------------------------------------------------------------------------------------------
# reporting/html.py


@pytest.fixture
def mpl():
    return pytest.importorskip("matplotlib")


def _render(report):
    from onnxslim.reporting.html import render

    return render({"schema": "onnxslim.report/1", "pipeline": "p", "stats": {}, "passes": [], **report})


def test_html_tables_stop_at_500_rows(mpl):
    """A table of 600 rows shows exactly 500 and one 'more rows in report.json' row."""
    from onnxslim.reporting.html import MAX_TABLE_ROWS

    text = _render({"notes": [{"pass": "p", "where": f"node_{i:04d}", "reason": "r"} for i in range(600)]})
    assert MAX_TABLE_ROWS == 500
    assert text.count("<td>node_") == 500 and "node_0499" in text and "node_0500" not in text
    assert text.count("more rows in report.json") == 1


def test_html_verification_table_numbers_and_failures(mpl):
    """Floats show 6 significant digits; a failed output says NO and its problem; a failed run is class 'bad'."""
    outputs = [{"name": "y", "shape": [1, 4], "max_abs": 0.123456789, "max_rel": 2.5e-07, "tolerance": 1e-05,
                "ok": False, "problem": "max abs above tolerance"}]
    text = _render({"verification": {"status": "failed", "mode": "exact", "samples": 2, "outputs": outputs}})
    assert '<span class="bad">failed</span>' in text
    assert '<td class="n">0.123457</td><td class="n">2.5e-07</td><td class="n">1e-05</td><td>NO max abs above tolerance</td>' in text


def test_html_file_sizes_include_external_data(mpl):
    """Input/output sizes are total_bytes (model file + .data) where recorded, in the header and the summary."""
    stats = {"nodes": 2, "parameters": 10, "macs": 10, "constant_bytes": 40}
    text = _render({"stats": {"before": stats, "after": stats},
                    "input": {"path": "m.onnx", "bytes": 1000, "total_bytes": 5_000_000},
                    "output": {"path": "o.onnx", "bytes": 1000, "total_bytes": 2_500_000}})
    assert "<tr><td>file bytes</td><td class=\"n\">4.77 MiB</td><td class=\"n\">2.38 MiB</td><td class=\"n\">-50.0%</td></tr>" in text
    assert text.count("4.77 MiB") == 2 and text.count("2.38 MiB") == 2  # header table and summary
    assert "1000 B" not in text


def test_html_fail_if_rows_say_which_condition_holds(mpl):
    """A --fail-if condition that holds reads 'HOLDS (exit 1)', one that does not reads 'no'."""
    text = _render({"fail_if": [{"condition": "macs>1", "holds": True, "value": 5},
                                {"condition": "nodes>9", "holds": False, "value": 2}]})
    assert "<tr><td>macs&gt;1</td><td>HOLDS (exit 1)</td><td>5</td></tr>" in text
    assert "<tr><td>nodes&gt;9</td><td>no</td><td>2</td></tr>" in text


def test_html_passes_table_lists_slow_passes_that_changed_nothing(mpl):
    """A pass that took 0.2 s without changing the graph is listed; one of 0.01 s is not."""
    passes = [{"name": "slow_pass", "round": 1, "changed": False, "seconds": 0.2, "nodes_before": 3, "nodes_after": 3},
              {"name": "quick_pass", "round": 1, "changed": False, "seconds": 0.01, "nodes_before": 3, "nodes_after": 3}]
    text = _render({"passes": passes})
    assert "Passes that changed the graph or took time (1)" in text
    assert "<td>slow_pass</td>" in text and "quick_pass" not in text


def test_html_detail_tables_are_split_by_kind(mpl):
    """insert_qdq detail rows of two kinds give two tables, each with its own count."""
    rows = [{"detail": "tensor", "tensor": "a", "method": "mse"}, {"detail": "tensor", "tensor": "b", "method": "mse"},
            {"detail": "layer", "layer": "conv", "sqnr": 30.0}]
    text = _render({"passes": [{"name": "insert_qdq", "round": 1, "changed": True, "seconds": 0.0, "nodes_before": 1,
                                "nodes_after": 2, "details": rows}]})
    assert "Quantization: tensor (2 rows)" in text and "Quantization: layer (1 rows)" in text


def test_write_html_names_the_source_of_a_malformed_report(mpl, tmp_path):
    """A field of the wrong kind in a loaded report.json is a UsageError naming the file, and no page is written."""
    from onnxslim.reporting.html import write_html

    report = {"schema": "onnxslim.report/1", "stats": {"before": {"nodes": "3"}, "after": {"nodes": 2}}}
    with pytest.raises(UsageError, match=r"^r.json: malformed report: (KeyError|TypeError|field)"):
        write_html(report, tmp_path / "r.html", source="r.json")
    report = {"schema": "onnxslim.report/1", "verification": {"status": "passed", "fidelity": [{"name": "y"}]}}
    with pytest.raises(UsageError, match=r"^r.json: malformed report: field 'cosine' is missing$"):
        write_html(report, tmp_path / "r.html", source="r.json")
    report = {"schema": "onnxslim.report/1", "input": {"path": 5}}
    with pytest.raises(UsageError, match=r"^r.json: malformed report: TypeError: "):
        write_html(report, tmp_path / "r.html", source="r.json")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# reporting/charts.py


@pytest.fixture
def plotted(mpl, monkeypatch):
    """Records the values every bar chart draws: {"barh": [(positions, widths), ...], "bar": [...]}."""
    from matplotlib.axes import Axes

    seen = {"barh": [], "bar": []}
    for name in ("barh", "bar"):
        real = getattr(Axes, name)

        def spy(self, *args, _real=real, _name=name, **kwargs):
            if len(args) >= 2:  # a chart's call (barh itself calls bar with keywords only)
                seen[_name].append((list(args[0]), [float(v) for v in args[1]]))
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(Axes, name, spy)
    return seen


def test_ops_chart_shows_the_40_most_frequent_ops(mpl):
    """Of 45 ops, the 40 with the most nodes are drawn (A06..A45), the 5 rarest left out; only 'after' is enough."""
    from onnxslim.reporting.charts import ops_chart

    ops = {f"A{i:02d}": i for i in range(1, 46)}
    svg = ops_chart({"stats": {"before": {"ops": ops}, "after": {"ops": {}}}})
    assert ">A45<" in svg and ">A06<" in svg and ">A05<" not in svg and ">A01<" not in svg
    assert ops_chart({"stats": {"after": {"ops": {"Relu": 1}}}}) is not None


def test_pass_time_chart_shows_the_40_slowest_passes_and_no_idle_one(mpl):
    """Of 45 timed passes the 40 slowest are drawn; a pass of 0 s is not drawn at all."""
    from onnxslim.reporting.charts import pass_time_chart

    totals = [{"name": f"P{i:02d}", "seconds": float(i), "runs": 1, "changed": False} for i in range(1, 46)]
    svg = pass_time_chart({"pass_totals": totals})
    assert ">P45<" in svg and ">P06<" in svg and ">P05<" not in svg
    svg = pass_time_chart({"pass_totals": [{"name": "idle", "seconds": 0.0, "runs": 1, "changed": False},
                                           {"name": "busy", "seconds": 0.5, "runs": 2, "changed": True}]})
    assert ">busy<" in svg and ">idle<" not in svg


def test_quant_ranges_chart_with_a_constant_tensor(plotted):
    """A tensor whose observed min equals its max keeps 'all' of its range (1.0), no division by zero."""
    from onnxslim.reporting.charts import quant_ranges_chart

    rows = [{"detail": "tensor", "tensor": "c", "method": "minmax", "range": [0.0, 2.0], "observed_min": 1.0, "observed_max": 1.0},
            {"detail": "tensor", "tensor": "t", "method": "mse", "range": [-1.0, 1.0], "observed_min": -2.0, "observed_max": 2.0}]
    assert quant_ranges_chart({"passes": [{"name": "insert_qdq", "details": rows}]}) is not None
    assert plotted["barh"] == [([0, 1], [0.5, 1.0])]  # drawn bottom-up: t, then c


def test_svd_chart_prefers_the_held_out_error(plotted):
    """The error panel draws holdout_error where measured, calib_error otherwise."""
    from onnxslim.reporting.charts import svd_chart

    rows = [{"layer": "a", "energy_kept": 0.9, "rank": 4, "full_rank": 8, "factorized": True, "holdout_error": 0.3, "calib_error": 0.1},
            {"layer": "b", "energy_kept": 0.8, "rank": 4, "full_rank": 8, "factorized": True, "calib_error": 0.2}]
    assert svd_chart({"passes": [{"name": "factorize_svd", "details": rows}]}) is not None
    energy, error = plotted["barh"]
    assert energy[1] == [0.8, 0.9] and error[1] == [0.2, 0.3]  # drawn bottom-up: b, then a


def test_pruning_chart_draws_the_fraction_removed(plotted):
    """A group pruned 8 -> 6 channels is drawn at 0.25 (fraction removed), with the label 8→6."""
    from onnxslim.reporting.charts import pruning_chart

    rows = [{"group": "g", "channels_before": 8, "channels_after": 6, "status": "pruned"}]
    svg = pruning_chart({"passes": [{"name": "prune_channels", "details": rows}]})
    assert plotted["barh"] == [([0], [0.25])] and ">8→6<" in svg


def test_fidelity_chart_draws_the_worst_output(plotted):
    """Per stage, the lowest cosine and the lowest SQNR over its outputs are drawn."""
    from onnxslim.reporting.charts import fidelity_chart

    fidelity = [{"name": "a", "cosine": 0.999, "sqnr_db": 30.0}, {"name": "b", "cosine": 0.9, "sqnr_db": 10.0}]
    svg = fidelity_chart({"stages": [{"name": "svd", "fidelity": fidelity}]})
    assert plotted["bar"] == [([0], [0.9]), ([0], [10.0])]
    assert ">0.9000<" in svg and ">10.0<" in svg


def test_quant_sensitivity_chart_shows_the_40_most_sensitive_layers(mpl):
    """Rows are ranked (1 = most sensitive): of 45, ranks 1..40 are drawn."""
    from onnxslim.reporting.charts import quant_sensitivity_chart

    rows = [{"detail": "sensitivity", "layer": f"L{r:02d}", "rank": r, "alone_sqnr_db": 10.0 + r} for r in range(1, 46)]
    svg = quant_sensitivity_chart({"passes": [{"name": "insert_qdq", "details": rows}]})
    assert ">L01<" in svg and ">L40<" in svg and ">L41<" not in svg


def test_chart_references_point_inside_the_chart(mpl):
    """Every url(#id) in a chart names an id of that same chart (ids are prefixed per chart)."""
    import re

    from onnxslim.reporting.charts import pruning_chart

    rows = [{"group": "g", "channels_before": 8, "channels_after": 6, "status": "pruned"}]
    svg = pruning_chart({"passes": [{"name": "prune_channels", "details": rows}]})
    ids = set(re.findall(r'\bid="([^"]+)"', svg))
    refs = re.findall(r"url\(#([^)]+)\)", svg)
    assert refs and all(r.startswith("pruning-") for r in refs) and set(refs) <= ids


def test_chart_labels_keep_the_end_of_long_names(mpl):
    """A long layer name is shortened from the front: '…' + its last 37 characters."""
    from onnxslim.reporting.charts import _short

    name = "encoder.layers.11.attention.output.dense.MatMul"
    assert _short(name) == "…" + name[-37:] and len(_short(name)) == 38
    assert _short("short") == "short"


def test_stages_chart_without_stage_records_compares_input_and_output(plotted):
    """With only before/after statistics, the stage chart draws two bars per panel."""
    from onnxslim.reporting.charts import stages_chart

    before = {"macs": 100, "parameters": 10, "constant_bytes": 40}
    after = {"macs": 50, "parameters": 5, "constant_bytes": 20}
    assert stages_chart({"stats": {"before": before, "after": after}}) is not None
    assert plotted["bar"] == [([0, 1], [100.0, 50.0]), ([0, 1], [10.0, 5.0]), ([0, 1], [40.0, 20.0])]


# --------------------------------------------------------------------------------------------
# progress.py


class _Terminal:
    """A stderr stand-in that says it is a terminal."""

    def __init__(self):
        self.parts: list[str] = []

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> None:
        self.parts.append(text)

    def flush(self) -> None:
        pass

    @property
    def text(self) -> str:
        return "".join(self.parts)


def test_progress_bar_is_never_wider_than_24_when_done_passes_total():
    """6 of 4 done: the bar is 24 '#' and no '-', and the counter says 6/4."""
    from onnxslim.progress import progress

    stream = _Terminal()
    with progress("x", total=4, stream=stream) as bar:
        bar.update(6)
    last = stream.parts[-1]
    assert "[" + "#" * 24 + "] 6/4" in last


def test_progress_disabled_false_and_nested_blocks():
    """progress_disabled(False) turns bars back on inside a disabled block, and leaving it restores 'disabled'."""
    from onnxslim.progress import progress, progress_disabled

    seen = []
    with progress_disabled():
        with progress_disabled(False):
            stream = _Terminal()
            with progress("on", total=1, stream=stream) as bar:
                bar.update()
            seen.append(bool(stream.text))
        stream = _Terminal()
        with progress("off again", total=1, stream=stream) as bar:
            bar.update()
        seen.append(bool(stream.text))
    assert seen == [True, False]


def test_progress_enabled_argument_overrides_the_context():
    """enabled=False is silent on a terminal; enabled=True draws even inside progress_disabled()."""
    from onnxslim.progress import progress, progress_disabled

    stream = _Terminal()
    with progress("x", total=1, stream=stream, enabled=False) as bar:
        bar.update()
    assert stream.text == ""
    with progress_disabled():
        with progress("x", total=1, stream=stream, enabled=True) as bar:
            bar.update()
    assert stream.text.endswith("\n") and "1/1" in stream.text


def test_progress_on_a_closed_stream_is_silent():
    """A closed stderr (isatty raises ValueError) means no bar, not a crash."""
    import io

    from onnxslim.progress import progress

    stream = io.StringIO()
    stream.close()
    with progress("x", total=2, stream=stream) as bar:
        bar.update(2)
    assert bar.enabled is False and bar.done == 2


def test_track_over_an_empty_list_on_a_terminal():
    """track([]) has total 0: it yields nothing and finishes with a counter line, no division by zero."""
    from onnxslim.progress import track

    stream = _Terminal()
    assert list(track([], "verifying", unit="samples", stream=stream)) == []
    assert stream.text.startswith("\rverifying 0 samples ") and stream.text.endswith("\n")


def test_progress_redraws_at_most_ten_times_a_second(monkeypatch):
    """With a fake clock: updates 0.05 s apart draw every other time, and the last one always draws."""
    import types

    from onnxslim import progress as module

    clock = [1000.0]
    monkeypatch.setattr(module, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    stream = _Terminal()
    bar = module.progress("x", total=5, stream=stream)
    for _ in range(5):
        clock[0] += 0.06
        bar.update()
    # t=.06 draws (first), .12 no, .18 draws (.12 since), .24 no, .30 draws (.12 since; also the last)
    assert [p.split("] ")[1].split()[0] for p in stream.parts] == ["1/5", "3/5", "5/5"]


# --------------------------------------------------------------------------------------------
# cpu.py


def test_usable_cores_is_at_least_one_even_with_cap_zero():
    """usable_cores(cap=0) is 1: a session never gets 0 threads (0 means 'all cores' to onnxruntime)."""
    from onnxslim.cpu import usable_cores

    assert usable_cores(cap=0) == 1


def test_usable_cores_falls_back_to_cpu_count_when_affinity_fails(monkeypatch):
    """Where sched_getaffinity raises OSError (or is missing), os.cpu_count() is used, still capped."""
    import os

    from onnxslim import cpu

    def refuse(pid):
        raise OSError("not permitted")

    monkeypatch.setattr(cpu.os, "sched_getaffinity", refuse, raising=False)
    monkeypatch.setattr(cpu.os, "cpu_count", lambda: 3)
    assert cpu.usable_cores(cap=64) == 3 and cpu.usable_cores(cap=2) == 2
    monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(cpu.os, "cpu_count", lambda: None)
    assert cpu.usable_cores(cap=64) == 1


# --------------------------------------------------------------------------------------------
# svd/collect.py


def _samples(n, k=4):
    return [{"x": np.full((1, k), i, np.float32)} for i in range(n)]


def test_fitting_batches_drops_short_batches_only_for_fixed_batch_models():
    """5 samples in batches of 2: [2, 2, 1] for a free batch, [2, 2] when the model fixes the batch at 2."""
    from onnxslim.svd.collect import fitting_batches

    free = [b["x"].shape[0] for b in fitting_batches(_samples(5), 2, exact=False)]
    fixed = [b["x"][:, 0].tolist() for b in fitting_batches(_samples(5), 2, exact=True)]
    assert free == [2, 2, 1] and fixed == [[0.0, 1.0], [2.0, 3.0]]


def test_ort_failure_is_one_line_for_onnxruntime_errors_only():
    """An onnxruntime error becomes a one-line UsageError naming the pass; any other error is returned as is."""
    import onnxruntime as ort

    from onnxslim.svd.collect import ort_failure

    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [1, 4])], [vi("y", [1, 4])])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception) as raised:
        session.run(None, {"x": np.ones((2, 3), np.float32)})
    error = ort_failure(raised.value, "prune_channels")
    assert isinstance(error, UsageError)
    assert str(error).startswith("prune_channels: onnxruntime cannot run the model on the calibration data: ")
    assert "\n" not in str(error)
    other = ValueError("x")
    assert ort_failure(other, "prune_channels") is other


def test_collect_moments_on_calibration_and_held_out_samples():
    """Moments count every sample (calibration 5, held-out 3); without held-out samples the second dict is empty."""
    from onnxslim.calibration import CalibrationSet
    from onnxslim.graph import import_model
    from onnxslim.svd.collect import collect_moments

    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", ["n", 4])], [vi("y", ["n", 4])])
    calibration = CalibrationSet("test", [], [lambda s=s: s for s in _samples(5)])
    key = ("y", ("last",))
    calib, held = collect_moments(import_model(model), {key: 4}, calibration, _samples(3), batch_size=2)
    assert calib[key].count == 5 and held[key].count == 3
    np.testing.assert_allclose(calib[key].total, [10.0] * 4)  # relu(0..4) summed
    calib, held = collect_moments(import_model(model), {key: 4}, calibration, [], batch_size=2)
    assert calib[key].count == 5 and held == {}


def test_collect_moments_on_a_fixed_batch_model_drops_short_held_out_batches():
    """Batch fixed at 2: 5 calibration samples give 4 rows, 3 held-out samples give 2."""
    from onnxslim.calibration import CalibrationSet
    from onnxslim.graph import import_model
    from onnxslim.svd.collect import collect_moments

    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [2, 4])], [vi("y", [2, 4])])
    calibration = CalibrationSet("test", [], [lambda s=s: s for s in _samples(5)])
    key = ("y", ("last",))
    calib, held = collect_moments(import_model(model), {key: 4}, calibration, _samples(3), batch_size=8)
    assert calib[key].count == 4 and held[key].count == 2


def test_cache_is_per_calibration_and_held_out_pair_and_keeps_them_alive():
    """Entries of one (calibration, held-out) pair are not seen by another pair; the sources stay alive
    (so their ids, the cache key, cannot be reused by new objects)."""
    import gc
    import weakref

    from onnxslim.svd.collect import Cache

    class Source(list):
        pass

    store: dict = {}
    calib, held_a, held_b = Source(), Source(), Source()
    Cache(store, calib, held_a).put(("w",), 1)
    assert Cache(store, calib, held_a).get(("w",)) == 1
    assert Cache(store, calib, held_b).get(("w",)) is None
    assert Cache(None, calib, held_a).get(("w",)) is None
    ref = weakref.ref(held_a)
    del held_a
    gc.collect()
    assert ref() is not None


# --------------------------------------------------------------------------------------------
# stages: configure() of each stage


def _relu() -> onnx.ModelProto:
    return make_model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [1, 4])], [vi("y", [1, 4])])


def _configure(stage_name, values, target="ort", device="x86", options=None):
    from onnxslim.pipeline import PassContext
    from onnxslim.stages import stages

    ctx = PassContext(target=target, device=device, options=dict(options or {}))
    stage = next(s for s in stages() if s.name == stage_name)
    return stage.configure(values, _relu(), ctx), ctx


@pytest.mark.parametrize("stage, values, message", [
    ("prune", {"prune_round_to": 8}, "--prune-round-to only applies with --prune or --prune-macs"),
    ("prune", {"prune": "0.3", "prune_macs": "0.5"}, "give either --prune or --prune-macs, not both"),
    ("prune", {"prune": "0.3", "prune_round_to": 0}, "--prune-round-to must be between 1 and 4096, got 0"),
    ("svd", {"svd_min_size": 4}, "--svd-min-size only applies with --svd"),
    ("quantize", {"quant_bias_correction": False}, "--quant-bias-correction only applies with --quantize int8"),
    ("quantize", {"calib_batch_size": 4}, "--calib-batch-size only applies with --quantize int8"),
    ("quantize", {"quantize": "int8", "quant_ops": "Softmax,Relu"},
     "--quant-ops: only Softmax and LayerNormalization can be asked for, got ['Relu']"),
    ("target", {"ort_threads": 0}, "--ort-threads only applies with --emit DIR"),
    ("target", {"emit": "E", "trt_precision": "fp16"}, "--trt-precision applies to --target tensorrt, not ort"),
])
def test_stage_option_errors(stage, values, message):
    """Options that would be ignored or are out of range are a one-line UsageError from configure()."""
    with pytest.raises(UsageError) as raised:
        _configure(stage, values)
    assert str(raised.value) == message


def test_tvm_tune_trials_must_be_positive(tmp_path):
    """--tvm-tune-trials 0 would tune nothing: a UsageError."""
    with pytest.raises(UsageError, match=r"^--tvm-tune-trials 0: expected a positive number of trials"):
        _configure("target", {"emit": str(tmp_path / "E"), "tvm_tune_trials": 0}, target="tvm")


def test_prune_and_svd_steps_and_defaults():
    """--prune 0.3 appends prune_channels + infer_shapes with round_to 1; --svd appends factorize_svd + infer_shapes."""
    steps, ctx = _configure("prune", {"prune": "0.3"})
    assert steps == ["prune_channels", "infer_shapes"]
    assert ctx.options["prune_channels"] == {"ratio": 0.3, "per_layer": None, "criterion": None, "round_to": 1,
                                             "reconstruct": None}
    steps, ctx = _configure("svd", {"svd": "rank=4"})
    assert steps == ["factorize_svd", "infer_shapes"]


def test_prune_ratio_text_is_a_ratio_even_where_a_file_has_that_name(tmp_path, monkeypatch):
    """'--prune 1e-1' and '--prune .5' are ratios (float syntax), even with a file named '.5' in the folder."""
    from onnxslim.stages.prune import parse_prune

    monkeypatch.chdir(tmp_path)
    (tmp_path / ".5").write_text("{}")
    assert parse_prune("1e-1") == (0.1, None) and parse_prune(".5") == (0.5, None)


def test_quantize_options_reach_the_pass():
    """--quant-keep-activations reaches insert_qdq; CLI values override options already set, others are kept."""
    steps, ctx = _configure("quantize", {"quantize": "int8", "quant_keep_activations": True, "calib_method": "entropy"},
                            options={"insert_qdq": {"method": "minmax", "exclude_nodes": ("n1",)}})
    assert steps == ["insert_qdq"]
    opts = ctx.options["insert_qdq"]
    assert opts["keep_activations"] is True and opts["method"] == "entropy" and opts["exclude_nodes"] == ("n1",)


@pytest.mark.parametrize("values, warned", [
    ({"quant_rounding_samples": 8}, "--quant-rounding-samples has no effect"),  # synthetic: no bias correction
    ({"quant_rounding_samples": 8, "quant_rounding": "gptq"}, None),
    ({"calib_bins": 512, "calib_method": "minmax", "calib_override": ("y=percentile",)}, None),
    ({"calib_bins": 512, "calib_method": "minmax"}, "--calib-bins has no effect: minmax needs no histogram"),
])
def test_quantize_warns_about_options_without_effect(caplog, values, warned):
    """Warnings only for options that really do nothing under the others (here: no --calib-data)."""
    import logging

    with caplog.at_level(logging.WARNING):
        _configure("quantize", {"quantize": "int8", **values})
    messages = [r.getMessage() for r in caplog.records if "has no effect" in r.getMessage()]
    if warned is None:
        assert messages == []
    else:
        assert len(messages) == 1 and messages[0].startswith(warned), messages


def test_quantize_refuses_a_quantized_model_listing_the_most_frequent_ops():
    """A model with QLinear*/Q/DQ nodes is refused; the message lists op counts, most frequent first."""
    from onnxslim.stages.quantize import check_float_model

    nodes = [helper.make_node("QLinearConv", ["a"], ["b"])] + [helper.make_node("DequantizeLinear", [f"i{i}"], [f"o{i}"])
                                                               for i in range(3)]
    model = helper.make_model(helper.make_graph(nodes, "g", [], []))
    with pytest.raises(UsageError) as raised:
        check_float_model(model)
    assert str(raised.value) == ("the model is already quantized (3 DequantizeLinear, 1 QLinearConv); "
                                 "--quantize needs the float model")
    only_qlinear = helper.make_model(helper.make_graph(nodes[:1], "g", [], []))
    with pytest.raises(UsageError, match=r"\(1 QLinearConv\)"):
        check_float_model(only_qlinear)


def test_ort_int8_layout_runs_right_after_quantize_on_x86_only():
    """space_to_depth_stem follows insert_qdq for --quantize on ort/x86, not on ort/arm."""
    from onnxslim.stages import stages

    names = [s.name for s in stages()]
    assert names.index("ort_int8_layout") == names.index("quantize") + 1
    assert _configure("ort_int8_layout", {"quantize": "int8"})[0] == ["space_to_depth_stem"]
    assert _configure("ort_int8_layout", {"quantize": "int8"}, device="arm")[0] == []


def test_emit_options_stored_for_the_target(tmp_path):
    """--emit stores JSON-ready options (lists, not tuples) and fail_on_check: a failed check exits non-zero."""
    steps, ctx = _configure("target", {"emit": str(tmp_path / "E"), "ort_threads": 2})
    assert steps == []
    emit = ctx.options["emit"]
    assert emit["dir"] == str(tmp_path / "E")
    assert emit["options"]["threads"] == 2 and emit["options"]["fail_on_check"] is True
    assert emit["options"]["input_shapes"] == {}
