"""Guards of `onnxslim optimize` found by an audit: outputs that would replace the user's own files,
NaN measurements that slipped through --fail-if, click's four-line usage errors, and fidelity on
synthetic inputs reported as held-out. Each refusal: exit 2, one line on stderr, nothing changed
or written (the reliability catalog's checks, reused)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import pytest
from click.testing import CliRunner, Result

from onnxslim import api, cli
from onnxslim.reporting import failif
from onnxslim.verify import OutputFidelity
from tests.reliability import models
from tests.reliability.test_bad_inputs import X_SHAPE, check_rejected, error_line, snapshot


def _invoke(*args) -> Result:
    return CliRunner().invoke(cli.main, [str(a) for a in args], catch_exceptions=False)


def _folder(d: Path) -> Path:
    """model.onnx (Conv -> Relu), calibration data as c.npz and as calib/ (with a subfolder), in.npz."""
    onnx.save_model(models.conv_model(), d / "model.onnx")
    samples = np.random.default_rng(0).standard_normal((4, *X_SHAPE[1:])).astype(np.float32)
    np.savez(d / "c.npz", x=samples)
    (d / "calib" / "sub").mkdir(parents=True)
    np.save(d / "calib" / "x.npy", samples)
    np.savez(d / "in.npz", x=samples[:1])
    (d / "p.json").write_text('{"*": 0.5}')
    (d / "o").mkdir()
    return d / "model.onnx"


# --------------------------------------------------------------------------------------------
# 1. No output may replace a file the user gave, nor another output


OUTPUT_CLASHES: list[tuple[str, Callable[[Path], list], str]] = [
    ("report-is-calib-file", lambda d: ["-o", d / "o.onnx", "--calib-data", d / "c.npz", "--report", d / "c.npz"],
     r"--report .*c\.npz: is the --calib-data file"),
    ("output-is-calib-file", lambda d: ["-o", d / "c.npz", "--calib-data", d / "c.npz"], r"-o .*c\.npz: is the --calib-data file"),
    ("output-inside-calib-folder", lambda d: ["-o", d / "calib" / "a.npz", "--calib-data", d / "calib"],
     "is inside the --calib-data folder"),
    ("report-deep-inside-calib-folder",
     lambda d: ["-o", d / "o.onnx", "--calib-data", d / "calib", "--report", d / "calib" / "sub" / "r.json"],
     "--report .*: is inside the --calib-data folder"),
    ("output-is-inputs-file", lambda d: ["-o", d / "in.npz", "--inputs", d / "in.npz"], "is the --inputs file"),
    ("report-is-output", lambda d: ["-o", d / "o" / "x.onnx", "--report", d / "o" / "x.onnx"], r"--report .*x\.onnx: is the -o file"),
    ("report-is-output-other-spelling", lambda d: ["-o", d / "o" / "x.onnx", "--report", d / "o" / ".." / "o" / "x.onnx"],
     "is the -o file"),
    ("html-is-report", lambda d: ["-o", d / "o.onnx", "--report", d / "r.json", "--html", d / "r.json"], "--html .*: is the --report file"),
    ("report-is-symlink-to-calib",
     lambda d: ["-o", d / "o.onnx", "--calib-data", d / "c.npz", "--report", _link(d, "c.npz", "alias.json")], "is the --calib-data file"),
    ("report-is-hard-link-to-inputs",
     lambda d: ["-o", d / "o.onnx", "--inputs", d / "in.npz", "--report", _link(d, "in.npz", "hard.json", hard=True)],
     "is the --inputs file"),
    ("report-is-default-output", lambda d: ["--report", d / "model.opt.onnx"], "is the output model"),
    ("report-is-config", lambda d: ["-o", d / "o.onnx", "--config", _config(d), "--report", d / "onnxslim.toml"], "is the --config file"),
    ("output-is-prune-file", lambda d: ["-o", d / "p.json", "--prune", d / "p.json"], r"-o .*p\.json: is the --prune file"),
    ("report-is-prune-file", lambda d: ["-o", d / "o.onnx", "--prune", d / "p.json", "--report", d / "p.json"],
     r"--report .*p\.json: is the --prune file"),
    ("emit-is-calib-folder", lambda d: ["-o", d / "o.onnx", "--calib-data", d / "calib", "--emit", d / "calib"],
     "--emit .*: is the --calib-data folder"),
    ("emit-inside-calib-folder", lambda d: ["-o", d / "o.onnx", "--calib-data", d / "calib", "--emit", d / "calib" / "out"],
     "--emit .*: is inside the --calib-data folder"),
    ("emit-holds-the-model", lambda d: ["-o", d / "o" / "x.onnx", "--emit", d], "--emit .*: holds the input model"),
    ("emit-holds-the-output", lambda d: ["-o", d / "o" / "x.onnx", "--emit", d / "o"], "--emit .*: holds the -o file"),
]


def _link(d: Path, target: str, name: str, hard: bool = False) -> Path:
    (os.link if hard else os.symlink)(d / target, d / name)
    return d / name


def _config(d: Path) -> Path:
    (d / "onnxslim.toml").write_text("[optimize]\nseed = 0\n")
    return d / "onnxslim.toml"


@pytest.mark.parametrize("build, message", [(b, m) for _, b, m in OUTPUT_CLASHES], ids=[i for i, _, _ in OUTPUT_CLASHES])
def test_output_never_replaces_a_user_file_or_another_output(tmp_path, build, message):
    model = _folder(tmp_path)
    args = [model, *build(tmp_path)]
    before = snapshot(tmp_path)
    result = _invoke("optimize", *args)  # no -o added: the default output is one of the cases
    assert result.exit_code == 2, result.output
    assert re.search(message, error_line(result.stderr)), result.stderr
    assert result.stdout == "" and snapshot(tmp_path) == before, "a user file changed, or an output was written"


def test_from_report_file_is_not_an_output(tmp_path):
    model = _folder(tmp_path)
    assert _invoke("optimize", model, "-o", tmp_path / "a.onnx", "--report", tmp_path / "r.json", "-q").exit_code == 0
    check_rejected(tmp_path, ["--from-report", tmp_path / "r.json", "-o", tmp_path / "b.onnx", "--report", tmp_path / "r.json"],
                   "--report .*: is the --from-report file")


def test_prune_number_is_a_ratio_even_beside_a_file_of_that_name(tmp_path, monkeypatch):
    onnx.save_model(models.zoo_like(blocks=2), tmp_path / "m.onnx")
    (tmp_path / "0.5").write_text("not json")
    monkeypatch.chdir(tmp_path)
    result = _invoke("optimize", "m.onnx", "-o", "o.onnx", "--prune", "0.5", "--report", "r.json", "-q")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["stats"]["after"]["parameters"] < report["stats"]["before"]["parameters"]
    assert report["option_files"] == {}


def test_from_report_refuses_a_changed_prune_file(tmp_path):
    onnx.save_model(models.zoo_like(blocks=2), tmp_path / "m.onnx")
    table = tmp_path / "p.json"
    table.write_text('{"*": 0.5}')
    args = ["optimize", tmp_path / "m.onnx", "-o", tmp_path / "a.onnx", "--prune", table, "--report", tmp_path / "r.json", "-q"]
    assert _invoke(*args).exit_code == 0
    recorded = json.loads((tmp_path / "r.json").read_text())["option_files"]["--prune"]
    assert recorded["sha256"] and recorded["path"] == str(table)
    again = _invoke("optimize", "--from-report", tmp_path / "r.json", "-o", tmp_path / "b.onnx", "-q")
    assert again.exit_code == 0, again.output
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    table.write_text('{"*": 0.25}')
    check_rejected(tmp_path, ["--from-report", tmp_path / "r.json", "-o", tmp_path / "c.onnx"],
                   r"the --prune file .*p\.json is missing or differs from the recorded one")


def test_distinct_outputs_beside_the_calibration_data_are_fine(tmp_path):
    model = _folder(tmp_path)
    result = _invoke("optimize", model, "-o", tmp_path / "o" / "x.onnx", "--calib-data", tmp_path / "calib", "--quantize", "int8",
                     "--inputs", tmp_path / "in.npz", "--report", tmp_path / "o" / "r.json", "-q")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "o" / "r.json").read_text())["output"]["path"].endswith("x.onnx")


# --------------------------------------------------------------------------------------------
# 2. A NaN measurement fails every --fail-if condition on it


def _lossy_report(rows: list[dict], after: dict | None = None) -> dict:
    stats = {"nodes": 2, "parameters": 108, "constant_bytes": 432, "macs": 6912}
    return {"verification": {"status": "measured", "mode": "lossy", "fidelity": rows},
            "stats": {"before": stats, "after": {**stats, **(after or {})}}, "seconds": {"total": 0.1}}


NAN_ROW = {"name": "y", "cosine": math.nan, "sqnr_db": math.nan, "rel_l2": math.nan, "max_abs": math.nan, "top1_agreement": math.nan}
GOOD_ROW = {"name": "z", "cosine": 0.9999, "sqnr_db": 40.0, "rel_l2": 0.01, "max_abs": 0.001, "top1_agreement": 1.0}


@pytest.mark.parametrize("condition", ["cosine<0.99", "cosine<=0.99", "cosine==0", "sqnr<20", "sqnr>1000", "top1<0.9",
                                       "max-abs>0.1", "max-abs>=1"])
@pytest.mark.parametrize("order", ["nan-first", "nan-last"])
def test_fail_if_holds_on_a_nan_measurement(condition, order):
    rows = [NAN_ROW, GOOD_ROW] if order == "nan-first" else [GOOD_ROW, NAN_ROW]
    [row] = failif.evaluate(failif.parse_conditions([condition]), _lossy_report(rows))
    assert row["holds"] and "nan" in row["value"], row


@pytest.mark.parametrize("condition", ["macs<1", "macs-reduction<0.2", "macs-increased"])
def test_fail_if_holds_on_a_nan_size(condition):
    [row] = failif.evaluate(failif.parse_conditions([condition]), _lossy_report([GOOD_ROW], after={"macs": math.nan}))
    assert row["holds"], row


def _broken_fidelity(original, candidate, feeds) -> list[OutputFidelity]:
    """What a model that computes NaN measures like; a healthy output listed first."""
    return [OutputFidelity("healthy", 0.9999, 40.0, 0.01, 0.001), OutputFidelity("y", math.nan, math.nan, math.nan, math.nan)]


@pytest.mark.parametrize("gate, message", [(["--fail-if", "cosine<0.99"], "--fail-if: cosine<0.99 (cosine is nan) holds"),
                                           (["--min-cosine", "0.5"], "fidelity BELOW budget")], ids=["fail-if", "min-cosine"])
def test_nan_cosine_fails_the_run(tmp_path, monkeypatch, gate, message):
    model = _folder(tmp_path)
    monkeypatch.setattr(api, "measure_fidelity", _broken_fidelity)
    result = _invoke("optimize", model, "-o", tmp_path / "o.onnx", "--quantize", "int8", "--calib-data", tmp_path / "c.npz", *gate, "-q")
    assert result.exit_code == 1, result.output
    line = error_line(result.stderr)
    assert message in line and "nan" in line, line


# --------------------------------------------------------------------------------------------
# 3. Click's usage errors: one line in our format, exit 2, for every subcommand


USAGE_ERRORS = [
    (["optimize", "{model}", "--calib-method", "foo"], "'--calib-method': 'foo' is not one of"),
    (["optimize", "{model}", "--calib-size", "abc"], "'--calib-size': 'abc' is not a valid integer"),
    (["optimize", "{model}", "--target", "foo"], "'--target': 'foo' is not one of"),
    (["optimize", "{model}", "--device", "gpu"], "'--device': 'gpu' is not one of"),
    (["optimize", "{model}", "--quantize", "int4"], "'--quantize': 'int4'"),
    (["optimize", "{model}", "--calib-percentile", "abc"], "'--calib-percentile': 'abc' is not a valid float"),
    (["optimize", "{model}", "--no-such-option"], "No such option '--no-such-option'"),
    (["optimize", "{model}", "--seed", "-1"], "'--seed': -1 is not in the range 0<=x<=4294967295"),  # exit 3 (NumPy) before
    (["verify", "{model}", "{model}", "--seed", "4294967296"], "'--seed': 4294967296 is not in the range"),
    (["inspect"], "Missing argument 'MODEL'"),
    (["verify", "{model}", "{model}", "--samples", "0"], "'--samples': 0 is not in the range"),
    (["report", "r.json"], "Missing option '--html'"),
    (["passes", "--bogus"], "No such option '--bogus'"),
    (["lint-trt", "{model}", "--json"], "'--json' requires an argument"),
    (["--bogus"], "No such option '--bogus'"),
    (["frobnicate"], "No such command 'frobnicate'"),
]


@pytest.mark.parametrize("args, message", USAGE_ERRORS, ids=[" ".join(a).replace("{model}", "M") for a, _ in USAGE_ERRORS])
def test_click_usage_error_is_one_line(tmp_path, args, message):
    model = _folder(tmp_path)
    before = snapshot(tmp_path)
    result = _invoke(*(a.format(model=model) for a in args))
    assert result.exit_code == 2, result.output
    assert result.stdout == "" and result.stderr.count("\n") == 1, result.stderr
    assert error_line(result.stderr).startswith("onnxslim: error: ") and message in result.stderr, result.stderr
    assert snapshot(tmp_path) == before


def test_click_usage_error_in_a_real_process(tmp_path):
    model = _folder(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "onnxslim.cli", "optimize", str(model), "--calib-method", "foo"],
                          capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=120)
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    assert proc.stderr.splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("onnxslim: error: Invalid value for '--calib-method'"), proc.stderr


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["optimize", "--help"], ["verify", "-h"], ["--version"]])
def test_help_and_version_still_work(args):
    result = _invoke(*args)
    assert result.exit_code == 0 and result.stderr == "", result.output
    assert ("Usage:" in result.stdout) != (args == ["--version"]), result.stdout


def test_bare_command_still_shows_click_help():
    result = _invoke()
    assert "Usage: " in result.output and "Commands:" in result.output and "onnxslim: error" not in result.output


# --------------------------------------------------------------------------------------------
# 4. Fidelity on synthetic inputs says so (summary line, report, one warning)


def _quantize(tmp_path: Path, samples: int) -> tuple[Result, dict]:
    model = _folder(tmp_path)
    np.savez(tmp_path / "few.npz", x=np.random.default_rng(1).standard_normal((samples, *X_SHAPE[1:])).astype(np.float32))
    before = snapshot(tmp_path)
    result = _invoke("optimize", model, "-o", tmp_path / "o" / "q.onnx", "--quantize", "int8", "--calib-data", tmp_path / "few.npz",
                     "--report", tmp_path / "o" / "r.json")
    assert result.exit_code == 0, result.output
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("o/")} == {k: v for k, v in before.items() if not k.startswith("o/")}
    return result, json.loads((tmp_path / "o" / "r.json").read_text())["verification"]


def test_too_few_calibration_samples_fidelity_is_labelled_synthetic(tmp_path):
    result, verification = _quantize(tmp_path, 3)
    line = next(line for line in result.stdout.splitlines() if line.startswith("fidelity"))
    assert line.startswith("fidelity on 8 synthetic sample(s) (no calibration samples could be held out): "), line
    assert "held-out" not in result.stdout
    assert verification["samples_from"] == "synthetic" and verification["samples"] == 8
    warnings = [w for w in result.stderr.splitlines() if "synthetic" in w]
    assert len(warnings) == 1 and "3 calibration sample(s) are too few" in warnings[0], result.stderr


def test_enough_calibration_samples_fidelity_is_held_out(tmp_path):
    result, verification = _quantize(tmp_path, 20)
    assert "fidelity on 4 held-out sample(s): " in result.stdout, result.stdout
    assert verification["samples_from"] == "holdout" and "synthetic" not in result.stderr


def test_inputs_file_fidelity_is_labelled_inputs(tmp_path):
    model = _folder(tmp_path)
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((20, *X_SHAPE[1:])).astype(np.float32))
    np.savez(tmp_path / "inputs.npz", x=rng.standard_normal((1, *X_SHAPE[1:])).astype(np.float32))
    result = _invoke("optimize", model, "-o", tmp_path / "o" / "q.onnx", "--quantize", "int8", "--calib-data", tmp_path / "calib.npz",
                     "--inputs", tmp_path / "inputs.npz")
    assert result.exit_code == 0, result.output
    assert "fidelity on 1 --inputs sample(s): " in result.stdout, result.stdout


# --------------------------------------------------------------------------------------------
# 4. Models older than IR 4 (every initializer is also a graph input) stay valid


def _ir3_model() -> onnx.ModelProto:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "W"),
               numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "B"),
               numpy_helper.from_array(np.full((1, 4, 1, 1), 2.0, np.float32), "two")]
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Mul", ["c", "two"], ["m"]),
             helper.make_node("Relu", ["m"], ["y"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])]
    inputs += [helper.make_tensor_value_info(w.name, TensorProto.FLOAT, list(w.dims)) for w in weights]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 7)])
    model.ir_version = 3
    onnx.checker.check_model(model)
    return model


def _check_ir3(before: onnx.ModelProto, after: onnx.ModelProto) -> None:
    from tests.helpers import op_counts, random_feeds, run_ort

    onnx.checker.check_model(after)  # raised 'W in initializer but not in graph input' before
    assert after.ir_version == 3
    assert {i.name for i in after.graph.initializer} <= {i.name for i in after.graph.input}
    assert op_counts(after) == {"Conv": 1, "Relu": 1}  # the Mul by 2 folded into the Conv: initializers did change
    feeds = {"x": random_feeds(before)["x"]}
    np.testing.assert_allclose(run_ort(after, feeds)["y"], run_ort(before, feeds)["y"], rtol=1e-5, atol=1e-5)


def test_ir3_model_written_by_the_cli_is_valid(tmp_path):
    before = _ir3_model()
    onnx.save_model(before, tmp_path / "old.onnx")
    result = _invoke("optimize", tmp_path / "old.onnx", "-o", tmp_path / "new.onnx", "-q")
    assert result.exit_code == 0, result.output
    _check_ir3(before, onnx.load(tmp_path / "new.onnx"))


def test_ir3_model_optimized_in_memory_is_valid():
    before = _ir3_model()
    after, _ = api.optimize(before)
    _check_ir3(before, after)


# --------------------------------------------------------------------------------------------
# 5. The input's MACs count nodes whose shapes only the cleanup resolves


def _dynamic_reshape_model() -> onnx.ModelProto:
    """x[N,4,4,4] -> Reshape(x, Concat(Shape(x)[0], -1)) -> MatMul W[64,10]: the MatMul's K is
    unknown to shape inference until fold_shapes rewrites the Reshape."""
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 10)).astype(np.float32), "W"),
             numpy_helper.from_array(np.array([0], np.int64), "i0"), numpy_helper.from_array(np.array([-1], np.int64), "m1")]
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "i0"], ["b"]),
             helper.make_node("Concat", ["b", "m1"], ["shape"], axis=0), helper.make_node("Reshape", ["x", "shape"], ["f"]),
             helper.make_node("MatMul", ["f", "W"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_input_macs_count_shapes_the_cleanup_resolves(tmp_path):
    onnx.save_model(_dynamic_reshape_model(), tmp_path / "m.onnx")
    result = _invoke("optimize", tmp_path / "m.onnx", "-o", tmp_path / "o.onnx", "--report", tmp_path / "r.json",
                     "--fail-if", "macs-reduction<0", "-q")
    assert result.exit_code == 0, result.output  # the input counted 10 MACs (K unknown -> 1), the output 640: 'grew'
    stats = json.loads((tmp_path / "r.json").read_text())["stats"]
    assert stats["before"]["macs"] == stats["after"]["macs"] == 64 * 10  # per sample (N counts as 1)
    assert stats["before"]["nodes"] == 5 and stats["after"]["nodes"] <= 2  # node counts stay the input's own


def test_file_bytes_row_counts_external_data(tmp_path):
    onnx.save_model(models.zoo_like(blocks=2), tmp_path / "m.onnx", save_as_external_data=True, location="m.data", size_threshold=0)
    result = _invoke("optimize", tmp_path / "m.onnx", "-o", tmp_path / "o.onnx", "--save-external-data")
    assert result.exit_code == 0, result.output
    size_in = sum(f.stat().st_size for f in (tmp_path / "m.onnx", tmp_path / "m.data"))
    size_out = sum(f.stat().st_size for f in (tmp_path / "o.onnx", tmp_path / "o.onnx.data"))
    row = next(line for line in result.stdout.splitlines() if line.startswith("file bytes")).split()
    assert row[2:4] == [f"{size_in / 1024:.3g}", "KiB"] and row[4:6] == [f"{size_out / 1024:.3g}", "KiB"], row


def test_an_internal_error_with_a_multi_line_message_is_one_line(tmp_path, monkeypatch):
    model = _folder(tmp_path)

    def broken(*args, **kwargs):
        raise RuntimeError("first line\n  second line\n\nthird")

    monkeypatch.setattr(api, "optimize_file", broken)
    result = _invoke("optimize", model, "-o", tmp_path / "o.onnx")
    assert result.exit_code == 3
    assert result.stderr.splitlines() == ["onnxslim: error: internal error: RuntimeError: first line second line third "
                                          "(please report it; -v shows the traceback)"]


# --------------------------------------------------------------------------------------------
# 6. A reader that goes away (| head -1) changes nothing but what it sees


def _run_with_closed_stdout(*args) -> subprocess.CompletedProcess:
    """Run the CLI with a stdout pipe whose reader closed before the first write (startup takes
    longer than closing the pipe), so every print meets a broken pipe."""
    code = "import sys; from onnxslim.cli import main; sys.argv[0] = 'onnxslim'; main()"
    proc = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    return subprocess.CompletedProcess(args, proc.wait(timeout=120), "", stderr)


def test_inspect_into_a_closed_pipe_is_quiet(tmp_path):
    model = _folder(tmp_path)
    result = _run_with_closed_stdout("inspect", model)
    assert result.returncode == 0 and result.stderr == "", result.stderr  # was 'internal error: BrokenPipeError', exit 3


def test_optimize_into_a_closed_pipe_still_writes_reports_and_gates(tmp_path):
    model = _folder(tmp_path)
    result = _run_with_closed_stdout("optimize", model, "-o", tmp_path / "o.onnx", "--report", tmp_path / "r.json",
                                     "--fail-if", "nodes>0")
    assert result.returncode == 1 and "BrokenPipe" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines() == ["onnxslim: error: --fail-if: nodes>0 (nodes is 2) holds"]
    assert json.loads((tmp_path / "r.json").read_text())["fail_if"][0]["holds"] is True


def test_inspect_size_includes_external_data(tmp_path):
    onnx.save_model(models.zoo_like(blocks=2), tmp_path / "m.onnx", save_as_external_data=True, location="m.data", size_threshold=0)
    info = json.loads(_invoke("inspect", tmp_path / "m.onnx", "--json").stdout)
    on_disk = (tmp_path / "m.onnx").stat().st_size
    assert info["file_bytes"] == on_disk and info["total_bytes"] == on_disk + (tmp_path / "m.data").stat().st_size
    head = _invoke("inspect", tmp_path / "m.onnx").stdout.splitlines()[0]
    assert "with external data" in head


def test_inspect_shows_the_shapes_input_shape_gives(tmp_path):
    model = models.zoo_like(blocks=2)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "N"
    onnx.save_model(model, tmp_path / "m.onnx")
    name, out = model.graph.input[0].name, model.graph.output[0].name
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    info = json.loads(_invoke("inspect", tmp_path / "m.onnx", "--json", "--input-shape", f"{name}:2,{','.join(map(str, dims))}").stdout)
    assert info["inputs"][0]["shape"] == [2, *dims] and info["outputs"][0]["shape"][0] == 2  # were 'N' (the declared dims)
    plain = json.loads(_invoke("inspect", tmp_path / "m.onnx", "--json").stdout)
    assert plain["inputs"][0]["shape"][0] == "N" and plain["outputs"][0]["shape"][0] == "N"
    assert plain["outputs"][0]["name"] == out


def test_inspect_of_a_model_without_nodes_says_none():
    empty = models.zero_nodes()
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        onnx.save_model(empty, Path(d) / "e.onnx")
        lines = _invoke("inspect", Path(d) / "e.onnx").stdout.splitlines()
    assert "ops: none" in lines
