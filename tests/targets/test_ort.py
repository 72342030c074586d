"""ONNX Runtime emitter: offline-optimized model.onnx per device, session.json, model.ort, checks."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

from onnxslim.errors import UsageError
from onnxslim.targets import emit, validate
from onnxslim.targets.ort import session_from_settings
from tests.helpers import random_feeds
from tests.targets.models import conv_net, mlp, save


def test_x86_writes_optimized_model_and_settings(tmp_path):
    src = save(conv_net(), tmp_path)
    result = emit("ort", "x86", src, tmp_path / "out", {})
    assert {"model.onnx", "session.json", "run_ort.py", "emit.json"} <= set(result.files)
    assert [c.status for c in result.checks] == ["passed"]
    settings = json.loads((tmp_path / "out" / "session.json").read_text())
    assert settings["execution_providers"] == ["CPUExecutionProvider"]
    assert settings["session_config_entries"] == {"session.qdqisint8allowed": "0"}
    fused = {n.op_type for n in __import__("onnx").load(str(tmp_path / "out" / "model.onnx")).graph.node}
    assert "FusedConv" in fused  # Conv+Relu fused offline by onnxruntime's extended level
    feeds = random_feeds(conv_net())
    want = ort.InferenceSession(str(src)).run(None, feeds)[0]
    got = session_from_settings(tmp_path / "out" / "model.onnx", settings).run(None, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_arm_and_cuda_settings(tmp_path):
    src = save(mlp(), tmp_path)
    arm = emit("ort", "arm", src, tmp_path / "arm", {})
    assert json.loads((tmp_path / "arm" / "session.json").read_text())["session_config_entries"] == {"session.qdqisint8allowed": "1"}
    cuda = emit("ort", "cuda", src, tmp_path / "cuda", {"threads": 4})
    settings = json.loads((tmp_path / "cuda" / "session.json").read_text())
    assert settings["execution_providers"] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert settings["intra_op_num_threads"] == 4
    assert arm.ok and cuda.ok
    assert any("basic" in note for note in cuda.notes)


def test_ort_format_on_request(tmp_path):
    src = save(conv_net(), tmp_path)
    result = emit("ort", "arm", src, tmp_path / "out", {"ort_format": True})
    assert "model.ort" in result.files
    assert any(f.endswith(".config") for f in result.files)
    assert [c.status for c in result.checks] == ["passed", "passed"]
    sess = ort.InferenceSession(str(tmp_path / "out" / "model.ort"))
    assert sess.run(None, random_feeds(conv_net()))[0].shape == (1, 10)


def test_ort_format_is_refused_for_cuda():
    with pytest.raises(UsageError, match="--ort-format"):
        validate("ort", "cuda", {"ort_format": True})


def test_loader_example_runs(tmp_path):
    src = save(mlp(), tmp_path)
    emit("ort", "x86", src, tmp_path / "out", {})
    proc = subprocess.run([sys.executable, str(tmp_path / "out" / "run_ort.py")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "y (1, 8) float32"


@pytest.mark.filterwarnings("ignore")
def test_int8_u8s8_model_matches_by_cosine(tmp_path):
    from onnxslim import optimize

    quantized, _ = optimize(conv_net(), target="ort", device="x86", stage_values={"quantize": "int8"})
    src = save(quantized, tmp_path)
    result = emit("ort", "x86", src, tmp_path / "out", {})
    assert result.ok, result.checks
    assert "cosine" in result.checks[0].detail
    ops = {n.op_type for n in __import__("onnx").load(str(tmp_path / "out" / "model.onnx")).graph.node}
    assert "QLinearConv" in ops  # the QDQ groups became integer kernels offline
