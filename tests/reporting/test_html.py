"""--html: every chart present, self-contained (no external request), clear error without matplotlib;
rendered in headless Chromium in a slow test."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

pytest.importorskip("matplotlib")

from onnxslim.reporting.charts import CHARTS  # noqa: E402
from onnxslim.reporting.html import render  # noqa: E402
from tests.reporting.conftest import invoke, make_example  # noqa: E402

FULL = ("--svd", "rank=4", "--svd-min-size", "4", "--quantize", "int8", "--quant-max-error", "sqnr=45")


def has_option(flag: str) -> bool:
    from onnxslim.cli import optimize

    return any(flag in getattr(p, "opts", ()) for p in optimize.params)


PRUNE = ("--prune", "0.25") if has_option("--prune") else ()


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> tuple[Path, Path]:
    """One run through every lossy stage (with sensitivity rows): (report.json, report.html)."""
    folder = tmp_path_factory.mktemp("html")
    model = folder / "example.onnx"
    onnx.save_model(make_example.build(), model)
    report, page = folder / "report.json", folder / "report.html"
    result = invoke("optimize", model, "-o", folder / "out.onnx", *PRUNE, *FULL, "--report", report, "--html", page, "-q")
    assert result.exit_code == 0, result.output
    return report, page


def external_references(text: str) -> list[str]:
    """src/href values (and CSS url()/@import) that point outside the page."""
    refs = re.findall(r"""(?:src|href)\s*=\s*["']?\s*([^"'\s>]+)""", text, flags=re.I)
    refs += re.findall(r"url\(\s*['\"]?([^)'\"]+)", text) + re.findall(r"@import", text)
    return [r for r in refs if not r.startswith("#")]


def test_page_has_every_chart_and_no_external_request(full_run):
    _, page = full_run
    text = page.read_text()
    for chart_id in CHARTS:
        if chart_id == "chart-pruning" and not PRUNE:
            continue
        figure = re.search(rf'<figure id="{chart_id}">(.*?)</figure>', text, flags=re.S)
        assert figure, chart_id
        assert "<svg" in figure.group(1), f"{chart_id} has no chart"
    assert external_references(text) == []
    assert re.findall(r"(?:src|href)=[\"']https?://", text) == []
    assert "<script" not in text and "<link" not in text and "<img" not in text
    assert "<?xml" not in text and "<!DOCTYPE svg" not in text


def test_chart_ids_are_unique_across_figures(full_run):
    text = full_run[1].read_text()
    ids = re.findall(r'\bid="([^"]+)"', text)
    assert len(ids) == len(set(ids))


def test_page_shows_the_tables_and_verification(full_run):
    report_path, page = full_run
    text, report = page.read_text(), json.loads(report_path.read_text())
    assert ("Pruning groups: layer" in text) == bool(PRUNE)
    assert "SVD layers: layer" in text and "Quantization: sensitivity" in text
    assert "Verification: <span" in text and report["pipeline"].split(",")[0] in text
    assert report["input"]["sha256"][:16] in text


def test_report_command_renders_a_saved_report(full_run, tmp_path):
    report_path, page = full_run
    again = tmp_path / "again.html"
    result = invoke("report", report_path, "--html", again)
    assert result.exit_code == 0, result.output
    assert again.read_text() == page.read_text(), "rendering is deterministic"


def test_page_for_an_exact_run_says_what_is_missing(example, tmp_path):
    page = tmp_path / "r.html"
    assert invoke("optimize", example, "-o", tmp_path / "o.onnx", "--html", page, "-q").exit_code == 0
    text = page.read_text()
    assert text.count("<svg") == 3  # ops, stages, pass time
    assert text.count("Nothing to show") == len(CHARTS) - 3


def test_html_escapes_names():
    report = {"schema": "onnxslim.report/1", "pipeline": "<script>x</script>", "input": {"path": "<b>m.onnx"},
              "stats": {}, "passes": [], "notes": [{"pass": "p", "where": "<img src=x>", "reason": "r"}]}
    text = render(report)
    assert "<script>x" not in text and "<img src" not in text and "&lt;script&gt;" in text


def test_missing_matplotlib_is_a_usage_error_naming_the_extra(example, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = invoke("optimize", example, "-o", tmp_path / "o.onnx", "--html", tmp_path / "r.html")
    assert result.exit_code == 2
    assert "onnxslim[report]" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o.onnx").exists(), "checked before any work"


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def screenshot(page: Path, png: Path, profile: Path, height: int = 4200) -> subprocess.CompletedProcess:
    return subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                           "--hide-scrollbars", f"--window-size=1100,{height}", f"--screenshot={png}", page.resolve().as_uri()],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
@pytest.mark.skipif(chromium() is None, reason="chromium not installed (apt-get install chromium)")
def test_renders_in_headless_chromium(full_run, tmp_path):
    _, page = full_run
    png = tmp_path / "shot.png"
    result = screenshot(page, png, tmp_path / "profile")
    assert result.returncode == 0, result.stderr[-2000:]
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000  # a page with charts, not a blank one
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1100, 4200)
