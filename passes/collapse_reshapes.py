"""Collapse chains of shape-only ops.

Reshape, Flatten, Squeeze and Unsqueeze keep the elements of their input in row-major order and
only change the shape; Transpose permutes the axes. For ``y1 = A(x)``, ``y2 = B(y1)``:

* **Cancel.** When ``B(A(x))`` is ``x`` again, readers of ``y2`` read ``x``:
  ``Squeeze(Unsqueeze(x, a), a)`` and ``Unsqueeze(Squeeze(x, a), a)`` (axes compared after
  making them non-negative against the rank each op sees), or any pair of the four shape-only ops
  whose static output shape equals the static shape of ``x``.
* **Reshape chain.** ``Reshape(A(x), s2)`` with A one of the four shape-only ops equals
  ``Reshape(x, s2)`` when ``s2`` is constant and has no ``0`` entry (or ``allowzero=1``, where 0
  is literal): ``-1`` is resolved from the element count, which ``x`` and ``y1`` share. When
  ``s2`` has ``0`` entries (copied from ``y1``'s dims), the chain collapses only when ``y2``'s
  shape is fully static and non-zero; that shape is then emitted as a constant without 0/-1.
* **Transpose chain.** ``Transpose(Transpose(x, p1), p2) = Transpose(x, p)`` with
  ``p[k] = p1[p2[k]]`` (a missing perm reverses the axes); when ``p`` is the identity both go.

Preconditions: default-domain nodes; a merge (not a cancel) needs ``y1`` to have no reader but
``B`` and not to be a graph output, so no node is duplicated. A single Reshape that only
inserts/removes 1-dims is left as is (no churn into Squeeze/Unsqueeze or back). Shapes come
from shape inference (run ``infer_shapes`` first).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_graphsurgeon as gs

from onnxslim.graph import (
    NameScope,
    constant_value,
    detach,
    is_graph_output,
    make_constant,
    opset,
    producer,
    rank,
    single_consumer,
    static_shape,
)
from onnxslim.passes.eliminate_identity import bypass, normalize_axes, present, read_axes
from onnxslim.pipeline import Pass, PassContext, PassResult

logger = logging.getLogger(__name__)

SHAPE_ONLY_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")


def _default_domain(node: gs.Node | None) -> bool:
    return node is not None and node.domain in (None, "", "ai.onnx")


def _first_producer(node: gs.Node, ops: tuple[str, ...]) -> gs.Node | None:
    """The producer of ``node``'s first input if it is one of ``ops`` in the default domain."""
    if not node.inputs or not node.inputs[0].name:
        return None
    first = producer(node.inputs[0])
    if not _default_domain(first) or first.op not in ops or not first.inputs or not first.inputs[0].name:
        return None
    return first


def _detach_if_dead(graph: gs.Graph, node: gs.Node) -> None:
    """Disconnect ``node`` once nothing reads it, so consumer counts stay exact within a run."""
    if all(not t.outputs and not is_graph_output(graph, t) for t in node.outputs):
        detach(node)


def _only_feeds(graph: gs.Graph, tensor: gs.Tensor, node: gs.Node) -> bool:
    return single_consumer(tensor) is node and not is_graph_output(graph, tensor)


def _axes_cancel(first: gs.Node, second: gs.Node, graph_opset: int) -> bool:
    """Squeeze then Unsqueeze (or Unsqueeze then Squeeze) on the same axes."""
    if {first.op, second.op} != {"Squeeze", "Unsqueeze"}:
        return False
    known_a, axes_a = read_axes(first, graph_opset)
    known_b, axes_b = read_axes(second, graph_opset)
    if not (known_a and known_b and axes_a and axes_b) or len(axes_a) != len(axes_b):
        return False
    x_rank = rank(first.inputs[0])
    # Unsqueeze's axes refer to its output; Squeeze's to its input.
    wide = None if x_rank is None else (x_rank + len(axes_a) if first.op == "Unsqueeze" else x_rank)
    a, b = normalize_axes(axes_a, wide), normalize_axes(axes_b, wide)
    return a is not None and b is not None and sorted(a) == sorted(b) and len(set(a)) == len(a)


def _static_cancel(first: gs.Node, second: gs.Node) -> bool:
    before, after = static_shape(first.inputs[0]), static_shape(second.outputs[0])
    return before is not None and before == after


