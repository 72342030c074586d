"""The --emit stage through the real CLI: options checked up front (exit 2, one line), emit result in the report."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from onnxslim.cli import main
from tests.targets.models import conv_net, save


def run(args):
    result = CliRunner().invoke(main, ["optimize", *args])
    return result.exit_code, result.output


@pytest.fixture
def model(tmp_path):
    return str(save(conv_net(), tmp_path, "in.onnx"))


@pytest.mark.parametrize("extra, message", [
    (["--ort-format"], "--ort-format only applies with --emit DIR"),
    (["--emit", "E", "--target", "ort", "--tvm-tune-trials", "4"], "--tvm-tune-trials applies to --target tvm, not ort"),
    (["--emit", "E", "--target", "tensorrt", "--device", "x86"], "TensorRT runs only on NVIDIA GPUs"),
    (["--emit", "E", "--target", "ort", "--device", "cuda", "--ort-format"], "--ort-format"),
    (["--emit", "E", "--target", "tensorrt", "--device", "cuda", "--trt-shapes", "x:1"], "--trt-shapes"),
])
def test_usage_errors_before_any_work(tmp_path, model, extra, message):
    extra = [str(tmp_path / "E") if a == "E" else a for a in extra]
    code, output = run([model, "-o", str(tmp_path / "out.onnx"), *extra])
    assert code == 2, output
    assert message in output
    assert len(output.strip().splitlines()) == 1
    assert not (tmp_path / "out.onnx").exists() and not (tmp_path / "E").exists()


def test_emit_file_in_the_way(tmp_path, model):
    (tmp_path / "E").write_text("x")
    code, output = run([model, "-o", str(tmp_path / "out.onnx"), "--emit", str(tmp_path / "E")])
    assert code == 2 and "not a folder" in output


def test_emit_lands_in_the_report(tmp_path, model):
    report = tmp_path / "r.json"
    code, output = run([model, "-o", str(tmp_path / "out.onnx"), "--target", "ort", "--device", "arm",
                        "--emit", str(tmp_path / "E"), "--ort-threads", "2", "--report", str(report)])
    assert code == 0, output
    emitted = json.loads(report.read_text())["output"]["emit"]
    assert emitted["target"] == "ort" and emitted["device"] == "arm" and emitted["ok"]
    assert "model.onnx" in emitted["files"]
    assert json.loads((tmp_path / "E" / "session.json").read_text())["intra_op_num_threads"] == 2
    assert json.loads((tmp_path / "E" / "emit.json").read_text())["files"] == emitted["files"][:-1]
