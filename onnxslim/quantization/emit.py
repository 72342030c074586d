"""Apply a :class:`~onnxslim.quantization.plan.QuantPlan` to a graph: Q/DQ pairs, int8 weights, int32 biases.

Activation grids (``s`` = scale, ``z`` = zero point, ``[qmin, qmax]`` the integer type's range)::

    asymmetric  s = (hi - lo) / (qmax - qmin),   z = clamp(round(qmin - lo / s))   (0 is exact)
    symmetric   s = max(-lo, hi) / 127,           z = 0 (int8)

Weights: symmetric int8, per channel ``c`` on the planned axis: ``s_c = max|W_c| / 127``,
``W_q = clamp(round(W / s_c), -127, 127)``. Biases (when the rules want int32):
``b_q = round(b / (s_x * s_w))`` with scale ``s_x * s_w`` and zero point 0, left in float when it
would overflow int32. With a rounder (:mod:`onnxslim.quantization.rounding`), weight codes may come
from GPTQ instead of nearest rounding, and each layer's bias (int32 or float; for MatMul, the
following Add's constant) is corrected by the mean output error of its rounded weights.
A ReLU (or Clip) whose output is read only through its Q is dropped when the
Q alone already clamps the same way: ``Q(relu(x)) == Q(x)`` when ``z == qmin``; for
``Clip(a, b)``: ``a <= (qmin - z) * s`` and ``b >= (qmax - z - 1/2) * s``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx_graphsurgeon as gs

from onnxslim.graph import NameScope, constant_value, is_graph_output, opset, optional_input
from onnxslim.quantization.plan import QuantPlan, WeightSpec
from onnxslim.quantization.rounding import RoundedWeight, bias_site
from onnxslim.quantization.rules import FOLDABLE_ACTIVATIONS, PlacementRules

logger = logging.getLogger(__name__)

MIN_SCALE = np.float32(2.0**-30)
INT32_LIMIT = 2**31 - 1


@dataclass(frozen=True)
class QParams:
    scale: np.float32
    zero_point: int
    dtype: type

    @property
    def qmin(self) -> int:
        return int(np.iinfo(self.dtype).min)

    @property
    def qmax(self) -> int:
        return int(np.iinfo(self.dtype).max)

    def representable(self) -> tuple[float, float]:
        """The real range the integer grid covers."""
        s = float(self.scale)
        return (self.qmin - self.zero_point) * s, (self.qmax - self.zero_point) * s


def activation_params(lo: float, hi: float, dtype: type, symmetric: bool) -> QParams:
    """Scale and zero point of an 8-bit grid covering ``[lo, hi]`` (lo <= 0 <= hi)."""
    info = np.iinfo(dtype)
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if symmetric:
        amax = max(-lo, hi)
        scale = np.float32(amax / 127.0) if amax > 0 else np.float32(1.0)
        zero = (int(info.min) + int(info.max) + 1) // 2
        return QParams(max(scale, MIN_SCALE), zero, dtype)
    span = hi - lo
    scale = np.float32(span / (int(info.max) - int(info.min))) if span > 0 and math.isfinite(span) else np.float32(1.0)
    scale = max(scale, MIN_SCALE)
    zero = int(np.clip(np.round(info.min - lo / float(scale)), info.min, info.max))
    return QParams(scale, zero, dtype)


def quantize_weight(w: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 weights and their float32 scales (one per channel along ``axis``)."""
    w = np.asarray(w, dtype=np.float32)
    if axis is None:
        amax = np.asarray(np.max(np.abs(w)) if w.size else 0.0, dtype=np.float32)
        shaped = amax
    else:
        reduce = tuple(i for i in range(w.ndim) if i != axis)
        amax = np.max(np.abs(w), axis=reduce) if w.size else np.zeros(w.shape[axis], np.float32)
        shaped = amax.reshape([-1 if i == axis else 1 for i in range(w.ndim)])
    scale = np.where(amax > 0, amax / np.float32(127.0), np.float32(1.0)).astype(np.float32)
    scale = np.maximum(scale, MIN_SCALE)
    shaped_scale = scale if axis is None else scale.reshape(shaped.shape)
    q = np.clip(np.round(w / shaped_scale), -127, 127).astype(np.int8)
    return q, scale


