"""Random valid ONNX graphs for property-based tests (hypothesis).

:func:`graphs` is a strategy of ModelProtos built from a pool of float tensors with known static
shapes: each step picks a family (elementwise chains, Conv/BatchNormalization/Relu stacks, Pad
before Conv, MatMul/Gemm with constant weights, Reshape/Transpose/Concat/Split/Squeeze chains,
shape-computation chains, reductions, shared subexpressions, constant-only arithmetic) and adds
its outputs to the pool. Tensors nobody reads become dead branches; 1-3 pool tensors become graph
outputs. Opset 11, 13 or 18, with each op in the form that opset wants (Split/Squeeze/Unsqueeze/
ReduceSum axes as attribute or input, ReduceMean axes input from 18). A quarter of the graphs
declare a symbolic batch dimension ``N`` (and outputs without shapes).
"""

from __future__ import annotations

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

OPSETS = (11, 13, 18)
FEED_SHAPE_KEY = "fuzz.input_shape"  # metadata: the concrete input shape the graph was built for
IR_FOR_OPSET = {11: 6, 13: 7, 18: 8}
UNARY = ("Relu", "Sigmoid", "Tanh", "Neg", "Abs", "Identity", "Dropout", "LeakyRelu", "Softsign")


class Builder:
    """Nodes, initializers and a pool of (name, shape) float tensors."""

    def __init__(self, draw, opset: int):
        self.draw, self.opset = draw, opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.pool: list[tuple[str, tuple[int, ...]]] = []
        self.count = 0
        self.chain = False  # inside a motif: always read the newest tensor

    def fresh(self, base: str) -> str:
        self.count += 1
        return f"{base}_{self.count}"

    def floats(self, shape, lo=-1.0, hi=1.0) -> np.ndarray:
        seed = self.draw(st.integers(0, 2**16))
        return np.random.default_rng(seed).uniform(lo, hi, shape).astype(np.float32)

    def const(self, array: np.ndarray, base: str = "c") -> str:
        """An initializer or a Constant node (drawn), holding ``array``."""
        name = self.fresh(base)
        if self.draw(st.booleans()):
            self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        else:
            self.nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(array))))
        return name

    def ints(self, values, base: str = "i") -> str:
        return self.const(np.asarray(values, np.int64), base)

    def node(self, op: str, inputs: list[str], shapes: list[tuple[int, ...]], pool: bool = True, **attrs) -> list[str]:
        outs = [self.fresh(op.lower()) for _ in shapes]
        self.nodes.append(helper.make_node(op, inputs, outs, name=self.fresh(op), **attrs))
        if pool:
            self.pool.extend(zip(outs, shapes))
        return outs

    def pick(self, rank: int | None = None, min_dim: int = 1) -> tuple[str, tuple[int, ...]] | None:
        choices = [t for t in self.pool if (rank is None or len(t[1]) == rank) and all(d >= min_dim for d in t[1])]
        if not choices:
            return None
        if self.chain or self.draw(st.booleans()):  # chains: the newest tensor (always inside a motif)
            return choices[-1]
        return self.draw(st.sampled_from(choices))

    # -- opset-dependent forms -----------------------------------------------------------------

    def axes_node(self, op: str, x: str, axes: list[int], shape: tuple[int, ...], pool: bool = True, **attrs) -> str:
        """Squeeze/Unsqueeze/ReduceSum (axes input from 13) and ReduceMean/Max (from 18)."""
        as_input = self.opset >= (18 if op in ("ReduceMean", "ReduceMax") else 13)
        if as_input:
            return self.node(op, [x, self.ints(axes, "axes")], [shape], pool, **attrs)[0]
        return self.node(op, [x], [shape], pool, axes=axes, **attrs)[0]


# --------------------------------------------------------------------------------------------
# Families: each adds a few nodes reading pool tensors


def unary(b: Builder) -> None:
    name, shape = b.pick()
    op = b.draw(st.sampled_from(UNARY))
    attrs = {"alpha": b.draw(st.sampled_from([0.01, 0.2]))} if op == "LeakyRelu" else {}
    b.node(op, [name], [shape], **attrs)


