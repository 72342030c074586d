"""Fold inference-mode BatchNormalization into a neighbouring Conv, ConvTranspose, Gemm or MatMul.

An inference BatchNormalization on channel axis 1 is a per-channel affine map::

    s = gamma / sqrt(var + eps)        t = beta - mean * s        y = x * s[c] + t[c]

Into a **preceding** Conv / ConvTranspose (constant weight, optional constant bias), whose output
channel ``o`` is scaled::

    W'[o] = W[o] * s[o]                b' = (b - mean) * s + beta     (b = 0 when absent)

For a Conv the output channel is axis 0 of ``W`` ([Cout, Cin/g, k...]). For a ConvTranspose it is
axis 1 *within each group*: ``W`` is [Cin, Cout/g, k...] and output channel ``gi * Cout/g + j``
lives in rows ``gi * Cin/g ...`` at column ``j``.

Into a **preceding** Gemm / MatMul with a constant 2-D weight, when the activation is 2-D (the
BN channel axis is then the weight's output dimension ``N``): the weight's output columns are
scaled by ``s`` and the result is a Gemm with ``C' = beta_gemm * C * s + t`` and ``beta = 1``.

Into a **following** Conv (BN output read only by that Conv's data input) with no padding (pads
all zero, auto_pad NOTSET or VALID), every window reads only real inputs, so::

    W'[:, c] = W[:, c] * s[c]          b' = b + sum_{c, k} W[:, c, k] * t[c]     (per group)

With padding the zeros would be padded *after* the affine map in the original and before it in
the rewrite, so the border outputs would differ: that case is declined.

Preconditions: default domain; BN in inference mode (``training_mode`` absent or 0, ``is_test=1``
before opset 7, ``spatial=1`` before opset 9, no optional outputs); scale, B, mean and var are
constant 1-D tensors of length C; the intermediate tensor has exactly one reader, in this graph,
and is not a graph output; weights are floating point. Arithmetic is done in float64 and cast
back to the weight dtype. A standalone BN with no foldable neighbour is left alone (replacing it
by Mul+Add would add a node).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxslim.graph import (
    DEFAULT_DOMAINS,
    NameScope,
    Reject,
    constant_value,
    detach,
    make_constant,
    opset,
    optional_constant,
    producer,
    rank,
    set_input,
    sole_reader,
)
from onnxslim.pipeline import Pass, PassContext, PassResult


class FuseConvBn(Pass):
    """Fold inference BatchNormalization into an adjacent Conv, ConvTranspose, Gemm or MatMul."""

    name = "fuse_conv_bn"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        scope = NameScope(graph)
        folder = _Folder(graph, scope)
        counters: dict[str, int] = {}
        for node in list(graph.nodes):
            if node.op != "BatchNormalization" or node.domain not in DEFAULT_DOMAINS or not node.outputs:
                continue
            try:
                kind = folder.fold(node)
            except Reject as why:
                ctx.decline(self.name, where=node.name, reason=str(why))
                continue
            counters[kind] = counters.get(kind, 0) + 1
        return PassResult(changed=bool(counters), counters=counters)


class _Folder:
    """Matches one BatchNormalization against its neighbours and rewrites the graph."""

    def __init__(self, graph: gs.Graph, scope: NameScope):
        self.graph = graph
        self.scope = scope
        self.opset = opset(graph)
        self.local = {id(n) for n in graph.nodes}
        self.output_ids = {id(t) for t in graph.outputs}

    # -- matching ------------------------------------------------------------------------

    def fold(self, bn: gs.Node) -> str:
        s, t = self._bn_affine(bn)
        x = bn.inputs[0]
        prev = producer(x)
        reasons = []
        if prev is not None and self._sole_reader(x) is bn and prev.domain in DEFAULT_DOMAINS:
            try:
                if prev.op in ("Conv", "ConvTranspose"):
                    return self._into_conv(prev, bn, s, t)
                if prev.op in ("Gemm", "MatMul"):
                    return self._into_gemm(prev, bn, s, t)
                reasons.append(f"producer is {prev.op}")
            except Reject as why:
                reasons.append(f"preceding {prev.op}: {why}")
        else:
            reasons.append("no single-use producer")
        nxt = self._sole_reader(bn.outputs[0])
        if nxt is not None and nxt.op == "Conv" and nxt.domain in DEFAULT_DOMAINS:
            try:
                return self._into_following_conv(bn, nxt, s, t)
            except Reject as why:
                reasons.append(f"following Conv: {why}")
        raise Reject("standalone BatchNormalization: " + "; ".join(reasons))

    def _bn_affine(self, bn: gs.Node) -> tuple[np.ndarray, np.ndarray]:
        """(s, t) in float64 for an inference-mode BN, or raise Reject."""
        if bn.attrs.get("training_mode", 0):
            raise Reject("training_mode=1")
        if self.opset < 7 and not bn.attrs.get("is_test", 0):
            raise Reject("is_test=0 (training mode)")
        if not bn.attrs.get("spatial", 1):
            raise Reject("spatial=0 (per-element statistics)")
        if any(out.name for out in bn.outputs[1:]):
            raise Reject("optional statistics outputs are present (training mode)")
        if len(bn.inputs) != 5:
            raise Reject("expected 5 inputs")
        params = [constant_value(tensor) for tensor in bn.inputs[1:]]
        if any(p is None for p in params):
            raise Reject("scale, B, mean or var is not constant")
        if any(p.ndim != 1 or p.shape != params[0].shape for p in params):
            raise Reject("statistics are not 1-D tensors of one length")
        if any(p.dtype.kind != "f" for p in params):
            raise Reject("statistics are not floating point")
        gamma, beta, mean, var = (p.astype(np.float64) for p in params)
        eps = float(bn.attrs.get("epsilon", 1e-5))
        s = gamma / np.sqrt(var + eps)
        return s, beta - mean * s

    def _sole_reader(self, tensor: gs.Tensor) -> gs.Node | None:
        """The one node of this graph reading ``tensor``, if it is not a graph output."""
        return sole_reader(tensor, self.local, self.output_ids)

    # -- rewrites ------------------------------------------------------------------------

    def _into_conv(self, conv: gs.Node, bn: gs.Node, s: np.ndarray, t: np.ndarray) -> str:
        weight, bias, group = _conv_params(conv)
        transposed = conv.op == "ConvTranspose"
        channels = weight.shape[1] * group if transposed else weight.shape[0]
        if channels != s.size:
            raise Reject(f"{s.size} BN channels but {channels} output channels")
        new_w = _scale_output_channels(weight.astype(np.float64), s, group, transposed)
        new_b = t if bias is None else bias * s + t  # (b - mean) * s + beta
        self._set_conv_params(conv, new_w, new_b, weight.dtype)
        self._take_output(conv, bn)
        return "into_conv_transpose" if transposed else "into_conv"

    def _into_gemm(self, mm: gs.Node, bn: gs.Node, s: np.ndarray, t: np.ndarray) -> str:
        x = bn.inputs[0]
        a = mm.inputs[0]
        if mm.op == "MatMul" and rank(x) != 2 and rank(a) != 2:
            raise Reject("activation is not known to be 2-D")
        weight = constant_value(mm.inputs[1]) if len(mm.inputs) > 1 else None
        if weight is None or weight.ndim != 2 or weight.dtype.kind != "f":
            raise Reject("weight is not a constant 2-D float tensor")
        trans_b = mm.op == "Gemm" and bool(mm.attrs.get("transB", 0))
        columns = weight.shape[0] if trans_b else weight.shape[1]
        if columns != s.size:
            raise Reject(f"{s.size} BN channels but {columns} output columns")
        scale = s[:, None] if trans_b else s[None, :]
        new_w = (weight.astype(np.float64) * scale).astype(weight.dtype)
        bias = t
        if mm.op == "Gemm":
            c = optional_constant(mm, 2, "Gemm C")
            beta = float(mm.attrs.get("beta", 1.0))
            if c is not None and beta != 0.0:
                bias = beta * c * s + t
        w_const = make_constant(self.scope, mm.inputs[1].name + "_bn", new_w)
        c_const = make_constant(self.scope, bn.name + "_bias", bias.astype(weight.dtype))
        y = bn.outputs[0]
        detach(bn)
        if mm.op == "Gemm":
            mm.inputs[1] = w_const
            while len(mm.inputs) > 2:
                mm.inputs.pop()
            mm.inputs.append(c_const)
            mm.attrs["beta"] = 1.0
            mm.outputs[0] = y
            return "into_gemm"
        attrs = {"broadcast": 1} if self.opset < 7 else {}
        gemm = gs.Node("Gemm", name=mm.name or self.scope.fresh("gemm"), attrs=attrs, inputs=[a, w_const, c_const], outputs=[y])
        detach(mm)
        self.graph.nodes.append(gemm)
        self.local.add(id(gemm))
        return "into_matmul"

    def _into_following_conv(self, bn: gs.Node, conv: gs.Node, s: np.ndarray, t: np.ndarray) -> str:
        if conv.inputs[0] is not bn.outputs[0]:
            raise Reject("BN output is not the Conv's data input")
        if conv.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            raise Reject(f"auto_pad={conv.attrs['auto_pad']}")
        if any(int(p) != 0 for p in conv.attrs.get("pads", ())):
            raise Reject("Conv pads are not zero (border windows would differ)")
        weight, bias, group = _conv_params(conv)
        if weight.shape[1] * group != s.size:
            raise Reject(f"{s.size} BN channels but {weight.shape[1] * group} input channels")
        new_w, shift = input_affine_into_conv(weight, group, s, t)
        new_b = shift if bias is None else bias + shift
        self._set_conv_params(conv, new_w, new_b, weight.dtype)
        conv.inputs[0] = bn.inputs[0]
        detach(bn)
        return "into_following_conv"

    def _set_conv_params(self, conv: gs.Node, weight: np.ndarray, bias: np.ndarray, dtype: np.dtype) -> None:
        base = conv.name or conv.op.lower()
        conv.inputs[1] = make_constant(self.scope, base + "_weight", weight.astype(dtype))
        set_input(conv, 2, make_constant(self.scope, base + "_bias", bias.astype(dtype)))

    @staticmethod
    def _take_output(node: gs.Node, bn: gs.Node) -> None:
        """Make ``node`` produce the BN's output tensor (keeps its name, shape and readers)."""
        y = bn.outputs[0]
        detach(bn)
        node.outputs[0] = y