# (node, weight slot, float weight, round-to-nearest scales, per-channel axis) -> codes, or None for nearest
Rounder = Callable[[gs.Node, int, np.ndarray, np.ndarray, "int | None"], "RoundedWeight | None"]


class Emitter:
    """Rewrites one graph according to a plan and per-group parameters."""

    def __init__(self, graph: gs.Graph, plan: QuantPlan, params: dict[int, QParams], rules: PlacementRules,
                 fold_activations: bool = True, rounder: Rounder | None = None):
        self.graph = graph
        self.plan = plan
        self.params = params
        self.rules = rules
        self.fold = fold_activations and rules.fold_activations
        self.scope = NameScope(graph)
        self.axis_ok = opset(graph) >= 13
        self.nodes = {n.name: n for n in graph.nodes}
        self.tensors = graph.tensors()
        self.rounder = rounder
        self.counters = {"qdq_pairs": 0, "weights_quantized": 0, "biases_int32": 0, "activations_folded": 0,
                         "int8_layers": len(plan.layers)}
        if rounder is not None:
            self.counters.update({"weights_rounded_gptq": 0, "biases_corrected": 0})
        self.bias_shifts: dict[str, np.ndarray] = {}  # node -> shift to subtract from its output's float bias
        self.weight_scales: dict[tuple[str, int], np.ndarray] = {}
        self.notes: list[dict[str, str]] = []
        self.rounding_rows: list[dict] = []  # report rows: per layer, GPTQ or nearest codes and the bias shift
        self._group_constants: dict[int, tuple[gs.Constant, gs.Constant]] = {}
        self.left_float = {row["layer"] for row in plan.skipped}  # excluded or fallen-back layers

    def emit(self) -> dict[str, int]:
        slots = [(n, i, t) for n, i, t in self.plan.slots if self.plan.tensors.get(t) in self.params]
        x_scales = {(node, slot): self.params[self.plan.tensors[t]].scale for node, slot, t in slots}
        for spec in self.plan.weights:
            self._quantize_weight(spec)
        for node_name, bias_slot, weight_slot in self.plan.biases:
            if (node_name, 0) in x_scales and (node_name, weight_slot) in self.weight_scales:
                self._quantize_bias(node_name, bias_slot, self.weight_scales[(node_name, weight_slot)], x_scales[(node_name, 0)])
        for node_name in list(self.bias_shifts):  # biases that stay float take their correction as they are
            self._shift_float_bias(node_name)
        readers: dict[str, list[tuple[gs.Node, int]]] = {}
        for node_name, slot, tensor in slots:
            readers.setdefault(tensor, []).append((self.nodes[node_name], slot))
        for name, gid in self.plan.tensors.items():
            if gid in self.params:
                self._insert_pair(self.tensors[name], gid, readers.get(name, []))
        return self.counters

    # ------------------------------------------------------------------------------------

    def _constants(self, gid: int) -> tuple[gs.Constant, gs.Constant]:
        if gid not in self._group_constants:
            p = self.params[gid]
            scale = gs.Constant(self.scope.fresh(f"qdq_scale_{gid}"), np.asarray(p.scale, dtype=np.float32))
            zero = gs.Constant(self.scope.fresh(f"qdq_zero_point_{gid}"), np.asarray(p.zero_point, dtype=p.dtype))
            self._group_constants[gid] = (scale, zero)
        return self._group_constants[gid]

    def _insert_pair(self, tensor: gs.Tensor, gid: int, int8_readers: list[tuple[gs.Node, int]]) -> None:
        params = self.params[gid]
        scale, zero = self._constants(gid)
        every_reader = tensor.name in self.plan.all_readers
        targets = [(n, i) for n in tensor.outputs for i, t in enumerate(n.inputs) if t is tensor] if every_reader else int8_readers
        if not targets:
            return
        source = self._fold_source(tensor, params) if every_reader else tensor
        base = tensor.name
        quantized = gs.Variable(self.scope.fresh(f"{base}_quantized"), dtype=params.dtype, shape=tensor.shape)
        dequantized = gs.Variable(self.scope.fresh(f"{base}_dequantized"), dtype=np.float32, shape=tensor.shape)
        q = gs.Node("QuantizeLinear", self.scope.fresh(f"{base}_QuantizeLinear"), inputs=[source, scale, zero], outputs=[quantized])
        dq = gs.Node("DequantizeLinear", self.scope.fresh(f"{base}_DequantizeLinear"), inputs=[quantized, scale, zero], outputs=[dequantized])
        self.graph.nodes.extend([q, dq])
        per_axis = None
        for node, slot in targets:
            if self._float_reader_fused_by_ort(node, slot):
                per_axis = per_axis or self._per_axis_copy(quantized, tensor, params)
                node.inputs[slot] = per_axis or dequantized
            else:
                node.inputs[slot] = dequantized
        self.counters["qdq_pairs"] += 1

    def _float_reader_fused_by_ort(self, node: gs.Node, slot: int) -> bool:
        """A reader the plan leaves in float that onnxruntime would still run in int8 behind a
        per-tensor DQ: a Conv/ConvTranspose/Gemm with float weights (it quantizes them itself), or
        an excluded op whose output is quantized again (``DQ -> Add -> Q`` becomes a QLinearAdd).
        Neither pattern takes a per-axis DQ, so such readers get one."""
        if not self.rules.float_layers_read_per_axis_dq or node.name in self.plan.layers:
            return False
        if node.op in ("Conv", "ConvTranspose", "Gemm"):
            if slot != 0 or len(node.inputs) < 2:
                return False
            w = constant_value(node.inputs[1])
            return w is not None and w.dtype == np.float32
        return node.name in self.left_float and any(self._quantized_later(t) for t in node.outputs)

    def _quantized_later(self, tensor: gs.Tensor) -> bool:
        """Whether ``tensor``, or the end of the ReLU/Clip chain it feeds, gets a Q/DQ pair."""
        while tensor.name not in self.plan.tensors:
            if len(tensor.outputs) != 1 or tensor.outputs[0].op not in FOLDABLE_ACTIVATIONS:
                return False
            tensor = tensor.outputs[0].outputs[0]
        return True

    def _per_axis_copy(self, quantized: gs.Variable, tensor: gs.Tensor, params: QParams) -> gs.Variable | None:
        """DequantizeLinear of ``quantized`` with the group's scale repeated along axis 1 (needs opset 13, static C)."""
        shape = tensor.shape
        if not self.axis_ok or shape is None or len(shape) < 2 or not isinstance(shape[1], (int, np.integer)):
            self.notes.append({"where": tensor.name, "reason": "float layer reads a per-tensor DequantizeLinear "
                               "(channel count unknown); onnxruntime may quantize its weights per tensor"})
            return None
        channels = int(shape[1])
        scale = gs.Constant(self.scope.fresh(f"{tensor.name}_scale_per_axis"), np.full(channels, params.scale, np.float32))
        zero = gs.Constant(self.scope.fresh(f"{tensor.name}_zero_point_per_axis"),
                           np.full(channels, params.zero_point, dtype=params.dtype))
        out = gs.Variable(self.scope.fresh(f"{tensor.name}_dequantized_float_reader"), dtype=np.float32, shape=tensor.shape)
        self.graph.nodes.append(gs.Node("DequantizeLinear", self.scope.fresh(f"{tensor.name}_DequantizeLinear_per_axis"),
                                        attrs={"axis": 1}, inputs=[quantized, scale, zero], outputs=[out]))
        return out

    def _fold_source(self, tensor: gs.Tensor, params: QParams) -> gs.Tensor:
        """The tensor the Q reads: past ReLU/Clip nodes it makes redundant (their outputs lose every
        reader), short of one the user excluded (--exclude keeps it, in float)."""
        if not self.fold:
            return tensor
        while (tensor.inputs and not is_graph_output(self.graph, tensor) and tensor.inputs[0].name not in self.plan.kept_activations
               and self._redundant(tensor.inputs[0], params)):
            tensor = tensor.inputs[0].inputs[0]
            self.counters["activations_folded"] += 1
        return tensor

    def _redundant(self, node: gs.Node, params: QParams) -> bool:
        low, high = params.representable()
        s = float(params.scale)
        if node.op == "Relu" and (not node.domain or node.domain == "ai.onnx"):
            return params.zero_point == params.qmin
        if node.op != "Clip" or (node.domain and node.domain != "ai.onnx"):
            return False
        if len(node.inputs) > 1:
            a = constant_value(node.inputs[1]) if node.inputs[1].name else np.float32(-np.inf)
            b = np.float32(np.inf) if (given := optional_input(node, 2)) is None else constant_value(given)
            if a is None or b is None:
                return False
            a, b = float(a), float(b)
        else:
            a, b = float(node.attrs.get("min", -np.inf)), float(node.attrs.get("max", np.inf))
        return a <= low + 0.49 * s and b >= high - 0.49 * s

    def _quantize_weight(self, spec: WeightSpec) -> None:
        node = self.nodes[spec.node]
        w = constant_value(node.inputs[spec.slot])
        axis = spec.axis if self.axis_ok else None
        q, scale = quantize_weight(w, axis)
        rounded = self.rounder(node, spec.slot, w, scale, axis) if self.rounder is not None else None
        if rounded is not None:
            q = rounded.q
            self.counters["weights_rounded_gptq"] += int(rounded.gptq)
            if rounded.bias_shift is not None:
                self.bias_shifts[spec.node] = rounded.bias_shift
            self.rounding_rows.append({"detail": "rounding", "layer": spec.node, "rounding": "gptq" if rounded.gptq else "nearest",
                                       "bias_shift_max": None if rounded.bias_shift is None else float(np.abs(rounded.bias_shift).max())})
        self.weight_scales[(spec.node, spec.slot)] = scale
        zero = np.zeros(scale.shape, dtype=np.int8)
        name = node.inputs[spec.slot].name
        self._dequantized_input(node, spec.slot, q, scale, zero, axis, name)
        self.counters["weights_quantized"] += 1

    def _corrected_bias(self, node_name: str, slot: int) -> np.ndarray:
        """The node's float bias less its rounding shift (bias correction), if it has one."""
        b = constant_value(self.nodes[node_name].inputs[slot])
        shift = self.bias_shifts.get(node_name)
        return b if shift is None else (b.astype(np.float64) - shift).astype(np.float32)

    def _shift_float_bias(self, node_name: str) -> None:
        """Subtract the shift from a bias that stays float (a new constant: the old one may be shared)."""
        shift = self.bias_shifts.pop(node_name)
        site = bias_site(self.nodes[node_name], shift.size)
        if site is None:
            return
        owner, slot = site
        b = constant_value(owner.inputs[slot])
        corrected = (b.astype(np.float64) - shift.reshape(b.shape)).astype(np.float32)
        owner.inputs[slot] = gs.Constant(self.scope.fresh(f"{owner.inputs[slot].name}_corrected"), corrected)
        self.counters["biases_corrected"] += 1

    def _quantize_bias(self, node_name: str, slot: int, w_scale: np.ndarray, x_scale: np.float32) -> None:
        node = self.nodes[node_name]
        b = self._corrected_bias(node_name, slot)
        scale = (np.float32(x_scale) * w_scale.astype(np.float32)).astype(np.float32)
        if scale.ndim == 1 and (scale.shape != b.shape or not self.axis_ok):
            return
        q = np.round(b.astype(np.float64) / scale.astype(np.float64))
        if not np.all(np.abs(q) <= INT32_LIMIT):
            self.notes.append({"where": node_name, "reason": "int32 bias would overflow; bias left in float"})
            return
        zero = np.zeros(scale.shape, dtype=np.int32)
        self._dequantized_input(node, slot, q.astype(np.int32), scale, zero, 0 if scale.ndim == 1 else None, node.inputs[slot].name)
        self.counters["biases_int32"] += 1
        if self.bias_shifts.pop(node_name, None) is not None:
            self.counters["biases_corrected"] += 1

    def _dequantized_input(self, node: gs.Node, slot: int, q: np.ndarray, scale: np.ndarray, zero: np.ndarray,
                           axis: int | None, base: str) -> None:
        qc = gs.Constant(self.scope.fresh(f"{base}_quantized"), np.ascontiguousarray(q))
        sc = gs.Constant(self.scope.fresh(f"{base}_scale"), np.ascontiguousarray(scale, dtype=np.float32))
        zc = gs.Constant(self.scope.fresh(f"{base}_zero_point"), np.ascontiguousarray(zero))
        out = gs.Variable(self.scope.fresh(f"{base}_dequantized"), dtype=np.float32, shape=list(q.shape))
        attrs = {"axis": int(axis)} if axis is not None else {}
        dq = gs.Node("DequantizeLinear", self.scope.fresh(f"{base}_DequantizeLinear"), attrs=attrs, inputs=[qc, sc, zc], outputs=[out])
        self.graph.nodes.append(dq)
        node.inputs[slot] = out
