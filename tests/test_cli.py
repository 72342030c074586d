"""The `onnxslim` CLI end to end: optimize, inspect, verify, passes, errors and exit codes."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper

from onnxslim import cli
from onnxslim import pipeline as pl
from tests.helpers import assert_equivalent, init, make_model, op_counts, vi

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import make_example  # noqa: E402


@pytest.fixture
def example(tmp_path) -> Path:
    path = tmp_path / "example.onnx"
    onnx.save_model(make_example.build(), path)
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def invoke(*args: str):
    return CliRunner().invoke(cli.main, [str(a) for a in args], catch_exceptions=False)


def test_optimize_example_end_to_end(example, tmp_path):
    before = digest(example)
    report_path = tmp_path / "report.json"
    result = invoke("optimize", example, "--report", report_path)
    assert result.exit_code == 0, result.output
    out = tmp_path / "example.opt.onnx"
    assert out.is_file()
    assert digest(example) == before, "input must never change"
    original, optimized = onnx.load(example), onnx.load(out)
    onnx.checker.check_model(optimized, full_check=True)
    assert_equivalent(original, optimized)
    counts = op_counts(optimized)
    # Everything make_example plants is removed: Identity, Dropout, BN, Constant, Pad, Mul,
    # the shape chain, the duplicate Relu and the dead Sigmoid; MatMul+Add becomes Gemm.
    assert counts == {"Conv": 3, "Relu": 3, "Add": 1, "GlobalAveragePool": 1, "Reshape": 1, "Gemm": 1}, counts
    assert out.stat().st_size <= example.stat().st_size
    report = json.loads(report_path.read_text())
    assert report["schema"] == "onnxslim.report/1"
    assert report["pipeline"] == pl.DEFAULT_PIPELINE.replace("]*10", "]")
    assert report["verification"]["status"] == "passed"
    assert report["stats"]["before"]["nodes"] == 27 and report["stats"]["after"]["nodes"] == 10
    assert report["input"]["sha256"] == before and report["output"]["sha256"] == digest(out)
    assert "verification passed" in result.output and "nodes" in result.output


def test_optimize_is_deterministic_across_processes(example, tmp_path):
    outs = []
    for i in range(2):
        out = tmp_path / f"run{i}.onnx"
        proc = subprocess.run([sys.executable, "-m", "onnxslim.cli", "optimize", str(example), "-o", str(out), "-q"],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


def test_explicit_passes_and_skip(example, tmp_path):
    out = tmp_path / "o.onnx"
    assert invoke("optimize", example, "-o", out, "--passes", "eliminate_identity", "-q").exit_code == 0
    counts = op_counts(onnx.load(out))
    assert "Identity" not in counts and "Dropout" not in counts and counts["BatchNormalization"] == 2
    assert invoke("optimize", example, "-o", out, "--skip", "fuse_conv_bn", "-q").exit_code == 0
    assert op_counts(onnx.load(out))["BatchNormalization"] == 2


def _dynamic_model() -> onnx.ModelProto:
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Shape", ["c"], ["s"]),
        helper.make_node("Reshape", ["c", "s"], ["y"]),
    ]
    return make_model(nodes, [vi("x", ["N", 3, "H", "W"])], [vi("y", ["N", 4, "H", "W"])], [init("w", w)])


def test_input_shape_fixes_dims_and_enables_folding(tmp_path):
    src = tmp_path / "dyn.onnx"
    onnx.save_model(_dynamic_model(), src)
    out = tmp_path / "dyn.opt.onnx"
    result = invoke("optimize", src, "-o", out, "--input-shape", "x:2,3,8,8")
    assert result.exit_code == 0, result.output
    model = onnx.load(out)
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [2, 3, 8, 8]
    assert op_counts(model) == {"Conv": 1}  # Shape folded, Reshape to the same shape removed


@pytest.mark.parametrize(
    "shape_arg, message",
    [("nope:1,3,8,8", "not a model input"), ("x:1,3,8", "rank 3 given"), ("x:1,3,0,8", "positive"), ("x1,3", "expected NAME")],
)
def test_bad_input_shape_is_usage_error(tmp_path, shape_arg, message):
    src = tmp_path / "dyn.onnx"
    onnx.save_model(_dynamic_model(), src)
    result = invoke("optimize", src, "--input-shape", shape_arg)
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "dyn.opt.onnx").exists()


def _break_relu_pass():
    class BreakRelu(pl.Pass):
        """Turns Relu into Sigmoid (a deliberately wrong rewrite)."""

        name = "break_relu"

        def run(self, graph, ctx):
            changed = False
            for node in graph.nodes:
                if node.op == "Relu":
                    node.op, changed = "Sigmoid", True
            return pl.PassResult(changed)

    return BreakRelu


def test_verification_failure_exit_1_and_output_kept_under_clear_name(example, tmp_path, monkeypatch):
    passes = dict(pl.registry())
    passes["break_relu"] = _break_relu_pass()
    monkeypatch.setattr(pl, "registry", lambda: passes)
    out = tmp_path / "o.onnx"
    report_path = tmp_path / "r.json"
    result = invoke("optimize", example, "-o", out, "--passes", "eliminate_identity,break_relu", "--report", report_path)
    assert result.exit_code == 1
    assert "verification FAILED" in result.output
    assert not out.exists()
    assert (tmp_path / "o.verify-failed.onnx").is_file()
    assert json.loads(report_path.read_text())["verification"]["status"] == "failed"


def test_verify_each_names_the_pass_that_broke_outputs(example, tmp_path, monkeypatch):
    passes = dict(pl.registry())
    passes["break_relu"] = _break_relu_pass()
    monkeypatch.setattr(pl, "registry", lambda: passes)
    out = tmp_path / "o.onnx"
    report_path = tmp_path / "r.json"
    result = invoke("optimize", example, "-o", out, "--passes", "eliminate_identity,fuse_conv_bn,break_relu,dedupe", "--verify-each",
                    "--report", report_path)
    assert result.exit_code == 1
    assert "pass 'break_relu' (round 1) changed the outputs" in result.output
    assert not out.exists()
    kept = tmp_path / "o.verify-failed.onnx"  # the model right after the breaking pass, for debugging
    assert f"the model after that pass kept as {kept}" in result.output
    assert op_counts(onnx.load(kept))["Sigmoid"] >= 1 and op_counts(onnx.load(kept))["Relu"] == 0
    report = json.loads(report_path.read_text())
    assert [r["status"] for r in report["verify_each"]][-1] == "failed"
    assert report["verify_each"][-1]["pass"] == "break_relu" and report["output"]["path"] == str(kept)


def test_verify_each_with_a_lossy_stage_checks_the_passes_after_it(tmp_path):
    from tests.reliability import models

    onnx.save_model(models.zoo_like(blocks=2), tmp_path / "m.onnx")
    report_path = tmp_path / "r.json"
    result = invoke("optimize", tmp_path / "m.onnx", "-o", tmp_path / "o.onnx", "--prune", "0.3", "--verify-each", "--report", report_path)
    assert result.exit_code == 0, result.output  # pruning changed the outputs by design: not a verification failure
    rows = json.loads(report_path.read_text())["verify_each"]
    statuses = {r["pass"]: r["status"] for r in rows}
    assert statuses["prune_channels"] == "lossy"
    assert {s for p, s in statuses.items() if p != "prune_channels"} == {"passed"}


def test_no_verify_skips_verification(example, tmp_path):
    result = invoke("optimize", example, "-o", tmp_path / "o.onnx", "--no-verify")
    assert result.exit_code == 0 and "verification" not in result.output


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing.onnx", "no such file"),
        (lambda d: d, "is a directory"),
        (lambda d: _write(d / "empty.onnx", b""), "empty file"),
        (lambda d: _write(d / "json.onnx", b'{"graph": 1}'), "not an ONNX model"),
        (lambda d: _write(d / "rand.onnx", np.random.default_rng(0).bytes(4096)), "not"),
        (lambda d: _write(d / "trunc.onnx", make_example.build().SerializeToString()[:5000]), "not a valid ONNX"),
    ],
)
def test_bad_input_files_give_one_line_and_exit_2(tmp_path, make, message):
    src = make(tmp_path)
    result = invoke("optimize", src, "-o", tmp_path / "out.onnx")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxslim: error:") and message in lines[0], result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out.onnx").exists()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_invalid_graph_dangling_input_is_rejected(tmp_path):
    graph = helper.make_graph([helper.make_node("Relu", ["ghost"], ["y"])], "g", [vi("x", [1])], [vi("y", [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    src = _write(tmp_path / "dangling.onnx", model.SerializeToString())
    result = invoke("optimize", src)
    assert result.exit_code == 2 and "invalid ONNX model" in result.output


def test_output_equal_to_input_and_missing_folder(example, tmp_path):
    before = digest(example)
    assert invoke("optimize", example, "-o", example).exit_code == 2
    assert digest(example) == before
    result = invoke("optimize", example, "-o", tmp_path / "no" / "dir" / "o.onnx")
    assert result.exit_code == 2 and "does not exist" in result.output


def test_malformed_pipeline_and_unknown_skip(example):
    assert "unknown pass 'nope'" in invoke("optimize", example, "--passes", "nope").output
    assert invoke("optimize", example, "--passes", "[dedupe").exit_code == 2
    assert invoke("optimize", example, "--skip", "nope").exit_code == 2


def test_no_partial_files_left_after_failure(example, tmp_path):
    invoke("optimize", example, "-o", tmp_path / "o.onnx", "--passes", "[dedupe")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["example.onnx"]


def test_inspect_text_and_json(example):
    result = invoke("inspect", example)
    assert result.exit_code == 0
    assert "input: float32[1, 3, 32, 32]" in result.output and "MACs" in result.output
    data = json.loads(invoke("inspect", example, "--json").output)
    assert data["nodes"] == 27 and data["ops"]["BatchNormalization"] == 2
    assert data["opsets"] == {"ai.onnx": 18}
    # Conv MACs: stem 16*32*32*27 + block1 32*32*32*144 + block2 32*32*32*32, MatMul 32*10
    assert data["macs_by_op"] == {"Conv": 16 * 1024 * 27 + 32 * 1024 * 144 + 32 * 1024 * 32, "MatMul": 320}
    assert data["largest_tensors"][0]["name"] == "block1.w"


def test_verify_command_pass_and_fail(example, tmp_path):
    out = tmp_path / "o.onnx"
    invoke("optimize", example, "-o", out, "-q")
    result = invoke("verify", example, out)
    assert result.exit_code == 0 and "logits" in result.output and "verification passed" in result.output
    other = make_example.build(seed=1)
    other_path = tmp_path / "other.onnx"
    onnx.save_model(other, other_path)
    result = invoke("verify", example, other_path)
    assert result.exit_code == 1 and "FAIL" in result.output


def test_verify_command_refuses_models_with_other_inputs_and_unknown_input_shapes(example, tmp_path):
    renamed = make_example.build()
    renamed.graph.input[0].name = "image"
    for node in renamed.graph.node:
        node.input[:] = ["image" if name == "input" else name for name in node.input]
    onnx.save_model(renamed, tmp_path / "renamed.onnx")
    result = invoke("verify", example, tmp_path / "renamed.onnx")  # was 'verification FAILED (1 sample(s), ): ... missing'
    assert result.exit_code == 2 and result.stdout == ""
    assert f"the models take different inputs: {example} has input, {tmp_path / 'renamed.onnx'} has image" in result.stderr
    result = invoke("verify", example, example, "--input-shape", "bogus:1,3,32,32")  # was silently ignored
    assert result.exit_code == 2 and "--input-shape names 'bogus', which is not a model input (inputs: input)" in result.stderr


def test_verify_with_npz_inputs(example, tmp_path):
    npz = tmp_path / "in.npz"
    np.savez(npz, input=np.ones((1, 3, 32, 32), np.float32))
    assert invoke("verify", example, example, "--inputs", npz).exit_code == 0
    np.savez(npz, wrong=np.ones((1, 3, 32, 32), np.float32))
    result = invoke("verify", example, example, "--inputs", npz)
    assert result.exit_code == 2 and "do not match" in result.output


def test_passes_command_lists_registry():
    result = invoke("passes")
    for name in pl.registry():
        assert name in result.output
    data = json.loads(invoke("passes", "--json").output)
    assert {p["name"] for p in data["passes"]} == set(pl.registry())


def test_python_api_mirrors_cli(example):
    import onnxslim

    original = onnx.load(example)
    model, report = onnxslim.optimize(original)
    assert report.verification.status == "passed"
    assert len(model.graph.node) == report.after.nodes == 10
    assert len(original.graph.node) == 27, "the caller's model is not modified"
    model2, _ = onnxslim.optimize(str(example), passes="eliminate_identity", verify=False)
    assert len(model2.graph.node) == 24  # Identity, Dropout and the dead Sigmoid (swept) gone


def test_lint_trt_command(example, tmp_path):
    result = CliRunner().invoke(cli.main, ["lint-trt", str(example)])
    assert result.exit_code == 0 and "0 error(s)" in result.output
    assert CliRunner().invoke(cli.main, ["lint-trt", str(tmp_path / "missing.onnx")]).exit_code == 2


def test_options_to_dict_is_json_ready_with_paths_in_stage_values():
    from onnxslim.api import Options

    data = Options(stage_values={"emit": Path("/out"), "list": (Path("a"), 1)}, calib_data=Path("c")).to_dict()
    assert json.loads(json.dumps(data))["stage_values"] == {"emit": "/out", "list": ["a", 1]}
    assert data["calib_data"] == "c"
