"""Dependency groups: which channels of which tensors must be pruned together.

Discovery walks from every layer that creates channels (Conv, ConvTranspose, Gemm and MatMul
with constant weights) through the rules of :mod:`onnxslim.pruning.couplings`, giving every
reached tensor a *slot* (its channel axis) and one *element* per channel. Couplings are
element-wise links, so the connected components of the element graph are the *units* that are
kept or removed as a whole (one channel of a plain chain; all branches of a residual Add; a
whole group of a grouped convolution), and the connected components of the slot graph are the
*groups* that the report lists.

A slot is *blocked* when it is a model input or output, is read inside a subgraph, or touches a
node that cannot be reasoned about (the reason is kept). Every unit with an element in a blocked
slot is frozen: its channels stay, so every blocked tensor keeps its shape and values. A node
that blocked one of its slots freezes all its slots, so a node is either fully understood or
left exactly as it was.

Cost: O(nodes + channels); the element graph is solved with one sparse connected-components call.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from onnxslim.graph import constant_value, is_constant, outer_scope_names
from onnxslim.pruning.base import Blocked, static_dim, tensor_rank
from onnxslim.pruning.couplings import couple

LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass
class Slot:
    tensor: gs.Variable
    axis: int
    size: int
    offset: int  # index of this slot's first element in the global numbering
    index: int


@dataclass
class Group:
    """A connected set of slots; its units are pruned as a whole, per signature class."""

    name: str
    slots: list[str]
    units: np.ndarray  # unit ids
    reasons: list[str] = field(default_factory=list)  # why some or all units are frozen

    def movable_units(self, frozen: np.ndarray) -> int:
        return int(np.count_nonzero(~frozen[self.units]))


@dataclass
class ChannelGraph:
    slots: dict[str, Slot]
    blocked: dict[str, str]  # tensor name -> reason
    unit_of: np.ndarray  # element -> unit
    frozen: np.ndarray  # unit -> frozen
    groups: list[Group]
    slot_of_element: np.ndarray  # element -> slot index
    slot_list: list[Slot]

    @property
    def elements(self) -> int:
        return int(self.unit_of.size)

    def elements_of(self, name: str) -> np.ndarray:
        s = self.slots[name]
        return np.arange(s.offset, s.offset + s.size)

    def unit_signature(self) -> dict[int, tuple[int, ...]]:
        """Unit -> sorted slot indices it has elements in."""
        order = np.lexsort((self.slot_of_element, self.unit_of))
        units, slots = self.unit_of[order], self.slot_of_element[order]
        bounds = np.flatnonzero(np.diff(units)) + 1
        out: dict[int, tuple[int, ...]] = {}
        for u_idx, s_idx in zip(np.split(units, bounds), np.split(slots, bounds)):
            if u_idx.size:
                out[int(u_idx[0])] = tuple(np.unique(s_idx).tolist())
        return out


def source_slots(graph: gs.Graph) -> list[tuple[gs.Tensor, int]]:
    """Outputs of layers with constant weights: where channels are created."""
    found = []
    for node in graph.nodes:
        if node.op not in LAYER_OPS or node.domain not in (None, "", "ai.onnx") or len(node.inputs) < 2:
            continue
        out = node.outputs[0]
        r = tensor_rank(out)
        if r is None or r < 2 or not is_constant(node.inputs[1]):
            continue
        if node.op == "MatMul":
            if np.asarray(constant_value(node.inputs[1])).ndim != 2:
                continue
            found.append((out, r - 1))
        else:
            found.append((out, 1))
    return found


class _Discovery:
    def __init__(self, graph: gs.Graph):
        self.graph = graph
        self.main_nodes = {id(n) for n in graph.nodes}
        self.outputs = {t.name for t in graph.outputs}
        self.inputs = {t.name for t in graph.inputs}
        self.outer = outer_scope_names(graph)
        self.slots: dict[str, Slot] = {}
        self.blocked: dict[str, str] = {}
        self.links: list[tuple[str, np.ndarray, str, np.ndarray]] = []
        self.blocking_nodes: list[gs.Node] = []
        self.queue: deque[tuple[gs.Tensor, int]] = deque()
        self.total = 0

    def block(self, name: str, reason: str) -> None:
        self.blocked.setdefault(name, reason)

    def add_slot(self, tensor: gs.Tensor, axis: int) -> Slot | None:
        if tensor.name in self.slots:
            slot = self.slots[tensor.name]
            if slot.axis != axis:
                self.block(tensor.name, f"reached on two different axes ({slot.axis} and {axis})")
            return None
        size = static_dim(tensor, axis)
        if size is None or isinstance(tensor, gs.Constant):
            return None
        slot = Slot(tensor, axis, size, self.total, len(self.slots))
        self.slots[tensor.name] = slot
        self.total += size
        if tensor.name in self.outputs:
            self.block(tensor.name, f"{tensor.name!r} is a model output")
        if tensor.name in self.inputs:
            self.block(tensor.name, f"{tensor.name!r} is a model input")
        if tensor.name in self.outer:
            self.block(tensor.name, f"{tensor.name!r} is read inside a subgraph")
        return slot

    def visit(self, slot: Slot) -> None:
        t = slot.tensor
        neighbours = list(t.inputs) + [n for i, n in enumerate(t.outputs) if all(n is not m for m in t.outputs[:i])]
        for node in neighbours:
            if id(node) not in self.main_nodes:
                self.block(t.name, f"{t.name!r} is read inside a subgraph")
                continue
            try:
                links = couple(self.graph, node, t, slot.axis, slot.size)
                for link in links:
                    other = static_dim(link.tensor, link.axis)
                    if other is None or (link.theirs.size and int(link.theirs.max()) >= other):
                        raise Blocked(f"{node.op} {node.name}: unknown or inconsistent channel count of {link.tensor.name!r}")
            except Blocked as exc:
                self.block(t.name, str(exc))
                self.blocking_nodes.append(node)
                continue
            for link in links:
                self.links.append((t.name, link.mine, link.tensor.name, link.theirs))
                self.queue.append((link.tensor, link.axis))

    def run(self) -> None:
        for tensor, axis in source_slots(self.graph):
            self.queue.append((tensor, axis))
        while self.queue:
            tensor, axis = self.queue.popleft()
            slot = self.add_slot(tensor, axis)
            if slot is not None:
                self.visit(slot)
        for node in self.blocking_nodes:  # a node that blocked one slot freezes all of them
            for t in [*node.inputs, *node.outputs]:
                if t.name in self.slots and t.name not in self.blocked:
                    self.block(t.name, f"{node.op} {node.name} also touches a blocked tensor")


def discover(graph: gs.Graph) -> ChannelGraph:
    """Slots, units and groups of ``graph`` (which must carry inferred shapes)."""
    d = _Discovery(graph)
    d.run()
    slot_list = sorted(d.slots.values(), key=lambda s: s.index)
    total = d.total
    rows, cols = [np.arange(total)], [np.arange(total)]
    parent = list(range(len(slot_list)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, ia, b, ib in d.links:
        if b not in d.slots:
            continue
        sa, sb = d.slots[a], d.slots[b]
        if ib.size and int(ib.max()) >= sb.size:
            continue
        rows.append(sa.offset + ia)
        cols.append(sb.offset + ib)
        parent[find(sa.index)] = find(sb.index)
    r, c = np.concatenate(rows), np.concatenate(cols)
    unit_of = connected_labels(total, r, c)
    frozen = np.zeros(int(unit_of.max()) + 1 if total else 0, dtype=bool)
    for name in d.blocked:
        s = d.slots[name]
        frozen[unit_of[s.offset:s.offset + s.size]] = True
    slot_of_element = np.repeat(np.arange(len(slot_list)), [s.size for s in slot_list]) if slot_list else np.zeros(0, int)
    groups = _groups(graph, slot_list, [find(s.index) for s in slot_list], unit_of, d.blocked)
    return ChannelGraph(d.slots, d.blocked, unit_of, frozen, groups, slot_of_element, slot_list)


def connected_labels(count: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Connected components of an undirected graph on ``count`` nodes with edges (rows[i], cols[i]).

    Min-label propagation with pointer jumping (vectorized, O(edges) per round, few rounds);
    labels are 0..k-1 in order of each component's smallest node.
    """
    labels = np.arange(count, dtype=np.int64)
    rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
    while True:
        low = np.minimum(labels[rows], labels[cols])
        before = labels.copy()
        np.minimum.at(labels, rows, low)
        np.minimum.at(labels, cols, low)
        while True:  # pointer jumping: follow labels to their roots
            jumped = labels[labels]
            if np.array_equal(jumped, labels):
                break
            labels = jumped
        if np.array_equal(labels, before):
            break
    return np.unique(labels, return_inverse=True)[1].astype(np.int64)


