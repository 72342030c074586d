"""ONNX backend conformance of the default pipeline (slow: ~1.5 min on 2 cores).

    python -m pytest -m conformance

Runs tools/conformance.py over every suite: no case that plain onnxruntime passes may fail after
``onnxslim.optimize``, no case may crash it, and no count may get worse than the summary kept in
conformance/summary.json (refresh it with ``python tools/conformance.py --json conformance/summary.json``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import conformance  # noqa: E402

pytestmark = pytest.mark.conformance

# Counts that may only go up, and counts that may only go down.
AT_LEAST = ("total", "ort_passes", "still_pass", "quantize_runs")
AT_MOST = ("rejected", "quantize_failures")


@pytest.fixture(scope="module")
def result() -> dict:
    outcome = conformance.run(list(conformance.SUITES), workers=2)
    print("\n" + conformance.format_table(outcome))
    return outcome


@pytest.mark.parametrize("suite", conformance.SUITES)
def test_no_regression_and_no_crash(result, suite):
    counts = result["suites"][suite]
    assert counts["regression_cases"] == [], "optimized model no longer matches the reference"
    assert counts["crash_cases"] == [], "optimize crashed"


@pytest.mark.parametrize("suite", conformance.SUITES)
def test_counts_not_worse_than_committed(result, suite):
    committed = json.loads((ROOT / "conformance" / "summary.json").read_text())["suites"][suite]
    now = result["suites"][suite]
    worse = [f"{k}: {now[k]} < {committed[k]}" for k in AT_LEAST if now[k] < committed[k]]
    worse += [f"{k}: {now[k]} > {committed[k]}" for k in AT_MOST if now[k] > committed[k]]
    assert not worse, f"{suite}: {worse}"
