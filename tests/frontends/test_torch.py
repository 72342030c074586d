"""onnxslim.frontends.torch.export: exporter choice, fallback, checks against torch, atomic writes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from onnxslim.errors import UsageError  # noqa: E402
from onnxslim.frontends import torch as frontend  # noqa: E402
from tests.helpers import op_counts, run_ort  # noqa: E402


class SmallNet(torch.nn.Module):
    """Conv-BN-ReLU, a split and a concat (the Split the dynamo exporter mishandles at opset 17), two outputs."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x))).mean((2, 3))
        a, b = torch.split(y, 4, dim=1)
        return self.fc(torch.cat([b, a], 1)), a.sum(1)


@pytest.fixture
def net():
    torch.manual_seed(0)
    return SmallNet(), torch.randn(2, 3, 16, 16)


def test_legacy_export_is_checked_against_torch(net, tmp_path):
    module, x = net
    result = frontend.export(module, (x,), tmp_path / "m.onnx", input_names=["images"], output_names=["logits", "sum"],
                             dynamic_axes={"images": {0: "batch"}}, exporter="legacy")
    assert (result.exporter, result.opset, result.outputs) == ("legacy", 17, 2)
    assert result.max_abs_error < 1e-4 and result.attempts == [{"exporter": "legacy", "opset": 17, "ok": True, "reason": ""}]
    model = onnx.load(tmp_path / "m.onnx")
    assert [i.name for i in model.graph.input] == ["images"] and model.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    assert "Conv" in op_counts(model)
    got = run_ort(model, {"images": np.ones((5, 3, 16, 16), np.float32)})  # dynamic batch
    assert module.training, "export leaves the caller's module in train mode"
    want = module.eval()(torch.ones(5, 3, 16, 16))[0].detach().numpy()
    np.testing.assert_allclose(got["logits"], want, rtol=1e-4, atol=1e-5)
    assert "legacy exporter, opset 17" in str(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"], "no staging leftovers"


def test_auto_falls_back_to_legacy_and_says_why(net, tmp_path, monkeypatch):
    module, x = net
    real = frontend._run_exporter

    def dynamo_breaks(torch_, module_, inputs, file, exporter, *args):
        if exporter == "dynamo":
            raise RuntimeError("dynamo exporter failed here\nsecond line")
        return real(torch_, module_, inputs, file, exporter, *args)

    monkeypatch.setattr(frontend, "_run_exporter", dynamo_breaks)
    result = frontend.export(module, x, tmp_path / "m.onnx")
    assert result.exporter == "legacy"
    assert result.attempts[0] == {"exporter": "dynamo", "opset": 18, "ok": False, "reason": "dynamo exporter failed here"}
    assert "after dynamo failed: dynamo exporter failed here" in str(result)


def test_a_wrong_model_is_rejected_and_nothing_is_written(net, tmp_path, monkeypatch):
    module, x = net
    real = frontend._run_exporter

    def wrong_weights(torch_, module_, inputs, file, *args):
        real(torch_, module_, inputs, file, *args)
        model = onnx.load(file)
        for init in model.graph.initializer:
            if init.dims and len(init.dims) == 4:  # the conv weight
                arr = onnx.numpy_helper.to_array(init) * 1.5
                init.CopyFrom(onnx.numpy_helper.from_array(arr.astype(np.float32), init.name))
        onnx.save(model, file)

    monkeypatch.setattr(frontend, "_run_exporter", wrong_weights)
    with pytest.raises(frontend.ExportError, match=r"legacy \(opset 17\): output 0: max \|ORT - torch\|"):
        frontend.export(module, x, tmp_path / "m.onnx", exporter="legacy")
    assert list(tmp_path.iterdir()) == []


def test_opset_mismatch_is_a_failed_attempt(net, tmp_path, monkeypatch):
    module, x = net
    real = frontend._run_exporter
    monkeypatch.setattr(frontend, "_run_exporter", lambda t, m, i, f, e, opset, *a: real(t, m, i, f, e, 16, *a))
    with pytest.raises(frontend.ExportError, match="asked for opset 17, the file declares opset 16"):
        frontend.export(module, x, tmp_path / "m.onnx", exporter="legacy")


def test_bad_arguments(net, tmp_path):
    module, x = net
    with pytest.raises(UsageError, match="exporter must be one of"):
        frontend.export(module, x, tmp_path / "m.onnx", exporter="torchscript")
    with pytest.raises(frontend.ExportError, match="returned a str"):
        frontend.export(type("Words", (torch.nn.Module,), {"forward": lambda self, x: "text"})(), x, tmp_path / "m.onnx")


@pytest.mark.slow
def test_dynamo_exporter_at_opset_18(net, tmp_path):
    module, x = net
    result = frontend.export(module, (x,), tmp_path / "m.onnx", input_names=["images"], dynamic_axes={"images": {0: "batch"}})
    assert (result.exporter, result.opset) == ("dynamo", 18) and result.max_abs_error < 1e-4
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"], "weights inline below 2 GB"


@pytest.mark.slow
def test_dynamo_at_opset_17_is_refused_as_torch_writes_18(net, tmp_path):
    module, x = net
    with pytest.raises(frontend.ExportError, match="dynamo \\(opset 17\\)"):
        frontend.export(module, (x,), tmp_path / "m.onnx", exporter="dynamo", opset=17)
