"""Replace a Reshape's computed shape by a constant when it only copies the input's own dims.

Exporters write ``Reshape(x, Concat(Unsqueeze(Gather(Shape(x), 0)), [200]))`` to flatten
with a dynamic batch. The shape tensor is evaluated symbolically: every element is either a
known integer or "dimension k of tensor t" (through Shape with start/end, Gather and Slice of
a shape with constant indices, Unsqueeze/Squeeze of scalars, Concat on axis 0 and Casts
between integer types). The Reshape then gets a constant shape where

* an element equal to ``x.shape[i]`` at output position ``i`` becomes ``0`` ("copy dim i";
  requires ``allowzero`` = 0, the default) — also when it reads another tensor's dim that
  shape inference gave the same symbolic name as ``x.shape[i]``;
* constants stay as they are;
* one remaining unknown element becomes ``-1`` (the total size fixes it), provided no other
  ``-1`` is present and no constant 0 could make the inference ambiguous.

Otherwise the Reshape is left alone. The now-unused Shape/Gather/Concat chain is removed by
the dead-node sweep. Casting a shape (< 2**31 per dim in any real model) between integer types
is treated as exact.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxslim.graph import NameScope, constant_value, make_constant, opset, producer
from onnxslim.pipeline import Pass, PassContext, PassResult

_INTEGER_TYPES = {"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"}
_MAX_DEPTH = 8

# An element of a symbolic shape: an int, or (tensor, axis) for "dimension axis of tensor".
Element = int | tuple[gs.Tensor, int]


def _dim_of(tensor: gs.Tensor, axis: int) -> Element:
    shape = tensor.shape
    if shape is not None and 0 <= axis < len(shape) and isinstance(shape[axis], (int, np.integer)) and shape[axis] >= 0:
        return int(shape[axis])
    return (tensor, axis)


def _ints(tensor: gs.Tensor | None) -> list[int] | None:
    value = constant_value(tensor)
    if value is None or value.dtype.kind not in "iu":
        return None
    return [int(v) for v in np.asarray(value).reshape(-1)]


def symbolic_shape(tensor: gs.Tensor, graph_opset: int, depth: int = 0) -> list[Element] | None:
    """The elements of a 1-D (or scalar) integer tensor, symbolically; None when unknown."""
    const = _ints(tensor)
    if const is not None:
        return list(const)
    node = producer(tensor)
    if node is None or node.domain or depth > _MAX_DEPTH:
        return None
    op = node.op
    if op == "Shape":
        data = node.inputs[0]
        if data.shape is None:
            return None
        r = len(data.shape)
        start, end = int(node.attrs.get("start", 0)), node.attrs.get("end")
        start = max(0, start + r if start < 0 else start)
        end = r if end is None else max(0, int(end) + r if int(end) < 0 else int(end))
        return [_dim_of(data, k) for k in range(start, min(end, r))]
    if op == "Cast" and len(node.inputs) == 1:
        source = node.inputs[0]
        target = str(np.dtype(tensor.dtype)) if tensor.dtype is not None else None
        if source.dtype is None or str(np.dtype(source.dtype)) not in _INTEGER_TYPES or target not in _INTEGER_TYPES:
            return None
        return symbolic_shape(source, graph_opset, depth + 1)
    if op in ("Unsqueeze", "Squeeze", "Identity"):
        inner = symbolic_shape(node.inputs[0], graph_opset, depth + 1)
        return inner if inner is not None and len(inner) == 1 else None
    if op == "Concat" and int(node.attrs.get("axis", 0)) in (0, -1):
        out: list[Element] = []
        for part in node.inputs:
            items = symbolic_shape(part, graph_opset, depth + 1)
            if items is None:
                return None
            out.extend(items)
        return out
    if op == "Gather" and int(node.attrs.get("axis", 0)) == 0 and len(node.inputs) == 2:
        items = symbolic_shape(node.inputs[0], graph_opset, depth + 1)
        indices = _ints(node.inputs[1])
        if items is None or indices is None:
            return None
        n = len(items)
        if any(not -n <= i < n for i in indices):
            return None
        return [items[i % n] for i in indices]
    if op == "Slice":
        items = symbolic_shape(node.inputs[0], graph_opset, depth + 1)
        if items is None:
            return None
        if graph_opset < 10:
            starts, ends, axes, steps = node.attrs.get("starts"), node.attrs.get("ends"), node.attrs.get("axes"), None
        else:
            get = lambda i: _ints(node.inputs[i]) if len(node.inputs) > i and node.inputs[i].name else None
            starts, ends, axes, steps = get(1), get(2), get(3), get(4)
            if starts is None or ends is None or (len(node.inputs) > 3 and node.inputs[3].name and axes is None) or (
                len(node.inputs) > 4 and node.inputs[4].name and steps is None):
                return None
        if starts is None or len(starts) != 1 or (axes not in (None, [0], [-1])) or (steps not in (None, [1])):
            return None
        return items[slice(int(starts[0]), int(ends[0]))]
    return None


def _same_dim(element: tuple[gs.Tensor, int], data: gs.Tensor, position: int) -> bool:
    """Does ``element`` denote ``data.shape[position]`` for sure?"""
    tensor, axis = element
    if tensor is data:
        return axis == position
    mine = data.shape[position] if data.shape is not None and position < len(data.shape) else None
    theirs = tensor.shape[axis] if tensor.shape is not None and axis < len(tensor.shape) else None
    return isinstance(mine, str) and mine == theirs and not mine.startswith("unk__")


def constant_target(data: gs.Tensor, elements: list[Element]) -> list[int] | None:
    """The constant Reshape target equivalent to ``elements``, or None when there is none."""
    out: list[int | None] = []
    for position, element in enumerate(elements):
        if isinstance(element, int):
            out.append(element)
        elif _same_dim(element, data, position):
            out.append(0)
        else:
            out.append(None)
    unknown = [i for i, v in enumerate(out) if v is None]
    if not unknown:
        return [int(v) for v in out]
    if len(unknown) == 1 and -1 not in out:
        out[unknown[0]] = -1
        return [int(v) for v in out]
    return None


class SimplifyReshapeShape(Pass):
    """Give a Reshape a constant target (0 = copy dim, -1 = infer) when its shape is built from Shape ops."""

    name = "simplify_reshape_shape"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        scope: NameScope | None = None
        graph_opset = opset(graph)
        rewritten = 0
        for node in graph.nodes:
            if node.op != "Reshape" or node.domain or len(node.inputs) != 2 or graph_opset < 5:
                continue
            data, shape = node.inputs
            if constant_value(shape) is not None or int(node.attrs.get("allowzero", 0)) != 0:
                continue
            elements = symbolic_shape(shape, graph_opset)
            if elements is None:
                continue
            target = constant_target(data, elements)
            if target is None:
                ctx.decline(self.name, node.name, "the computed shape has more than one unknown element")
                continue
            scope = scope or NameScope(graph)
            node.inputs[1] = make_constant(scope, f"{node.name or 'reshape'}_shape", np.asarray(target, dtype=np.int64))
            rewritten += 1
        return PassResult(rewritten > 0, {"reshapes_simplified": rewritten})
