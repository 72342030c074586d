"""Plan where Q/DQ pairs go, from the graph and a :class:`PlacementRules`; no graph mutation here.

The plan answers, for one graph:

* which nodes run in int8 (``layers``): compute ops (Conv, ConvTranspose, Gemm, MatMul), the
  elementwise ops the rules allow when their output goes on in int8, and data-movement ops
  (MaxPool, Reshape, ...) between int8 ops;
* which activation tensors get a Q->DQ pair (``tensors``), and which consumer slots read the
  dequantized copy: every reader when the producer is itself int8 (so that the backend can fuse
  the producer with its Q), only the int8 readers otherwise;
* which tensors share one scale (``group``: data-movement ops, Concat/pool under some rules) and
  which of them must be observed during calibration (``observed``; the others derive from them);
* which constant weights are quantized and on which axis, and which biases become int32.

Decisions run in reverse topological order, so a node knows whether its consumers take int8.
Activations that the rules fold (ReLU/Clip) are looked through: ``Conv -> Relu -> Q`` never has a
Q/DQ pair between the conv and the ReLU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import onnx_graphsurgeon as gs

from onnxslim.graph import constant_value, is_constant, opset
from onnxslim.quantization.options import compile_pattern
from onnxslim.quantization.rules import COMPUTE_OPS, FOLDABLE_ACTIVATIONS, FLOAT_BY_DEFAULT, PlacementRules


@dataclass(frozen=True)
class WeightSpec:
    node: str
    slot: int
    axis: int | None  # per-channel axis, None for per-tensor


@dataclass
class QuantPlan:
    layers: dict[str, str] = field(default_factory=dict)  # node name -> "compute" | "elementwise" | "move"
    tensors: dict[str, int] = field(default_factory=dict)  # tensor name -> group id
    all_readers: set[str] = field(default_factory=set)  # tensors whose every reader takes the DQ copy
    slots: list[tuple[str, int, str]] = field(default_factory=list)  # (node, input slot, tensor) reading DQ
    weights: list[WeightSpec] = field(default_factory=list)
    biases: list[tuple[str, int, int]] = field(default_factory=list)  # (node, bias slot, weight slot)
    derived: dict[str, str] = field(default_factory=dict)  # tensor -> tensor whose values it holds a subset of
    skipped: list[dict[str, str]] = field(default_factory=list)  # layers left in float, and why
    kept_activations: set[str] = field(default_factory=set)  # excluded ReLU/Clip nodes: never folded into a Q

    def groups(self) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for name, gid in self.tensors.items():
            out.setdefault(gid, []).append(name)
        return out

    @property
    def observed(self) -> list[str]:
        """Tensors whose statistics calibration must collect."""
        return [t for t in self.tensors if t not in self.derived]


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


def exclusion_matcher(patterns: Iterable[str]) -> Callable[[gs.Node], bool]:
    """A predicate true for nodes named, typed, or fully matched (regex) by any pattern."""
    names = set(patterns)
    regexes = [r for r in map(compile_pattern, names) if r is not None]

    def excluded(node: gs.Node) -> bool:
        return node.name in names or node.op in names or any(r.fullmatch(node.name or "") for r in regexes)

    return excluded


def unmatched_exclusions(patterns: Iterable[str], graph: gs.Graph) -> list[str]:
    """The patterns of ``patterns`` that name, type or match no node of ``graph``."""
    nodes = [n for n in graph.nodes]
    return [p for p in patterns if not any(exclusion_matcher([p])(n) for n in nodes)]


def _is_float(t: gs.Tensor) -> bool:
    return t.dtype is not None and np.dtype(t.dtype) == np.float32


def _active(t: gs.Tensor) -> bool:
    """A float activation: not a constant, not an empty optional input."""
    return bool(t.name) and not is_constant(t) and _is_float(t)


class Planner:
    """Builds a :class:`QuantPlan`; ``excluded`` nodes (user exclusions, fallbacks) stay float."""

    def __init__(self, graph: gs.Graph, rules: PlacementRules, excluded: Callable[[gs.Node], bool]):
        self.graph = graph
        self.rules = rules
        self.excluded = excluded
        self.per_channel = rules.per_channel and opset(graph) >= 13
        self.outputs = {t.name for t in graph.outputs}
        self.wanted: set[str] = set()  # tensors some int8 reader wants
        self.plan = QuantPlan()

    # ------------------------------------------------------------------------------------
    # Per-op facts

    def _data_slots(self, node: gs.Node) -> list[int] | None:
        """Input slots that carry activations an int8 version of ``node`` reads; None if not quantizable."""
        op, ins = node.op, node.inputs
        if op in ("Conv", "ConvTranspose", "Gemm"):
            if len(ins) < 2 or not _active(ins[0]):
                return None
            return [0] if is_constant(ins[1]) else ([0, 1] if _active(ins[1]) else None)
        if op == "MatMul":
            slots = [i for i in (0, 1) if not is_constant(ins[i])]
            return slots if slots and all(_active(ins[i]) for i in slots) else None
        if op in ("Add", "Mul", "Concat"):
            return list(range(len(ins))) if ins and all(_active(t) for t in ins) else None
        return [0] if ins and _active(ins[0]) else None

    def _low_gain(self, node: gs.Node) -> str:
        r = self.rules
        w = constant_value(node.inputs[1]) if node.op != "MatMul" else (
            constant_value(node.inputs[1]) if is_constant(node.inputs[1]) else None)
        if node.op in ("Conv", "ConvTranspose") and r.min_conv_channels and w is not None and w.ndim >= 2:
            group = int(node.attrs.get("group", 1))
            cout = w.shape[0] if node.op == "Conv" else w.shape[1] * group
            cin = w.shape[1] * group if node.op == "Conv" else w.shape[0]
            if min(cout, cin) < r.min_conv_channels:
                return f"conv with {min(cout, cin)} channels (< {r.min_conv_channels}): little to gain"
        if node.op in ("MatMul", "Gemm") and r.min_matmul_size and w is not None and w.ndim >= 2:
            if min(w.shape[-2:]) < r.min_matmul_size:
                return f"{node.op} weight {list(w.shape)} smaller than {r.min_matmul_size}: little to gain"
        return ""

    def _fold_chain(self, tensor: gs.Tensor) -> gs.Tensor:
        """Follow single-reader ReLU/Clip chains: the tensor whose quantization covers ``tensor``."""
        while True:
            readers = tensor.outputs
            if len(readers) != 1 or tensor.name in self.outputs:
                return tensor
            node = readers[0]
            if node.op not in FOLDABLE_ACTIVATIONS or (node.domain and node.domain != "ai.onnx") or self.excluded(node):
                return tensor
            if node.op == "Clip" and any(t.name and not is_constant(t) for t in node.inputs[1:]):
                return tensor
            tensor = node.outputs[0]

    def _output_wanted(self, node: gs.Node) -> bool:
        return any(self._fold_chain(t).name in self.wanted for t in node.outputs)

    # ------------------------------------------------------------------------------------
    # Planning

    def build(self) -> QuantPlan:
        uf = _UnionFind()
        nodes = [n for n in self.graph.nodes if (not n.domain or n.domain == "ai.onnx")]
        self.plan.kept_activations = {n.name for n in nodes if n.op in FOLDABLE_ACTIVATIONS and self.excluded(n)}
        forced_outputs: list[gs.Tensor] = []
        for node in reversed(nodes):
            kind, slots = self._decide(node)
            if kind is None:
                continue
            self.plan.layers[node.name] = kind
            for i in slots:
                self.plan.slots.append((node.name, i, node.inputs[i].name))
                self.wanted.add(node.inputs[i].name)
            if kind == "compute":
                self._plan_weights(node)
                if node.op in ("Conv", "ConvTranspose") and self.rules.always_quantize_conv_output:
                    forced_outputs.append(self._fold_chain(node.outputs[0]))
            shares = node.op in self.rules.pass_through or node.op in self.rules.shared_scale_ops
            if kind in ("move", "elementwise") and shares:
                for out in node.outputs:
                    self.plan.derived[out.name] = node.inputs[slots[0]].name
                    for i in slots:
                        uf.union(node.inputs[i].name, out.name)
        for t in forced_outputs:
            if t.name not in self.outputs:
                self.wanted.add(t.name)
        self._assign_tensors(uf)
        return self.plan

    def _decide(self, node: gs.Node) -> tuple[str | None, list[int]]:
        r = self.rules
        op = node.op
        compute = op in COMPUTE_OPS
        elementwise = op in r.int8_elementwise or op in r.extra_ops
        move = op in r.pass_through
        if not (compute or elementwise or move):
            return None, []
        if op in FLOAT_BY_DEFAULT and op not in r.extra_ops:
            return None, []
        slots = self._data_slots(node)
        if slots is None:
            return None, []
        if self.excluded(node):
            self.plan.skipped.append({"layer": node.name, "op": op, "reason": "excluded"})
            return None, []
        if compute:
            reason = self._low_gain(node)
            if reason:
                self.plan.skipped.append({"layer": node.name, "op": op, "reason": reason})
                return None, []
            return "compute", slots
        if any(t.name in self.outputs for t in node.outputs):
            return None, []
        if op == "Add" and r.residual_skip_only:
            skip = self._residual_skip(node)
            if skip is not None:
                return "elementwise", [skip]
        if not self._output_wanted(node):
            return None, []
        if move and op == "Split" and len(node.inputs) > 1 and node.inputs[1].name and not is_constant(node.inputs[1]):
            return None, []
        return ("move" if move else "elementwise"), slots

    def _residual_skip(self, node: gs.Node) -> int | None:
        """The slot of a residual Add's skip input: the other one comes from a fusable conv/GEMM."""
        for i, t in enumerate(node.inputs):
            producer = t.inputs[0] if t.inputs else None
            if (producer is not None and producer.op in COMPUTE_OPS and len(t.outputs) == 1
                    and t.name not in self.outputs and not self.excluded(producer)):
                return 1 - i
        return None

    def _plan_weights(self, node: gs.Node) -> None:
        op, ins = node.op, node.inputs
        if op == "MatMul":
            for slot in (0, 1):
                w = constant_value(ins[slot])
                if w is not None and w.dtype == np.float32:
                    axis = w.ndim - 1 if slot == 1 and w.ndim >= 2 and self.per_channel else None
                    self.plan.weights.append(WeightSpec(node.name, slot, axis))
            return
        w = constant_value(ins[1])
        if w is None or w.dtype != np.float32:
            return
        if op == "Conv":
            axis = 0
        elif op == "ConvTranspose":
            axis = 1
        else:  # Gemm: output channels are B's rows when transB, else its columns
            axis = 0 if node.attrs.get("transB", 0) else 1
        self.plan.weights.append(WeightSpec(node.name, 1, axis if self.per_channel and w.ndim >= 2 else None))
        if self.rules.bias_int32 and len(ins) > 2 and ins[2].name:
            b = constant_value(ins[2])
            plain_gemm = op != "Gemm" or (node.attrs.get("alpha", 1.0) == 1.0 and node.attrs.get("beta", 1.0) == 1.0)
            channels = w.shape[axis] if w.ndim >= 2 else None
            if b is not None and b.dtype == np.float32 and b.ndim == 1 and b.shape[0] == channels and plain_gemm:
                if op != "ConvTranspose" or int(node.attrs.get("group", 1)) == 1:
                    self.plan.biases.append((node.name, 2, 1))

    def _assign_tensors(self, uf: _UnionFind) -> None:
        by_name = self.graph.tensors()
        roots: dict[str, int] = {}
        for name in sorted(self.wanted, key=self._order_key()):
            root = uf.find(name)
            self.plan.tensors[name] = roots.setdefault(root, len(roots))
            if self._int8_producer(by_name[name]):
                self.plan.all_readers.add(name)
        # A group member that is wanted only via a data-movement op still needs its source observed.
        for name in list(self.plan.derived):
            if name not in self.plan.tensors:
                del self.plan.derived[name]

    def _int8_producer(self, tensor: gs.Tensor) -> bool:
        """Whether ``tensor`` comes from an int8 layer, possibly through folded ReLU/Clip nodes."""
        while tensor.inputs:
            producer = tensor.inputs[0]
            if producer.name in self.plan.layers:
                return True
            if producer.op not in FOLDABLE_ACTIVATIONS or not producer.inputs:
                return False
            tensor = producer.inputs[0]
        return False

    def _order_key(self) -> Callable[[str], tuple[int, str]]:
        position: dict[str, int] = {t.name: -1 for t in self.graph.inputs}
        for i, node in enumerate(self.graph.nodes):
            for t in node.outputs:
                position[t.name] = i
        return lambda name: (position.get(name, -1), name)


def make_plan(graph: gs.Graph, rules: PlacementRules, excluded: Callable[[gs.Node], bool] | None = None) -> QuantPlan:
    return Planner(graph, rules, excluded or (lambda node: False)).build()
