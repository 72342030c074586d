"""Where a factorizable weight matrix sits in a node, and how its two factors replace the node.

Every site is reduced to one matrix problem: output rows ``= activation rows @ W (+ bias)``, with
``W`` of shape K x N. ``Decomposition.factors`` gives ``A`` (K x r) and ``B`` (r x N), and
:func:`emit` writes the two nodes that compute the same thing with ``A @ B`` in place of ``W``:

========================  ==========================  =============================================
kind                      node                         replacement
========================  ==========================  =============================================
``matmul``                MatMul(X, W)                 MatMul(MatMul(X, A), B)
``matmul_left``           MatMul(Wc, X), W = Wc^T      MatMul(B^T, MatMul(A^T, X))
``gemm``                  Gemm(X, Wc, C)               Gemm(MatMul(X, A), B, C, beta); W = alpha*op(Wc)
                                                       (transA kept: Gemm(X, A, transA=1) first)
``gemm_left``             Gemm(Wc, X, C)               Gemm(B^T, MatMul(A^T, X), C, beta);
                                                       W = (alpha*op(Wc))^T (transB kept likewise)
``conv``                  1x1 Conv(X, Wc, bias)        Conv(Conv(X, A^T as r x Cin x 1..), B^T, bias);
                                                       strides/pads/dilations stay on the first Conv
``conv_spatial``          kh x kw Conv, group 1        Conv kh x 1 (r channels) then Conv 1 x kw;
                                                       W[(c,i),(o,j)] = Wc[o,c,i,j] (plain SVD only)
========================  ==========================  =============================================
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxslim.graph import (
    DEFAULT_DOMAINS,
    NameScope,
    Reject,
    constant_value,
    detach,
    make_constant,
    optional_constant,
    optional_input,
)

Layout = tuple  # ("last",) | ("first",) | ("penultimate",) | ("channels", strides or None)


@dataclass
class Site:
    """One node whose constant weight can be replaced by two low-rank factors."""

    node: gs.Node
    kind: str
    weight: np.ndarray  # K x N in the weight's own dtype
    weight_tensor: gs.Tensor
    activation: gs.Tensor
    layout: Layout | None  # how activation arrays become rows of length K; None: no statistics
    bias: np.ndarray | None = None  # length N, added to every output row (error denominators)
    conv_shape: tuple[int, ...] = ()  # the original Conv weight's shape

    @property
    def k(self) -> int:
        return int(self.weight.shape[0])

    @property
    def n(self) -> int:
        return int(self.weight.shape[1])

    @property
    def stats_key(self) -> tuple[str, Layout] | None:
        return None if self.layout is None else (self.activation.name, self.layout)


def find_site(node: gs.Node, graph_opset: int, spatial: bool) -> Site | str | None:
    """A site at ``node``; a reason (str) when it looks like one but cannot be; None otherwise."""
    if node.domain not in DEFAULT_DOMAINS or len(node.outputs) != 1:
        return None
    finder = {"MatMul": _matmul, "Gemm": _gemm, "Conv": _conv}.get(node.op)
    if finder is None:
        return None
    found = finder(node, graph_opset, spatial)
    if isinstance(found, Site) and found.weight.dtype.kind != "f":
        return f"weight is {found.weight.dtype} (only float weights are factorized)"
    return found


def _split_operands(x: gs.Tensor, y: gs.Tensor) -> tuple[int, np.ndarray] | str | None:
    """(index of the constant operand, its value); None when neither or both are constant."""
    vx, vy = constant_value(x), constant_value(y)
    if (vx is None) == (vy is None):
        return None  # nothing constant, or everything (fold_constants' job)
    index, value = (1, vy) if vy is not None else (0, vx)
    if value.ndim != 2:
        return f"constant operand has rank {value.ndim} (only 2-D weights are factorized)"
    return index, value


def _matmul(node: gs.Node, graph_opset: int, spatial: bool) -> Site | str | None:
    if len(node.inputs) != 2:
        return None
    found = _split_operands(*node.inputs)
    if not isinstance(found, tuple):
        return found
    index, value = found
    if index == 1:
        return Site(node, "matmul", value, node.inputs[1], node.inputs[0], ("last",))
    return Site(node, "matmul_left", value.T, node.inputs[0], node.inputs[1], ("penultimate",))


def _gemm(node: gs.Node, graph_opset: int, spatial: bool) -> Site | str | None:
    if len(node.inputs) < 2:
        return None
    found = _split_operands(node.inputs[0], node.inputs[1])
    if not isinstance(found, tuple):
        return found
    index, value = found
    alpha, beta = float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("beta", 1.0))
    trans_a, trans_b = int(node.attrs.get("transA", 0)), int(node.attrs.get("transB", 0))
    c = optional_input(node, 2)
    c_value = constant_value(c) if c is not None else None
    scale = np.asarray(alpha, dtype=value.dtype)
    if index == 1:  # Y = alpha * op(X) @ op(Wc) + beta * C
        if trans_a and graph_opset < 11:
            return "transA=1 would need a Gemm without C (opset >= 11)"
        weight = (value.T if trans_b else value) * scale
        bias = None
        if c_value is not None and c_value.size == weight.shape[1] and c_value.shape[-1:] == (weight.shape[1],):
            bias = beta * c_value.reshape(-1).astype(np.float64)
        layout = ("first",) if trans_a else ("last",)
        return Site(node, "gemm", weight, node.inputs[1], node.inputs[0], layout, bias)
    # Y = alpha * op(Wc) @ op(X) + beta * C: the output's columns are rows of op(X)^T @ W.
    if trans_b and graph_opset < 11:
        return "transB=1 would need a Gemm without C (opset >= 11)"
    weight = (value if trans_a else value.T) * scale
    bias = None
    if c_value is not None and c_value.ndim == 2 and c_value.shape == (weight.shape[1], 1):
        bias = beta * c_value[:, 0].astype(np.float64)
    layout = ("last",) if trans_b else ("first",)
    return Site(node, "gemm_left", weight, node.inputs[0], node.inputs[1], layout, bias)


def _conv(node: gs.Node, graph_opset: int, spatial: bool) -> Site | str | None:
    if len(node.inputs) < 2:
        return None
    x, w_tensor = node.inputs[0], node.inputs[1]
    w = constant_value(w_tensor)
    if w is None or w.ndim < 3 or constant_value(x) is not None:
        return None
    kernel = tuple(int(d) for d in w.shape[2:])
    pointwise = all(d == 1 for d in kernel)
    if not pointwise and not spatial:
        return None
    if int(node.attrs.get("group", 1)) != 1:
        return f"grouped Conv (group={node.attrs.get('group')})"
    try:
        bias = optional_constant(node, 2, "Conv bias")
    except Reject as why:
        return str(why)
    cout, cin = int(w.shape[0]), int(w.shape[1])
    if pointwise:
        pads = node.attrs.get("pads")
        plain_grid = not any(pads or ()) and node.attrs.get("auto_pad", "NOTSET") in ("NOTSET", "VALID")
        strides = tuple(int(s) for s in node.attrs.get("strides", ())) if plain_grid else None
        layout = ("channels", strides if strides and any(s != 1 for s in strides) else None)
        return Site(node, "conv", w.reshape(cout, cin).T, w_tensor, x, layout, bias, tuple(w.shape))
    if len(kernel) != 2:
        return f"spatial SVD handles 2-D convolutions only (kernel {list(kernel)})"
    if node.attrs.get("auto_pad", "NOTSET") != "NOTSET":
        return f"spatial SVD needs explicit pads (auto_pad={node.attrs.get('auto_pad')})"
    kh, kw = kernel
    matrix = w.transpose(1, 2, 0, 3).reshape(cin * kh, cout * kw)
    return Site(node, "conv_spatial", matrix, w_tensor, x, None, None, tuple(w.shape))


def rows(layout: Layout, value: np.ndarray) -> np.ndarray:
    """Activation array -> rows (n x K) as the site's matrix problem sees them."""
    tag = layout[0]
    if tag == "last":
        return value.reshape(-1, value.shape[-1])
    if tag == "first":
        return value.reshape(value.shape[0], -1).T
    if tag == "penultimate":
        return value.reshape(1, -1) if value.ndim == 1 else np.moveaxis(value, -2, -1).reshape(-1, value.shape[-2])
    if tag == "channels":
        strides = layout[1]
        if strides:
            value = value[(slice(None), slice(None), *(slice(None, None, s) for s in strides))]
        return np.moveaxis(value, 1, -1).reshape(-1, value.shape[1])
    raise ValueError(f"unknown layout {layout!r}")


