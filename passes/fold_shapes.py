"""Shape folding: replace shape computations by constants where the dimensions involved are static.

With ``d = shape(x)`` (a list whose entries are integers, symbols or unknown) and ``r = len(d)``:

* ``Shape(x)``                 -> ``int64 d[start:end]`` (``start``/``end`` attributes, opset 15+;
  Python slicing gives ONNX's clamping), when every selected dim is an integer;
* ``Size(x)``                  -> ``int64 prod(d)`` (scalar), when every dim is an integer;
* ``Gather(Shape(x), i)``      -> ``int64 s[i]`` (``s`` the Shape's output, ``i`` constant indices of
  any rank, negatives wrap), when every *indexed* dim is an integer, even if others are symbolic;
* ``Slice(Shape(x), b, e, a, t)`` -> ``int64 s[b:e:t]`` (constant starts/ends/axes/steps, inputs from
  opset 10, attributes before), when every selected dim is an integer.

Preconditions: default-domain nodes; the rank of ``x`` is known; for Gather/Slice the axis is 0.
A graph output keeps its name (it becomes a ``Constant`` node's output). The Shape node itself is
left for dead-node cleanup once nothing reads it.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxslim.graph import DEFAULT_DOMAINS, NameScope, constant_value, opset, producer
from onnxslim.passes.fold_constants import replace_with_constant
from onnxslim.pipeline import Pass, PassContext, PassResult


def _is_static(dim) -> bool:
    return isinstance(dim, (int, np.integer)) and not isinstance(dim, bool) and dim >= 0


def shape_dims(node: gs.Node) -> list | None:
    """The dims a ``Shape`` node returns (ints, symbols or None), or None when the rank is unknown."""
    shape = node.inputs[0].shape if node.inputs else None
    if shape is None:
        return None
    return list(shape)[slice(node.attrs.get("start", 0), node.attrs.get("end", None))]


def _selected(dims: list, indices: np.ndarray) -> np.ndarray | None:
    picked = [dims[int(i)] for i in indices.reshape(-1)]
    if not all(_is_static(d) for d in picked):
        return None
    return np.asarray([int(d) for d in picked], dtype=np.int64).reshape(indices.shape)


class FoldShapes(Pass):
    """Replace Shape/Size (and Gather or Slice of a Shape) by constants where the dims are static.

    Counters: ``shapes_folded``, ``sizes_folded``, ``gathers_folded``, ``slices_folded``.
    """

    name = "fold_shapes"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        scope = NameScope(graph)
        graph_nodes = {id(n) for n in graph.nodes}
        version = opset(graph)
        counters = {"shapes_folded": 0, "sizes_folded": 0, "gathers_folded": 0, "slices_folded": 0}
        for node in list(graph.nodes):
            if node.domain not in DEFAULT_DOMAINS or len(node.outputs) != 1 or not node.inputs:
                continue
            if node.op == "Shape":
                value, key = self._shape(node), "shapes_folded"
            elif node.op == "Size":
                value, key = self._size(node), "sizes_folded"
            elif node.op == "Gather":
                value, key = self._gather(node), "gathers_folded"
            elif node.op == "Slice":
                value, key = self._slice(node, version), "slices_folded"
            else:
                continue
            if value is None:
                continue
            replace_with_constant(graph, scope, node.outputs[0], value, graph_nodes)
            counters[key] += 1
        return PassResult(changed=any(counters.values()), counters=counters)

    @staticmethod
    def _shape(node: gs.Node) -> np.ndarray | None:
        dims = shape_dims(node)
        if dims is None or not all(_is_static(d) for d in dims):
            return None
        return np.asarray([int(d) for d in dims], dtype=np.int64)

    @staticmethod
    def _size(node: gs.Node) -> np.ndarray | None:
        shape = node.inputs[0].shape
        if shape is None or not all(_is_static(d) for d in shape):
            return None
        return np.asarray(int(np.prod([int(d) for d in shape], dtype=np.int64)), dtype=np.int64)

    @staticmethod
    def _shape_source(tensor: gs.Tensor) -> list | None:
        """The dims behind ``tensor`` when it is a default-domain Shape's output."""
        node = producer(tensor)
        if node is None or node.op != "Shape" or node.domain not in DEFAULT_DOMAINS:
            return None
        return shape_dims(node)

    def _gather(self, node: gs.Node) -> np.ndarray | None:
        dims = self._shape_source(node.inputs[0])
        if dims is None or len(node.inputs) < 2 or node.attrs.get("axis", 0) not in (0, -1):
            return None
        indices = constant_value(node.inputs[1])
        if indices is None or indices.dtype.kind not in "iu":
            return None
        indices = indices.astype(np.int64)
        rank = len(dims)
        if np.any(indices < -rank) or np.any(indices >= rank):
            return None  # out of range: leave the error to the runtime
        return _selected(dims, np.where(indices < 0, indices + rank, indices))

    def _slice(self, node: gs.Node, version: int) -> np.ndarray | None:
        dims = self._shape_source(node.inputs[0])
        if dims is None:
            return None
        if version >= 10:
            params = []
            for i in range(1, 5):
                tensor = node.inputs[i] if i < len(node.inputs) and node.inputs[i].name else None
                value = None if tensor is None else constant_value(tensor)
                if tensor is not None and value is None:
                    return None
                params.append(None if value is None else [int(v) for v in np.asarray(value).reshape(-1)])
            starts, ends, axes, steps = params
        else:
            starts, ends, axes = (node.attrs.get(k) for k in ("starts", "ends", "axes"))
            steps = None
        if starts is None or ends is None or len(starts) != 1 or len(ends) != 1:
            return None
        if axes is not None and list(axes) not in ([0], [-1]):
            return None
        step = 1 if steps is None else steps[0]
        if step == 0:
            return None
        picked = np.arange(len(dims), dtype=np.int64)[slice(starts[0], ends[0], step)]
        return _selected(dims, picked)
