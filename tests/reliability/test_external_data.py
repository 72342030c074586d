"""External data: weights are memory-mapped, not copied; the output's external data is right.

The > 2 GB run (tools/bigmodel.py, 2.25 GiB MLP) is marked slow:

    python -m pytest -m slow tests/reliability/test_external_data.py
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import onnxslim
from onnxslim import io
from tests.helpers import assert_equivalent, make_model, vi
from tests.reliability import models

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import bigmodel  # noqa: E402


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


def _save_external(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save_model(model, path, save_as_external_data=True, location=path.name + ".data", size_threshold=0)
    return path


def test_optimize_file_maps_weights_and_writes_them_back(tmp_path, monkeypatch):
    src_dir, out_dir = tmp_path / "in", tmp_path / "out"
    src_dir.mkdir(), out_dir.mkdir()
    src = _save_external(models.slow_mlp(3, 64), src_dir / "mlp.onnx")
    before = _digests(src_dir)
    mapped = []
    real = io.map_external_data
    monkeypatch.setattr(io, "map_external_data", lambda *a: mapped.append(real(*a)) or mapped[-1])
    report = onnxslim.optimize_file(src, out_dir / "mlp.opt.onnx", external_data=True)
    assert report.verification.status == "passed"
    assert mapped and all(isinstance(a, np.memmap) for a in mapped[0].values()) and len(mapped[0]) == 6
    assert _digests(src_dir) == before, "the input and its data file are never written"
    out = onnx.load_model(str(out_dir / "mlp.opt.onnx"), load_external_data=False)
    assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in out.graph.initializer if t.name.startswith("w"))
    assert sorted(p.name for p in out_dir.iterdir()) == ["mlp.opt.onnx", "mlp.opt.onnx.data"]
    assert_equivalent(onnx.load(src), onnx.load(out_dir / "mlp.opt.onnx"))


def test_external_data_in_a_constant_attribute_is_read_instead(tmp_path):
    w = np.random.default_rng(0).standard_normal((32, 32)).astype(np.float32)
    nodes = [helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(w)),
             helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Identity", ["m"], ["y"])]
    model = make_model(nodes, [vi("x", [1, 32])], [vi("y", [1, 32])])
    value = model.graph.node[0].attribute[0].t  # onnx.save_model leaves attribute tensors inline
    (tmp_path / "c.data").write_bytes(value.raw_data)
    onnx.external_data_helper.set_external_data(value, "c.data", 0, len(value.raw_data))
    value.data_location = onnx.TensorProto.EXTERNAL
    value.ClearField("raw_data")
    src = tmp_path / "c.onnx"
    src.write_bytes(model.SerializeToString())
    header = onnx.load_model(str(src), load_external_data=False)
    assert io.map_external_data(header, src) is None
    report = onnxslim.optimize_file(src, tmp_path / "c.opt.onnx")
    assert report.verification.status == "passed"
    assert_equivalent(onnx.load(src), onnx.load(tmp_path / "c.opt.onnx"))


@pytest.mark.slow
def test_model_over_2gb_peak_rss_and_external_data(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    if free < 8 * 2**30:
        pytest.skip(f"needs 8 GiB free disk, {free / 2**30:.1f} GiB available")
    src = tmp_path / "mlp.onnx"
    weights = bigmodel.generate(src)  # 9 x 8192^2 float32 = 2.25 GiB
    assert weights > 2**31
    size = bigmodel.model_bytes(src)
    rows = bigmodel.bench(src)
    ours = rows[0]
    assert ours["returncode"] == 0, ours.get("error")
    assert ours["verification"] == "passed"
    assert ours["rss_ratio"] <= 1.5, f"peak RSS {ours['peak_rss_mib']} MiB is {ours['rss_ratio']}x the model's {size} bytes"
    assert ours["external_tensors"] >= 9 and abs(ours["bytes"] - size) < 2**20  # weights (and biases) external
    assert ours["max_abs_error"] <= 1e-4 * max(1.0, ours["max_abs_output"])
    print(json.dumps(ours))
