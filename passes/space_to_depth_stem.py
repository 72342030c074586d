"""Rewrite a quantized strided stem convolution over few channels as SpaceToDepth + stride-1 conv.

A network's first convolution (ResNet: 7x7, stride 2, 3 input channels) is the least efficient
layer of an INT8 model on onnxruntime CPU: the integer kernel im2col-gathers 3-byte pieces for a
reduction of only ``C*k*k`` values. With ``S = SpaceToDepth(x, 2)`` (channel ``(bh*2+bw)*C + c``
of ``S[i, j]`` is ``x[c, 2i+bh, 2j+bw]``) the same output is a stride-1 conv over ``4C``
channels::

    y[o,i,j] = sum_{c,kh,kw} W[o,c,kh,kw] x[c, 2i+kh-p, 2j+kw-q]
             = sum_{c,bh,bw,a,a'} W'[o,(bh*2+bw)*C+c, a, a'] S[c', i+a-P/2, j+a'-Q/2]

with ``P = p rounded up to even`` (so the padding lands on whole S pixels),
``kh = 2a + bh - (P - p)`` and ``W'`` zero where ``kh``/``kw`` fall outside the kernel. The
new kernel is ``A = ceil((k + P - p) / 2)`` wide with pads ``P/2`` before and
``H_out - H/2 - P/2 + A - 1`` after, which gives the original output size.

The pass runs on a QDQ graph after :mod:`insert_qdq`: it matches
``Q(x) -> DQ -> Conv <- DQ(int8 W)`` and moves SpaceToDepth onto the *integer* tensor
(``Q -> SpaceToDepth -> DQ -> Conv``), so onnxruntime still fuses ``DQ -> Conv -> Q`` into
QLinearConv and SpaceToDepth moves a quarter of the bytes. The rearranged integer weights keep
their per-output-channel scales and the padding stays the input zero point, so the integer
accumulators, hence the outputs, are bit-identical to the original quantized model.

Preconditions: default-domain Conv with 2-D kernel, stride 2 on both axes, dilation 1, group 1,
at most ``MAX_CHANNELS`` input channels, explicit pads (auto_pad NOTSET) of at most the kernel
size, static even input height and width; the data input is a DequantizeLinear of a
QuantizeLinear output; the weight is a DequantizeLinear of a constant with per-output-channel
(axis 0) or per-tensor scale.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_graphsurgeon as gs

from onnxslim.graph import DEFAULT_DOMAINS, NameScope, constant_value, make_constant, make_node, producer
from onnxslim.pipeline import Pass, PassContext, PassResult

MAX_CHANNELS = 4  # beyond a few channels the im2col pieces are long enough; the rewrite would only add MACs
MIN_KERNEL = 5  # single-layer timing, 224x224 input, 1 thread: 3x3 gains nothing, 5x5 and 7x7 run ~30% faster


class SpaceToDepthStem(Pass):
    """INT8 stem conv (stride 2, <= 4 channels): SpaceToDepth on the int8 input + stride-1 conv."""

    name = "space_to_depth_stem"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        scope = NameScope(graph)
        rewritten = 0
        for conv in [n for n in graph.nodes if n.op == "Conv" and n.domain in DEFAULT_DOMAINS]:
            try:
                plan = _match(conv)
            except _Reject as why:
                if why.report:
                    ctx.decline(self.name, where=conv.name, reason=str(why))
                continue
            _rewrite(graph, scope, conv, plan)
            rewritten += 1
        return PassResult(changed=bool(rewritten), counters={"stems_rewritten": rewritten} if rewritten else {})


class _Reject(Exception):
    def __init__(self, message: str, report: bool = False):
        super().__init__(message)
        self.report = report


def _match(conv: gs.Node) -> dict:
    """What the rewrite needs for ``conv``, or raise _Reject (reported only for near misses)."""
    if len(conv.inputs) < 2:
        raise _Reject("no weight")
    dq_x, dq_w = producer(conv.inputs[0]), producer(conv.inputs[1])
    if dq_x is None or dq_x.op != "DequantizeLinear" or dq_w is None or dq_w.op != "DequantizeLinear":
        raise _Reject("not a QDQ conv")
    q_x = producer(dq_x.inputs[0])
    if q_x is None or q_x.op != "QuantizeLinear":
        raise _Reject("input DequantizeLinear does not read a QuantizeLinear")
    weight_q = constant_value(dq_w.inputs[0])
    if weight_q is None or weight_q.ndim != 4:
        raise _Reject("weight is not a constant 2-D kernel")
    out_ch, channels, kh, kw = weight_q.shape
    strides = list(conv.attrs.get("strides", [1, 1]))
    if strides != [2, 2] or channels > MAX_CHANNELS or min(kh, kw) < MIN_KERNEL:
        raise _Reject("not a strided few-channel stem")
    if conv.attrs.get("group", 1) != 1 or list(conv.attrs.get("dilations", [1, 1])) != [1, 1]:
        raise _Reject("grouped or dilated stem conv", report=True)
    if conv.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
        raise _Reject("auto_pad is set", report=True)
    pads = [int(p) for p in conv.attrs.get("pads", [0, 0, 0, 0])]
    if any(p < 0 or p > k for p, k in zip(pads, (kh, kw, kh, kw))):
        raise _Reject(f"pads {pads} out of range", report=True)
    axis = dq_w.attrs.get("axis", 1)
    scale = constant_value(dq_w.inputs[1]) if len(dq_w.inputs) > 1 else None
    if scale is None or not (scale.size == 1 or (scale.size == out_ch and axis == 0)):
        raise _Reject("weight scale is neither per-tensor nor per-output-channel", report=True)
    spatial = _spatial_size(conv.inputs[0]) or _spatial_size(q_x.inputs[0])
    if spatial is None or spatial[0] % 2 or spatial[1] % 2:
        raise _Reject("input height/width unknown or odd", report=True)
    height, width = spatial
    dims = []
    for k, size, begin, end in ((kh, height, pads[0], pads[2]), (kw, width, pads[1], pads[3])):
        even = begin + begin % 2
        span = math.ceil((k + even - begin) / 2)
        out = (size + begin + end - k) // 2 + 1
        after = out - size // 2 - even // 2 + span - 1
        if after < 0:
            raise _Reject("output size not reachable with non-negative pads", report=True)
        dims.append((even - begin, span, even // 2, after))
    return {"dq_x": dq_x, "dq_w": dq_w, "weight": weight_q, "dims": dims}


def _spatial_size(tensor: gs.Tensor) -> tuple[int, int] | None:
    """(height, width) of an NCHW tensor when both are known integers (batch may be symbolic)."""
    shape = tensor.shape
    if shape is None or len(shape) != 4:
        return None
    dims = shape[2:]
    if all(isinstance(d, (int, np.integer)) and d > 0 for d in dims):
        return int(dims[0]), int(dims[1])
    return None


def _rewrite(graph: gs.Graph, scope: NameScope, conv: gs.Node, plan: dict) -> None:
    dq_x, dq_w, w = plan["dq_x"], plan["dq_w"], plan["weight"]
    (shift_h, span_h, before_h, after_h), (shift_w, span_w, before_w, after_w) = plan["dims"]
    out_ch, channels, kh, kw = w.shape
    packed = np.zeros((out_ch, 4 * channels, span_h, span_w), dtype=w.dtype)
    for bh in range(2):
        for bw in range(2):
            block = slice((bh * 2 + bw) * channels, (bh * 2 + bw + 1) * channels)
            for a in range(span_h):
                src_h = 2 * a + bh - shift_h
                if not 0 <= src_h < kh:
                    continue
                for b in range(span_w):
                    src_w = 2 * b + bw - shift_w
                    if 0 <= src_w < kw:
                        packed[:, block, a, b] = w[:, :, src_h, src_w]
    s2d = make_node(graph, scope, "SpaceToDepth", [dq_x.inputs[0]], name=f"{conv.name}_space_to_depth", attrs={"blocksize": 2})
    dq_in = make_node(graph, scope, "DequantizeLinear", [s2d.outputs[0], *dq_x.inputs[1:]], name=f"{conv.name}_input_dq",
                      attrs=dict(dq_x.attrs))
    weight = make_constant(scope, f"{conv.name}_s2d_weight", packed)
    dq_weight = make_node(graph, scope, "DequantizeLinear", [weight, *dq_w.inputs[1:]], name=f"{conv.name}_s2d_weight_dq",
                          attrs=dict(dq_w.attrs))
    conv.inputs[0] = dq_in.outputs[0]
    conv.inputs[1] = dq_weight.outputs[0]
    conv.attrs.update({"kernel_shape": [span_h, span_w], "strides": [1, 1], "pads": [before_h, before_w, after_h, after_w]})
    conv.attrs.pop("auto_pad", None)
