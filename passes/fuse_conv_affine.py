"""Fold a constant per-channel Mul / Add / Sub that follows a Conv, Gemm or MatMul into its weights.

For ``y = Conv(x, W, b)`` (output channels on axis 1) and a constant ``k`` that is per output
channel (broadcast to the output it varies at most along axis 1: shapes ``[C,1,1]``,
``[1,C,1,1]``, ``[1]``, scalar, ...)::

    y * k   ->  Conv(x, W * k[o], b * k)
    y + k   ->  Conv(x, W, b + k)             (bias created when absent)
    y - k   ->  Conv(x, W, b - k)
    k - y   ->  Conv(x, -W, k - b)

For ``y = Gemm(A, B, C) = alpha * A' B' + beta * C`` and ``k`` per output column (``[N]``,
``[1,N]``, ``[1]``, scalar)::

    y * k   ->  Gemm(A, B * k[n], beta * C * k), beta = 1        (B's columns: rows if transB)
    y + k   ->  Gemm(A, B, beta * C + k), beta = 1
    k - y   ->  Gemm(A, B, k - beta * C), alpha = -alpha, beta = 1

For ``y = MatMul(A, B)`` with constant 2-D ``B`` and ``k`` per output column: ``y * k -> MatMul(A,
B * k[n])``. (MatMul + Add becomes Gemm in ``fuse_gemm``.)

A constant whose broadcast would grow the output, or that varies along any other axis (e.g.
``[1,1,1,W]`` after a Conv), is not per channel and is left alone. Preconditions: default domain;
constant float weight (and bias / C when present); the intermediate tensor has exactly one
reader, in this graph, and is not a graph output. Arithmetic in float64, cast to the weight dtype.
Chains (Conv -> Mul -> Add) fold in one run.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxslim.graph import (
    DEFAULT_DOMAINS,
    NameScope,
    Reject,
    channel_vector,
    constant_value,
    detach,
    make_constant,
    optional_constant,
    rank,
    set_input,
    sole_reader,
)
from onnxslim.pipeline import Pass, PassContext, PassResult

_AFFINE_OPS = ("Mul", "Add", "Sub")


class FuseConvAffine(Pass):
    """Fold constant per-channel Mul/Add/Sub after Conv, Gemm or MatMul into weights and bias."""

    name = "fuse_conv_affine"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        folder = _Folder(graph, NameScope(graph))
        counters: dict[str, int] = {}
        for node in list(graph.nodes):
            if node.op not in ("Conv", "Gemm", "MatMul") or node.domain not in DEFAULT_DOMAINS or not node.outputs:
                continue
            while (nxt := folder.sole_reader(node.outputs[0])) is not None:
                if nxt.op not in _AFFINE_OPS or nxt.domain not in DEFAULT_DOMAINS:
                    break
                if node.op == "MatMul" and nxt.op != "Mul":
                    break  # MatMul + Add is fuse_gemm's rewrite
                if not any(constant_value(t) is not None for t in nxt.inputs if t is not node.outputs[0]):
                    break  # e.g. a residual Add: not a candidate, so not a declined rewrite (--strict)
                try:
                    kind = folder.fold(node, nxt)
                except Reject as why:
                    ctx.decline(self.name, where=nxt.name, reason=f"{node.op} -> {nxt.op}: {why}")
                    break
                counters[kind] = counters.get(kind, 0) + 1
        return PassResult(changed=bool(counters), counters=counters)


class _Folder:
    def __init__(self, graph: gs.Graph, scope: NameScope):
        self.scope = scope
        self.local = {id(n) for n in graph.nodes}
        self.output_ids = {id(t) for t in graph.outputs}

    def sole_reader(self, tensor: gs.Tensor) -> gs.Node | None:
        """The one node of this graph reading ``tensor``, if it is not a graph output."""
        return sole_reader(tensor, self.local, self.output_ids)

    def fold(self, node: gs.Node, affine: gs.Node) -> str:
        y = node.outputs[0]
        if len(affine.inputs) != 2:
            raise Reject("expected two inputs")
        operand_first = affine.inputs[1] is y
        other = affine.inputs[0] if operand_first else affine.inputs[1]
        k = constant_value(other)
        if other is y or k is None:
            raise Reject("other operand is not constant")
        if k.dtype.kind != "f":
            raise Reject("constant is not floating point")
        negate = affine.op == "Sub" and operand_first  # k - y
        if affine.op == "Sub" and not negate:
            k = -k.astype(np.float64)
        if node.op == "Conv":
            kind = self._fold_conv(node, affine.op, k, negate)
        elif node.op == "Gemm":
            kind = self._fold_gemm(node, affine.op, k, negate)
        else:
            kind = self._fold_matmul(node, affine.op, k)
        out = affine.outputs[0]
        detach(affine)
        node.outputs[0] = out
        return kind

    # -- Conv ----------------------------------------------------------------------------

    def _fold_conv(self, conv: gs.Node, op: str, k: np.ndarray, negate: bool) -> str:
        weight = constant_value(conv.inputs[1]) if len(conv.inputs) > 1 else None
        if weight is None or weight.dtype.kind != "f" or weight.ndim < 3:
            raise Reject("Conv weight is not a constant float tensor")
        channels = weight.shape[0]
        vec = channel_vector(k, weight.ndim, 1, channels)
        if vec is None:
            raise Reject(f"constant of shape {list(k.shape)} is not per output channel")
        bias = optional_constant(conv, 2, "Conv bias")
        w64 = weight.astype(np.float64)
        b64 = np.zeros(channels) if bias is None else bias
        if op == "Mul":
            new_w, new_b = w64 * vec.reshape(-1, *(1,) * (weight.ndim - 1)), b64 * vec
            bias_needed = bias is not None
        elif negate:
            new_w, new_b, bias_needed = -w64, vec - b64, True
        else:
            new_w, new_b, bias_needed = None, b64 + vec, True
        base = conv.name or "conv"
        if new_w is not None:
            conv.inputs[1] = make_constant(self.scope, base + "_weight", new_w.astype(weight.dtype))
        if bias_needed:
            set_input(conv, 2, make_constant(self.scope, base + "_bias", new_b.astype(weight.dtype)))
        return "conv_mul" if op == "Mul" else "conv_add"

    # -- Gemm / MatMul -------------------------------------------------------------------

    def _fold_gemm(self, gemm: gs.Node, op: str, k: np.ndarray, negate: bool) -> str:
        weight = _weight_2d(gemm)
        trans_b = bool(gemm.attrs.get("transB", 0))
        columns = weight.shape[0] if trans_b else weight.shape[1]
        vec = channel_vector(k, 2, 1, columns)
        if vec is None:
            raise Reject(f"constant of shape {list(k.shape)} is not per output column")
        c = optional_constant(gemm, 2, "Gemm C")
        beta = float(gemm.attrs.get("beta", 1.0))
        bc = None if c is None or beta == 0.0 else beta * c  # what the Gemm adds today
        base = gemm.name or "gemm"
        if op == "Mul":
            scale = vec[:, None] if trans_b else vec[None, :]
            gemm.inputs[1] = make_constant(self.scope, base + "_weight", (weight * scale).astype(weight.dtype))
            new_c = None if bc is None else bc * vec
        elif negate:
            gemm.attrs["alpha"] = -float(gemm.attrs.get("alpha", 1.0))
            new_c = vec if bc is None else vec - bc
        else:
            new_c = vec if bc is None else bc + vec
        if new_c is not None:
            set_input(gemm, 2, make_constant(self.scope, base + "_c", new_c.astype(weight.dtype)))
            gemm.attrs["beta"] = 1.0
        return "gemm_mul" if op == "Mul" else "gemm_add"

    def _fold_matmul(self, mm: gs.Node, op: str, k: np.ndarray) -> str:
        if op != "Mul":
            raise Reject("only Mul folds into a MatMul (Add is fuse_gemm's rewrite)")
        weight = _weight_2d(mm)
        out_rank = rank(mm.outputs[0]) or rank(mm.inputs[0])  # A's rank is the output's for a 2-D B
        if out_rank is None:
            out_rank = 1  # unknown: only [N], [1] and scalars are known not to grow the output
        vec = channel_vector(k, out_rank, out_rank - 1, weight.shape[1])
        if vec is None:
            raise Reject(f"constant of shape {list(k.shape)} is not per output column (output rank {out_rank})")
        mm.inputs[1] = make_constant(self.scope, (mm.name or "matmul") + "_weight", (weight * vec[None, :]).astype(weight.dtype))
        return "matmul_mul"


def _weight_2d(node: gs.Node) -> np.ndarray:
    weight = constant_value(node.inputs[1]) if len(node.inputs) > 1 else None
    if weight is None or weight.ndim != 2 or weight.dtype.kind != "f":
        raise Reject(f"{node.op} weight is not a constant 2-D float tensor")
    return weight
