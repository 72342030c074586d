"""Small models for the reliability tests: broken ones for the bad-input catalog, odd but valid
ones (custom ops, integer outputs, no nodes, already quantized) and a larger zoo-like net.

Every builder returns a ModelProto; the broken ones skip the checker on purpose.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.helpers import init, make_model, vi


def _raw(nodes, inputs, outputs, inits=(), opset=18, ir_version=8) -> onnx.ModelProto:
    graph = helper.make_graph(list(nodes), "g", list(inputs), list(outputs), list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    return model


def tiny() -> onnx.ModelProto:
    """x -> Relu -> Identity -> y: a valid two-node model."""
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Identity", ["r"], ["y"])]
    return make_model(nodes, [vi("x", [1, 4])], [vi("y", [1, 4])])


def conv_model(batch: int | str = 1) -> onnx.ModelProto:
    """Conv -> Relu on a 1x3x8x8 image; the input may have a symbolic batch."""
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])]
    return make_model(nodes, [vi("x", [batch, 3, 8, 8])], [vi("y", [batch, 4, 8, 8])], [init("w", w)])


def cycle() -> onnx.ModelProto:
    """a = Relu(b); b = Relu(a): no topological order exists."""
    nodes = [helper.make_node("Relu", ["b"], ["a"]), helper.make_node("Add", ["x", "a"], ["b"]),
             helper.make_node("Identity", ["b"], ["y"])]
    return _raw(nodes, [vi("x", [2])], [vi("y", [2])])


def duplicate_outputs() -> onnx.ModelProto:
    """Two nodes both write tensor ``t`` (violates single assignment)."""
    nodes = [helper.make_node("Relu", ["x"], ["t"]), helper.make_node("Neg", ["x"], ["t"]),
             helper.make_node("Identity", ["t"], ["y"])]
    return _raw(nodes, [vi("x", [2])], [vi("y", [2])])


def unknown_default_op() -> onnx.ModelProto:
    """An op the default domain does not define."""
    return _raw([helper.make_node("FrobnicateAll", ["x"], ["y"])], [vi("x", [2])], [vi("y", [2])])


def future_opset() -> onnx.ModelProto:
    return _raw([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [2])], [vi("y", [2])], opset=999)


def future_ir_version() -> onnx.ModelProto:
    return _raw([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [2])], [vi("y", [2])], ir_version=999)


def output_never_produced() -> onnx.ModelProto:
    return _raw([helper.make_node("Relu", ["x"], ["r"])], [vi("x", [2])], [vi("y", [2])])


def missing_required_input() -> onnx.ModelProto:
    """Conv with only its data input (the weight is required)."""
    return _raw([helper.make_node("Conv", ["x"], ["y"])], [vi("x", [1, 1, 4, 4])], [vi("y", [1, 1, 4, 4])])


def corrupt_initializer() -> onnx.ModelProto:
    """An initializer whose raw bytes do not fill its declared shape."""
    w = onnx.TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[64, 64], raw_data=b"\x00" * 100)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    return _raw(nodes, [vi("x", [1, 64])], [vi("y", [1, 64])], [w])


def duplicate_input_names() -> onnx.ModelProto:
    nodes = [helper.make_node("Add", ["x", "x"], ["y"])]
    return _raw(nodes, [vi("x", [2]), vi("x", [2])], [vi("y", [2])])


def no_opset_import() -> onnx.ModelProto:
    model = _raw([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [2])], [vi("y", [2])])
    del model.opset_import[:]
    return model


def wrong_attribute_type() -> onnx.ModelProto:
    """Transpose's ``perm`` given as a float list."""
    node = helper.make_node("Transpose", ["x"], ["y"])
    node.attribute.append(helper.make_attribute("perm", [1.0, 0.0]))
    return _raw([node], [vi("x", [2, 3])], [vi("y", [3, 2])])


