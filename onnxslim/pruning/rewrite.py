"""Apply a keep-mask over channel elements to the graph: slice weights, fix attributes, shapes.

Every constant that a slot indexes (see :mod:`onnxslim.pruning.params`) is replaced by a fresh,
sliced constant (never edited in place: deduplicated constants may be shared); readers of one
shared constant that need the same slice get the same new constant. Structural
inputs follow the kept channel counts: a grouped Conv's ``group``, Split sizes, Slice bounds on
the channel axis, Reshape target shapes and Resize ``sizes``. Finally every slot tensor's
recorded shape takes its new channel count.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxslim.graph import NameScope, constant_value, make_constant, opset
from onnxslim.pruning.base import static_dim, tensor_rank
from onnxslim.pruning.groups import ChannelGraph
from onnxslim.pruning.params import param_slices
from onnxslim.pruning.shape_ops import slice_params


class Masks:
    """Per-slot boolean keep masks derived from one element-level mask."""

    def __init__(self, cg: ChannelGraph, keep: np.ndarray):
        self.cg = cg
        self.keep = keep

    def of(self, name: str) -> np.ndarray | None:
        slot = self.cg.slots.get(name)
        return None if slot is None else self.keep[slot.offset:slot.offset + slot.size]

    def kept(self, name: str) -> np.ndarray | None:
        mask = self.of(name)
        return None if mask is None else np.flatnonzero(mask)

    def changed(self) -> list[str]:
        return [name for name in self.cg.slots if not self.of(name).all()]


def touched_nodes(cg: ChannelGraph, names: list[str]) -> list[gs.Node]:
    seen: dict[int, gs.Node] = {}
    for name in names:
        t = cg.slots[name].tensor
        for node in [*t.inputs, *t.outputs]:
            seen.setdefault(id(node), node)
    return list(seen.values())


def apply_masks(graph: gs.Graph, cg: ChannelGraph, masks: Masks, scope: NameScope) -> int:
    """Rewrite the graph; returns the number of nodes changed."""
    changed = masks.changed()
    nodes = touched_nodes(cg, changed)
    sliced: dict[tuple, gs.Constant] = {}  # readers of one constant that need the same slice share it
    for node in nodes:
        _slice_params(node, cg, masks, scope, sliced)
        _fix_structure(graph, node, cg, masks, scope)
    for name in changed:
        slot = cg.slots[name]
        shape = list(slot.tensor.shape)
        shape[slot.axis] = int(masks.of(name).sum())
        slot.tensor.shape = shape
    return len(nodes)


def _slice_params(node: gs.Node, cg: ChannelGraph, masks: Masks, scope: NameScope, sliced: dict[tuple, gs.Constant]) -> None:
    by_input: dict[int, list] = {}
    for ps in param_slices(node, cg.slots):
        if not masks.of(ps.slot).all():
            by_input.setdefault(ps.input_index, []).append(ps)
    for index, slices in by_input.items():
        original = node.inputs[index]
        key = (id(original), tuple(sorted((ps.axis, masks.kept(ps.slot).tobytes()) for ps in slices)))
        if key not in sliced:
            value = np.asarray(constant_value(original))
            for ps in slices:
                value = np.take(value, masks.kept(ps.slot), axis=ps.axis)
            sliced[key] = make_constant(scope, f"{node.name or node.op}_pruned", value)
        node.inputs[index] = sliced[key]


def _const_input(node: gs.Node, index: int, value, scope: NameScope, dtype=np.int64) -> None:
    const = make_constant(scope, f"{node.name or node.op}_{index}_pruned", np.asarray(value, dtype=dtype))
    while len(node.inputs) <= index:
        node.inputs.append(gs.Variable.empty())
    node.inputs[index] = const


def _fix_structure(graph: gs.Graph, node: gs.Node, cg: ChannelGraph, masks: Masks, scope: NameScope) -> None:
    op, x = node.op, node.inputs[0] if node.inputs else None
    if op == "Conv" and int(node.attrs.get("group", 1)) > 1:
        per_in = np.shape(constant_value(node.inputs[1]))[1]
        mask = masks.of(x.name)
        c_in = int(mask.sum()) if mask is not None else static_dim(x, 1)
        node.attrs["group"] = c_in // per_in
    elif op == "Split" and x.name in cg.slots:
        _fix_split(graph, node, cg, masks, scope)
    elif op == "Slice" and x.name in cg.slots:
        _fix_slice(graph, node, cg, masks, scope)
    elif op == "Reshape" and node.outputs[0].name in cg.slots:
        _fix_reshape(node, cg, masks, scope)
    elif op == "Resize" and x.name in cg.slots and len(node.inputs) > 3 and node.inputs[3].name:
        sizes = np.asarray(constant_value(node.inputs[3])).copy()
        sizes[cg.slots[x.name].axis] = int(masks.of(x.name).sum())
        _const_input(node, 3, sizes, scope)


def _fix_split(graph, node, cg, masks, scope) -> None:
    slot = cg.slots[node.inputs[0].name]
    r = tensor_rank(node.inputs[0])
    axis = int(node.attrs.get("axis", 0))
    if (axis + r if axis < 0 else axis) != slot.axis:
        return
    sizes = [int(masks.of(t.name).sum()) for t in node.outputs]
    if opset(graph) < 13:
        node.attrs["split"] = sizes
        return
    node.attrs.pop("num_outputs", None)
    _const_input(node, 1, sizes, scope)


def _fix_slice(graph, node, cg, masks, scope) -> None:
    x, y = node.inputs[0], node.outputs[0]
    slot = cg.slots[x.name]
    starts, ends, axes, _ = slice_params(graph, node)
    r = tensor_rank(x)
    axes = [a + r if a < 0 else a for a in axes]
    if slot.axis not in axes:
        return
    k = axes.index(slot.axis)
    total = slot.size
    start = starts[k] + total if starts[k] < 0 else starts[k]
    start = max(0, min(total, start))
    new_start = int(masks.of(x.name)[:start].sum())
    new_end = new_start + int(masks.of(y.name).sum())
    starts, ends = list(starts), list(ends)
    starts[k], ends[k] = new_start, new_end
    if opset(graph) < 10:
        node.attrs["starts"], node.attrs["ends"], node.attrs["axes"] = starts, ends, axes
        return
    _const_input(node, 1, starts, scope)
    _const_input(node, 2, ends, scope)
    _const_input(node, 3, axes, scope)


def _fix_reshape(node, cg, masks, scope) -> None:
    x, y = node.inputs[0], node.outputs[0]
    slot = cg.slots[y.name]
    allow_zero = bool(node.attrs.get("allowzero", 0))
    prefix = []
    for i in range(slot.axis):
        d = static_dim(x, i)
        prefix.append(d if d is not None else (-1 if allow_zero else 0))
    tail = [static_dim(y, i) for i in range(slot.axis, tensor_rank(y))]
    tail[0] = int(masks.of(y.name).sum())
    _const_input(node, 1, prefix + tail, scope)