def _compose_perms(first: gs.Node, second: gs.Node) -> list[int] | None:
    """``p[k] = p1[p2[k]]``, or None when a perm is missing and the rank unknown."""
    p1, p2 = first.attrs.get("perm"), second.attrs.get("perm")
    size = len(p1) if p1 is not None else len(p2) if p2 is not None else rank(first.inputs[0])
    if size is None:
        return None
    p1 = list(p1) if p1 is not None else list(range(size))[::-1]
    p2 = list(p2) if p2 is not None else list(range(size))[::-1]
    if len(p1) != size or len(p2) != size or sorted(p1) != list(range(size)) or sorted(p2) != list(range(size)):
        return None
    return [int(p1[k]) for k in p2]


class CollapseReshapes(Pass):
    """Collapse chains of Reshape/Flatten/Squeeze/Unsqueeze and of Transpose into one op (or none)."""

    name = "collapse_reshapes"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        self._scope: NameScope | None = None  # built on first need, once per run
        counters: dict[str, int] = {}
        graph_opset = opset(graph)
        for node in list(graph.nodes):
            if not _default_domain(node) or not node.outputs or not node.outputs[0].name:
                continue
            # A merge rewires ``node`` onto an earlier op, which may merge again: repeat.
            while True:
                if node.op == "Transpose":
                    kind = self._transpose_chain(graph, ctx, node)
                elif node.op in SHAPE_ONLY_OPS:
                    kind = self._shape_chain(graph, ctx, node, graph_opset)
                else:
                    kind = None
                if not kind:
                    break
                counters[kind] = counters.get(kind, 0) + 1
                if kind.endswith("_cancelled"):
                    break
        return PassResult(changed=bool(counters), counters=counters)

    # ----------------------------------------------------------------------------------------

    def _cancel(self, graph: gs.Graph, ctx: PassContext, second: gs.Node, x: gs.Tensor, kind: str) -> str | None:
        first = producer(second.inputs[0])
        if bypass(graph, second.outputs[0], x):
            detach(second)
            _detach_if_dead(graph, first)
            return kind
        ctx.decline(self.name, where=second.name, reason="the chain maps a graph input/output straight to a graph output")
        return None

    def _shape_chain(self, graph: gs.Graph, ctx: PassContext, second: gs.Node, graph_opset: int) -> str | None:
        first = _first_producer(second, SHAPE_ONLY_OPS)
        if first is None:
            return None
        x = first.inputs[0]
        pair = f"{first.op.lower()}_{second.op.lower()}"
        if _axes_cancel(first, second, graph_opset) or _static_cancel(first, second):
            return self._cancel(graph, ctx, second, x, pair + "_cancelled")
        if second.op != "Reshape" or not _only_feeds(graph, second.inputs[0], second):
            return None
        target = constant_value(present(second, 1))
        allowzero = int(second.attrs.get("allowzero", 0))
        if target is not None and (allowzero or not np.any(target == 0)):
            second.inputs[0] = x
            detach(first)
            return pair + "_merged"
        final = static_shape(second.outputs[0])
        if final is None or 0 in final:
            ctx.decline(
                self.name,
                where=second.name,
                reason="the second Reshape's shape copies dims (0) of the dropped intermediate and the result shape is not static",
            )
            return None
        if self._scope is None:
            self._scope = NameScope(graph)
        shape = make_constant(self._scope, f"{second.name or 'reshape'}_shape", np.asarray(final, dtype=np.int64))
        second.inputs[0] = x
        second.inputs[1] = shape
        second.attrs.pop("allowzero", None)
        detach(first)
        return pair + "_merged"

    def _transpose_chain(self, graph: gs.Graph, ctx: PassContext, second: gs.Node) -> str | None:
        first = _first_producer(second, ("Transpose",))
        if first is None:
            return None
        perm = _compose_perms(first, second)
        if perm is None:
            return None
        x = first.inputs[0]
        if perm == list(range(len(perm))):
            return self._cancel(graph, ctx, second, x, "transpose_transpose_cancelled")
        if not _only_feeds(graph, second.inputs[0], second):
            return None
        second.inputs[0] = x
        second.attrs["perm"] = perm
        detach(first)
        return "transpose_transpose_merged"