def _dims(tensor: gs.Tensor) -> tuple[list[int], bool] | None:
    """Shape with unknown dimensions counted as 1 (as onnxslim.stats does), and whether it is exact."""
    if tensor.shape is None:
        return None
    dims = [int(d) if isinstance(d, (int, np.integer)) and d >= 0 else None for d in tensor.shape]
    return [d if d is not None else 1 for d in dims], all(d is not None for d in dims)


def macs(site: Site, rank: int) -> tuple[int | None, int | None, bool]:
    """Multiply-accumulates before and after factorization, and whether they are exact.

    Unknown dimensions count as 1 (the figures are then per unit of those dims); (None, None,
    False) when the output's rank is unknown.
    """
    out = _dims(site.node.outputs[0])
    if out is None:
        return None, None, False
    shape, exact = out
    k, n = site.k, site.n
    if site.kind == "conv_spatial":
        x = _dims(site.activation)
        if x is None or len(shape) != 4 or len(x[0]) != 4:
            return None, None, False
        cout, cin, kh, kw = site.conv_shape
        batch, _, out_h, out_w = shape
        before = batch * out_h * out_w * cout * cin * kh * kw
        after = batch * out_h * x[0][3] * rank * cin * kh + batch * out_h * out_w * cout * rank * kw
        return before, after, exact and x[1]
    if site.kind == "matmul":
        count = int(np.prod(shape[:-1], dtype=np.int64))
    elif site.kind == "matmul_left":
        count = int(np.prod(shape[:-2], dtype=np.int64)) * shape[-1] if len(shape) >= 2 else 1
    elif site.kind == "gemm":
        count = shape[0]
    elif site.kind == "gemm_left":
        count = shape[1]
    else:  # conv: one row per output position
        count = int(np.prod(shape, dtype=np.int64)) // max(shape[1], 1)
    return count * k * n, count * rank * (k + n), exact


