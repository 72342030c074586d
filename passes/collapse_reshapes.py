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
        collapser = _Collapser(graph, ctx, self.name)
        for node in list(graph.nodes):
            if _default_domain(node) and node.outputs and node.outputs[0].name:
                collapser.visit(node)
        return PassResult(changed=bool(collapser.counters), counters=collapser.counters)


class _Collapser:
    """The state of one run: graph, context, counters and a NameScope built on first need."""

    def __init__(self, graph: gs.Graph, ctx: PassContext, pass_name: str):
        self.graph, self.ctx, self.pass_name = graph, ctx, pass_name
        self.opset = opset(graph)
        self.counters: dict[str, int] = {}
        self._scope: NameScope | None = None

    def visit(self, node: gs.Node) -> None:
        # A merge rewires ``node`` onto an earlier op, which may merge again: repeat.
        while True:
            if node.op == "Transpose":
                kind = self._transpose_chain(node)
            elif node.op in SHAPE_ONLY_OPS:
                kind = self._shape_chain(node)
            else:
                kind = None
            if not kind:
                return
            self.counters[kind] = self.counters.get(kind, 0) + 1
            if kind.endswith("_cancelled"):
                return

    def _decline(self, node: gs.Node, reason: str) -> None:
        self.ctx.decline(self.pass_name, where=node.name or node.outputs[0].name, reason=reason)

    def _cancel(self, first: gs.Node, second: gs.Node) -> bool:
        """Readers of ``second``'s output read ``first``'s input instead."""
        if not bypass(self.graph, second.outputs[0], first.inputs[0]):
            self._decline(second, "cancelling the pair would map a graph input/output straight to a graph output")
            return False
        detach(second)
        _detach_if_dead(self.graph, first)
        return True

    def _merge(self, first: gs.Node, second: gs.Node) -> None:
        """``second`` reads ``first``'s input; ``first`` (read by nothing else) goes."""
        second.inputs[0] = first.inputs[0]
        detach(first)

    def _shape_chain(self, second: gs.Node) -> str | None:
        first = _first_producer(second, SHAPE_ONLY_OPS)
        if first is None:
            return None
        pair = f"{first.op.lower()}_{second.op.lower()}"
        if (_axes_cancel(first, second, self.opset) or _static_cancel(first, second)) and self._cancel(first, second):
            return pair + "_cancelled"
        if second.op != "Reshape" or not _only_feeds(self.graph, second.inputs[0], second):
            return None
        target = constant_value(present(second, 1))
        if target is not None and (int(second.attrs.get("allowzero", 0)) or not np.any(target == 0)):
            self._merge(first, second)
            return pair + "_merged"
        final = static_shape(second.outputs[0])
        if final is None or 0 in final:
            what = "copies dims (0) of the intermediate" if target is not None else "is computed"
            why = "is not static" if final is None else "has an empty (0) dim that a literal shape would not copy"
            self._decline(second, f"the second Reshape's shape {what} and the result shape {why}")
            return None
        if self._scope is None:
            self._scope = NameScope(self.graph)
        shape = make_constant(self._scope, f"{second.name or 'reshape'}_shape", np.asarray(final, dtype=np.int64))
        second.inputs[1] = shape
        second.attrs.pop("allowzero", None)
        self._merge(first, second)
        return pair + "_merged"

    def _transpose_chain(self, second: gs.Node) -> str | None:
        first = _first_producer(second, ("Transpose",))
        perm = None if first is None else _compose_perms(first, second)
        if perm is None:
            return None
        if perm == list(range(len(perm))) and self._cancel(first, second):
            return "transpose_transpose_cancelled"
        if not _only_feeds(self.graph, second.inputs[0], second):
            return None
        second.attrs["perm"] = perm
        self._merge(first, second)
        return "transpose_transpose_merged"
