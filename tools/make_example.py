"""Build ``example.onnx``: a small CNN classifier with the clutter real exporters leave behind.

No torch needed: the graph is written with onnx.helper. It holds what the cleanup pipeline
removes: Identity and Dropout nodes, Constant nodes, a Shape->Gather->Concat->Reshape chain on
a static shape, Conv+BatchNormalization pairs, a Pad before a Conv, a per-channel Mul after a
Conv, a duplicated branch, MatMul+Add, and a dead branch. Weights are seeded random (He init),
so outputs are not trivially equal.

    python tools/make_example.py example.onnx
"""

from __future__ import annotations

import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def build(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def weight(name, *shape):
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32), name))
        return name

    def vec(name, n, lo=-0.1, hi=0.1):
        inits.append(numpy_helper.from_array(rng.uniform(lo, hi, n).astype(np.float32), name))
        return name

    def conv_bn_relu(x, cin, cout, tag, k=3, pad=1):
        w = weight(f"{tag}.w", cout, cin, k, k)
        nodes.append(helper.make_node("Conv", [x, w], [f"{tag}.conv"], name=f"{tag}.Conv", pads=[pad] * 4, kernel_shape=[k, k]))
        names = [vec(f"{tag}.bn.{p}", cout, *r) for p, r in (("g", (0.5, 1.5)), ("b", (-0.1, 0.1)), ("m", (-0.1, 0.1)), ("v", (0.5, 1.5)))]
        nodes.append(helper.make_node("BatchNormalization", [f"{tag}.conv", *names], [f"{tag}.bn"], name=f"{tag}.BN", epsilon=1e-5))
        nodes.append(helper.make_node("Relu", [f"{tag}.bn"], [f"{tag}.relu"], name=f"{tag}.Relu"))
        return f"{tag}.relu"

    nodes.append(helper.make_node("Identity", ["input"], ["x0"], name="input.Identity"))
    x = conv_bn_relu("x0", 3, 16, "stem")
    # Pad then Conv (valid): the pad belongs in the conv.
    nodes.append(helper.make_node("Constant", [], ["pads"], name="pads.Constant",
                                  value=numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))))
    nodes.append(helper.make_node("Pad", [x, "pads"], ["padded"], name="Pad"))
    x = conv_bn_relu("padded", 16, 32, "block1", pad=0)
    # A per-channel scale after a conv without BN.
    w2 = weight("block2.w", 32, 32, 1, 1)
    nodes.append(helper.make_node("Conv", [x, w2], ["block2.conv"], name="block2.Conv", kernel_shape=[1, 1]))
    inits.append(numpy_helper.from_array(rng.uniform(0.5, 1.5, (32, 1, 1)).astype(np.float32), "block2.scale"))
    nodes.append(helper.make_node("Mul", ["block2.conv", "block2.scale"], ["block2.mul"], name="block2.Mul"))
    # The same Relu twice (exporters duplicate subexpressions), summed.
    nodes.append(helper.make_node("Relu", ["block2.mul"], ["dup.a"], name="dup.ReluA"))
    nodes.append(helper.make_node("Relu", ["block2.mul"], ["dup.b"], name="dup.ReluB"))
    nodes.append(helper.make_node("Add", ["dup.a", "dup.b"], ["dup.sum"], name="dup.Add"))
    nodes.append(helper.make_node("Dropout", ["dup.sum"], ["dropped"], name="Dropout"))
    nodes.append(helper.make_node("GlobalAveragePool", ["dropped"], ["pooled"], name="GAP"))
    # Flatten the way the legacy exporters do: Shape -> Gather -> Unsqueeze -> Concat -> Reshape.
    nodes.append(helper.make_node("Shape", ["pooled"], ["shape"], name="Shape"))
    nodes.append(helper.make_node("Constant", [], ["zero"], name="zero.Constant", value=numpy_helper.from_array(np.array(0, np.int64))))
    nodes.append(helper.make_node("Gather", ["shape", "zero"], ["batch"], name="Gather", axis=0))
    nodes.append(helper.make_node("Constant", [], ["axes0"], name="axes0.Constant", value=numpy_helper.from_array(np.array([0], np.int64))))
    nodes.append(helper.make_node("Unsqueeze", ["batch", "axes0"], ["batch1"], name="Unsqueeze"))
    nodes.append(helper.make_node("Constant", [], ["minus1"], name="minus1.Constant", value=numpy_helper.from_array(np.array([-1], np.int64))))
    nodes.append(helper.make_node("Concat", ["batch1", "minus1"], ["flat_shape"], name="Concat", axis=0))
    nodes.append(helper.make_node("Reshape", ["pooled", "flat_shape"], ["flat"], name="Reshape"))
    # Classifier as MatMul + Add.
    weight("fc.w", 32, 10)
    inits[-1] = numpy_helper.from_array(numpy_helper.to_array(inits[-1]).reshape(32, 10), "fc.w")
    vec("fc.b", 10)
    nodes.append(helper.make_node("MatMul", ["flat", "fc.w"], ["fc.mm"], name="fc.MatMul"))
    nodes.append(helper.make_node("Add", ["fc.mm", "fc.b"], ["logits"], name="fc.Add"))
    # A dead branch nobody reads.
    nodes.append(helper.make_node("Sigmoid", ["flat"], ["unused"], name="dead.Sigmoid"))
    graph = helper.make_graph(
        nodes, "example_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="onnxslim-example")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def main(argv: list[str]) -> int:
    out = argv[1] if len(argv) > 1 else "example.onnx"
    onnx.save_model(build(), out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
