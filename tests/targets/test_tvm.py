"""TVM emitter: x86 library matches onnxruntime, aarch64 ELF, CUDA kernels compile with nvcc,
unsupported ops are named, tuning options are checked (tuning itself is slow)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("tvm", reason="apache-tvm not installed (extra [tvm])")

from onnxslim.errors import UsageError  # noqa: E402
from onnxslim.targets import emit, validate  # noqa: E402
from onnxslim.targets.tvm import elf_machine  # noqa: E402
from tests.targets.models import conv_net, lstm, mlp, save  # noqa: E402


def test_x86_library_matches_onnxruntime_and_loader_runs(tmp_path):
    src = save(conv_net(), tmp_path)
    result = emit("tvm", "x86", src, tmp_path / "out", {})
    assert {"model.so", "tvm_meta.json", "run_tvm.py"} <= set(result.files)
    assert [c.status for c in result.checks] == ["passed"], result.checks
    meta = json.loads((tmp_path / "out" / "tvm_meta.json").read_text())
    assert meta["inputs"] == [{"name": "x", "shape": [1, 16, 8, 8], "dtype": "float32"}]
    proc = subprocess.run([sys.executable, str(tmp_path / "out" / "run_tvm.py")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-500:]
    assert proc.stdout.strip().endswith("y (1, 10) float32")


def test_dynamic_batch_imports_and_matches(tmp_path):
    result = emit("tvm", "x86", save(mlp("batch"), tmp_path), tmp_path / "out", {})
    assert result.ok and result.checks[0].status == "passed"


needs_cross = pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None, reason="needs g++-aarch64-linux-gnu")


@needs_cross
def test_arm_library_is_aarch64_elf(tmp_path, monkeypatch):
    monkeypatch.delenv("ONNXSLIM_AARCH64_PYTHON", raising=False)
    result = emit("tvm", "arm", save(conv_net(), tmp_path), tmp_path / "out", {})
    assert elf_machine(tmp_path / "out" / "model.so") == (True, 183)
    assert [c.status for c in result.checks] == ["passed", "skipped"]
    assert "ONNXSLIM_AARCH64_PYTHON" in result.checks[1].detail


@pytest.mark.slow
@needs_cross
@pytest.mark.skipif(not os.environ.get("ONNXSLIM_AARCH64_PYTHON"), reason="set ONNXSLIM_AARCH64_PYTHON (docs/targets.md)")
def test_arm_library_runs_under_qemu(tmp_path):
    result = emit("tvm", "arm", save(conv_net(), tmp_path), tmp_path / "out", {})
    assert [c.status for c in result.checks] == ["passed", "passed"], result.checks


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (CUDA toolkit)")
def test_cuda_kernels_compile_with_nvcc(tmp_path):
    result = emit("tvm", "cuda", save(mlp(1), tmp_path), tmp_path / "out", {})
    checks = {c.name: c.status for c in result.checks}
    assert checks["CUDA kernels compile with nvcc for sm_80"] == "passed"
    assert checks["CUDA kernels compile with nvcc for sm_90"] == "passed"
    assert checks["model.so runs on a GPU"] == "skipped"
    assert "__global__" in (tmp_path / "out" / "kernels.cu").read_text()


def test_cuda_builds_without_nvcc_or_gpu(tmp_path):
    """The build itself never needs a GPU: kernels stay CUDA source inside model.so."""
    result = emit("tvm", "cuda", save(mlp(1), tmp_path), tmp_path / "out", {})
    assert (tmp_path / "out" / "model.so").stat().st_size > 0
    assert elf_machine(tmp_path / "out" / "model.so")[1] == 62  # x86-64 host code
    assert result.checks


def test_unsupported_ops_are_listed(tmp_path):
    with pytest.raises(UsageError, match=r"cannot take LSTM \(1\)"):
        emit("tvm", "x86", save(lstm(), tmp_path), tmp_path / "out", {})


@pytest.mark.parametrize("device, options, message", [
    ("arm", {"tune_trials": 8}, "x86 only"),
    ("x86", {"tune_trials": -1}, ">= 0"),
    ("x86", {"tuning_db": "/nonexistent/db"}, "no tuning database"),
    ("cuda", {"cuda_arch": "ampere"}, "sm_XX"),
])
def test_option_errors(device, options, message):
    with pytest.raises(UsageError, match=message):
        validate("tvm", device, options)


def test_tuning_needs_static_shapes():
    with pytest.raises(UsageError, match="--input-shape"):
        validate("tvm", "x86", {"tune_trials": 4}, mlp("batch"))
    validate("tvm", "x86", {"tune_trials": 4, "input_shapes": {"x": [2, 24]}}, mlp("batch"))


@pytest.mark.slow
def test_tuning_records_and_reuses_a_database(tmp_path):
    src = save(mlp(1), tmp_path)
    db = tmp_path / "db"
    tuned = emit("tvm", "x86", src, tmp_path / "tuned", {"tune_trials": 4, "tuning_db": str(db)})
    assert tuned.ok and (db / "database_tuning_record.json").is_file()
    meta = json.loads((tmp_path / "tuned" / "tvm_meta.json").read_text())
    assert meta["tuning"]["trials"] == 4 and meta["tuning"]["records"] >= 1
    reused = emit("tvm", "x86", src, tmp_path / "reused", {"tuning_db": str(db)})
    meta = json.loads((tmp_path / "reused" / "tvm_meta.json").read_text())
    assert reused.ok and meta["tuning"]["trials"] == 0 and meta["tuning"]["records"] == meta["tuning"]["records_before"]
