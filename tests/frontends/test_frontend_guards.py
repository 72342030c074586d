"""onnxslim.frontends.torch.export on bad or awkward input: one-line errors, no changed input, no leftovers."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from onnxslim.errors import OutputError, UsageError  # noqa: E402
from onnxslim.frontends import torch as frontend  # noqa: E402


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)
        self.drop = torch.nn.Dropout(0.5)
        self.bn = torch.nn.BatchNorm1d(3)

    def forward(self, x):
        return self.bn(self.drop(self.fc(x)))


class InPlace(torch.nn.Module):
    def forward(self, x):
        x.mul_(2)
        return x + 1


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    return text


def test_train_mode_is_restored_per_submodule_and_export_runs_in_eval(tmp_path):
    torch.manual_seed(0)
    module = Tiny().train()
    module.bn.eval()  # a mixed state the caller chose must come back as it was
    before = {n: m.training for n, m in module.named_modules()}
    result = frontend.export(module, torch.randn(2, 4), tmp_path / "m.onnx", exporter="legacy")
    assert result.max_abs_error < 1e-4  # dropout off, BN on running stats: ORT agrees with torch
    assert {n: m.training for n, m in module.named_modules()} == before


def test_train_mode_is_restored_on_ctrl_c_and_no_staging_is_left(tmp_path, monkeypatch):
    def interrupted(*args):
        (args[3]).write_bytes(b"half a model")
        raise KeyboardInterrupt

    monkeypatch.setattr(frontend, "_run_exporter", interrupted)
    module = Tiny().train()
    with pytest.raises(KeyboardInterrupt):
        frontend.export(module, torch.randn(2, 4), tmp_path / "m.onnx", exporter="legacy")
    assert module.training and module.fc.training
    assert list(tmp_path.iterdir()) == []


def test_a_forward_that_changes_its_input_in_place_leaves_the_callers_tensor(tmp_path):
    x = torch.ones(2, 3)
    result = frontend.export(InPlace(), x, tmp_path / "m.onnx", exporter="legacy")
    assert torch.equal(x, torch.ones(2, 3)), "the caller's example input was changed"
    assert result.max_abs_error == 0.0  # and the check compared like with like


def test_not_a_module(tmp_path):
    with pytest.raises(UsageError, match="module must be a torch.nn.Module, not function") as exc:
        frontend.export(lambda x: x, torch.ones(1), tmp_path / "m.onnx")
    _one_line(exc)


@pytest.mark.parametrize("inputs, message", [
    ({"x": torch.ones(2, 4)}, "not a dict"),
    (np.ones((2, 4), np.float32), "example input 0 is a ndarray"),
    ((torch.ones(2, 4), 3), "example input 1 is a int"),
    ((), "example_inputs is empty"),
    (torch.ones(2, 4, dtype=torch.bfloat16), "dtype torch.bfloat16"),
])
def test_example_inputs_that_are_not_tensors(tmp_path, inputs, message):
    with pytest.raises(UsageError, match=message) as exc:
        frontend.export(Tiny(), inputs, tmp_path / "m.onnx")
    _one_line(exc)
    assert list(tmp_path.iterdir()) == []


def test_a_forward_that_fails_is_one_line_naming_the_exception(tmp_path):
    module = Tiny().train()
    with pytest.raises(UsageError, match=r"Tiny.forward failed on the example inputs: RuntimeError: mat1 and mat2") as exc:
        frontend.export(module, torch.ones(2, 5), tmp_path / "m.onnx")
    _one_line(exc)
    assert module.training and list(tmp_path.iterdir()) == []


def test_output_path_is_checked_before_any_work(tmp_path, monkeypatch):
    ran = []
    module = Tiny()
    monkeypatch.setattr(module, "forward", lambda x: ran.append(1) or x)
    with pytest.raises(OutputError, match="does not exist"):
        frontend.export(module, torch.ones(2, 4), tmp_path / "missing" / "m.onnx")
    with pytest.raises(OutputError, match="is a directory"):
        frontend.export(module, torch.ones(2, 4), tmp_path)
    assert ran == [] and not (tmp_path / "missing").exists()


@pytest.mark.parametrize("kwargs, message", [
    ({"dynamic_axes": {"images": {0: "batch"}}}, "dynamic_axes names 'images', which is not in input_names"),
    ({"input_names": ["x"], "dynamic_axes": {"x": {2: "b"}}}, r"axis 2 is out of range for a 2-d input"),
    ({"input_names": ["x"], "dynamic_axes": {"x": "batch"}}, "must map axis numbers to names"),
    ({"input_names": "x"}, "input_names must be a list"),
    ({"input_names": ["a", "b"]}, "2 input name"),
    ({"output_names": ["y", "y"]}, "repeated name"),
    ({"output_names": ["y", "z"]}, "2 output name"),
    ({"tolerance": -1}, "tolerance must be"),
])
def test_names_and_dynamic_axes_torch_would_ignore(tmp_path, kwargs, message):
    with pytest.raises(UsageError, match=message) as exc:
        frontend.export(Tiny(), torch.ones(2, 4), tmp_path / "m.onnx", exporter="legacy", **kwargs)
    _one_line(exc)


def test_dynamic_axes_on_an_output_name_and_list_form(tmp_path):
    frontend.export(Tiny(), torch.ones(2, 4), tmp_path / "m.onnx", exporter="legacy", input_names=["x"],
                    output_names=["y"], dynamic_axes={"x": [0], "y": {0: "batch"}})
    model = onnx.load(tmp_path / "m.onnx")
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    assert model.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_exporting_twice_replaces_the_file_and_a_failed_export_keeps_it(tmp_path, monkeypatch):
    out = tmp_path / "m.onnx"
    frontend.export(Tiny(), torch.ones(2, 4), out, exporter="legacy", input_names=["first"])
    frontend.export(Tiny(), torch.ones(2, 4), out, exporter="legacy", input_names=["second"])
    assert onnx.load(out).graph.input[0].name == "second"
    monkeypatch.setattr(frontend, "_check", lambda *a: (_ for _ in ()).throw(frontend.ExportError("wrong")))
    with pytest.raises(frontend.ExportError):
        frontend.export(Tiny(), torch.ones(2, 4), out, exporter="legacy", input_names=["third"])
    assert onnx.load(out).graph.input[0].name == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
