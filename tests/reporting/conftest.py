"""Shared fixtures: the repo's example model, a CLI runner that keeps stderr apart."""

from __future__ import annotations

import sys
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from onnxslim import cli

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import make_example  # noqa: E402


@pytest.fixture
def example(tmp_path) -> Path:
    path = tmp_path / "example.onnx"
    onnx.save_model(make_example.build(), path)
    return path


def invoke(*args):
    """Run ``onnxslim ARGS``; returns click's Result (stdout in .stdout, stderr in .stderr)."""
    return CliRunner().invoke(cli.main, [str(a) for a in args], catch_exceptions=False)
