"""Same input and options -> byte-identical output, whatever Python's hash seed.

tests/test_cli.py checks two runs on the small example; this runs a larger zoo-like net on which
most cleanup passes fire (set iteration order, dict order of names, dedupe's hashing and fresh
names are where nondeterminism would show) under three PYTHONHASHSEED values.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import onnx

from tests.helpers import assert_equivalent
from tests.reliability import models

EXPECTED_TO_FIRE = {"fold_constants", "fold_shapes", "eliminate_identity", "collapse_reshapes", "fuse_conv_bn",
                    "fuse_conv_affine", "fuse_pad", "fuse_gemm", "dedupe"}


def test_zoo_like_output_is_byte_identical_across_hash_seeds(tmp_path):
    src = tmp_path / "zoo_like.onnx"
    onnx.save_model(models.zoo_like(), src)
    outputs = []
    for seed in ("0", "1", "4242"):
        out, report = tmp_path / f"out{seed}.onnx", tmp_path / f"report{seed}.json"
        env = {**os.environ, "PYTHONHASHSEED": seed}
        proc = subprocess.run([sys.executable, "-m", "onnxslim.cli", "optimize", str(src), "-o", str(out), "--report", str(report), "-q"],
                              capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stderr
        outputs.append(out.read_bytes())
        fired = {p["name"] for p in json.loads(report.read_text())["passes"] if p["changed"]}
        assert EXPECTED_TO_FIRE <= fired, f"passes that did not fire: {EXPECTED_TO_FIRE - fired}"
    assert outputs[0] == outputs[1] == outputs[2]
    optimized = onnx.load_model_from_string(outputs[0])
    assert len(optimized.graph.node) < len(onnx.load(src).graph.node) // 3
    assert_equivalent(onnx.load(src), optimized)
