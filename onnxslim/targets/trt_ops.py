"""TensorRT's ONNX operator support, as data.

Transcribed from the onnx-tensorrt project's public operator support matrix
(``docs/operators.md``) for TensorRT 10.15, which takes opsets 9 to 24. ``SUPPORTED`` lists the
operators its parser imports; ``UNSUPPORTED`` those it names as unsupported; an operator in
neither is newer than the table. Per-operator restrictions the table states are checked in code
by :mod:`onnxslim.targets.lint` (``RESTRICTIONS`` says which, for the docs and messages).
"""

from __future__ import annotations

TRT_VERSION = "10.15"
OPSET_MIN, OPSET_MAX = 9, 24

SUPPORTED = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool BatchNormalization
BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh
CumSum DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike
Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool
Greater GreaterOrEqual GridSample GroupNormalization GRU HammingWindow HannWindow HardSigmoid HardSwish
Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less
LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean
MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean
ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RMSNormalization RNN
RoiAlign RotaryEmbedding Round STFT ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink
Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan
Tanh TensorScatter ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())

UNSUPPORTED = frozenset("""
AffineGrid Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor Col2Im CenterCropPad Compress
ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear ImageDecoder MatMulInteger MaxRoiPool
MaxUnpool MelWeightMatrix Multinomial NegativeLogLikelihoodLoss Optional OptionalGetElement
OptionalHasElement QLinearConv QLinearMatMul RegexFullMatch SequenceAt SequenceConstruct SequenceEmpty
SequenceErase SequenceInsert SequenceLength SequenceMap SoftmaxCrossEntropyLoss SplitToSequence
StringConcat StringNormalizer StringSplit TfIdfVectorizer Unique
""".split())

# Integer / QOperator formats: TensorRT takes explicit quantization as Q/DQ pairs only.
QOPERATOR_PREFIXES = ("QLinear", "ConvInteger", "MatMulInteger", "DynamicQuantize", "QGemm", "QAttention")

# Data types TensorRT's ONNX parser takes (INT8/INT4/FP8/FP4 only as quantized types via Q/DQ;
# UINT8 only as a network input or output; DOUBLE cast down to FLOAT).
TENSOR_TYPES = frozenset({"FLOAT", "FLOAT16", "BFLOAT16", "INT32", "INT64", "INT8", "INT4", "UINT8", "BOOL",
                          "FLOAT8E4M3FN", "FLOAT4E2M1", "DOUBLE"})
QUANTIZED_TYPES = frozenset({"INT8", "INT4", "FLOAT8E4M3FN", "FLOAT4E2M1"})

# Ops that take int8 input from a DequantizeLinear to good effect: compute layers TensorRT runs in
# int8, layers that fuse with them, and data movement that keeps int8 (its output re-quantized).
INT8_CONSUMERS = frozenset({
    "Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Concat", "MaxPool", "AveragePool",
    "GlobalAveragePool", "GlobalMaxPool", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze",
    "Slice", "Gather", "Identity", "Pad", "Resize", "Split", "DepthToSpace", "SpaceToDepth",
    "Softmax", "LayerNormalization", "Attention",
})

RESTRICTIONS = {
    "MaxPool": "2D or 3D pooling only; the Indices output is unsupported; dilations must be all ones",
    "AveragePool": "2D or 3D pooling only; dilations must be all ones",
    "LpPool": "dilations must be all ones",
    "CumSum": "axis must be a build-time constant",
    "Dropout": "is_training must be an initializer that is False",
    "LayerNormalization": "only the first output Y is supported",
    "ScatterND": "reduction other than none is unsupported",
    "TopK": "sorted must be 1; K must be a constant below 3840",
    "Squeeze": "axes must be resolvable to a constant",
    "Unsqueeze": "axes must be resolvable to a constant",
    "Reduce*": "axes must be an initializer",
    "Resize": "modes nearest/linear; no tf_crop_and_resize; no antialias; aspect-ratio policy stretch",
    "QuantizeLinear": "y_zero_point must be 0",
    "DequantizeLinear": "x_zero_point must be 0; input INT8/FP8/FP4/INT4",
    "EyeLike": "input must have static dimensions",
    "OneHot": "depth must be a build-time constant",
}


def status(op: str, domain: str = "") -> str:
    """"supported", "unsupported" or "unknown" (custom domain ops are unsupported without a plugin)."""
    if domain not in ("", "ai.onnx"):
        return "unsupported"
    if op in SUPPORTED:
        return "supported"
    if op in UNSUPPORTED or op.startswith(QOPERATOR_PREFIXES):
        return "unsupported"
    return "unknown"
