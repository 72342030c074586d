"""Fuse MatMul with a constant 2-D weight and a following constant Add into one Gemm.

    Add(MatMul(A, B), C)  ==  Add(C, MatMul(A, B))  ->  Gemm(A, B, C)      (alpha = beta = 1)

Gemm computes ``A @ B + C`` with ``C`` unidirectionally broadcast to ``[M, N]``, which is the
Add exactly when broadcasting does not grow the result, i.e. ``C`` has rank <= 2 and,
right-aligned against ``[M, N]``, each dimension is 1 or equal (``[N]``, ``[1, N]``, ``[M, 1]``,
``[M, N]``, ``[1]``, scalar). A dimension equal to ``M`` needs ``M`` to be static.

Preconditions: default domain; ``A`` is known (shape inference) to be 2-D (Gemm has no batch
dimensions; ``rank>2`` is declined); ``B`` is a constant 2-D tensor and ``C`` a constant, both of
a float type (Gemm is defined for floats only; integer MatMul is left alone); the MatMul output
has exactly one reader, the Add, in this graph, and is not a graph output.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxslim.graph import DEFAULT_DOMAINS, NameScope, constant_value, detach, opset, rank
from onnxslim.pipeline import Pass, PassContext, PassResult


class FuseGemm(Pass):
    """Fuse MatMul (2-D input, constant weight) + constant Add into Gemm."""

    name = "fuse_gemm"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        scope = NameScope(graph)
        local = {id(n) for n in graph.nodes}
        output_ids = {id(t) for t in graph.outputs}
        legacy_broadcast = opset(graph) < 7  # Gemm-1/6 broadcast C only with broadcast=1
        fused = 0
        for mm in list(graph.nodes):
            if mm.op != "MatMul" or mm.domain not in DEFAULT_DOMAINS or len(mm.outputs) != 1:
                continue
            y = mm.outputs[0]
            readers = {id(n): n for n in y.outputs}
            if id(y) in output_ids or len(readers) != 1:
                continue
            (add,) = readers.values()
            if add.op != "Add" or add.domain not in DEFAULT_DOMAINS or id(add) not in local:
                continue
            reason = _check(mm, add)
            if reason:
                ctx.decline(self.name, where=mm.name, reason=reason)
                continue
            a, b = mm.inputs
            c = add.inputs[1] if add.inputs[0] is y else add.inputs[0]
            out = add.outputs[0]
            detach(add)
            detach(mm)
            attrs = {"broadcast": 1} if legacy_broadcast else {}
            gemm = gs.Node("Gemm", name=mm.name or scope.fresh("gemm"), attrs=attrs, inputs=[a, b, c], outputs=[out])
            graph.nodes.append(gemm)
            fused += 1
        return PassResult(changed=fused > 0, counters={"fused": fused} if fused else {})


def _check(mm: gs.Node, add: gs.Node) -> str | None:
    """Why ``Add(MatMul(A, B), C)`` cannot become ``Gemm(A, B, C)``; None when it can."""
    y = mm.outputs[0]
    if len(add.inputs) != 2 or add.inputs[0] is add.inputs[1]:
        return "Add reads the MatMul output twice"
    a, b = mm.inputs
    a_rank = rank(a)
    if a_rank is None:
        return "rank of A unknown"
    if a_rank > 2:
        return "rank>2"
    if a_rank < 2:
        return "A is 1-D"
    weight = constant_value(b)
    if weight is None or weight.ndim != 2:
        return "B is not a constant 2-D tensor"
    if weight.dtype.kind != "f":
        return f"B is {weight.dtype} (Gemm takes floats only)"
    c = constant_value(add.inputs[1] if add.inputs[0] is y else add.inputs[0])
    if c is None:
        return "Add operand is not constant"
    if c.dtype != weight.dtype:
        return "Add operand and B differ in dtype"
    if c.ndim > 2:
        return f"bias of shape {list(c.shape)} would grow the output"
    m = a.shape[0] if isinstance(a.shape[0], (int, np.integer)) else None
    target = (m, weight.shape[1])
    for dim, want in zip(c.shape[::-1], target[::-1]):
        if dim != 1 and dim != want:
            return f"bias of shape {list(c.shape)} does not broadcast to [M, N] without growing it"
    return None
