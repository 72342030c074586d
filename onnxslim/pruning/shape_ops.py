"""Channel couplings through data-movement ops: Concat, Split, Slice, Transpose, Squeeze,
Unsqueeze, Flatten, Reshape, and Shape (a reader that must not see the channel count).

Every handler has the signature of :func:`onnxslim.pruning.couplings.couple`'s handlers and
returns the links from the visited slot to the slots on the other side of the node.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_graphsurgeon as gs

from onnxslim.graph import is_constant, opset
from onnxslim.pruning.base import Blocked, Link, const_ints, identity, is_var, node_axes, static_dim, tensor_rank


def _norm(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _dims(tensor: gs.Tensor, start: int) -> list[int] | None:
    """Static dims of ``tensor`` from axis ``start`` on, or None when one is unknown."""
    out = []
    for i in range(start, tensor_rank(tensor) or 0):
        d = static_dim(tensor, i)
        if d is None:
            return None
        out.append(d)
    return out if tensor.shape is not None else None


# --------------------------------------------------------------------------------------------
# Concat / Split / Slice


def _concat(graph, node, tensor, axis, size, is_output):
    r = tensor_rank(node.outputs[0])
    if r is None:
        raise Blocked(f"Concat {node.name}: unknown rank")
    cat_axis = _norm(int(node.attrs["axis"]), r)
    inputs = [t for t in node.inputs if t.name]
    if cat_axis != axis:
        return [identity(t, axis, size) for t in [*inputs, node.outputs[0]] if t is not tensor and is_var(t)]
    sizes = [static_dim(t, axis) for t in inputs]
    if any(s is None for s in sizes):
        raise Blocked(f"Concat {node.name}: unknown channel count of an input")
    if any(not is_var(t) for t in inputs):
        raise Blocked(f"Concat {node.name}: concatenates a constant on the channel axis")
    offsets = np.cumsum([0, *sizes])
    if is_output:
        return [Link(t, axis, np.arange(offsets[i], offsets[i + 1]), np.arange(sizes[i])) for i, t in enumerate(inputs)]
    i = next(i for i, t in enumerate(inputs) if t is tensor)  # a tensor read twice: first occurrence
    return [Link(node.outputs[0], axis, np.arange(size), np.arange(offsets[i], offsets[i] + size))]


def split_sizes(graph: gs.Graph, node: gs.Node, total: int) -> list[int] | None:
    if "split" in node.attrs:
        return [int(s) for s in node.attrs["split"]]
    if len(node.inputs) > 1 and node.inputs[1].name:
        return const_ints(node.inputs[1])
    n = int(node.attrs.get("num_outputs", len(node.outputs)))
    chunk = -(-total // n)
    return [min(chunk, total - i * chunk) for i in range(n)]


def _split(graph, node, tensor, axis, size, is_output):
    x = node.inputs[0]
    if not is_output and tensor is not x:
        raise Blocked(f"Split {node.name}: channels flow into split sizes")
    r = tensor_rank(x)
    split_axis = _norm(int(node.attrs.get("axis", 0)), r or 0)
    outs = list(node.outputs)
    if split_axis != axis:
        return [identity(t, axis, size) for t in [x, *outs] if t is not tensor]
    total = static_dim(x, axis)
    sizes = split_sizes(graph, node, total) if total is not None else None
    if sizes is None or len(sizes) != len(outs):
        raise Blocked(f"Split {node.name}: split sizes are not constant")
    offsets = np.cumsum([0, *sizes])
    if is_output:
        j = outs.index(tensor)
        return [Link(x, axis, np.arange(size), np.arange(offsets[j], offsets[j] + size))]
    return [Link(t, axis, np.arange(offsets[j], offsets[j + 1]), np.arange(sizes[j])) for j, t in enumerate(outs)]


def slice_params(graph: gs.Graph, node: gs.Node) -> tuple[list[int], list[int], list[int], list[int]] | None:
    """(starts, ends, axes, steps) of a Slice, when constant."""
    if opset(graph) < 10:
        starts, ends = list(node.attrs.get("starts", [])), list(node.attrs.get("ends", []))
        axes = list(node.attrs.get("axes", range(len(starts))))
        return starts, ends, axes, [1] * len(starts)
    got = [const_ints(t) if len(node.inputs) > i and node.inputs[i].name else None for i, t in
           enumerate(node.inputs[:5])] + [None] * (5 - len(node.inputs))
    starts, ends, axes, steps = got[1], got[2], got[3], got[4]
    if starts is None or ends is None:
        return None
    if len(node.inputs) > 3 and node.inputs[3].name and axes is None:
        return None
    if len(node.inputs) > 4 and node.inputs[4].name and steps is None:
        return None
    return starts, ends, axes if axes is not None else list(range(len(starts))), steps or [1] * len(starts)


def slice_range(graph: gs.Graph, node: gs.Node, axis: int, total: int) -> tuple[int, int] | None:
    """The [start, end) that a Slice keeps on ``axis`` (None: the axis is not sliced)."""
    params = slice_params(graph, node)
    if params is None:
        raise Blocked(f"Slice {node.name}: starts/ends/axes/steps are not constant")
    starts, ends, axes, steps = params
    r = tensor_rank(node.inputs[0]) or 0
    axes = [_norm(a, r) for a in axes]
    if axis not in axes:
        return None
    k = axes.index(axis)
    if steps[k] != 1:
        raise Blocked(f"Slice {node.name}: strided slice of the channel axis")
    start, end = starts[k], ends[k]
    start = max(0, min(total, start + total if start < 0 else start))
    end = max(0, min(total, end + total if end < 0 else end))
    return start, max(start, end)


def _slice(graph, node, tensor, axis, size, is_output):
    x, y = node.inputs[0], node.outputs[0]
    if not is_output and tensor is not x:
        raise Blocked(f"Slice {node.name}: channels flow into slice parameters")
    total = static_dim(x, axis)
    if total is None:
        raise Blocked(f"Slice {node.name}: unknown channel count")
    rng = slice_range(graph, node, axis, total)
    if rng is None:
        return [identity(x if is_output else y, axis, size)]
    start, end = rng
    if is_output:
        return [Link(x, axis, np.arange(size), np.arange(start, start + size))]
    return [Link(y, axis, np.arange(start, end), np.arange(end - start))]


# --------------------------------------------------------------------------------------------
# Axis permutations and rank changes


def _transpose(graph, node, tensor, axis, size, is_output):
    r = tensor_rank(node.inputs[0])
    if r is None:
        raise Blocked(f"Transpose {node.name}: unknown rank")
    perm = [int(p) for p in node.attrs.get("perm", range(r - 1, -1, -1))]
    if is_output:
        return [identity(node.inputs[0], perm[axis], size)]
    return [identity(node.outputs[0], perm.index(axis), size)]


def _squeeze_like(graph, node, tensor, axis, size, is_output):
    x, y = node.inputs[0], node.outputs[0]
    if not is_output and tensor is not x:
        raise Blocked(f"{node.op} {node.name}: channels flow into axes")
    rx, ry = tensor_rank(x), tensor_rank(y)
    axes = node_axes(node)
    if rx is None or ry is None or axes is None:
        raise Blocked(f"{node.op} {node.name}: unknown rank or axes")
    if node.op == "Squeeze":
        if not axes:
            axes = [i for i in range(rx) if static_dim(x, i) == 1]
            if len(axes) != rx - ry:
                raise Blocked(f"Squeeze {node.name}: cannot tell which axes are squeezed")
        axes = [_norm(a, rx) for a in axes]
        kept = [i for i in range(rx) if i not in axes]  # input axis of each output axis
    else:
        axes = [_norm(a, ry) for a in axes]
        inserted = [i for i in range(ry) if i not in axes]  # output axis of each input axis
        if is_output:
            if axis not in inserted:
                raise Blocked(f"Unsqueeze {node.name}: inserted axis")
            return [identity(x, inserted.index(axis), size)]
        return [identity(y, inserted[axis], size)]
    if is_output:
        return [identity(x, kept[axis], size)]
    if axis not in kept:
        raise Blocked(f"Squeeze {node.name}: squeezes the channel axis")
    return [identity(y, kept.index(axis), size)]


def _block_link(visited_bigger: bool, other: gs.Tensor, axis: int, small: int, block: int) -> Link:
    """Link between a channel axis of ``small`` channels and a feature axis of ``small*block``."""
    features = np.arange(small * block)
    if visited_bigger:
        return Link(other, axis, features, features // block)
    return Link(other, axis, features // block, features)


def _flatten(graph, node, tensor, axis, size, is_output):
    x, y = node.inputs[0], node.outputs[0]
    r = tensor_rank(x)
    if r is None:
        raise Blocked(f"Flatten {node.name}: unknown rank")
    k = _norm(int(node.attrs.get("axis", 1)), r)
    rest = _dims(x, k + 1)
    if is_output:
        if axis != 1 or rest is None:
            raise Blocked(f"Flatten {node.name}: cannot map features back to channels")
        return [_block_link(True, x, k, size // max(1, math.prod(rest)), math.prod(rest))]
    if axis != k or rest is None:
        raise Blocked(f"Flatten {node.name}: flattens the channel axis into the batch")
    return [_block_link(False, y, 1, size, math.prod(rest))]


def reshape_target(node: gs.Node) -> list[int | None] | None:
    """The Reshape's requested shape, entry by entry (None where only known at run time)."""
    shape = node.inputs[1]
    value = const_ints(shape)
    if value is not None:
        return value
    producer = shape.inputs[0] if shape.inputs else None
    if producer is None or producer.op != "Concat":
        return None
    out: list[int | None] = []
    for part in producer.inputs:
        got = const_ints(part)
        if got is None:
            n = static_dim(part, 0)
            if n is None:
                return None
            got = [None] * n
        out.extend(got)
    return out


