"""Bad input to ``onnxslim inspect``, ``onnxslim report`` and the Python API.

The CLI rows: exit 2, one error line on stderr (no traceback), nothing on stdout, every file in
the folder unchanged and none added. The API rows: a one-line :mod:`onnxslim.errors` exception
(never a raw TypeError / AttributeError / KeyError from deep inside), no output written, the
caller's ModelProto untouched. Also the counts ``inspect`` prints (against a hand count), the
self-contained and escaped HTML page, and the page for a failed run.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import pytest
from click.testing import CliRunner, Result
from onnx import helper

import onnxslim
from onnxslim import api, cli
from onnxslim.errors import InputModelError, UsageError
from tests.helpers import init, make_model, vi
from tests.reliability import models
from tests.reliability.test_bad_inputs import check_refusal, snapshot


def run(*args) -> Result:
    return CliRunner().invoke(cli.main, [str(a) for a in args], catch_exceptions=False)


def check_cli_rejected(folder: Path, args: list, message: str) -> str:
    return check_refusal(folder, lambda: run(*args), message)


def _save(model: onnx.ModelProto, path: Path, external: bool = False) -> Path:
    if external:
        onnx.save_model(model, path, save_as_external_data=True, location=path.name + ".data", size_threshold=0)
    else:
        onnx.save_model(model, path)
    return path


def _inspect_json(path: Path) -> dict:
    result = run("inspect", path, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# --------------------------------------------------------------------------------------------
# inspect


def test_inspect_counts_match_a_hand_count(tmp_path):
    # conv_model: Conv(1x3x8x8, w 4x3x3x3, pads 1) -> Relu.
    data = _inspect_json(_save(models.conv_model(), tmp_path / "conv.onnx"))
    assert (data["nodes"], data["ops"]) == (2, {"Conv": 1, "Relu": 1})
    assert data["parameters"] == 4 * 3 * 3 * 3 and data["constant_bytes"] == 4 * 108
    assert data["macs"] == (1 * 4 * 8 * 8) * (3 * 3 * 3) and data["macs_exact"] is True
    assert data["inputs"] == [{"name": "x", "dtype": "float32", "shape": [1, 3, 8, 8]}]
    # One weight read by two MatMuls counts once as a parameter, twice in MACs; a Constant node's value counts.
    w = np.ones((10, 10), np.float32)
    nodes = [helper.make_node("Constant", [], ["c"], value=onnx.numpy_helper.from_array(np.ones(10, np.float32))),
             helper.make_node("MatMul", ["x", "w"], ["a"]), helper.make_node("MatMul", ["a", "w"], ["b"]),
             helper.make_node("Add", ["b", "c"], ["y"])]
    shared = make_model(nodes, [vi("x", [2, 10])], [vi("y", [2, 10])], [init("w", w)])
    data = _inspect_json(_save(shared, tmp_path / "shared.onnx"))
    assert data["nodes"] == 4 and data["parameters"] == 100 + 10 and data["macs"] == 2 * (2 * 10 * 10)


@pytest.mark.parametrize("build, expect", [
    (models.zero_nodes, {"nodes": 0, "ops": {}, "parameters": 0}),
    (models.constant_only, {"nodes": 0, "parameters": 3}),
    (models.custom_op, {"nodes": 5, "opsets": {"ai.onnx": 18, "acme.vision": 1}}),
    (lambda: models.conv_model("N"), {"macs_exact": False}),
], ids=["zero-nodes", "constant-only", "custom-domain", "symbolic-batch"])
def test_inspect_odd_but_valid_models_give_valid_json(tmp_path, build, expect):
    data = _inspect_json(_save(build(), tmp_path / "m.onnx"))
    assert {k: data[k] for k in expect} == expect
    text = run("inspect", tmp_path / "m.onnx")
    assert text.exit_code == 0 and text.stderr == ""


def test_inspect_maps_external_data_instead_of_reading_it(tmp_path, monkeypatch):
    """inspect counts from shapes: the weights of an external-data model are memory-mapped (read
    only where shape inference needs a small constant), not loaded whole into memory."""
    inline = _inspect_json(_save(models.zoo_like(), tmp_path / "inline.onnx"))

    def read_everything(*args, **kwargs):
        raise AssertionError("inspect read all external data into memory")

    monkeypatch.setattr(onnx.external_data_helper, "load_external_data_for_model", read_everything)
    external = _inspect_json(_save(models.zoo_like(), tmp_path / "external.onnx", external=True))
    for key in ("path", "file_bytes", "total_bytes"):
        inline.pop(key), external.pop(key)
    assert external == inline, "the counts must not depend on where the weights are stored"
    assert external["macs_exact"] and external["macs"] > 0  # shape inference saw the Reshape specs


def _external_damaged(damage):
    def setup(d: Path) -> list:
        path = _save(models.conv_model(), d / "model.onnx", external=True)
        damage(d / "model.onnx.data")
        return ["inspect", path]
    return setup


INSPECT_BAD = [
    ("external-data-missing", "not found", _external_damaged(lambda data: data.unlink())),
    ("external-data-truncated", "is truncated", _external_damaged(lambda data: data.write_bytes(data.read_bytes()[:100]))),
    ("a-directory", "is a directory", lambda d: ["inspect", d]),
    ("not-onnx", "not a valid ONNX protobuf", lambda d: ["inspect", _write(d / "notes.txt", b"hello, world")]),
    ("json-file", "not an ONNX model", lambda d: ["inspect", _write(d / "r.json", b'{"schema": 1}')]),
    ("missing", "no such file", lambda d: ["inspect", d / "nope.onnx"]),
    ("unknown-default-op", "No Op registered for FrobnicateAll", lambda d: ["inspect", _save(models.unknown_default_op(), d / "m.onnx")]),
    ("input-shape-unknown-input", "not a model input", lambda d: ["inspect", _save(models.conv_model(), d / "m.onnx"), "--input-shape", "q:1"]),
]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case_id, message, setup", INSPECT_BAD, ids=[c[0] for c in INSPECT_BAD])
def test_inspect_bad_input(tmp_path, case_id, message, setup):
    args = setup(tmp_path)
    check_cli_rejected(tmp_path, args, message)


# --------------------------------------------------------------------------------------------
# report


needs_matplotlib = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib (onnxslim[report]) not installed")


def _report(tmp_path: Path, model: onnx.ModelProto | None = None, *extra) -> Path:
    src = _save(model if model is not None else models.conv_model(), tmp_path / "model.onnx")
    result = run("optimize", src, "-o", tmp_path / "out.onnx", "--report", tmp_path / "r.json", "-q", *extra)
    assert result.exit_code in (0, 1), result.output
    return tmp_path / "r.json"


@pytest.fixture(scope="module")
def saved_report(tmp_path_factory) -> dict:
    return json.loads(_report(tmp_path_factory.mktemp("report")).read_text())


def _crafted(name: str, edit) -> Callable[[dict], str]:
    def make(report: dict) -> str:
        data = copy.deepcopy(report)
        edit(data)
        return json.dumps(data)
    make.__name__ = name
    return make


def _set(path: str, value):
    def edit(data):
        *parents, last = path.split(".")
        for key in parents:
            data = data[key]
        data[last] = value
    return edit


REPORT_BAD = [
    # Not a report of this onnxslim.
    ("older-schema", "report schema 'onnxslim.report/0'", _crafted("old", _set("schema", "onnxslim.report/0"))),
    ("newer-schema", "report schema 'onnxslim.report/2'", _crafted("new", _set("schema", "onnxslim.report/2"))),
    ("truncated-json", "not a JSON report", lambda r: json.dumps(r)[:300]),
    ("json-list", "not an onnxslim report", lambda r: "[1, 2, 3]"),
    ("emit-json", "not an onnxslim report", lambda r: json.dumps({"target": "ort", "device": "x86", "files": ["model.onnx"], "ok": True})),
    ("nested-too-deeply", "nested too deeply", lambda r: "[" * 100_000),
    # The schema, with fields the page cannot read: a hand-edited or damaged report.
    ("stats-is-a-list", "malformed report: 'stats' is a list", _crafted("stats", _set("stats", [1, 2]))),
    ("passes-is-a-string", "malformed report: 'passes' is a string", _crafted("passes", _set("passes", "dedupe"))),
    ("versions-is-a-list", "malformed report: 'versions' is a list", _crafted("versions", _set("versions", ["onnx"]))),
    ("note-is-a-number", r"malformed report: notes\[0\] is a number", _crafted("notes", _set("notes", [3]))),
    ("stats-field-missing", "malformed report: field 'parameters' is missing",
     _crafted("partial", _set("stats.before", {"nodes": 3, "macs": 1, "constant_bytes": 0}))),
    ("input-path-a-number", "malformed report: TypeError", _crafted("path", _set("input.path", 5))),
]


@needs_matplotlib
@pytest.mark.parametrize("case_id, message, make", REPORT_BAD, ids=[c[0] for c in REPORT_BAD])
def test_report_command_rejects_what_is_not_a_readable_report(tmp_path, saved_report, case_id, message, make):
    (tmp_path / "r.json").write_text(make(saved_report))
    check_cli_rejected(tmp_path, ["report", tmp_path / "r.json", "--html", tmp_path / "out.html"], message)


def test_from_report_with_a_malformed_report(tmp_path, saved_report):
    """load_report checks the structure for --from-report too (it crashed on input: [...])."""
    (tmp_path / "r.json").write_text(json.dumps({**saved_report, "input": ["model.onnx"]}))
    check_cli_rejected(tmp_path, ["optimize", "--from-report", tmp_path / "r.json", "-o", tmp_path / "o.onnx"],
                       "malformed report: 'input' is a list")


@pytest.mark.parametrize("options, message", [
    ({"passes": 123}, "--from-report: the report's option passes: expected a pipeline string"),  # exit 3 before
    ({"seed": -4}, "--from-report: the report's option seed: expected an integer"),
    ({"stage_values": {"quantise": "int8"}}, "unknown stage option 'quantise' (did you mean 'quantize'?)"),
])
def test_from_report_with_malformed_options(tmp_path, saved_report, options, message):
    data = copy.deepcopy(saved_report)
    data["options"].update(options)
    (tmp_path / "r.json").write_text(json.dumps(data))
    check_cli_rejected(tmp_path, ["optimize", "--from-report", tmp_path / "r.json", "-o", tmp_path / "o.onnx"], re.escape(message))


def test_report_command_output_paths(tmp_path, saved_report):
    (tmp_path / "r.json").write_text(json.dumps(saved_report))
    line = check_cli_rejected(tmp_path, ["report", tmp_path / "r.json", "--html", tmp_path / "r.json"], "report being read")
    assert "--html" in line and " -o" not in line, "the report command has no -o"
    (tmp_path / "alias.json").symlink_to(tmp_path / "r.json")
    check_cli_rejected(tmp_path, ["report", tmp_path / "alias.json", "--html", tmp_path / "r.json"], "report being read")
    check_cli_rejected(tmp_path, ["report", tmp_path / "r.json", "--html", tmp_path / "nowhere" / "out.html"], "does not exist")
    check_cli_rejected(tmp_path, ["report", tmp_path / "r.json", "--html", tmp_path], "is a directory")


def test_report_command_without_matplotlib(tmp_path, saved_report, monkeypatch):
    (tmp_path / "r.json").write_text(json.dumps(saved_report))
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    check_cli_rejected(tmp_path, ["report", tmp_path / "r.json", "--html", tmp_path / "out.html"], r"onnxslim\[report\]")


def _external_references(text: str) -> list[str]:
    refs = re.findall(r"""(?:src|href)\s*=\s*["']?\s*([^"'\s>]+)""", text, flags=re.I)
    refs += re.findall(r"url\(\s*['\"]?([^)'\"]+)", text) + re.findall(r"@import", text)
    return [r for r in refs if not r.startswith("#")]


def _hostile_model(op_type: str = "Warp") -> onnx.ModelProto:
    """Names that a shared report must show as text: markup, and '$' (matplotlib's math mode)."""
    x, t, y = "x<script>alert('in')</script>", "t\"><img src=x onerror=alert(1)>", "y$\\frac{a}$"
    nodes = [helper.make_node("Relu", [x], [t], name="<script>alert('node')</script>"),
             helper.make_node(op_type, [t], ["w"], domain="acme</style><script>", name="$a$b$"),
             helper.make_node("Identity", ["w"], [y], name="</title><script>alert(2)</script>")]
    graph = helper.make_graph(nodes, "<script>graph</script>", [vi(x, [1, 4])], [vi(y, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("acme</style><script>", 1)],
                              producer_name="<script>producer</script>")
    model.ir_version = 8
    return model


@needs_matplotlib
def test_html_names_from_the_model_are_text_not_markup_or_math(tmp_path):
    """A custom op type '$\\frac{a}$' made matplotlib's math parser raise (exit 3); markup in
    node, tensor and op names must come out escaped; nothing may be fetched."""
    model = _hostile_model("Warp$\\frac{a}$")
    src = _save(model, tmp_path / "<script>m.onnx")  # the page's title shows the file name
    page = tmp_path / "r.html"
    result = run("optimize", src, "-o", tmp_path / "out.onnx", "--report", tmp_path / "r.json", "--html", page, "-q")
    assert result.exit_code == 0, result.output
    again = run("report", tmp_path / "r.json", "--html", tmp_path / "again.html")
    assert again.exit_code == 0, again.output
    for text in (page.read_text(), (tmp_path / "again.html").read_text()):
        assert not re.search(r"<\s*(script|img|iframe|object|embed|link)\b", text, flags=re.I), "markup from the model"
        assert _external_references(text) == []
        assert "Warp$\\frac{a}$" in text, "the op type is shown as written, not as math"


@needs_matplotlib
def test_report_of_a_failed_run_renders(tmp_path):
    path = _report(tmp_path, models.conv_model(), "--quantize", "int8", "--min-cosine", "1")
    data = json.loads(path.read_text())
    assert data["verification"]["status"] == "failed"
    result = run("report", path, "--html", tmp_path / "failed.html")
    assert result.exit_code == 0, result.output
    assert 'class="bad">failed<' in (tmp_path / "failed.html").read_text()


# --------------------------------------------------------------------------------------------
# The Python API


BAD_OPTIONS = [
    ({"bogus": 1}, "unknown option 'bogus'"),
    ({"pases": "dedupe"}, "did you mean 'passes'"),
    ({"passes": 123}, "option passes: expected a pipeline string"),
    ({"passes": ["dedupe"]}, "option passes: expected a pipeline string"),
    ({"skip": "dedupe,eliminate_dead"}, "option skip: expected a list of pass names"),
    ({"skip": 123}, "option skip: expected a list"),
    ({"input_shapes": {"x": "1,3,8,8"}}, "option input_shapes: 'x': expected a list of ints"),
    ({"input_shapes": {"x": ["1", 3, 8, 8]}}, "option input_shapes: 'x': expected a list of ints"),
    ({"input_shapes": {"x": [1.5, 3, 8, 8]}}, "option input_shapes: 'x': expected a list of ints"),
    ({"input_shapes": [1, 3, 8, 8]}, "option input_shapes: expected a dict"),
    ({"tolerance": -1e-3}, "option tolerance: expected a positive number"),
    ({"tolerance": 0}, "option tolerance: expected a positive number"),
    ({"tolerance": float("nan")}, "option tolerance: expected a positive number"),
    ({"tolerance": "1e-3"}, "option tolerance: expected a positive number"),
    ({"stage_values": ["quantize", "int8"]}, "option stage_values: expected a dict"),
    ({"stage_values": "quantize=int8"}, "option stage_values: expected a dict"),
    ({"stage_values": {"quantise": "int8"}}, "unknown stage option 'quantise' \\(did you mean 'quantize'\\?\\)"),
    ({"stage_values": {"quantize": 8}}, r"stage_values\['quantize'\]: .*8 is not 'int8'"),
    ({"stage_values": {"svd": ["rank=2"]}}, r"stage_values\['svd'\]: expected one value"),
    ({"stage_values": {"svd_min_size": 4.5}}, r"stage_values\['svd_min_size'\]: expected an integer"),
    ({"verify": "no"}, "option verify: expected True or False"),
    ({"seed": -1}, "option seed: expected an integer"),
    ({"target": "gpu"}, "option target: expected one of ort, tensorrt, tvm"),
    ({"min_cosine": 2}, r"option min_cosine: expected a number in \[-1, 1\]"),
    ({"options": [1]}, "option options: expected a dict"),
    ({"calib_data": 3}, "option calib_data: expected a path"),
]


@pytest.mark.parametrize("options, message", BAD_OPTIONS, ids=[re.sub(r"\W+", "-", repr(o))[1:40] for o, _ in BAD_OPTIONS])
def test_api_rejects_bad_options_in_one_line(tmp_path, options, message):
    model = models.conv_model()
    kept = copy.deepcopy(model)
    with pytest.raises(UsageError) as caught:
        onnxslim.optimize(model, **options)
    assert re.search(message, str(caught.value)) and "\n" not in str(caught.value), str(caught.value)
    assert model == kept
    src = _save(model, tmp_path / "model.onnx")
    before = snapshot(tmp_path)
    with pytest.raises(UsageError) as caught:
        api.optimize_file(src, tmp_path / "out.onnx", **options)
    assert re.search(message, str(caught.value)), str(caught.value)
    assert snapshot(tmp_path) == before, "no output may be written for a bad option"


def test_api_stage_values_take_what_the_cli_takes(tmp_path):
    """A number where the CLI reads a string is converted like the CLI converts it."""
    out, report = onnxslim.optimize(models.conv_model(), stage_values={"svd": "rank=2", "svd_min_size": 4}, verify=False)
    assert report.options["stage_values"] == {"svd": "rank=2", "svd_min_size": 4}
    _, report = onnxslim.optimize(models.zoo_like(blocks=1), stage_values={"prune": 0.25}, verify=False)
    assert report.options["stage_values"] == {"prune": "0.25"}


@pytest.mark.parametrize("model, error, message", [
    (None, UsageError, "expected an onnx.ModelProto or the path"),
    (b"\x08\x08", UsageError, "got bytes"),
    ({}, UsageError, "got dict"),
    (models.tiny().graph, UsageError, "got GraphProto"),
    (models.cycle(), InputModelError, "topologically sorted"),
    (models.no_graph(), InputModelError, "invalid ONNX model"),
    (onnx.ModelProto(), InputModelError, "invalid ONNX model"),
    ("/nonexistent/model.onnx", InputModelError, "no such file"),
], ids=["none", "bytes", "dict", "graph-proto", "cycle", "no-graph", "empty-proto", "missing-path"])
def test_api_rejects_bad_models_in_one_line(model, error, message):
    with pytest.raises(error, match=message) as caught:
        onnxslim.optimize(model)
    assert "\n" not in str(caught.value)


def test_api_optimize_file_rejects_bad_paths(tmp_path):
    with pytest.raises(InputModelError, match="no such file"):
        api.optimize_file(tmp_path / "nope.onnx", tmp_path / "out.onnx")
    with pytest.raises(UsageError, match="input_path: expected a path"):
        api.optimize_file(None)
    src = _save(models.conv_model(), tmp_path / "model.onnx")
    before = snapshot(tmp_path)
    with pytest.raises(UsageError, match="output_path: expected a path"):
        api.optimize_file(src, 123)
    assert snapshot(tmp_path) == before


def test_api_never_modifies_the_callers_model():
    model = models.zoo_like(blocks=2)
    kept, serialized = copy.deepcopy(model), model.SerializeToString()
    out, report = onnxslim.optimize(model, stage_values={"quantize": "int8", "prune": "0.25"}, input_shapes={"input": [1, 3, 8, 8]})
    assert report.verification is not None and len(out.graph.node) < len(model.graph.node)
    assert model == kept and model.SerializeToString() == serialized
