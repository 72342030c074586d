"""Remove nodes that return their input unchanged.

A node ``y = op(x, ...)`` is a no-op when ``y`` equals ``x`` element for element, with the same
shape and dtype. Its readers then read ``x`` directly and the node is left for cleanup:

* ``Identity``: always.
* ``Dropout`` in inference mode (no ``training_mode`` input or a constant false one; before
  opset 7 only with ``is_test=1``) whose ``mask`` output is unused. The ratio is irrelevant then.
* ``Cast`` / ``CastLike`` to the dtype the input already has (input dtype known).
* ``Reshape`` whose every target entry provably keeps the input dim (``0`` copies it without
  ``allowzero``, a static entry equals a static input dim, one ``-1`` fills the only gap), or whose
  static output shape equals the static input shape.
* ``Transpose`` with perm ``0..r-1`` (or no perm on rank <= 1).
* ``Expand`` to a constant shape ``s`` with ``len(s) <= rank(x)`` and every ``s_i`` in ``{1, x_i}``.
* ``Slice`` with constant starts/ends/axes/steps where every sliced axis starts at 0, ends at or
  past its dim (a static dim, or an end >= 2**62 for an unknown dim) with step 1.
* ``Pad`` with all-zero pads (any mode); ``Tile`` with all-one repeats.
* ``Concat`` with one input; ``Split`` with one output.
* ``Squeeze`` with no/empty axes on a static shape without 1-dims; ``Unsqueeze`` with empty axes.
* ``Flatten`` whose output shape equals the input shape (rank 2 with axis 1, or static shapes).
* ``Resize``/``Upsample`` with constant scales all 1 (or sizes equal to the static input dims);
  not with ``tf_crop_and_resize``, which reads ``roi``.
* ``x + 0``, ``0 + x``, ``x - 0``, ``x * 1``, ``1 * x``, ``x / 1``, ``x ** 1`` where the constant
  has the same dtype as ``x`` (any dtype for the exponent) and does not broadcast ``x`` to a bigger
  shape: ``rank(c) <= rank(x)`` and every aligned ``c_i`` is 1 or the equal static ``x_i``.
  (``-0.0 + 0.0`` is ``+0.0``: the sign of zero may change, nothing else.)

Preconditions: default-domain nodes only; shapes and dtypes come from shape inference (run
``infer_shapes`` first). When ``y`` is a graph output, ``x`` must be an internal tensor that can
take over its name; a graph input (or constant) feeding a graph output straight through is kept.
"""

from __future__ import annotations

import logging
import re
from typing import Callable, Union

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxslim.graph import (
    consumers,
    constant_value,
    detach,
    is_graph_input,
    is_graph_output,
    opset,
    rank,
    replace_all_uses,
    static_shape,
)
from onnxslim.pipeline import Pass, PassContext, PassResult

logger = logging.getLogger(__name__)

# An end at or past this is "to the end" of a dimension whose size is unknown.
_SLICE_END_OF_UNKNOWN_DIM = 2**62

# A rule returns the tensor the node's first output equals, a reason string when an interesting
# near-miss should be recorded, or None when the node is simply not a no-op.
Verdict = Union[gs.Tensor, str, None]


# --------------------------------------------------------------------------------------------
# Helpers shared with collapse_reshapes


def onnx_dtype(tensor: gs.Tensor) -> int | None:
    """The ONNX element type of ``tensor`` if known."""
    dtype = tensor.dtype
    if dtype is None:
        return None
    if isinstance(dtype, int):
        return dtype
    try:
        return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    except (TypeError, KeyError, ValueError):
        return None


def present(node: gs.Node, index: int) -> gs.Tensor | None:
    """Input ``index`` of ``node`` unless it is missing or an empty optional input."""
    if index < len(node.inputs) and node.inputs[index].name:
        return node.inputs[index]
    return None


def read_axes(node: gs.Node, graph_opset: int, input_from: int = 13) -> tuple[bool, list[int] | None]:
    """``(known, axes)`` of a Squeeze/Unsqueeze-like node: an attribute before ``input_from``,
    input 1 from then on. ``axes`` is None when none are given; ``known`` is False when they are
    given but not constant."""
    if graph_opset < input_from:
        axes = node.attrs.get("axes")
        return True, None if axes is None else [int(a) for a in axes]
    tensor = present(node, 1)
    if tensor is None:
        return True, None
    value = constant_value(tensor)
    if value is None:
        return False, None
    return True, [int(a) for a in value.reshape(-1)]


