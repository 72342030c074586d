"""The offline TensorRT linter: clean Q/DQ graphs pass, each broken rule is found and placed."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxslim.targets import trt_ops
from onnxslim.targets.lint import lint, main
from tests.helpers import init, make_model, vi
from tests.targets import qdq_models as qm


def rules(model: onnx.ModelProto, level: str | None = None) -> list[str]:
    return [f.rule for f in lint(model) if level is None or f.level == level]


def test_tensorrt_style_conv_block_is_clean():
    assert lint(qm.conv_block()) == []


def test_float_model_is_clean():
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [1, 4])], [vi("y", [1, 4])])
    assert lint(model) == []


@pytest.mark.parametrize("kwargs, rule, level", [
    ({"act_zp_dtype": np.uint8, "act_zero": 0}, "TRT-Q-INT8", "error"),
    ({"act_zero": 3}, "TRT-Q-ZERO", "error"),
    ({"act_scale": -0.05}, "TRT-Q-SCALE", "error"),
    ({"int32_bias": True}, "TRT-BIAS", "error"),
    ({"quantize_weight": False}, "TRT-QDQ-BOTH", "warning"),
    ({"quantize_input": False}, "TRT-QDQ-BOTH", "warning"),
    ({"weight_axis": 1}, "TRT-PER-CHANNEL", "error"),
    ({"weight_axis": None}, "TRT-PER-CHANNEL", "warning"),
    ({"qdq_before_relu": True}, "TRT-CONV-ACT", "warning"),
    ({"channels": 8}, "TRT-LOW-GAIN", "warning"),
    ({"opset": 8}, "TRT-OPSET", "error"),
])
def test_each_broken_rule_is_reported(kwargs, rule, level):
    if kwargs.get("opset") == 8:  # Q/DQ need opset 10: check the opset rule on a float model
        model = make_model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [1, 4])], [vi("y", [1, 4])], opset=8)
    else:
        model = qm.conv_block(**kwargs)
    found = lint(model)
    assert rule in [f.rule for f in found if f.level == level], found


def test_findings_say_where():
    found = [f for f in lint(qm.conv_block(weight_axis=1)) if f.rule == "TRT-PER-CHANNEL"]
    assert found[0].where == "node 'conv' (Conv)"
    assert "axis 1" in found[0].message and "needs axis 0" in found[0].message
    assert found[0].line("m.onnx").startswith("m.onnx: error: node 'conv' (Conv): ")


def test_residual_add_quantizes_only_the_skip_input():
    assert lint(qm.residual_block(quantize_conv_branch=False)) == []
    assert "TRT-RESIDUAL" in rules(qm.residual_block(quantize_conv_branch=True), "warning")


def test_concat_inputs_share_a_scale():
    assert lint(qm.concat_block((0.05, 0.05))) == []
    assert rules(qm.concat_block((0.05, 0.1))) == ["TRT-SCALE-SHARE"]


def test_qdq_feeding_only_float_ops_or_an_output():
    assert rules(qm.float_only_consumer()) == ["TRT-QDQ-USELESS"]
    assert "TRT-QDQ-USELESS" in rules(qm.float_only_consumer(as_output=True))


def test_qoperator_and_custom_ops_are_errors():
    x = vi("x", [1, 4])
    qlinear = qm.op_model(helper.make_node("QLinearMatMul", list("abcdefgh"), ["y"], name="qmm"),
                          [vi(n, [1]) for n in "abcdefgh"], [vi("y", [1])])
    assert rules(qlinear, "error") == ["TRT-QOP"]
    custom = qm.op_model(helper.make_node("FusedGemm", ["x"], ["y"], domain="com.microsoft"), [x], [vi("y", [1, 4])],
                         domains=["com.microsoft"])
    found = lint(custom)
    assert [f.rule for f in found] == ["TRT-OP"] and "plugin" in found[0].message


def test_operator_table_and_restrictions():
    assert trt_ops.status("Conv") == "supported"
    assert trt_ops.status("Unique") == "unsupported"
    assert trt_ops.status("SomeFutureOp") == "unknown"
    indices = make_model([helper.make_node("MaxPool", ["x"], ["y", "i"], kernel_shape=[2, 2], strides=[2, 2])],
                         [vi("x", [1, 1, 4, 4])], [vi("y", [1, 1, 2, 2]), vi("i", [1, 1, 2, 2], TensorProto.INT64)])
    assert rules(indices) == ["TRT-RESTRICT"]
    topk = make_model([helper.make_node("TopK", ["x", "k"], ["v", "i"])],
                      [vi("x", [1, 8]), vi("k", [1], TensorProto.INT64)],
                      [vi("v", [1, None]), vi("i", [1, None], TensorProto.INT64)])
    assert rules(topk) == ["TRT-RESTRICT"]
    resize = make_model([helper.make_node("Resize", ["x", "", "s"], ["y"], mode="cubic")], [vi("x", [1, 1, 4, 4])],
                        [vi("y", [1, 1, 8, 8])], [init("s", np.array([1, 1, 2, 2], np.float32))])
    assert rules(resize) == ["TRT-RESTRICT"]


def test_cli_exit_codes(tmp_path, capsys):
    good, bad = tmp_path / "good.onnx", tmp_path / "bad.onnx"
    onnx.save(qm.conv_block(), good)
    onnx.save(qm.conv_block(act_zp_dtype=np.uint8), bad)
    assert main([str(good)]) == 0
    assert main([str(bad), "--json", str(tmp_path / "f.json")]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert out and all(line.startswith(f"{bad}: error: ") for line in out)
    assert (tmp_path / "f.json").is_file()
    assert main([str(tmp_path / "missing.onnx")]) == 2
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    assert main([str(tmp_path / "junk.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("onnxslim-lint: error: ")


def test_module_entry_point(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(qm.conv_block(int32_bias=True), path)
    proc = subprocess.run([sys.executable, "-m", "onnxslim.targets.lint", str(path)], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "[TRT-BIAS]" in proc.stdout


def _quantized(target: str, device: str) -> onnx.ModelProto:
    from onnxslim import optimize

    rng = np.random.default_rng(0)
    w1 = rng.standard_normal([32, 16, 3, 3]).astype(np.float32) * 0.1
    w2 = rng.standard_normal([32, 32, 3, 3]).astype(np.float32) * 0.1
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]), helper.make_node("Add", ["c2", "r1"], ["a"]),
             helper.make_node("Relu", ["a"], ["y"])]
    model = make_model(nodes, [vi("x", [1, 16, 8, 8])], [vi("y", [1, 32, 8, 8])], [init("w1", w1), init("w2", w2), init("b1", np.full(32, 0.1, np.float32))])
    out, _ = optimize(model, target=target, device=device, stage_values={"quantize": "int8"})
    return out


@pytest.mark.filterwarnings("ignore")
def test_models_quantized_for_tensorrt_lint_clean_and_for_ort_do_not():
    trt = _quantized("tensorrt", "cuda")
    assert any(n.op_type == "QuantizeLinear" for n in trt.graph.node)
    assert lint(trt) == []
    ort_rules = set(rules(_quantized("ort", "x86"), "error"))
    assert {"TRT-Q-INT8", "TRT-BIAS"} <= ort_rules