def input_affine_into_conv(weight: np.ndarray, group: int, scale: np.ndarray | None,
                           shift: np.ndarray | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """A Conv reading ``x * scale[c] + shift[c]`` (``c`` an input channel; either may be None) as a
    Conv reading ``x``: ``(W * scale[c], sum_{c,k} W[:, c, k] * shift[c])`` per group, in float64
    (the new weight, the term its bias gains; None for what does not change). Exact for the shift only
    when the Conv pads nothing (border windows would read a padded 0 where the fold assumes the
    shift); the callers check."""
    w64 = weight.astype(np.float64)
    cout, cin_g = weight.shape[0], weight.shape[1]
    grouped = w64.reshape(group, cout // group, cin_g, -1)
    moved = None if shift is None else np.einsum("gojk,gj->go", grouped, shift.reshape(group, cin_g)).reshape(cout)
    scaled = None if scale is None else (grouped * scale.reshape(group, 1, cin_g, 1)).reshape(weight.shape)
    return scaled, moved


def _conv_params(conv: gs.Node) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Constant float weight, float64 bias (None when absent) and group of a Conv/ConvTranspose."""
    weight = constant_value(conv.inputs[1]) if len(conv.inputs) > 1 else None
    if weight is None or weight.dtype.kind != "f" or weight.ndim < 3:
        raise Reject("weight is not a constant float tensor")
    group = int(conv.attrs.get("group", 1))
    if group < 1 or weight.shape[0] % group:
        raise Reject(f"group={group} does not divide the weight's first dimension")
    return weight, optional_constant(conv, 2, "bias"), group


def _scale_output_channels(weight: np.ndarray, s: np.ndarray, group: int, transposed: bool) -> np.ndarray:
    """``weight`` with output channel o multiplied by ``s[o]``."""
    ones = (1,) * (weight.ndim - 2)
    if not transposed:
        return weight * s.reshape(-1, 1, *ones)
    cin, cout_g = weight.shape[0], weight.shape[1]
    grouped = weight.reshape(group, cin // group, cout_g, *weight.shape[2:])
    return (grouped * s.reshape(group, 1, cout_g, *ones)).reshape(weight.shape)
