"""The examples in examples/ run as written: the PyTorch walk-through, and the GitHub Actions job's
command lines executed on a small model with the example onnxslim.toml."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
sys.path.insert(0, str(ROOT / "tools"))
import make_example  # noqa: E402


def run_lines(workflow: Path) -> list[str]:
    """Every command of every ``run:`` step, in order (single-line and ``run: |`` blocks)."""
    commands: list[str] = []
    lines = workflow.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)(?:- )?run:\s*(.*)$", lines[i])
        i += 1
        if not m:
            continue
        indent, rest = len(m.group(1)), m.group(2).strip()
        if rest not in ("|", ">"):
            commands.append(rest.strip("'\""))
            continue
        while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
            if lines[i].strip():
                commands.append(lines[i].strip())
            i += 1
    return commands


def test_run_lines_parser(tmp_path):
    workflow = tmp_path / "w.yml"
    workflow.write_text("steps:\n  - run: echo a\n  - name: b\n    run: |\n      echo b1\n\n      echo b2\n  - run: 'echo c'\n")
    assert run_lines(workflow) == ["echo a", "echo b1", "echo b2", "echo c"]


def test_github_actions_job_runs_as_written(tmp_path):
    onnxslim = shutil.which("onnxslim")
    if onnxslim is None:
        pytest.skip("the onnxslim command is not installed (pip install -e .)")
    commands = run_lines(EXAMPLES / "github-actions.yml")
    assert commands[0].startswith("pip install") and "onnxslim optimize" in commands
    (tmp_path / "models").mkdir()
    onnx.save_model(make_example.build(), tmp_path / "models" / "model.onnx")
    config = (EXAMPLES / "onnxslim.toml").read_text()
    try:
        import matplotlib  # noqa: F401
    except ImportError:  # CI without the [report] extra: the same job without the HTML page
        config = "\n".join(line for line in config.splitlines() if not line.startswith("html ="))
    (tmp_path / "onnxslim.toml").write_text(config)
    for command in commands:
        if command.startswith("pip install"):
            continue
        done = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{command!r} exited {done.returncode}: {done.stderr[-2000:]}"
    build = tmp_path / "build"
    assert (build / "model.opt.onnx").is_file() and (build / "reproduced.onnx").is_file()
    report = json.loads((build / "report.json").read_text())
    assert [r["holds"] for r in report["fail_if"]] == [False, False, False]
    assert report["config"]["path"] == "onnxslim.toml"
    assert ("html =" in config) == (build / "report.html").is_file()


def test_github_actions_gate_fails_the_step(tmp_path):
    """The same job with a gate that holds: the optimize step exits 1, so the job fails."""
    if shutil.which("onnxslim") is None:
        pytest.skip("the onnxslim command is not installed (pip install -e .)")
    (tmp_path / "models").mkdir()
    onnx.save_model(make_example.build(), tmp_path / "models" / "model.onnx")
    (tmp_path / "onnxslim.toml").write_text('[optimize]\nmodel = "models/model.onnx"\noutput = "build/m.onnx"\nfail-if = ["nodes>3"]\n')
    (tmp_path / "build").mkdir()
    done = subprocess.run(["bash", "-c", "onnxslim optimize -q"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and done.stderr.strip().endswith("nodes>3 (nodes is 10) holds")


def test_pytorch_example(tmp_path):
    pytest.importorskip("torch")
    done = subprocess.run([sys.executable, str(EXAMPLES / "pytorch_to_int8.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["exporter"] in ("dynamo", "legacy")
    assert summary["float_accuracy"] >= 0.9, "the example's model learns its task"
    assert summary["int8_accuracy"] >= summary["float_accuracy"] - 0.02
    assert summary["int8_bytes"] < summary["float_bytes"]
    report = json.loads((tmp_path / "report.json").read_text())
    assert [s["name"] for s in report["stages"]][-1] == "insert_qdq"
    assert f"int8 {summary['int8_accuracy']:.3f}" in done.stdout
