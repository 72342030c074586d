"""report.json: schema fields, per-pass and per-stage records, and --from-report reproduction."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import onnx
import pytest

from onnxslim.errors import UsageError
from onnxslim.report import SCHEMA, file_digest, load_report, path_digest
from tests.reporting.conftest import invoke

LOSSY = ("--svd", "rank=4", "--svd-min-size", "4", "--quantize", "int8")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_lossy(example: Path, tmp_path: Path) -> tuple[Path, dict]:
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    result = invoke("optimize", example, "-o", out, *LOSSY, "--report", report, "-q")
    assert result.exit_code == 0, result.output
    return out, json.loads(report.read_text())


def test_report_has_versions_hashes_pipeline_and_options(example, tmp_path):
    report_path = tmp_path / "r.json"
    assert invoke("optimize", example, "-o", tmp_path / "o.onnx", "--report", report_path, "-q").exit_code == 0
    report = json.loads(report_path.read_text())
    assert report["schema"] == SCHEMA
    assert {"python", "onnxslim", "onnx", "onnxruntime", "onnx-graphsurgeon", "numpy", "protobuf"} <= set(report["versions"])
    assert report["input"]["sha256"] == sha(example) and report["input"]["external_data"] == []
    assert report["output"]["sha256"] == sha(tmp_path / "o.onnx")
    assert report["input"]["total_bytes"] == example.stat().st_size
    assert report["pipeline"].startswith("infer_shapes,[")
    assert report["options"]["verify"] is True and report["options"]["stage_values"]["quantize"] is None
    # exact pipeline: stages are input and cleanup (no fidelity); changed passes carry before/after stats
    assert [s["name"] for s in report["stages"]] == ["input", "cleanup"]
    assert report["stages"][-1]["stats"]["nodes"] == report["stats"]["after"]["nodes"]
    changed = [p for p in report["passes"] if p["changed"]]
    assert changed and all("stats" in p for p in changed)
    assert not any("stats" in p for p in report["passes"] if not p["changed"])
    first = changed[0]["stats"]
    assert first["before"]["nodes"] == report["stats"]["before"]["nodes"]
    assert first["after"]["nodes"] == changed[0]["nodes_after"]
    for a, b in zip(changed, changed[1:]):  # stats chain: each pass starts where the last change left off
        assert b["stats"]["before"] == a["stats"]["after"]


def test_lossy_stages_record_stats_and_fidelity(example, tmp_path):
    _, report = run_lossy(example, tmp_path)
    names = [s["name"] for s in report["stages"]]
    assert names == ["input", "cleanup", "factorize_svd", "insert_qdq"]
    svd, quant = report["stages"][2], report["stages"][3]
    assert svd["stats"]["macs"] < report["stages"][1]["stats"]["macs"]
    for stage in (svd, quant):
        assert stage["fidelity"] and stage["fidelity"][0]["name"] == "logits"
        assert -1 <= stage["fidelity"][0]["cosine"] <= 1 and stage["fidelity"][0]["samples"] == 8
    # the last lossy stage measures what the final verification measures (same held-out inputs)
    assert quant["fidelity"][0]["cosine"] == pytest.approx(report["verification"]["fidelity"][0]["cosine"], abs=1e-6)
    details = {p["name"]: p["details"] for p in report["passes"] if p["details"]}
    assert {"factorize_svd", "insert_qdq"} <= set(details)


def test_from_report_reproduces_byte_identical_output(example, tmp_path):
    out, report = run_lossy(example, tmp_path)
    again = tmp_path / "again.onnx"
    result = invoke("optimize", "--from-report", tmp_path / "report.json", example, "-o", again, "--report", tmp_path / "r2.json", "-q")
    assert result.exit_code == 0, result.output
    assert again.read_bytes() == out.read_bytes()
    second = json.loads((tmp_path / "r2.json").read_text())
    assert second["reproduced_from"]["output_sha256"] == report["output"]["sha256"] == second["output"]["sha256"]
    assert second["options"] == report["options"] and second["pipeline"] == report["pipeline"]


def test_from_report_uses_the_recorded_input_path(example, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert invoke("optimize", example.name, "-o", "a.onnx", "--report", "r.json", "-q").exit_code == 0
    result = invoke("optimize", "--from-report", "r.json", "-o", "b.onnx", "-q")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_from_report_refuses_another_input(example, tmp_path):
    assert invoke("optimize", example, "-o", tmp_path / "a.onnx", "--report", tmp_path / "r.json", "-q").exit_code == 0
    other = tmp_path / "other.onnx"
    model = onnx.load(example)
    model.doc_string = "changed"
    onnx.save(model, other)
    result = invoke("optimize", "--from-report", tmp_path / "r.json", other, "-o", tmp_path / "b.onnx")
    assert result.exit_code == 2
    assert "is not the recorded input (sha256" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "b.onnx").exists()


@pytest.mark.parametrize("flag", [("--passes", "fold_constants"), ("--quantize", "int8"), ("--no-verify",), ("--config", "x.toml")])
def test_from_report_rejects_options_that_change_the_run(example, tmp_path, flag):
    assert invoke("optimize", example, "-o", tmp_path / "a.onnx", "--report", tmp_path / "r.json", "-q").exit_code == 0
    result = invoke("optimize", "--from-report", tmp_path / "r.json", *flag)
    assert result.exit_code == 2 and "cannot change them" in result.stderr


def test_from_report_missing_input_and_bad_reports(example, tmp_path):
    assert invoke("optimize", example, "-o", tmp_path / "a.onnx", "--report", tmp_path / "r.json", "-q").exit_code == 0
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.move(str(example), moved / example.name)
    result = invoke("optimize", "--from-report", tmp_path / "r.json")
    assert result.exit_code == 2 and "is not a file; give MODEL" in result.stderr
    (tmp_path / "bad.json").write_text("{not json")
    assert "not a JSON report" in invoke("optimize", "--from-report", tmp_path / "bad.json").stderr
    (tmp_path / "other.json").write_text(json.dumps({"schema": "something/1"}))
    assert "not an onnxslim report" in invoke("optimize", "--from-report", tmp_path / "other.json").stderr
    (tmp_path / "future.json").write_text(json.dumps({"schema": "onnxslim.report/99"}))
    with pytest.raises(UsageError, match="onnxslim.report/99"):
        load_report(tmp_path / "future.json")
    data = json.loads((tmp_path / "r.json").read_text())
    data["options"]["from_the_future"] = 1
    (tmp_path / "newer.json").write_text(json.dumps(data))
    result = invoke("optimize", "--from-report", tmp_path / "newer.json", moved / example.name)
    assert result.exit_code == 2 and "'from_the_future'" in result.stderr


def test_from_report_checks_calibration_data(example, tmp_path):
    import numpy as np

    calib = tmp_path / "calib.npz"
    np.savez(calib, input=np.random.default_rng(0).standard_normal((10, 3, 32, 32)).astype(np.float32))
    args = ("optimize", example, "-o", tmp_path / "a.onnx", "--svd", "rank=4", "--svd-min-size", "4", "--calib-data", calib,
            "--report", tmp_path / "r.json", "-q")
    assert invoke(*args).exit_code == 0
    recorded = json.loads((tmp_path / "r.json").read_text())
    assert recorded["calibration"]["sha256"] == path_digest(calib)["sha256"]
    same = invoke("optimize", "--from-report", tmp_path / "r.json", "-o", tmp_path / "same.onnx", "-q")
    assert same.exit_code == 0, same.output
    assert (tmp_path / "same.onnx").read_bytes() == (tmp_path / "a.onnx").read_bytes()
    np.savez(calib, input=np.zeros((10, 3, 32, 32), np.float32))
    result = invoke("optimize", "--from-report", tmp_path / "r.json", "-o", tmp_path / "b.onnx")
    assert result.exit_code == 2 and "calibration data" in result.stderr


def test_digest_of_external_data_and_folders(tmp_path, example):
    model = onnx.load(example)
    path = tmp_path / "ext" / "m.onnx"
    path.parent.mkdir()
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location="m.weights", size_threshold=0)
    digest = file_digest(path)
    assert [d["path"] for d in digest["external_data"]] == ["m.weights"]
    assert digest["total_bytes"] == path.stat().st_size + (path.parent / "m.weights").stat().st_size
    folder = path_digest(path.parent)
    assert folder["files"] == 2 and len(folder["sha256"]) == 64
    (path.parent / "m.weights").write_bytes(b"x")
    assert path_digest(path.parent)["sha256"] != folder["sha256"]


def test_schema_doc_names_every_top_level_key(example, tmp_path):
    assert invoke("optimize", example, "-o", tmp_path / "o.onnx", "--report", tmp_path / "r.json", "-q").exit_code == 0
    report = json.loads((tmp_path / "r.json").read_text())
    doc = (Path(__file__).resolve().parents[2] / "docs" / "report-schema.md").read_text()
    documented = set()
    for cell in re.findall(r"^\| ([^|]+) \|", doc, flags=re.M):
        documented.update(re.findall(r"`([a-z_]+)(?:\.[a-z_]+)?`", cell))
    assert set(report) - documented == set()
    assert SCHEMA in doc
