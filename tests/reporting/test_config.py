"""onnxslim.toml / --config: discovery, types, relative paths, CLI precedence, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.reporting.conftest import invoke


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def project(tmp_path, example, monkeypatch) -> Path:
    """A folder with models/example.onnx and an onnxslim.toml, as the current folder."""
    (tmp_path / "models").mkdir()
    example.rename(tmp_path / "models" / "example.onnx")
    (tmp_path / "build").mkdir()
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "onnxslim.toml", """
[optimize]
model = "models/example.onnx"
output = "build/example.opt.onnx"
report = "build/report.json"
skip = "dedupe"
input-shape = ["input:1,3,32,32"]
fail-if = ["nodes-increased", "bytes-increased"]
quiet = true
""")
    return tmp_path


def test_config_in_current_folder_makes_a_one_line_step(project):
    result = invoke("optimize")
    assert result.exit_code == 0, result.output
    assert result.stdout == "", "quiet = true in the config"
    report = json.loads((project / "build" / "report.json").read_text())
    assert report["options"]["skip"] == ["dedupe"] and "dedupe" not in report["pipeline"]
    assert report["options"]["input_shapes"] == {"input": [1, 3, 32, 32]}
    assert [r["condition"] for r in report["fail_if"]] == ["nodes-increased", "bytes-increased"]
    assert report["config"]["path"] == "onnxslim.toml" and len(report["config"]["sha256"]) == 64


def test_command_line_overrides_the_config(project):
    result = invoke("optimize", "-o", "build/other.onnx", "--skip", "fuse_gemm", "--fail-if", "nodes>5")
    assert result.exit_code == 1 and "nodes>5 (nodes is" in result.stderr
    assert (project / "build" / "other.onnx").is_file() and not (project / "build" / "example.opt.onnx").exists()
    report = json.loads((project / "build" / "report.json").read_text())
    assert report["options"]["skip"] == ["fuse_gemm"]
    assert [r["condition"] for r in report["fail_if"]] == ["nodes>5"]


def test_explicit_config_resolves_paths_from_its_folder(project, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    write(project / "ci.toml", '[optimize]\nmodel = "models/example.onnx"\noutput = "build/ci.onnx"\nno-verify = true\n')
    monkeypatch.chdir(elsewhere)
    result = invoke("optimize", "--config", project / "ci.toml", "-q")
    assert result.exit_code == 0, result.output
    assert (project / "build" / "ci.onnx").is_file()


@pytest.mark.parametrize("text, message", [
    ('[optimize]\nbogus = 1\n', "unknown key 'bogus' in [optimize]"),
    ('[optimise]\nmodel = "x"\n', "unknown key 'optimise'"),
    ('passes = "x"\n', "unknown key 'passes'"),
    ('[optimize]\nfrom-report = "r.json"\n', "unknown key 'from-report'"),
    ('[optimize]\nno-verify = "yes"\n', "key 'no-verify' is a flag"),
    ('[optimize]\ncalib-size = "many"\n', "key 'calib-size'"),
    ('[optimize]\ntarget = "gpu"\n', "key 'target'"),
    ('[optimize]\npasses = ["a", "b"]\n', "key 'passes' takes one value"),
    ('[optimize\n', "invalid TOML"),
    ('[optimize]\ncalib-size = 10.7\n', "key 'calib-size': expected a whole number, got 10.7"),  # click read 10
    ('[optimize]\nseed = true\n', "key 'seed': expected a whole number, got true"),  # click read 1
    ('[optimize]\ntolerance = false\n', "key 'tolerance': expected a number, got false"),
])
def test_bad_config_is_one_line_naming_the_key(project, text, message):
    write(project / "onnxslim.toml", text)
    result = invoke("optimize")
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_prune_file_in_a_config_is_found_beside_the_config(tmp_path, monkeypatch):
    import onnx

    from tests.reliability import models

    ci = tmp_path / "ci"
    (tmp_path / "elsewhere").mkdir()
    ci.mkdir()
    onnx.save_model(models.zoo_like(blocks=2), ci / "m.onnx")
    write(ci / "ratios.json", '{"*": 0.5}')
    write(ci / "c.toml", '[optimize]\nmodel = "m.onnx"\noutput = "o.onnx"\nreport = "r.json"\nprune = "ratios.json"\nquiet = true\n')
    monkeypatch.chdir(tmp_path / "elsewhere")
    result = invoke("optimize", "--config", ci / "c.toml")
    assert result.exit_code == 0, result.output  # was '--prune ratios.json: no such file' (read from the current folder)
    report = json.loads((ci / "r.json").read_text())
    assert report["stats"]["after"]["parameters"] < report["stats"]["before"]["parameters"]
    assert report["option_files"]["--prune"]["path"] == str(ci / "ratios.json")


def test_missing_explicit_config_and_missing_model(project):
    result = invoke("optimize", "--config", "nope.toml")
    assert result.exit_code == 2 and "--config nope.toml: no such file" in result.stderr
    write(project / "onnxslim.toml", "[optimize]\nquiet = true\n")
    result = invoke("optimize")
    assert result.exit_code == 2 and "no MODEL given" in result.stderr


def test_stage_options_and_repeatable_values_from_config(project):
    write(project / "onnxslim.toml", """
[optimize]
model = "models/example.onnx"
output = "build/q.onnx"
report = "build/q.json"
svd = "rank=4"
svd-min-size = 4
quantize = "int8"
quant-exclude = "fc.MatMul"
min-cosine = 0
""")
    result = invoke("optimize", "-q")
    assert result.exit_code == 0, result.output
    report = json.loads((project / "build" / "q.json").read_text())
    assert report["options"]["stage_values"]["svd"] == "rank=4" and report["options"]["stage_values"]["svd_min_size"] == 4
    assert report["options"]["stage_values"]["quant_exclude"] == ["fc.MatMul"]
    assert report["options"]["min_cosine"] == 0.0
    assert [s["name"] for s in report["stages"]][-2:] == ["factorize_svd", "insert_qdq"]


def test_from_report_ignores_the_config_in_the_folder(project):
    assert invoke("optimize").exit_code == 0
    write(project / "onnxslim.toml", "[optimize]\nbogus = 1\n")  # would be an error if read
    result = invoke("optimize", "--from-report", "build/report.json", "-o", "build/again.onnx", "-q")
    assert result.exit_code == 0, result.output
    assert (project / "build" / "again.onnx").read_bytes() == (project / "build" / "example.opt.onnx").read_bytes()
