"""How one node couples the channels of the tensors it touches.

A *slot* is a (tensor, axis) pair: the channel axis of a tensor. When pruning removes channel
``i`` of one slot, every node reading or writing that tensor must agree. :func:`couple` answers,
for one node and one slot it touches, which other slots lose which channels together (a list of
:class:`Link` with element-wise index maps), or raises :class:`Blocked` with the reason the node
cannot be reasoned about. A node that only *reads* channels as a reduction dimension (the input
of a dense Conv, Gemm or MatMul) or *writes* them from its own weights (their outputs) couples
nothing further: its weights are sliced (see :mod:`onnxslim.pruning.params`).

Index maps: ``Link(tensor, axis, mine, theirs)`` says element ``mine[k]`` of the visited slot
and element ``theirs[k]`` of the other slot are the same channel. Identity couplings use
``arange``; Concat/Split/Slice use offsets; Flatten/Reshape into features use blocks
(``feature f <-> channel f // block``); grouped convolutions tie all channels of one group, in
and out, into one unit.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxslim.graph import constant_value, is_constant, opset, optional_input
from onnxslim.pruning.base import Blocked, Link, const_ints, identity, is_var, node_axes, static_dim, tensor_rank
from onnxslim.pruning.shape_ops import shape_handlers

UNARY_OPS = frozenset({
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Selu", "Celu", "Softplus",
    "Softsign", "Mish", "Gelu", "Erf", "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal", "Identity", "Floor",
    "Ceil", "Round", "Sign", "Sin", "Cos", "ThresholdedRelu", "Not", "Cast", "IsNaN", "IsInf", "Dropout",
    "Clip", "CastLike",
})
ELEMENTWISE_OPS = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu", "Where", "Equal", "Less",
    "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Mod",
})
POOL_OPS = frozenset({"MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"})
REDUCE_OPS = frozenset({
    "ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
    "ReduceLogSumExp", "ReduceSumSquare",
})
SOFTMAX_OPS = frozenset({"Softmax", "LogSoftmax", "Hardmax"})
PER_CHANNEL_NORMS = frozenset({"BatchNormalization", "InstanceNormalization"})


# --------------------------------------------------------------------------------------------
# The dispatcher


def couple(graph: gs.Graph, node: gs.Node, tensor: gs.Tensor, axis: int, size: int) -> list[Link]:
    """Slots coupled to ``(tensor, axis)`` through ``node`` (which reads or writes ``tensor``)."""
    if node.domain not in (None, "", "ai.onnx"):
        raise Blocked(f"{node.domain}::{node.op} {node.name} is in a custom domain")
    is_output = any(t is tensor for t in node.outputs)
    if is_output and tensor is not node.outputs[0] and node.op not in ("Split",):
        raise Blocked(f"{node.op} {node.name}: secondary output")
    op = node.op
    if op in UNARY_OPS:
        return _unary(node, tensor, axis, size, is_output)
    if op in ELEMENTWISE_OPS:
        return _elementwise(node, tensor, axis, size)
    handler = _HANDLERS.get(op)
    if handler is None:
        raise Blocked(f"{op} {node.name} cannot be reasoned about")
    return handler(graph, node, tensor, axis, size, is_output)


def _unary(node: gs.Node, tensor: gs.Tensor, axis: int, size: int, is_output: bool) -> list[Link]:
    if not is_output and tensor is not node.inputs[0]:
        raise Blocked(f"{node.op} {node.name}: channels flow into a secondary input")
    for extra in node.inputs[1:]:
        if extra.name and node.op != "CastLike" and (not is_constant(extra) or np.asarray(constant_value(extra)).size != 1):
            raise Blocked(f"{node.op} {node.name}: non-scalar extra input {extra.name!r}")
    if node.op == "Dropout" and len(node.outputs) > 1 and node.outputs[1].outputs:
        raise Blocked(f"Dropout {node.name}: mask output is used")
    other = node.inputs[0] if is_output else node.outputs[0]
    return [identity(other, axis, size)]


def _elementwise(node: gs.Node, tensor: gs.Tensor, axis: int, size: int) -> list[Link]:
    """Broadcasting ops: every operand with this channel on its right-aligned axis is coupled."""
    out = node.outputs[0]
    out_rank, my_rank = tensor_rank(out), tensor_rank(tensor)
    if out_rank is None or my_rank is None:
        raise Blocked(f"{node.op} {node.name}: unknown rank")
    out_axis = axis + (out_rank - my_rank)
    links = []
    for t in [*node.inputs, out]:
        if t is tensor or not t.name:
            continue
        r = tensor_rank(t)
        if r is None:
            raise Blocked(f"{node.op} {node.name}: unknown rank of {t.name!r}")
        a = out_axis - (out_rank - r)
        if a < 0:
            continue
        d = static_dim(t, a)
        if d is None:
            raise Blocked(f"{node.op} {node.name}: unknown channel count of {t.name!r}")
        if d == 1 and size != 1:
            continue  # broadcast along the channel axis
        if d != size:
            raise Blocked(f"{node.op} {node.name}: {t.name!r} has {d} channels, expected {size}")
        if is_var(t):
            links.append(identity(t, a, size))
    return links


# --------------------------------------------------------------------------------------------
# Layers with weights


def _conv(graph, node, tensor, axis, size, is_output):
    if not is_output and tensor is not node.inputs[0]:
        raise Blocked(f"{node.op} {node.name}: channels flow into its weights")
    if axis != 1:
        raise Blocked(f"{node.op} {node.name}: channel axis {axis} is not 1")
    for t in node.inputs[1:]:
        if t.name and not is_constant(t):
            raise Blocked(f"{node.op} {node.name}: weights are not constant")
    w = constant_value(node.inputs[1])
    group = int(node.attrs.get("group", 1))
    if node.op == "ConvTranspose":
        if group != 1:
            raise Blocked(f"ConvTranspose {node.name}: grouped transposed convolution")
        return []
    if group == 1:
        return []
    x, y = node.inputs[0], node.outputs[0]
    c_in, c_out = static_dim(x, 1), w.shape[0]
    if c_in is None or c_in % group or c_out % group:
        raise Blocked(f"Conv {node.name}: unknown or inconsistent grouped channel counts")
    per_in, per_out = c_in // group, c_out // group
    ins, outs = np.arange(c_in), np.arange(c_out)
    # Tie every input and output channel of a group to the group's first input and output.
    x_side = np.concatenate([ins, (outs // per_out) * per_in])
    y_side = np.concatenate([(ins // per_in) * per_out, outs])
    if is_output:
        return [Link(x, 1, y_side, x_side)]
    return [Link(y, 1, x_side, y_side)]


def _gemm(graph, node, tensor, axis, size, is_output):
    for t in node.inputs[1:]:
        if t.name and not is_constant(t):
            raise Blocked(f"Gemm {node.name}: B or C is not constant")
    if not is_output and (tensor is not node.inputs[0] or node.attrs.get("transA", 0)):
        raise Blocked(f"Gemm {node.name}: channels reach B or a transposed A")
    if axis != 1:
        raise Blocked(f"Gemm {node.name}: channel axis {axis} is not the feature axis")
    return []


def _matmul(graph, node, tensor, axis, size, is_output):
    b = node.inputs[1]
    if not is_constant(b) or np.asarray(constant_value(b)).ndim != 2:
        raise Blocked(f"MatMul {node.name}: second operand is not a constant matrix")
    if not is_output and tensor is not node.inputs[0]:
        raise Blocked(f"MatMul {node.name}: channels reach the weight operand")
    r = tensor_rank(tensor)
    if r is None or axis != r - 1:
        raise Blocked(f"MatMul {node.name}: channel axis is not the last axis")
    return []


def _per_channel_norm(graph, node, tensor, axis, size, is_output):
    if not is_output and tensor is not node.inputs[0]:
        raise Blocked(f"{node.op} {node.name}: channels flow into its parameters")
    if axis != 1:
        raise Blocked(f"{node.op} {node.name}: channel axis {axis} is not 1")
    if node.attrs.get("training_mode", 0) or any(o.outputs for o in node.outputs[1:]):
        raise Blocked(f"{node.op} {node.name}: training mode or extra outputs")
    for t in node.inputs[1:]:
        if not is_constant(t):
            raise Blocked(f"{node.op} {node.name}: parameters are not constant")
    return [identity(node.inputs[0] if is_output else node.outputs[0], axis, size)]


def _layer_norm(graph, node, tensor, axis, size, is_output):
    r = tensor_rank(node.inputs[0])
    start = int(node.attrs.get("axis", -1))
    start = start + r if r is not None and start < 0 else start
    if r is None or axis >= start:
        raise Blocked(f"LayerNormalization {node.name}: normalizes over the channel axis")
    if (not is_output and tensor is not node.inputs[0]) or any(o.outputs for o in node.outputs[1:]):
        raise Blocked(f"LayerNormalization {node.name}: channels reach parameters or extra outputs")
    return [identity(node.inputs[0] if is_output else node.outputs[0], axis, size)]


# --------------------------------------------------------------------------------------------
# Spatial and reducing ops


def _pool(graph, node, tensor, axis, size, is_output):
    if axis != 1:
        raise Blocked(f"{node.op} {node.name}: channel axis {axis} is not 1")
    if len(node.outputs) > 1 and node.outputs[1].outputs:
        raise Blocked(f"{node.op} {node.name}: indices output is used")
    return [identity(node.inputs[0] if is_output else node.outputs[0], axis, size)]


def _resize(graph, node, tensor, axis, size, is_output):
    if tensor is not node.inputs[0] and not is_output:
        raise Blocked(f"{node.op} {node.name}: channels flow into roi/scales/sizes")
    scales = sizes = None
    if node.op == "Upsample":
        scales = constant_value(node.inputs[1]) if len(node.inputs) > 1 else np.asarray(node.attrs.get("scales", []))
    else:
        if (given := optional_input(node, 2)) is not None:
            scales = constant_value(given)
        if (given := optional_input(node, 3)) is not None:
            sizes = constant_value(given)
            if sizes is None:
                raise Blocked(f"Resize {node.name}: sizes are not constant")
    if "axes" in node.attrs:
        raise Blocked(f"Resize {node.name}: axes attribute")
    if sizes is None and (scales is None or np.asarray(scales).size <= axis or float(np.asarray(scales).ravel()[axis]) != 1.0):
        raise Blocked(f"{node.op} {node.name}: channel scale is not a constant 1")
    return [identity(node.inputs[0] if is_output else node.outputs[0], axis, size)]


def _pad(graph, node, tensor, axis, size, is_output):
    if tensor is not node.inputs[0] and not is_output:
        raise Blocked(f"Pad {node.name}: channels flow into pads")
    pads = node.attrs.get("pads") if opset(graph) < 11 else const_ints(node.inputs[1])
    r = tensor_rank(node.inputs[0])
    if pads is None or r is None:
        raise Blocked(f"Pad {node.name}: pads are not constant")
    axes = list(range(r))
    if len(node.inputs) > 3 and node.inputs[3].name:
        got = const_ints(node.inputs[3])
        if got is None:
            raise Blocked(f"Pad {node.name}: axes are not constant")
        axes = [a + r if a < 0 else a for a in got]
    if axis in axes:
        k = axes.index(axis)
        if pads[k] or pads[k + len(axes)]:
            raise Blocked(f"Pad {node.name}: pads the channel axis")
    if (value := optional_input(node, 2)) is not None and np.asarray(constant_value(value)).size != 1:
        raise Blocked(f"Pad {node.name}: constant value is not a scalar")
    return [identity(node.inputs[0] if is_output else node.outputs[0], axis, size)]


def _reduce(graph, node, tensor, axis, size, is_output):
    if tensor is not node.inputs[0] and not is_output:
        raise Blocked(f"{node.op} {node.name}: channels flow into axes")
    axes = node_axes(node)
    r = tensor_rank(node.inputs[0])
    if axes is None or r is None:
        raise Blocked(f"{node.op} {node.name}: axes are not constant")
    if not axes:
        if node.attrs.get("noop_with_empty_axes", 0):
            return [identity(node.inputs[0] if is_output else node.outputs[0], axis, size)]
        raise Blocked(f"{node.op} {node.name}: reduces every axis")
    axes = sorted(a + r if a < 0 else a for a in axes)
    keep = node.attrs.get("keepdims", 1)
    kept_axes = [i for i in range(r) if keep or i not in axes]  # input axis of each output axis
    if is_output:
        in_axis = kept_axes[axis]
        if in_axis in axes:
            raise Blocked(f"{node.op} {node.name}: reduces the channel axis")
        return [identity(node.inputs[0], in_axis, size)]
    if axis in axes:
        raise Blocked(f"{node.op} {node.name}: reduces the channel axis")
    return [identity(node.outputs[0], kept_axes.index(axis), size)]


def _softmax(graph, node, tensor, axis, size, is_output):
    r = tensor_rank(node.inputs[0])
    sm_axis = int(node.attrs.get("axis", -1 if opset(graph) >= 13 else 1))
    sm_axis = sm_axis + r if r is not None and sm_axis < 0 else sm_axis
    mixes = axis >= sm_axis if opset(graph) < 13 else axis == sm_axis
    if r is None or mixes:
        raise Blocked(f"{node.op} {node.name}: normalizes over the channel axis")
    return [identity(node.inputs[0] if is_output else node.outputs[0], axis, size)]


_HANDLERS = {
    "Conv": _conv,
    "ConvTranspose": _conv,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "BatchNormalization": _per_channel_norm,
    "InstanceNormalization": _per_channel_norm,
    "LayerNormalization": _layer_norm,
    "Resize": _resize,
    "Upsample": _resize,
    "Pad": _pad,
    **{op: _pool for op in POOL_OPS},
    **{op: _reduce for op in REDUCE_OPS},
    **{op: _softmax for op in SOFTMAX_OPS},
    **shape_handlers(),
}