def _reshape_out_dims(node: gs.Node, axis: int) -> list[int] | None:
    y = node.outputs[0]
    dims = _dims(y, axis)
    if dims:
        return dims
    target = reshape_target(node)
    if target is None or len(target) <= axis or any(v is None or v <= 0 for v in target[axis:]):
        return None
    return [int(v) for v in target[axis:]]


def _reshape(graph, node, tensor, axis, size, is_output):
    x, y = node.inputs[0], node.outputs[0]
    if not is_output and tensor is not x:
        raise Blocked(f"Reshape {node.name}: channels flow into the shape")
    tx, ty = _dims(x, axis), _reshape_out_dims(node, axis)
    if not tx or not ty:
        raise Blocked(f"Reshape {node.name}: dims from the channel axis on are not static")
    if axis > 1 and list(x.shape[:axis]) != list((y.shape or [])[:axis]):
        raise Blocked(f"Reshape {node.name}: dims before the channel axis change")
    if node.attrs.get("allowzero", 0) and sum(static_dim(x, i) is None for i in range(axis)) > 1:
        raise Blocked(f"Reshape {node.name}: allowzero with several dynamic leading dims")
    if math.prod(tx) != math.prod(ty):
        raise Blocked(f"Reshape {node.name}: moves elements across the channel axis")
    if _dims(y, axis) != ty:  # shape inference could not see through a run-time shape: fill it in
        y.shape = list(x.shape[:axis]) + ty
    cx, cy = tx[0], ty[0]
    other = x if is_output else y
    if cx == cy:
        return [identity(other, axis, size)]
    small, big, big_tail = (cx, cy, tx) if cy > cx else (cy, cx, ty)
    if big % small or not any(math.prod(big_tail[:k]) == big for k in range(2, len(big_tail) + 1)):
        raise Blocked(f"Reshape {node.name}: does not merge or split whole channel blocks")
    visited_is_big = (cy > cx) == is_output
    return [_block_link(visited_is_big, other, axis, small, big // small)]


# --------------------------------------------------------------------------------------------
# Shape: allowed when only non-channel dims are read


def _shape(graph, node, tensor, axis, size, is_output):
    r = tensor_rank(tensor)
    start, end = int(node.attrs.get("start", 0)), node.attrs.get("end")
    lo, hi = _norm(start, r or 0), (r if end is None else _norm(int(end), r or 0))
    if r is not None and not lo <= axis < hi:
        return []
    for reader in _readers_through_casts(node.outputs[0]):
        if reader.op == "Gather" and int(reader.attrs.get("axis", 0)) == 0:
            idx = const_ints(reader.inputs[1])
            if idx is not None and axis - lo not in [i + (hi - lo) if i < 0 else i for i in idx]:
                continue
        if reader.op == "Slice" and len(reader.inputs) > 2 and is_constant(reader.inputs[1]):
            rng = slice_range(graph, reader, 0, hi - lo)
            if rng is not None and not rng[0] <= axis - lo < rng[1]:
                continue
        raise Blocked(f"Shape {node.name}: the channel count is read by {reader.op} {reader.name}")
    return []


def _readers_through_casts(t: gs.Tensor) -> list[gs.Node]:
    out, todo = [], [t]
    while todo:
        for reader in todo.pop().outputs:
            if reader.op in ("Cast", "Identity"):
                todo.append(reader.outputs[0])
            else:
                out.append(reader)
    return out


def shape_handlers() -> dict:
    return {
        "Concat": _concat,
        "Split": _split,
        "Slice": _slice,
        "Transpose": _transpose,
        "Squeeze": _squeeze_like,
        "Unsqueeze": _squeeze_like,
        "Flatten": _flatten,
        "Reshape": _reshape,
        "Shape": _shape,
    }
