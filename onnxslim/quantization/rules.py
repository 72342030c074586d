"""QDQ placement rules: one small object per (target, device) says where Q/DQ pairs go and how.

The planner (:mod:`onnxslim.quantization.plan`) is target-agnostic; everything a backend wants
lives here, so supporting a new backend means adding a :class:`PlacementRules` value to
``RULES``, not a new pass.

What the built-in rules encode:

* ``ort/x86``: uint8 asymmetric activations with int8 symmetric per-channel weights (MLAS's u8s8
  kernels), int32 biases (so ORT fuses DQ->Conv->Q into QLinearConv and DQ->Gemm into QGemm),
  int8 data movement through MaxPool/Reshape/... (DQ and Q share scale and zero point so ORT
  drops them), QLinearAdd/Mul/Concat/AveragePool/GlobalAveragePool/Sigmoid for elementwise ops
  between quantized ops, and conv outputs always quantized (QLinearConv has no float output).
  A Conv/ConvTranspose/Gemm left in float (excluded, fallback) reads its quantized input through a
  per-axis DequantizeLinear (same values): onnxruntime would otherwise quantize its float weights
  per tensor itself (its WeightBiasQuantization transform matches a per-tensor DQ input).
* ``ort/arm`` (and ``ort/cuda``): the same with int8 activations.
* ``tensorrt``: int8 symmetric everywhere (zero point 0), per-channel weights, float biases;
  Q/DQ on both inputs of Conv/ConvTranspose/Gemm/MatMul, never between a conv and its
  BatchNormalization/ReLU; a residual Add gets Q/DQ on its skip input only (TensorRT fuses the
  other into the conv); Concat and pooling share one scale between inputs and output; outputs
  are quantized only when a consumer takes int8; low-gain layers (convs with < 16 channels,
  MatMuls under 64x64 weights) stay in float; only Q/DQ, never QOperator/integer ops.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from onnxslim.errors import UsageError

# Ops that compute with a weight (or two activations) and run as integer kernels.
COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
# Ops that move or select values without arithmetic: output shares the input's scale/zero point.
PASS_THROUGH_OPS = frozenset({
    "MaxPool", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Resize", "Slice",
    "Gather", "DepthToSpace", "SpaceToDepth", "Split", "Identity",
})
# Activations a Q/DQ boundary folds into the producer's output quantization.
FOLDABLE_ACTIVATIONS = frozenset({"Relu", "Clip"})
# Ops kept in float unless the user asks for them by op type.
FLOAT_BY_DEFAULT = frozenset({"Softmax", "LayerNormalization"})


@dataclass(frozen=True)
class PlacementRules:
    """Where Q/DQ pairs go and which integer types they use, for one backend."""

    name: str
    activation_dtype: type = np.uint8  # np.uint8 or np.int8
    symmetric_activations: bool = False  # zero point 0 on activations
    weight_dtype: type = np.int8
    per_channel: bool = True
    bias_int32: bool = True  # bias as DQ(int32, x_scale * w_scale) instead of float
    # Elementwise ops quantized when both inputs are activations and the output goes on in int8.
    int8_elementwise: frozenset = frozenset({"Add", "Mul", "Concat", "AveragePool", "GlobalAveragePool", "Sigmoid"})
    pass_through: frozenset = PASS_THROUGH_OPS
    # Quantize a conv's output even when its consumers stay float (QLinearConv needs it).
    always_quantize_conv_output: bool = True
    # TensorRT: residual Add quantizes the skip input only; the conv input fuses.
    residual_skip_only: bool = False
    # Scales shared by all inputs and the output of these ops (besides pass-through ops).
    shared_scale_ops: frozenset = frozenset({"MaxPool"})
    min_conv_channels: int = 0  # convs with fewer output or input channels stay float
    min_matmul_size: int = 0  # MatMul/Gemm with weights smaller than this on either side stay float
    fold_activations: bool = True  # drop Relu/Clip that the following Q makes redundant
    # onnxruntime (its WeightBiasQuantization graph transform) gives a float Conv/ConvTranspose/Gemm whose input
    # comes from a per-tensor DequantizeLinear per-tensor int8 weights: float layers read a per-axis DQ copy.
    float_layers_read_per_axis_dq: bool = True
    # When the opset must be raised for per-channel weights, go to 14 if that spells hard-swish as one HardSwish.
    hardswish_opset: bool = True
    extra_ops: frozenset = field(default_factory=frozenset)  # e.g. Softmax, asked for by the user

    @property
    def qmin(self) -> int:
        return int(np.iinfo(self.activation_dtype).min)

    @property
    def qmax(self) -> int:
        return int(np.iinfo(self.activation_dtype).max)

    def with_extra_ops(self, ops: frozenset) -> "PlacementRules":
        return replace(self, extra_ops=frozenset(ops))


_ORT_X86 = PlacementRules("ort/x86")
_ORT_ARM = replace(_ORT_X86, name="ort/arm", activation_dtype=np.int8)
_TENSORRT = PlacementRules(
    "tensorrt",
    activation_dtype=np.int8,
    symmetric_activations=True,
    bias_int32=False,
    int8_elementwise=frozenset({"Concat", "AveragePool", "GlobalAveragePool", "Add"}),
    always_quantize_conv_output=False,
    residual_skip_only=True,
    shared_scale_ops=frozenset({"Concat", "MaxPool", "AveragePool", "GlobalAveragePool"}),
    min_conv_channels=16,
    min_matmul_size=64,
    fold_activations=False,
    float_layers_read_per_axis_dq=False,
    hardswish_opset=False,  # not checked against TensorRT's parser here: its graphs stay at opset 13
)

RULES: dict[tuple[str, str], PlacementRules] = {
    ("ort", "x86"): _ORT_X86,
    ("ort", "arm"): _ORT_ARM,
    # HardSwish: the CUDA EP registers HardSigmoid but (as read in its activations.cc) no HardSwish kernel.
    ("ort", "cuda"): replace(_ORT_ARM, name="ort/cuda", hardswish_opset=False),
    ("tensorrt", "cuda"): _TENSORRT,
    ("tensorrt", "x86"): _TENSORRT,
    ("tensorrt", "arm"): _TENSORRT,
}


def rules_for(target: str, device: str) -> PlacementRules:
    """The placement rules of a (target, device); UsageError when there are none."""
    try:
        return RULES[(target, device)]
    except KeyError:
        known = ", ".join(f"{t}/{d}" for t, d in RULES)
        raise UsageError(f"--quantize int8 has no QDQ placement rules for --target {target} --device {device} "
                         f"(known: {known})") from None