def const_shape(b: Builder, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Broadcastable constant shapes: per channel (axis 1), scalar, full, along the last axis, ..."""
    r = len(shape)
    options = [(), (1,), shape, (1,) * r, shape[-1:]]
    if r >= 2:
        options += [(1, shape[1]) + (1,) * (r - 2)]
    if r >= 3:
        options += [(shape[1],) + (1,) * (r - 2), (1,) * (r - 1) + shape[-1:], shape[1:]]
    return b.draw(st.sampled_from(options))


def binary_const(b: Builder) -> None:
    name, shape = b.pick()
    op = b.draw(st.sampled_from(["Add", "Sub", "Mul", "Div"]))
    cshape = const_shape(b, shape)
    value = b.floats(cshape, 0.5, 1.5) * (1 if op == "Div" else b.draw(st.sampled_from([1, -1])))
    c = b.const(value)
    first = op != "Div" and b.draw(st.booleans())
    out = np.broadcast_shapes(shape, cshape)
    b.node(op, [c, name] if first else [name, c], [tuple(out)])


def binary_pair(b: Builder) -> None:
    a, shape = b.pick()
    same = [t for t in b.pool if t[1] == shape]
    other = b.draw(st.sampled_from(same))[0]
    b.node(b.draw(st.sampled_from(["Add", "Sub", "Mul", "Max", "Min"])), [a, other], [shape])


def _window(size: int, k: int, stride: int, dil: int, pb: int, pe: int, ceil: bool = False) -> int:
    """Output length of a sliding window; 0 when ceil mode would start a window in the end
    padding (onnx shape inference and onnxruntime disagree there, so the generator avoids it)."""
    span = size + pb + pe - dil * (k - 1) - 1
    out = (-(-span // stride) if ceil else span // stride) + 1
    if ceil and (out - 1) * stride >= size + pb:
        return 0
    return out


def conv(b: Builder) -> None:
    t = b.pick(rank=4)
    if t is None:
        return
    name, (n, c, h, w) = t
    k = b.draw(st.sampled_from([1, 2, 3]))
    stride, dil = b.draw(st.sampled_from([1, 1, 2])), b.draw(st.sampled_from([1, 1, 2]))
    auto_pad = b.draw(st.sampled_from(["NOTSET", "NOTSET", "VALID"] + (["SAME_UPPER"] if dil == 1 else [])))
    pads = [b.draw(st.integers(0, k - 1)) for _ in range(4)] if auto_pad == "NOTSET" else [0] * 4
    if auto_pad == "SAME_UPPER":
        oh, ow = -(-h // stride), -(-w // stride)
    else:
        oh, ow = _window(h, k, stride, dil, pads[0], pads[2]), _window(w, k, stride, dil, pads[1], pads[3])
    if oh < 1 or ow < 1:
        return
    group = b.draw(st.sampled_from([1, c]))
    cout = c * b.draw(st.sampled_from([1, 2])) if group == c else b.draw(st.integers(1, 4))
    weight = b.const(b.floats((cout, c // group, k, k)) / k, "w")
    bias = [b.const(b.floats((cout,)), "bias")] if b.draw(st.booleans()) else []
    if auto_pad != "NOTSET":
        attrs = {"auto_pad": auto_pad}
    else:  # zero pads written out or left to the default
        attrs = {"pads": pads} if any(pads) or b.draw(st.booleans()) else {}
    b.node("Conv", [name, weight, *bias], [(n, cout, oh, ow)], group=group, kernel_shape=[k, k],
           strides=[stride] * 2, dilations=[dil] * 2, **attrs)


def conv_transpose(b: Builder) -> None:
    t = b.pick(rank=4)
    if t is None:
        return
    name, (n, c, h, w) = t
    k, stride = b.draw(st.sampled_from([1, 2, 3])), b.draw(st.sampled_from([1, 2]))
    pad = b.draw(st.integers(0, k - 1))
    group = b.draw(st.sampled_from([1, c]))
    cout = group * b.draw(st.integers(1, 2))
    weight = b.const(b.floats((c, cout // group, k, k)) / k, "w")
    bias = [b.const(b.floats((cout,)), "bias")] if b.draw(st.booleans()) else []
    oh, ow = stride * (h - 1) + k - 2 * pad, stride * (w - 1) + k - 2 * pad
    if oh < 1 or ow < 1:
        return
    b.node("ConvTranspose", [name, weight, *bias], [(n, cout, oh, ow)], group=group, kernel_shape=[k, k],
           strides=[stride] * 2, pads=[pad] * 4)


def batchnorm(b: Builder) -> None:
    t = b.pick(rank=4) or b.pick(rank=3) or b.pick(rank=2)
    if t is None:
        return
    name, shape = t
    ch = shape[1]
    stats = [b.const(b.floats((ch,), lo, hi), p) for p, lo, hi in (("g", 0.5, 1.5), ("b", -0.5, 0.5), ("m", -0.5, 0.5), ("v", 0.5, 1.5))]
    b.node("BatchNormalization", [name, *stats], [shape], epsilon=b.draw(st.sampled_from([1e-5, 1e-3])))


def pad(b: Builder) -> None:
    t = b.pick(rank=4)
    if t is None:
        return
    name, shape = t
    mode = b.draw(st.sampled_from(["constant", "constant", "constant", "reflect", "edge"]))
    limit = [min(2, d - 1) if mode == "reflect" else 2 for d in shape]
    begins = [0, 0] + [b.draw(st.integers(0, limit[i])) for i in (2, 3)]
    ends = [0, 0] + [b.draw(st.integers(0, limit[i])) for i in (2, 3)]
    if mode == "constant" and b.draw(st.integers(0, 5)) == 0:  # sometimes the channel axis too
        ends[1] = 1
    out = tuple(d + p + q for d, p, q in zip(shape, begins, ends))
    inputs = [name, b.ints(begins + ends, "pads")]
    if mode == "constant" and b.draw(st.booleans()):
        inputs.append(b.const(np.array(b.draw(st.sampled_from([0.0, 0.0, 1.5])), np.float32), "value"))
    b.node("Pad", inputs, [out], mode=mode)


def pool(b: Builder) -> None:
    t = b.pick(rank=4)
    if t is None:
        return
    name, (n, c, h, w) = t
    k, stride = b.draw(st.sampled_from([1, 2, 3])), b.draw(st.sampled_from([1, 2]))
    pads = [b.draw(st.integers(0, k - 1)) for _ in range(4)]
    ceil = b.draw(st.booleans())
    oh, ow = _window(h, k, stride, 1, pads[0], pads[2], ceil), _window(w, k, stride, 1, pads[1], pads[3], ceil)
    if oh < 1 or ow < 1:
        return
    op = b.draw(st.sampled_from(["AveragePool", "AveragePool", "MaxPool"]))
    extra = {"count_include_pad": b.draw(st.sampled_from([0, 1]))} if op == "AveragePool" else {}
    b.node(op, [name], [(n, c, oh, ow)], kernel_shape=[k, k], strides=[stride] * 2, pads=pads, ceil_mode=int(ceil), **extra)


def matmul(b: Builder) -> None:
    t = (b.pick(rank=2) if b.draw(st.booleans()) else None) or b.pick()
    name, shape = t
    if len(shape) < 2:
        return
    *lead, rows, cols = shape
    out = b.draw(st.integers(1, 6))
    if len(shape) == 2 and b.draw(st.booleans()):  # Gemm with every knob
        trans_a, trans_b = b.draw(st.booleans()), b.draw(st.booleans())
        m, kdim = (cols, rows) if trans_a else (rows, cols)
        w = b.const(b.floats((out, kdim) if trans_b else (kdim, out)), "w")
        cshape = b.draw(st.sampled_from([(out,), (1, out), (m, 1), (m, out), ()]))
        bias = [b.const(b.floats(cshape), "bias")] if b.draw(st.booleans()) else []
        b.node("Gemm", [name, w, *bias], [(m, out)], transA=int(trans_a), transB=int(trans_b),
               alpha=b.draw(st.sampled_from([1.0, 0.5, -2.0])), beta=b.draw(st.sampled_from([1.0, 0.5])))
        return
    if len(shape) == 2 and b.draw(st.integers(0, 3)) == 0:  # constant on the left
        b.node("MatMul", [b.const(b.floats((out, rows)), "w"), name], [(out, cols)])
        return
    b.node("MatMul", [name, b.const(b.floats((cols, out)), "w")], [(*lead, rows, out)])


def reshape(b: Builder) -> None:
    name, shape = b.pick()
    total = int(np.prod(shape))
    target = b.draw(st.sampled_from([(shape[0], total // shape[0]), (total,), (1, total), shape]))
    spec = list(target)
    if len(spec) > 1 and b.draw(st.booleans()):
        spec[-1] = -1
    x = b.node("Reshape", [name, b.ints(spec, "shape")], [tuple(target)])[0]
    if b.draw(st.booleans()):  # and back
        b.node("Reshape", [x, b.ints(list(shape), "shape")], [shape])


def transpose(b: Builder) -> None:
    name, shape = b.pick()
    perm = b.draw(st.permutations(range(len(shape))))
    x = b.node("Transpose", [name], [tuple(shape[p] for p in perm)], perm=list(perm))[0]
    if b.draw(st.booleans()):
        inverse = list(np.argsort(perm))
        if b.draw(st.booleans()):
            b.node("Transpose", [x], [shape], perm=inverse)
        else:
            again = b.draw(st.permutations(range(len(shape))))
            mid = tuple(shape[p] for p in perm)
            b.node("Transpose", [x], [tuple(mid[p] for p in again)], perm=list(again))


def concat(b: Builder) -> None:
    a, shape = b.pick()
    same = [t for t in b.pool if t[1] == shape]
    other = b.draw(st.sampled_from(same))[0]
    axis = b.draw(st.integers(0, len(shape) - 1))
    out = tuple(d * 2 if i == axis else d for i, d in enumerate(shape))
    b.node("Concat", [a, other], [out], axis=axis - len(shape) if b.draw(st.booleans()) else axis)


def split(b: Builder) -> None:
    t = b.pick(min_dim=1)
    name, shape = t
    axes = [i for i, d in enumerate(shape) if d >= 2]
    if not axes:
        return
    axis = b.draw(st.sampled_from(axes))
    first = b.draw(st.integers(1, shape[axis] - 1))
    sizes = [first, shape[axis] - first]
    shapes = [tuple(s if i == axis else d for i, d in enumerate(shape)) for s in sizes]
    if b.opset >= 13:
        b.node("Split", [name, b.ints(sizes, "split")], shapes, axis=axis)
    else:
        b.node("Split", [name], shapes, axis=axis, split=sizes)


def squeeze_chain(b: Builder) -> None:
    name, shape = b.pick()
    axis = b.draw(st.integers(0, len(shape)))
    up = shape[:axis] + (1,) + shape[axis:]
    x = b.axes_node("Unsqueeze", name, [axis], up)
    if b.draw(st.booleans()):
        b.axes_node("Squeeze", x, [axis], shape)


def shape_chain(b: Builder) -> None:
    """Shape -> Gather(0) -> Unsqueeze -> Concat([-1]) -> Reshape: a flatten exporters write."""
    name, shape = b.pick()
    if len(shape) < 2:
        return
    s = b.node("Shape", [name], [(len(shape),)], pool=False)[0]
    d0 = b.node("Gather", [s, b.const(np.array(0, np.int64), "zero")], [()], pool=False, axis=0)[0]
    d0u = b.axes_node("Unsqueeze", d0, [0], (1,), pool=False)  # int64: not for the float families
    spec = b.node("Concat", [d0u, b.ints([-1], "minus1")], [(2,)], pool=False, axis=0)[0]
    b.node("Reshape", [name, spec], [(shape[0], int(np.prod(shape[1:])))])


def reduce(b: Builder) -> None:
    name, shape = b.pick()
    axis = b.draw(st.integers(0, len(shape) - 1))
    op = b.draw(st.sampled_from(["ReduceSum", "ReduceMean", "ReduceMax"]))
    out = tuple(1 if i == axis else d for i, d in enumerate(shape))
    b.axes_node(op, name, [axis], out, keepdims=1)


def softmax(b: Builder) -> None:
    name, shape = b.pick()
    b.node(b.draw(st.sampled_from(["Softmax", "LogSoftmax"])), [name], [shape], axis=-1)


def shared_subexpression(b: Builder) -> None:
    """The same op on the same input twice, then both combined (dedupe merges them)."""
    name, shape = b.pick()
    op = b.draw(st.sampled_from(["Relu", "Sigmoid", "Neg", "Transpose"]))
    attrs = {"perm": list(range(len(shape)))[::-1]} if op == "Transpose" else {}
    out = tuple(reversed(shape)) if op == "Transpose" else shape
    x1 = b.node(op, [name], [out], **attrs)[0]
    x2 = b.node(op, [name], [out], **attrs)[0]
    b.node("Add", [x1, x2], [out])


def constant_arithmetic(b: Builder) -> None:
    """Constants combined by nodes (fold_constants), then applied to a pool tensor."""
    name, shape = b.pick()
    c1 = b.const(b.floats(shape[-1:], 0.5, 1.5))
    c2 = b.const(b.floats(shape[-1:], 0.5, 1.5))
    folded = b.node(b.draw(st.sampled_from(["Add", "Mul", "Max"])), [c1, c2], [shape[-1:]], pool=False)[0]
    b.node("Mul", [name, folded], [shape])


def cast_round_trip(b: Builder) -> None:
    name, shape = b.pick()
    to = b.draw(st.sampled_from([TensorProto.FLOAT, TensorProto.DOUBLE]))
    x = b.node("Cast", [name], [shape], pool=to == TensorProto.FLOAT, to=to)[0]
    if to == TensorProto.DOUBLE:
        b.node("Cast", [x], [shape], to=TensorProto.FLOAT)


def motif(b: Builder) -> None:
    """A fusion pattern in full: a linear op, then BN / per-channel affine / Relu in a chain;
    or Pad before Conv/pool; or BN before Conv."""
    kind = b.draw(st.sampled_from(["linear", "linear", "pad", "bn_first"]))
    first = {"linear": b.draw(st.sampled_from([conv, conv, conv_transpose, matmul])), "pad": pad, "bn_first": batchnorm}[kind]
    first(b)
    b.chain = True
    try:
        if kind == "pad":
            b.draw(st.sampled_from([conv, conv, pool]))(b)
        elif kind == "bn_first":
            conv(b)
        for step in b.draw(st.lists(st.sampled_from([batchnorm, binary_const, binary_const, unary]), max_size=3)):
            step(b)
    finally:
        b.chain = False


FAMILIES = [motif, motif, motif, unary, binary_const, binary_const, binary_pair, conv, conv, conv_transpose, batchnorm, batchnorm, pad, pool,
            matmul, matmul, reshape, transpose, concat, split, squeeze_chain, shape_chain, reduce, softmax,
            shared_subexpression, constant_arithmetic, cast_round_trip]


@st.composite
def graphs(draw, max_steps: int = 10) -> onnx.ModelProto:
    opset = draw(st.sampled_from(OPSETS))
    b = Builder(draw, opset)
    inputs = []
    rank = draw(st.sampled_from([4, 4, 2, 3]))
    shape = {4: (1, draw(st.integers(1, 4)), draw(st.integers(2, 7)), draw(st.integers(2, 7))),
             3: (draw(st.integers(1, 2)), draw(st.integers(1, 4)), draw(st.integers(2, 6))),
             2: (draw(st.integers(1, 3)), draw(st.integers(2, 6)))}[rank]
    # Sometimes the batch dim is symbolic: passes must not fold what depends on it. The graph is
    # still built for (and fed with) the concrete shape, recorded in the model's metadata.
    symbolic = draw(st.integers(0, 3)) == 0
    declared = ["N", *shape[1:]] if symbolic else list(shape)
    inputs.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, declared))
    b.pool.append(("x", shape))
    if draw(st.booleans()):  # a second input of the same shape
        inputs.append(helper.make_tensor_value_info("x2", TensorProto.FLOAT, declared))
        b.pool.append(("x2", shape))
    for _ in range(draw(st.integers(1, max_steps))):
        draw(st.sampled_from(FAMILIES))(b)
    produced = [t for t in b.pool if t[0] not in ("x", "x2")]
    if not produced:
        b.node("Relu", ["x"], [shape])
        produced = b.pool[-1:]
    # Outputs: the sinks, less up to two left as dead branches, plus maybe an intermediate tensor.
    read = {i for n in b.nodes for i in n.input}
    sinks = [t for t in produced if t[0] not in read]
    dead = draw(st.sets(st.sampled_from(sinks), max_size=min(2, len(sinks) - 1))) if len(sinks) > 1 else set()
    chosen = [t for t in sinks if t not in dead]
    inner = [t for t in produced if t[0] in read]
    if inner and draw(st.integers(0, 3)) == 0:
        chosen.append(draw(st.sampled_from(inner)))
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [None] * len(out_shape) if symbolic else list(out_shape)) for name, out_shape in chosen]
    graph = helper.make_graph(b.nodes, "fuzz", inputs, outputs, b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = IR_FOR_OPSET[opset]
    helper.set_model_props(model, {FEED_SHAPE_KEY: ",".join(map(str, shape))})
    return model
