"""Small float models for the emitter tests (a conv net, a dynamic-batch MLP, an unsupported op)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from tests.helpers import init, make_model, vi


def conv_net(batch: int | str = 1) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "r1"], ["a"]),
        helper.make_node("Relu", ["a"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1),
    ]
    inits = [init("w1", rng.standard_normal([32, 16, 3, 3]).astype(np.float32) * 0.1),
             init("b1", np.full(32, 0.1, np.float32)),
             init("w2", rng.standard_normal([32, 32, 3, 3]).astype(np.float32) * 0.1),
             init("wf", rng.standard_normal([10, 32]).astype(np.float32)), init("bf", np.zeros(10, np.float32))]
    return make_model(nodes, [vi("x", [batch, 16, 8, 8])], [vi("y", [batch, 10])], inits)


def mlp(batch: int | str = "batch") -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["a"]),
             helper.make_node("Tanh", ["a"], ["y"])]
    inits = [init("w", rng.standard_normal([24, 8]).astype(np.float32)), init("b", np.zeros(8, np.float32))]
    return make_model(nodes, [vi("x", [batch, 24])], [vi("y", [batch, 8])], inits)


def lstm() -> onnx.ModelProto:
    rng = np.random.default_rng(2)
    node = helper.make_node("LSTM", ["x", "w", "r"], ["", "h"], hidden_size=4)
    inits = [init("w", rng.standard_normal([1, 16, 3]).astype(np.float32)),
             init("r", rng.standard_normal([1, 16, 4]).astype(np.float32))]
    return make_model([node], [vi("x", [5, 1, 3])], [vi("h", [1, 1, 4])], inits)


def save(model: onnx.ModelProto, folder: Path, name: str = "model.onnx") -> Path:
    path = Path(folder) / name
    onnx.save(model, path)
    return path


INT64 = TensorProto.INT64