def custom_op() -> onnx.ModelProto:
    """Foldable clutter around a node of a domain nobody knows (``acme.vision::Warp``).

    Identity and a constant Mul-by-one chain sit before and after the custom op; a Conv+BN pair
    after it. The custom node must come out untouched; the rest can be optimized.
    """
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 4, 1, 1)).astype(np.float32)
    bn = [rng.uniform(0.5, 1.5, 4).astype(np.float32) for _ in range(4)]
    nodes = [
        helper.make_node("Identity", ["x"], ["x1"]),
        helper.make_node("Warp", ["x1"], ["warped"], domain="acme.vision", name="acme_warp", strength=0.5, mode="bilinear"),
        helper.make_node("Identity", ["warped"], ["w1"]),
        helper.make_node("Conv", ["w1", "w"], ["c"]),
        helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y"]),
    ]
    inits = [init("w", w)] + [init(n, a) for n, a in zip("gbmv", bn)]
    graph = helper.make_graph(nodes, "g", [vi("x", [1, 4, 8, 8])], [vi("y", [1, 4, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("acme.vision", 1)])
    model.ir_version = 8
    return model


def integer_outputs() -> onnx.ModelProto:
    """MatMul -> ArgMax (int64) and a Greater (bool) output, with clutter to remove."""
    w = np.random.default_rng(1).standard_normal((8, 5)).astype(np.float32)
    nodes = [
        helper.make_node("Identity", ["x"], ["x1"]),
        helper.make_node("MatMul", ["x1", "w"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["logits"]),
        helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
        helper.make_node("Greater", ["logits", "zero"], ["positive"]),
    ]
    inits = [init("w", w), init("b", np.zeros(5, np.float32)), init("zero", np.zeros((), np.float32))]
    return make_model(nodes, [vi("x", [2, 8])], [vi("label", [2], TensorProto.INT64), vi("positive", [2, 5], TensorProto.BOOL)], inits)


def zero_nodes() -> onnx.ModelProto:
    """The graph input is the graph output; no node at all."""
    return make_model([], [vi("x", [2, 3])], [vi("x", [2, 3])])


def constant_only() -> onnx.ModelProto:
    """No graph inputs; the output is an initializer."""
    graph = helper.make_graph([], "g", [], [vi("c", [3])], [init("c", np.arange(3, dtype=np.float32))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def quantized() -> onnx.ModelProto:
    """A QDQ model as quantization tools write it: int8 weights behind DequantizeLinear."""
    rng = np.random.default_rng(2)
    wq = rng.integers(-127, 128, (8, 4, 3, 3)).astype(np.int8)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0),
        helper.make_node("Conv", ["xd", "wd"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    inits = [
        init("xs", np.float32(0.02)), init("xz", np.int8(0)), init("wq", wq),
        init("ws", rng.uniform(0.001, 0.01, 8).astype(np.float32)), init("wz", np.zeros(8, np.int8)),
    ]
    return make_model(nodes, [vi("x", [1, 4, 8, 8])], [vi("y", [1, 8, 8, 8])], inits)


def slow_mlp(layers: int = 24, width: int = 1024) -> onnx.ModelProto:
    """An MLP with enough weights (~100 MB) that an optimize run takes a few seconds."""
    rng = np.random.default_rng(3)
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        inits.append(init(f"w{i}", (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)))
        inits.append(init(f"b{i}", np.zeros(width, np.float32)))
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"]), helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"]),
                  helper.make_node("Identity", [f"a{i}"], [f"i{i}"]), helper.make_node("Relu", [f"i{i}"], [f"r{i}"])]
        x = f"r{i}"
    nodes.append(helper.make_node("Identity", [x], ["y"]))
    return make_model(nodes, [vi("x", [1, width])], [vi("y", [1, width])], inits, check=False)


def no_graph() -> onnx.ModelProto:
    """A ModelProto with header fields and no graph at all."""
    model = onnx.ModelProto(ir_version=8, producer_name="nothing")
    model.opset_import.add(domain="", version=18)
    return model


def tensor_proto_bytes() -> bytes:
    """A serialized TensorProto: valid protobuf, but not a model."""
    return numpy_helper.from_array(np.arange(64, dtype=np.float32), "t").SerializeToString()


def zoo_like(blocks: int = 6, channels: int = 16, seed: int = 4) -> onnx.ModelProto:
    """A ResNet-like net carrying the clutter exporters leave, so that most cleanup passes fire.

    Per block: Identity, Pad before a valid Conv, Conv+BatchNormalization+Relu, Conv followed by a
    per-channel Mul and Add, a duplicated Relu pair (common subexpression), a Transpose pair that
    cancels, a Reshape round trip, Dropout, a dead Sigmoid branch and a residual Add. Head: a
    Shape->Gather->Unsqueeze->Concat->Reshape flatten and MatMul+Add.
    """
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    c, hw = channels, 8

    def const(name, array, as_node=False):
        if as_node:
            nodes.append(helper.make_node("Constant", [], [name], name=f"{name}.Constant", value=numpy_helper.from_array(array)))
        else:
            inits.append(numpy_helper.from_array(array, name))
        return name

    def conv_w(tag, k):
        return const(f"{tag}.w", (rng.standard_normal((c, c, k, k)) * np.sqrt(2.0 / (c * k * k))).astype(np.float32))

    def vec(tag, lo, hi, shape=(c,)):
        return const(tag, rng.uniform(lo, hi, shape).astype(np.float32))

    def add(op, inputs, out, **attrs):
        nodes.append(helper.make_node(op, inputs, [out], name=f"{out}.{op}", **attrs))
        return out

    x = add("Conv", ["input", const("stem.w", (rng.standard_normal((c, 3, 3, 3)) * 0.3).astype(np.float32))], "stem", pads=[1] * 4)
    for i in range(blocks):
        t = f"b{i}"
        y = add("Identity", [x], f"{t}.id")
        y = add("Pad", [y, const(f"{t}.pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), as_node=True)], f"{t}.pad")
        y = add("Conv", [y, conv_w(f"{t}.c1", 3)], f"{t}.c1")
        bn = [vec(f"{t}.bn.{p}", lo, hi) for p, lo, hi in (("g", 0.5, 1.5), ("b", -0.1, 0.1), ("m", -0.1, 0.1), ("v", 0.5, 1.5))]
        y = add("BatchNormalization", [y, *bn], f"{t}.bn", epsilon=1e-5)
        y = add("Relu", [y], f"{t}.r1")
        y = add("Conv", [y, conv_w(f"{t}.c2", 1)], f"{t}.c2")
        y = add("Mul", [y, vec(f"{t}.scale", 0.5, 1.5, (c, 1, 1))], f"{t}.mul")
        y = add("Add", [y, vec(f"{t}.shift", -0.1, 0.1, (1, c, 1, 1))], f"{t}.shifted")
        a, b = add("Relu", [y], f"{t}.ra"), add("Relu", [y], f"{t}.rb")
        y = add("Add", [a, b], f"{t}.dup")
        y = add("Transpose", [y], f"{t}.t1", perm=[0, 2, 3, 1])
        y = add("Transpose", [y], f"{t}.t2", perm=[0, 3, 1, 2])
        y = add("Reshape", [y, const(f"{t}.flat_spec", np.array([1, -1], np.int64))], f"{t}.flat")
        y = add("Reshape", [y, const(f"{t}.back_spec", np.array([1, c, hw, hw], np.int64), as_node=True)], f"{t}.back")
        y = add("Dropout", [y], f"{t}.drop")
        add("Sigmoid", [y], f"{t}.dead")
        x = add("Add", [x, y], f"{t}.res")
    x = add("GlobalAveragePool", [x], "gap")
    s = add("Shape", [x], "shape")
    n = add("Gather", [s, const("zero", np.array(0, np.int64), as_node=True)], "batch", axis=0)
    n = add("Unsqueeze", [n, const("axes0", np.array([0], np.int64))], "batch1")
    spec = add("Concat", [n, const("minus1", np.array([-1], np.int64), as_node=True)], "flat_shape", axis=0)
    x = add("Reshape", [x, spec], "flat")
    x = add("MatMul", [x, const("fc.w", (rng.standard_normal((c, 10)) * 0.3).astype(np.float32))], "fc.mm")
    add("Add", [x, vec("fc.b", -0.1, 0.1, (10,))], "logits")
    return make_model(nodes, [vi("input", [1, 3, hw, hw])], [vi("logits", [1, 10])], inits)
