"""Which constant inputs of a node are indexed by which slot's channels.

``param_slices(node, slots)`` lists ``(input index, axis of the constant, slot name)`` for every
constant that loses entries when that slot loses channels: a Conv's filters (axis 0) and bias
for its output slot and its filters' axis 1 for its input slot (group 1 only: a grouped
convolution's input channels are tied to its output groups); a ConvTranspose the other way
round; Gemm/MatMul weight rows for the input features and columns (and bias) for the outputs;
BatchNormalization / InstanceNormalization parameters; and per-channel constants of
broadcasting elementwise ops (a bias Add, an SE scale Mul, a PRelu slope, ...).
Importance, rewriting and the MAC/parameter accounting all read this one table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxslim.graph import constant_value, is_constant
from onnxslim.pruning.base import tensor_rank
from onnxslim.pruning.couplings import ELEMENTWISE_OPS, PER_CHANNEL_NORMS


@dataclass(frozen=True)
class ParamSlice:
    input_index: int
    axis: int
    slot: str
    role: str  # "out" (the layer writes these channels), "in" (reads them), "affine" (per channel)


def _const_shape(t: gs.Tensor) -> tuple[int, ...] | None:
    if not t.name or not is_constant(t):
        return None
    return tuple(np.shape(constant_value(t))) if not isinstance(t, gs.Constant) else tuple(t.shape)


def param_slices(node: gs.Node, slots: dict) -> list[ParamSlice]:
    op = node.op
    if node.domain not in (None, "", "ai.onnx") or not node.outputs or not node.inputs:
        return []
    out = node.outputs[0].name if node.outputs[0].name in slots else None
    x = node.inputs[0].name if node.inputs[0].name in slots else None
    found: list[ParamSlice] = []

    def add(i: int, axis: int, slot: str | None, role: str) -> None:
        if slot is None or len(node.inputs) <= i:
            return
        shape = _const_shape(node.inputs[i])
        if shape is not None and len(shape) > axis and shape[axis] == slots[slot].size:
            found.append(ParamSlice(i, axis, slot, role))

    if op == "Conv":
        add(1, 0, out, "out")
        add(2, 0, out, "out")
        if int(node.attrs.get("group", 1)) == 1:
            add(1, 1, x, "in")
    elif op == "ConvTranspose":
        add(1, 1, out, "out")
        add(2, 0, out, "out")
        add(1, 0, x, "in")
    elif op == "Gemm":
        trans_b = int(node.attrs.get("transB", 0))
        add(1, 0 if trans_b else 1, out, "out")
        c_shape = _const_shape(node.inputs[2]) if len(node.inputs) > 2 else None
        if c_shape:
            add(2, len(c_shape) - 1, out, "out")
        add(1, 1 if trans_b else 0, x, "in")
    elif op == "MatMul":
        add(1, 1, out, "out")
        add(1, 0, x, "in")
    elif op in PER_CHANNEL_NORMS:
        for i in range(1, len(node.inputs)):
            add(i, 0, out or x, "affine")
    elif op in ELEMENTWISE_OPS or op == "Concat":
        if out is None:
            return []
        out_rank, out_axis = tensor_rank(node.outputs[0]), slots[out].axis
        for i, t in enumerate(node.inputs):
            shape = _const_shape(t)
            if shape is None or out_rank is None:
                continue
            a = out_axis - (out_rank - len(shape))
            if a >= 0:
                add(i, a, out, "affine")
    return found