def _groups(graph: gs.Graph, slot_list: list[Slot], roots: list[int], unit_of: np.ndarray, blocked: dict[str, str]) -> list[Group]:
    members: dict[int, list[Slot]] = {}
    for slot, root in zip(slot_list, roots):
        members.setdefault(root, []).append(slot)
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    keyed = []
    for slots in members.values():
        producers = [s.tensor.inputs[0] for s in slots if s.tensor.inputs and s.tensor.inputs[0].op in LAYER_OPS]
        producers.sort(key=lambda n: order.get(id(n), 0))
        name = producers[0].name if producers and producers[0].name else slots[0].tensor.name
        units = np.unique(np.concatenate([unit_of[s.offset:s.offset + s.size] for s in slots]))
        reasons = list(dict.fromkeys(blocked[s.tensor.name] for s in slots if s.tensor.name in blocked))
        first = min(order.get(id(s.tensor.inputs[0]), -1) if s.tensor.inputs else -1 for s in slots)
        keyed.append((first, name, Group(name, [s.tensor.name for s in slots], units, reasons)))
    keyed.sort(key=lambda k: (k[0], k[1]))
    return [g for _, _, g in keyed]


def feature_blocks(graph: gs.Graph, cg: ChannelGraph) -> dict[str, float]:
    """Elements per channel of every slot: 1 for channels, ``H*W`` for the features a Flatten or
    Reshape makes of a ``C x H x W`` tensor (a Gemm/MatMul reading them), a fraction where a
    Reshape splits channels into blocks. ``size / block`` counts a slot in channels of the layer
    that wrote them. Nodes are visited in graph order (topological after any pass)."""
    block: dict[str, float] = {}
    for node in graph.nodes:
        for out in node.outputs:
            slot = cg.slots.get(out.name)
            if slot is None:
                continue
            if node.op in LAYER_OPS:
                block[out.name] = 1.0
                continue
            source = next((t for t in node.inputs if t.name in cg.slots), None)
            if source is None:
                block[out.name] = 1.0
            elif node.op in ("Flatten", "Reshape"):
                block[out.name] = block.get(source.name, 1.0) * slot.size / cg.slots[source.name].size
            else:
                block[out.name] = block.get(source.name, 1.0)
    return {name: block.get(name, 1.0) for name in cg.slots}