def normalize_axes(axes: list[int], rank_: int | None) -> list[int] | None:
    """Axes made non-negative against ``rank_``; None if that needs an unknown rank or is invalid."""
    if any(a < 0 for a in axes) and rank_ is None:
        return None
    out = [a + rank_ if a < 0 else a for a in axes] if rank_ is not None else list(axes)
    if rank_ is not None and any(not 0 <= a < rank_ for a in out):
        return None
    return out


def bypass(graph: gs.Graph, old: gs.Tensor, new: gs.Tensor) -> bool:
    """Make readers of ``old`` read ``new``. Refuses (returns False) when ``old`` is a graph output
    that ``new`` cannot stand in for without an extra Identity (``new`` is a graph input or output,
    a constant, or has no producer)."""
    if is_graph_output(graph, old):
        renamable = (
            isinstance(new, gs.Variable)
            and bool(new.inputs)
            and not is_graph_output(graph, new)
            and not is_graph_input(graph, new)
        )
        if not renamable:
            return False
    replace_all_uses(graph, old, new)
    return True


def _snake(op: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", op).lower()


def _all_equal(value: np.ndarray | None, target: float) -> bool:
    return value is not None and value.size > 0 and bool(np.all(value == target))


def _keeps_shape(x: gs.Tensor, other_shape: tuple[int, ...]) -> bool:
    """Broadcasting ``x`` against ``other_shape`` leaves ``x``'s shape unchanged."""
    if len(other_shape) == 0:
        return True
    x_shape = x.shape
    if x_shape is None or len(other_shape) > len(x_shape):
        return False
    for dim, x_dim in zip(reversed(other_shape), reversed(x_shape)):
        if dim != 1 and not (isinstance(x_dim, (int, np.integer)) and x_dim == dim):
            return False
    return True


# --------------------------------------------------------------------------------------------
# Rules, one per op


def _identity(node: gs.Node, graph: gs.Graph) -> Verdict:
    return node.inputs[0]


def _dropout(node: gs.Node, graph: gs.Graph) -> Verdict:
    if opset(graph) < 7 and int(node.attrs.get("is_test", 0)) != 1:
        return "Dropout before opset 7 without is_test=1 runs in training mode"
    training = present(node, 2)
    if training is not None:
        flag = constant_value(training)
        if flag is None:
            return "training_mode is not a constant"
        if bool(np.any(flag)):
            return "training_mode is true"
    mask = node.outputs[1] if len(node.outputs) > 1 and node.outputs[1].name else None
    if mask is not None and (mask.outputs or is_graph_output(graph, mask)):
        return "the mask output is used"
    return node.inputs[0]


def _cast(node: gs.Node, graph: gs.Graph) -> Verdict:
    src = onnx_dtype(node.inputs[0])
    to = node.attrs.get("to")
    return node.inputs[0] if src is not None and to is not None and src == int(to) else None


def _cast_like(node: gs.Node, graph: gs.Graph) -> Verdict:
    src, like = onnx_dtype(node.inputs[0]), onnx_dtype(node.inputs[1])
    return node.inputs[0] if src is not None and src == like else None


def _reshape(node: gs.Node, graph: gs.Graph) -> Verdict:
    x = node.inputs[0]
    in_static, out_static = static_shape(x), static_shape(node.outputs[0])
    if in_static is not None and in_static == out_static:
        return x
    target, x_shape = constant_value(present(node, 1)), x.shape
    if target is None or x_shape is None or target.size != len(x_shape):
        return None
    allowzero = int(node.attrs.get("allowzero", 0))
    gaps = 0
    for want, have in zip(target.reshape(-1).tolist(), x_shape):
        static = isinstance(have, (int, np.integer))
        if want == 0 and not allowzero:
            continue
        if want == -1:
            gaps += 1
        elif not (static and have == want):
            return None
    # A single -1 among dims that all match is the remaining input dim, unless another dim is 0.
    if gaps > 1 or (gaps == 1 and any(isinstance(d, (int, np.integer)) and d == 0 for d in x_shape)):
        return None
    return x


def _transpose(node: gs.Node, graph: gs.Graph) -> Verdict:
    perm = node.attrs.get("perm")
    if perm is None:
        r = rank(node.inputs[0])
        return node.inputs[0] if r is not None and r <= 1 else None
    return node.inputs[0] if list(perm) == list(range(len(perm))) else None


def _expand(node: gs.Node, graph: gs.Graph) -> Verdict:
    shape = constant_value(present(node, 1))
    if shape is None:
        return None
    return node.inputs[0] if _keeps_shape(node.inputs[0], tuple(int(d) for d in shape.reshape(-1))) else None


def _slice_params(node: gs.Node, graph_opset: int) -> tuple[list, list, list | None, list | None] | None:
    if graph_opset < 10:
        attrs = node.attrs
        if "starts" not in attrs or "ends" not in attrs:
            return None
        axes = attrs.get("axes")
        return list(attrs["starts"]), list(attrs["ends"]), None if axes is None else list(axes), None
    values = []
    for index in (1, 2, 3, 4):
        tensor = present(node, index)
        value = None if tensor is None else constant_value(tensor)
        if tensor is not None and value is None:
            return None
        values.append(None if value is None else value.reshape(-1).tolist())
    starts, ends, axes, steps = values
    if starts is None or ends is None:
        return None
    return starts, ends, axes, steps


def _slice(node: gs.Node, graph: gs.Graph) -> Verdict:
    params, x_shape = _slice_params(node, opset(graph)), node.inputs[0].shape
    if params is None:
        return None
    starts, ends, axes, steps = params
    axes = [int(a) for a in axes] if axes is not None else list(range(len(starts)))
    axes = normalize_axes(axes, None if x_shape is None else len(x_shape))
    if axes is None or len(axes) != len(starts) or len(ends) != len(starts):
        return None
    steps = steps if steps is not None else [1] * len(starts)
    for axis, start, end, step in zip(axes, starts, ends, steps):
        dim = x_shape[axis] if x_shape is not None and axis < len(x_shape) else None
        if step != 1:
            return None
        if isinstance(dim, (int, np.integer)):
            lo = min(max(start + dim if start < 0 else start, 0), dim)
            hi = min(max(end + dim if end < 0 else end, 0), dim)
            if lo != 0 or hi != dim:
                return None
        elif start != 0 or end < _SLICE_END_OF_UNKNOWN_DIM:
            return None
    return node.inputs[0]


def _pad(node: gs.Node, graph: gs.Graph) -> Verdict:
    if opset(graph) < 11:
        pads = node.attrs.get("pads", node.attrs.get("paddings"))
        pads = None if pads is None else np.asarray(pads)
    else:
        pads = constant_value(present(node, 1))
    return node.inputs[0] if pads is not None and not np.any(pads) else None


def _tile(node: gs.Node, graph: gs.Graph) -> Verdict:
    return node.inputs[0] if _all_equal(constant_value(present(node, 1)), 1) else None


def _concat(node: gs.Node, graph: gs.Graph) -> Verdict:
    return node.inputs[0] if len(node.inputs) == 1 else None


def _split(node: gs.Node, graph: gs.Graph) -> Verdict:
    return node.inputs[0] if len(node.outputs) == 1 else None


def _squeeze(node: gs.Node, graph: gs.Graph) -> Verdict:
    known, axes = read_axes(node, opset(graph))
    if not known or axes:
        return None
    shape = static_shape(node.inputs[0])  # no axes: every 1-dim goes, so all dims must be known
    return node.inputs[0] if shape is not None and 1 not in shape else None


def _unsqueeze(node: gs.Node, graph: gs.Graph) -> Verdict:
    known, axes = read_axes(node, opset(graph))
    return node.inputs[0] if known and axes is not None and len(axes) == 0 else None


def _flatten(node: gs.Node, graph: gs.Graph) -> Verdict:
    x, axis = node.inputs[0], int(node.attrs.get("axis", 1))
    if rank(x) == 2 and axis in (1, -1):
        return x
    shape = static_shape(x)
    if shape is None:
        return None
    axis = axis + len(shape) if axis < 0 else axis
    flat = (int(np.prod(shape[:axis], dtype=np.int64)), int(np.prod(shape[axis:], dtype=np.int64)))
    return x if flat == shape else None


def _resize(node: gs.Node, graph: gs.Graph) -> Verdict:
    graph_opset = opset(graph)
    if node.attrs.get("coordinate_transformation_mode") == "tf_crop_and_resize":
        return None
    x = node.inputs[0]
    if node.op == "Upsample" and graph_opset < 9:
        scales, sizes = np.asarray(node.attrs.get("scales", [])), None
    else:
        scale_index = 1 if node.op == "Upsample" or graph_opset < 11 else 2
        scales, sizes = constant_value(present(node, scale_index)), present(node, 3) if scale_index == 2 else None
        if present(node, scale_index) is not None and scales is None:
            return None
    if sizes is None and _all_equal(scales, 1):
        return x
    wanted = constant_value(sizes)
    if wanted is None or (scales is not None and scales.size) or x.shape is None:
        return None
    axes = normalize_axes([int(a) for a in node.attrs.get("axes", range(len(x.shape)))], len(x.shape))
    if axes is None or len(axes) != wanted.size:
        return None
    return x if all(x.shape[a] == int(w) for a, w in zip(axes, wanted.reshape(-1))) else None


# op -> (neutral element, whether the constant may be on either side)
_NEUTRAL = {"Add": (0, True), "Sub": (0, False), "Mul": (1, True), "Div": (1, False), "Pow": (1, False)}


def _arithmetic(node: gs.Node, graph: gs.Graph) -> Verdict:
    neutral, commutative = _NEUTRAL[node.op]
    if len(node.inputs) != 2:
        return None
    sides = ((0, 1), (1, 0)) if commutative else ((0, 1),)
    for data_index, const_index in sides:
        x, const = node.inputs[data_index], node.inputs[const_index]
        value = constant_value(const)
        if not _all_equal(value, neutral):
            continue
        if node.op != "Pow" and onnx_dtype(x) is not None and onnx_dtype(x) != onnx_dtype(const):
            continue
        if value.ndim == 0 or (rank(x) is not None and _keeps_shape(x, value.shape)):
            return x
    return None


_RULES: dict[str, Callable[[gs.Node, gs.Graph], Verdict]] = {
    "Identity": _identity, "Dropout": _dropout, "Cast": _cast, "CastLike": _cast_like,
    "Reshape": _reshape, "Transpose": _transpose, "Expand": _expand, "Slice": _slice,
    "Pad": _pad, "Tile": _tile, "Concat": _concat, "Split": _split,
    "Squeeze": _squeeze, "Unsqueeze": _unsqueeze, "Flatten": _flatten,
    "Resize": _resize, "Upsample": _resize,
    **{op: _arithmetic for op in _NEUTRAL},
}  # fmt: skip


class EliminateIdentity(Pass):
    """Remove no-op nodes: Identity, inference Dropout, same-dtype Cast, no-op shape ops, x+0, x*1."""

    name = "eliminate_identity"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        counters: dict[str, int] = {}
        for node in list(graph.nodes):
            rule = _RULES.get(node.op)
            if rule is None or node.domain not in (None, "", "ai.onnx") or not node.inputs or not node.outputs:
                continue
            if not node.inputs[0].name or not node.outputs[0].name:
                continue
            verdict = rule(node, graph)
            if verdict is None:
                continue
            where = node.name or node.outputs[0].name
            if isinstance(verdict, str):
                ctx.decline(self.name, where=where, reason=verdict)
                continue
            if not consumers(node.outputs[0]) and not is_graph_output(graph, node.outputs[0]):
                continue  # dead already; cleanup removes it
            if not bypass(graph, node.outputs[0], verdict):
                ctx.decline(self.name, where=where, reason="no-op between a graph input/constant and a graph output")
                continue
            detach(node)  # its other outputs, if any, are unused (checked by the rule)
            kind = _snake(node.op)
            counters[kind] = counters.get(kind, 0) + 1
        return PassResult(changed=bool(counters), counters=counters)
