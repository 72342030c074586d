"""Fuse the elementwise spelling of the hard activations into HardSigmoid / HardSwish.

Exporters that lack the ops (paddle2onnx, TensorFlow converters, hand-written graphs) write them
out as four elementwise nodes. With ``h(x) = Clip(x + 3, 0, 6)``::

    h(x) / 6,  h(x) * (1/6)                          ->  HardSigmoid(x, alpha=1/6, beta=0.5)
    x * h(x) / 6,  (x * h(x)) * (1/6),  x * (h(x)/6)  ->  HardSwish(x)                (opset >= 14)
    x * HardSigmoid(x, alpha=1/6, beta=0.5)          ->  HardSwish(x)                (opset >= 14)

Below opset 14 there is no HardSwish and the pass never raises a model's opset: the HardSwish
forms become ``x * HardSigmoid(x)`` (two nodes instead of four). ``--quantize int8`` for
onnxruntime on CPU converts an opset 10-12 graph to 13 for per-channel weights anyway; when the graph holds
such products it converts to 14 instead and makes each one HardSwish (PP-OCRv4, INT8, 1 thread:
det 48.6 -> 46.7 ms, rec 10.5 -> 10.2 ms, same fidelity). onnxruntime runs one HardSwish
faster than the four nodes (PP-OCRv4 det, 24 of them: FP32 11.2 -> 10.4 ms; its INT8 model, where
each elementwise node is a float island between Q/DQ pairs, 10.2 -> 8.9 ms).

HardSigmoid computes ``max(0, min(1, alpha * x + beta))``; against ``Clip(x + 3, 0, 6) / 6`` that
differs by rounding only (a few ULP). A HardSigmoid with another slope (Paddle's default 0.2) is
not a HardSwish factor and is left alone.

Preconditions: default domain throughout; the constants are one-element tensors of the same
float type as ``x``, float16 or float32 (onnxruntime 1.32 has no double kernel for either op, so
double graphs are left alone), equal to 3, 0, 6 and 6 (or 1/6 rounded to that type), and of rank
at most ``x``'s (a higher-rank constant would broadcast the output to a higher rank); Clip bounds
come from constant inputs (opset >= 11) or attributes; every intermediate tensor has exactly one
reader, in this graph, and is not a graph output (``x`` itself may have any number).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxslim.graph import DEFAULT_DOMAINS, NameScope, constant_value, detach, opset, producer, rank, sole_reader
from onnxslim.pipeline import Pass, PassContext, PassResult

_FLOATS = (np.float16, np.float32)  # onnxruntime has no double HardSigmoid/HardSwish kernel
_SIXTH = 1.0 / 6.0
HARDSWISH_OPSET = 14


class FuseHardSwish(Pass):
    """Fuse Clip(x+3,0,6)/6 into HardSigmoid and x*Clip(x+3,0,6)/6 into HardSwish."""

    name = "fuse_hardswish"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        m = _Matcher(graph)
        for node in list(graph.nodes):
            if m.is_local(node):
                m.rewrite_clip_form(node)
        if m.has_hardswish:
            for node in list(graph.nodes):
                if m.is_local(node):
                    m.rewrite_hardsigmoid_product(node)
        # what is left of this run's work (a HardSigmoid it made may have gone into a HardSwish)
        counters: dict[str, int] = {}
        for node in m.created:
            if node.outputs:
                key = node.op.lower()
                counters[key] = counters.get(key, 0) + 1
        return PassResult(changed=bool(m.created), counters=counters)  # every rewrite makes one


def has_hardsigmoid_products(graph: gs.Graph) -> bool:
    """Whether ``graph`` holds an ``x * HardSigmoid(x)`` that one HardSwish could replace at opset 14
    (what this pass writes below 14; insert_qdq, which converts such graphs to opset 13 anyway,
    then goes to 14 instead)."""
    m = _Matcher(graph)
    return any(m.is_local(n) and m.hardsigmoid_product(n) is not None for n in graph.nodes)


def fuse_hardsigmoid_products(graph: gs.Graph) -> int:
    """Replace each ``x * HardSigmoid(x, 1/6, 0.5)`` with one HardSwish (opset >= 14); the number replaced."""
    m = _Matcher(graph)
    if not m.has_hardswish:
        return 0
    for node in list(graph.nodes):
        if m.is_local(node):
            m.rewrite_hardsigmoid_product(node)
    return len(m.created)


class _Matcher:
    def __init__(self, graph: gs.Graph):
        self.graph = graph
        self.scope = NameScope(graph)
        self.local = {id(n) for n in graph.nodes}
        self.outputs = {id(t) for t in graph.outputs}
        self.has_hardswish = opset(graph) >= HARDSWISH_OPSET
        self.created: list[gs.Node] = []  # HardSigmoid/HardSwish nodes made by this run

    def is_local(self, node: gs.Node) -> bool:
        return id(node) in self.local and node.domain in DEFAULT_DOMAINS and len(node.outputs) == 1

    def _only_reader(self, tensor: gs.Tensor, node: gs.Node) -> bool:
        return sole_reader(tensor, self.local, self.outputs) is node

    def _producer(self, tensor: gs.Tensor, op: str) -> gs.Node | None:
        node = producer(tensor)
        if node is None or node.op != op or not self.is_local(node):
            return None
        return node

    # ---- pieces

    def _scalar(self, tensor: gs.Tensor, x: gs.Tensor) -> float | None:
        """The value of a one-element float constant that broadcasts against ``x`` without growing it."""
        value = constant_value(tensor)
        if value is None or value.size != 1 or value.dtype.type not in _FLOATS:
            return None
        if x.dtype is not None and np.dtype(x.dtype) != value.dtype:
            return None
        x_rank = rank(x)
        if value.ndim and (x_rank is None or value.ndim > x_rank):
            return None
        return float(value.reshape(()))

    def _sixth_of(self, node: gs.Node) -> gs.Tensor | None:
        """``t`` when ``node`` is ``t / 6`` or ``t * (1/6)`` (1/6 rounded to the constant's type)."""
        if len(node.inputs) != 2:
            return None
        if node.op == "Div":
            t, c = node.inputs
            return t if self._scalar(c, t) == 6.0 else None
        if node.op == "Mul":
            for t, c in (node.inputs, node.inputs[::-1]):
                value = constant_value(c)
                if self._scalar(c, t) is not None and value.reshape(()) == value.dtype.type(_SIXTH):
                    return t
        return None

    def _clip_bounds(self, clip: gs.Node) -> tuple[float | None, float | None]:
        if "min" in clip.attrs or "max" in clip.attrs:  # opset < 11
            return clip.attrs.get("min"), clip.attrs.get("max")
        x = clip.inputs[0]
        lo, hi = [*clip.inputs[1:3], None, None][:2]  # absent inputs: no bound
        return tuple(self._scalar(t, x) if t is not None and t.name else None for t in (lo, hi))

    @staticmethod
    def _h_nodes(h: gs.Tensor) -> list[gs.Node]:
        """The Clip and Add that compute ``h = Clip(x + 3, 0, 6)`` (after _h_input matched it)."""
        clip = producer(h)
        return [clip, producer(clip.inputs[0])]

    def _h_input(self, tensor: gs.Tensor, reader: gs.Node) -> gs.Tensor | None:
        """``x`` when ``tensor = Clip(x + 3, 0, 6)``, read only by ``reader``, with a sole-reader Add."""
        clip = self._producer(tensor, "Clip")
        if clip is None or not clip.inputs or not self._only_reader(tensor, reader):
            return None
        if self._clip_bounds(clip) != (0.0, 6.0):
            return None
        add = self._producer(clip.inputs[0], "Add")
        if add is None or len(add.inputs) != 2 or not self._only_reader(clip.inputs[0], clip):
            return None
        for x, c in (add.inputs, add.inputs[::-1]):
            if self._scalar(c, x) == 3.0:
                return x
        return None

    # ---- rewrites

    def rewrite_clip_form(self, last: gs.Node) -> None:
        """Rewrite a Clip pattern ending at ``last`` (a Div/Mul), if there is one."""
        inner = self._sixth_of(last)
        if inner is None:
            self._rewrite_times_hardsigmoid_form(last)
            return
        x = self._h_input(inner, last)
        if x is not None:  # h(x) / 6
            self._replace(last, self._hardsigmoid(x, out=last.outputs[0]), self._h_nodes(inner))
            return
        mul = self._producer(inner, "Mul")
        if mul is None or len(mul.inputs) != 2 or not self._only_reader(inner, last):
            return
        for x, h in (mul.inputs, mul.inputs[::-1]):
            if self._h_input(h, mul) is x:  # x * h(x) / 6
                self._replace(last, self._hardswish(x, last.outputs[0]), [mul, *self._h_nodes(h)])
                return

    def _rewrite_times_hardsigmoid_form(self, mul: gs.Node) -> None:
        """``x * (h(x) / 6)`` (the sixth taken before the product)."""
        if mul.op != "Mul" or len(mul.inputs) != 2:
            return
        for x, s in (mul.inputs, mul.inputs[::-1]):
            div = producer(s)
            if div is None or not self.is_local(div) or not self._only_reader(s, mul):
                continue
            h = self._sixth_of(div)
            if h is not None and self._h_input(h, div) is x:
                self._replace(mul, self._hardswish(x, mul.outputs[0]), [div, *self._h_nodes(h)])
                return

    def hardsigmoid_product(self, mul: gs.Node) -> tuple[gs.Tensor, gs.Node] | None:
        """(x, the HardSigmoid) when ``mul`` is ``x * HardSigmoid(x, 1/6, 0.5)``, else None."""
        if mul.op != "Mul" or len(mul.inputs) != 2:
            return None
        for x, s in (mul.inputs, mul.inputs[::-1]):
            hs = self._producer(s, "HardSigmoid")
            if hs is None or not hs.inputs or hs.inputs[0] is not x or not self._only_reader(s, mul):
                continue
            alpha, beta = hs.attrs.get("alpha", 0.2), hs.attrs.get("beta", 0.5)
            if np.float32(alpha) == np.float32(_SIXTH) and beta == 0.5:
                return x, hs
        return None

    def rewrite_hardsigmoid_product(self, mul: gs.Node) -> None:
        """``x * HardSigmoid(x, 1/6, 0.5)`` -> ``HardSwish(x)`` (opset >= 14 only)."""
        found = self.hardsigmoid_product(mul)
        if found is not None:
            self._replace(mul, self._hardswish(found[0], mul.outputs[0]), [found[1]])

    def _hardsigmoid(self, x: gs.Tensor, out: gs.Tensor) -> gs.Node:
        node = gs.Node("HardSigmoid", name=self.scope.fresh(f"{x.name}_hardsigmoid"), attrs={"alpha": _SIXTH, "beta": 0.5},
                       inputs=[x], outputs=[out])
        self.created.append(node)
        return node

    def _hardswish(self, x: gs.Tensor, out: gs.Tensor) -> list[gs.Node]:
        if self.has_hardswish:
            node = gs.Node("HardSwish", name=self.scope.fresh(f"{x.name}_hardswish"), inputs=[x], outputs=[out])
            self.created.append(node)
            return [node]
        gate = gs.Variable(self.scope.fresh(f"{x.name}_hardsigmoid"), dtype=x.dtype, shape=x.shape)
        return [self._hardsigmoid(x, gate),
                gs.Node("Mul", name=self.scope.fresh(f"{x.name}_hardswish"), inputs=[x, gate], outputs=[out])]

    def _replace(self, last: gs.Node, new: gs.Node | list[gs.Node], feeders: list[gs.Node]) -> None:
        """Put ``new`` (writing ``last``'s output tensor, so names and graph outputs stay) in place of
        ``last`` and the ``feeders`` that only it read."""
        for node in feeders:
            detach(node)
        detach(last)
        for node in new if isinstance(new, list) else [new]:
            self.graph.nodes.append(node)
            self.local.add(id(node))