def _mid_shape(site: Site, rank: int) -> list | None:
    shape = site.node.outputs[0].shape
    if shape is None:
        return None
    shape = list(shape)
    if site.kind == "conv_spatial":  # the kh x 1 Conv: the output's rows, the input's columns
        x = site.activation.shape
        return [shape[0], rank, shape[2], x[3]] if x is not None and len(x) == 4 and len(shape) == 4 else None
    if site.kind == "matmul":
        return [*shape[:-1], rank]
    if site.kind == "matmul_left":
        return [*shape[:-2], rank, shape[-1]] if len(shape) >= 2 else [rank]
    if site.kind == "gemm":
        return [shape[0], rank]
    if site.kind == "gemm_left":
        return [rank, shape[1]]
    return [shape[0], rank, *shape[2:]]


def emit(graph: gs.Graph, scope: NameScope, site: Site, a: np.ndarray, b: np.ndarray) -> list[gs.Node]:
    """Replace ``site.node`` by two nodes using ``a`` (K x r) and ``b`` (r x N); returns them."""
    node, rank = site.node, int(a.shape[1])
    a, b = a.astype(site.weight.dtype), b.astype(site.weight.dtype)
    y, inputs, attrs = node.outputs[0], list(node.inputs), dict(node.attrs)
    base = node.name or node.op.lower()
    mid = gs.Variable(scope.fresh(f"{base}_svd"), dtype=y.dtype, shape=_mid_shape(site, rank))
    act = site.activation

    def const(tag: str, value: np.ndarray) -> gs.Constant:
        return make_constant(scope, f"{base}_svd_{tag}", value)

    c = inputs[2] if len(inputs) > 2 and inputs[2].name else None
    if site.kind == "matmul":
        first, second = ("MatMul", [act, const("a", a)], {}), ("MatMul", [mid, const("b", b)], {})
    elif site.kind == "matmul_left":
        first, second = ("MatMul", [const("a", a.T), act], {}), ("MatMul", [const("b", b.T), mid], {})
    elif site.kind in ("gemm", "gemm_left"):
        left = site.kind == "gemm_left"
        trans = int(attrs.get("transB" if left else "transA", 0))
        operands = [const("a", a.T), act] if left else [act, const("a", a)]
        first = ("Gemm", operands, {"transB" if left else "transA": 1}) if trans else ("MatMul", operands, {})
        factor = const("b", b.T if left else b)
        pair = [factor, mid] if left else [mid, factor]
        if c is not None:
            extra = {k: attrs[k] for k in ("broadcast",) if k in attrs}
            second = ("Gemm", [*pair, c], {"beta": float(attrs.get("beta", 1.0)), **extra})
        else:
            second = ("MatMul", pair, {})
    elif site.kind == "conv":
        ones = [1] * (len(site.conv_shape) - 2)
        first_attrs = {**attrs, "kernel_shape": ones} if "kernel_shape" in attrs else attrs
        w1 = const("a", a.T.reshape(rank, site.k, *ones))
        w2 = const("b", b.T.reshape(site.n, rank, *ones))
        second = ("Conv", [mid, w2, *([c] if c is not None else [])], {"kernel_shape": ones})
        first = ("Conv", [act, w1], first_attrs)
    else:  # conv_spatial
        cout, cin, kh, kw = site.conv_shape
        strides = list(attrs.get("strides", [1, 1]))
        pads = list(attrs.get("pads", [0, 0, 0, 0]))
        dil = list(attrs.get("dilations", [1, 1]))
        w1 = const("a", a.T.reshape(rank, cin, kh, 1))
        w2 = const("b", b.reshape(rank, cout, kw).transpose(1, 0, 2)[:, :, None, :])
        first = ("Conv", [act, w1], {"kernel_shape": [kh, 1], "strides": [strides[0], 1], "pads": [pads[0], 0, pads[2], 0], "dilations": [dil[0], 1]})
        second = ("Conv", [mid, w2, *([c] if c is not None else [])],
                  {"kernel_shape": [1, kw], "strides": [1, strides[1]], "pads": [0, pads[1], 0, pads[3]], "dilations": [1, dil[1]]})
    detach(node)
    made = []
    for (op, ins, node_attrs), out, tag in ((first, mid, "svd_a"), (second, y, "svd_b")):
        new = gs.Node(op, name=scope.fresh(f"{base}_{tag}"), attrs=node_attrs, inputs=list(ins), outputs=[out])
        graph.nodes.append(new)
        made.append(new)
    return made
