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


class BakedBatch(torch.nn.Module):
    """Reads the batch size as a Python int: the legacy exporter writes it into the graph as a constant."""

    def forward(self, x):
        return (x * 2).reshape(int(x.shape[0]), -1)


def test_a_dynamic_axis_the_export_fixed_is_caught_at_twice_the_example_size(tmp_path):
    """dynamic_axes batch on a module that bakes the batch in: the export matches torch at batch 2 but
    not at batch 4, so the attempt fails, says so, and writes nothing."""
    path = tmp_path / "baked.onnx"
    with pytest.raises(frontend.ExportError, match=r"with the dynamic axes at twice the example size \(x \[4, 3\]\).*"
                                                    r"dynamic axis the export fixed"):
        frontend.export(BakedBatch(), torch.randn(2, 3), path, input_names=["x"], output_names=["y"],
                        dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, exporter="legacy")
    assert not path.exists()


def test_dynamic_axes_are_checked_at_a_second_size(net, tmp_path, monkeypatch):
    """A model that really takes any batch: checked at the example batch 2 and at 4, both within
    tolerance; the file runs at batch 6 too."""
    module, x = net
    seen = []
    real = frontend._check

    def spy(file, opset, inputs, expected, tolerance):
        seen.append([a.shape for a in inputs])
        return real(file, opset, inputs, expected, tolerance)

    monkeypatch.setattr(frontend, "_check", spy)
    result = frontend.export(module, x, tmp_path / "net.onnx", input_names=["x"], dynamic_axes={"x": {0: "batch"}},
                             exporter="legacy")
    assert seen == [[(2, 3, 16, 16)], [(4, 3, 16, 16)]]
    assert result.max_abs_error < 1e-4
    got = run_ort(onnx.load(str(tmp_path / "net.onnx")), {"x": np.tile(x.numpy(), (3, 1, 1, 1))})
    assert next(iter(got.values())).shape[0] == 6


class OnlyBatchTwo(torch.nn.Module):
    def forward(self, x):
        if x.shape[0] != 2:
            raise ValueError("batch must be 2")
        return x + 1


def test_a_module_that_cannot_take_the_second_size_is_checked_at_the_example_only(tmp_path, monkeypatch):
    """When torch itself fails at twice the example size there is nothing to compare with: the export
    is checked at the example size only and succeeds."""
    calls = []
    real = frontend._check
    monkeypatch.setattr(frontend, "_check", lambda *a: calls.append(1) or real(*a))
    result = frontend.export(OnlyBatchTwo(), torch.randn(2, 3), tmp_path / "two.onnx", input_names=["x"],
                             dynamic_axes={"x": {0: "batch"}}, exporter="legacy")
    assert result.exporter == "legacy" and len(calls) == 1


def test_legacy_export_of_a_transformer_encoder_fixes_its_sequence_axis_and_is_refused(tmp_path):
    """torch 2.13's legacy exporter writes nn.TransformerEncoder's example sequence length into its
    Reshapes: the file matches torch at (2, 10) and fails at (4, 20); refused. The dynamo exporter
    (auto) keeps the axes dynamic and passes both sizes."""
    torch.manual_seed(0)
    enc = torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 1).eval()
    axes = {"x": {0: "b", 1: "s"}, "y": {0: "b", 1: "s"}}
    args = dict(input_names=["x"], output_names=["y"], dynamic_axes=axes)
    with pytest.raises(frontend.ExportError, match=r"legacy \(opset 17\): with the dynamic axes at twice the example "
                                                    r"size \(x \[4, 20, 32\]\)"):
        frontend.export(enc, torch.randn(2, 10, 32), tmp_path / "legacy.onnx", exporter="legacy", **args)
    result = frontend.export(enc, torch.randn(2, 10, 32), tmp_path / "auto.onnx", **args)
    assert result.exporter == "dynamo" and result.max_abs_error < 1e-4
    x = np.random.default_rng(0).standard_normal((3, 7, 32)).astype(np.float32)
    want = enc(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(run_ort(onnx.load(str(tmp_path / "auto.onnx")), {"x": x})["y"], want, atol=1e-4)
