"""Choose which units to remove: a ratio per group, a MAC budget, and MAC/parameter accounting.

Within a group, units are split into *classes* by the set of slots they have elements in (the
segments of a Concat, the halves of a Split, ...). Each class loses ``ratio`` of its units, the
lowest-scoring movable ones, so every tensor of the group shrinks by the same ratio and, with
``round_to``, every channel count stays a multiple of N. A class keeps at least one unit.
``--prune-macs`` finds, by bisection, the global ratio whose estimated MACs removed reach the
target (MACs of a layer scale with the kept fraction of its output and, for dense layers, input).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx_graphsurgeon as gs

from onnxslim.graph import constant_value
from onnxslim.pruning.groups import ChannelGraph, Group
from onnxslim.pruning.params import ParamSlice, param_slices
from onnxslim.pruning.rewrite import touched_nodes
from onnxslim.stats import node_macs


def _classes(cg: ChannelGraph) -> list[list[np.ndarray]]:
    """Per group (in cg.groups order), the unit arrays of each signature class."""
    signature = cg.unit_signature()
    out = []
    for group in cg.groups:
        by_sig: dict[tuple[int, ...], list[int]] = {}
        for u in group.units.tolist():
            by_sig.setdefault(signature[u], []).append(u)
        out.append([np.asarray(v) for _, v in sorted(by_sig.items())])
    return out


class Selector:
    def __init__(self, cg: ChannelGraph, scores: np.ndarray, round_to: int = 1):
        self.cg = cg
        self.scores = scores
        self.round_to = max(1, int(round_to))
        self.classes = _classes(cg)
        self.orders = [[units[np.argsort(scores[units], kind="stable")] for units in cls] for cls in self.classes]

    def kept_count(self, n: int, ratio: float) -> int:
        kept = n - int(math.floor(ratio * n + 1e-9))
        if self.round_to > 1:
            kept = n if n <= self.round_to else min(n, max(self.round_to, int(round(kept / self.round_to)) * self.round_to))
        return max(1, kept)

    def select(self, ratio_of: Callable[[Group], float]) -> np.ndarray:
        """Unit keep mask."""
        keep = np.ones(self.cg.frozen.size, dtype=bool)
        for group, orders in zip(self.cg.groups, self.orders):
            ratio = ratio_of(group)
            if ratio <= 0:
                continue
            for order in orders:
                n_prune = order.size - self.kept_count(order.size, ratio)
                movable = order[~self.cg.frozen[order]]
                keep[movable[:max(0, min(n_prune, movable.size))]] = False
        return keep


@dataclass
class LayerCost:
    node: gs.Node
    macs: int
    out_slot: str | None
    in_slot: str | None
    group: str | None = None  # the one report row its MACs are counted in


@dataclass
class ConstantCost:
    """One constant (counted once, however many nodes read it) and the slices its readers take."""

    tensor: gs.Tensor
    numel: int
    readers: list[tuple[gs.Node, list[ParamSlice]]]  # every reader; [] = it reads the whole constant
    group: str | None = None  # the one report row its parameters are counted in

    @property
    def shared(self) -> bool:
        return len(self.readers) > 1


class CostModel:
    """MACs and parameters of the layers and constants that touch slots, before and after a keep mask.

    Every layer's MACs and every constant's parameters are counted in exactly one group's row:
    a layer in the group of the channels it writes (else of those it reads), a constant in the
    group of the layer that writes with it (else the first slot slicing it). A constant read by
    several nodes counts once, and after pruning once per distinct slice its readers need (a
    reader that keeps all of it keeps the original). Rows therefore add up to the model's totals.
    """

    def __init__(self, graph: gs.Graph, cg: ChannelGraph):
        self.cg = cg
        self.layers: list[LayerCost] = []
        self.constants: list[ConstantCost] = []
        self.total_macs = 0
        self.group_of = {name: g.name for g in cg.groups for name in g.slots}
        for node in graph.nodes:
            macs, _ = node_macs(node)
            self.total_macs += macs
        by_id: dict[int, ConstantCost] = {}
        for node in touched_nodes(cg, list(cg.slots)):
            macs, _ = node_macs(node)
            out = node.outputs[0].name if node.outputs and node.outputs[0].name in cg.slots else None
            x = node.inputs[0].name if node.inputs and node.inputs[0].name in cg.slots else None
            if node.op == "Conv" and int(node.attrs.get("group", 1)) > 1:
                x = None  # per-group input width is unchanged: MACs follow the output alone
            per_input: dict[int, list[ParamSlice]] = {}
            for ps in param_slices(node, cg.slots):
                per_input.setdefault(ps.input_index, []).append(ps)
            for i, slices in per_input.items():
                t = node.inputs[i]
                cost = by_id.get(id(t))
                if cost is None:
                    cost = by_id[id(t)] = ConstantCost(t, int(np.size(constant_value(t))), [])
                    self.constants.append(cost)
                cost.readers.append((node, slices))
            owner = out or x or next((ps.slot for sl in per_input.values() for ps in sl), None)
            self.layers.append(LayerCost(node, macs, out, x, self.group_of.get(owner) if owner else None))
        for cost in self.constants:
            seen = {id(n) for n, _ in cost.readers}
            for reader in cost.tensor.outputs:  # readers that slice nothing keep the whole constant
                if id(reader) not in seen:
                    seen.add(id(reader))
                    cost.readers.append((reader, []))
            slices = [ps for _, sl in cost.readers for ps in sl]
            owner = next((ps.slot for ps in slices if ps.role == "out"), slices[0].slot if slices else None)
            cost.group = self.group_of.get(owner) if owner else None

    def fractions(self, unit_keep: np.ndarray) -> dict[str, float]:
        keep = unit_keep[self.cg.unit_of].astype(float)
        kept = np.bincount(self.cg.slot_of_element, weights=keep, minlength=len(self.cg.slot_list))
        return {s.tensor.name: kept[s.index] / s.size for s in self.cg.slot_list}

    def layer_after(self, layer: LayerCost, frac: dict[str, float]) -> float:
        f = (frac[layer.out_slot] if layer.out_slot else 1.0) * (frac[layer.in_slot] if layer.in_slot else 1.0)
        return layer.macs * f

    def macs_after(self, unit_keep: np.ndarray) -> float:
        frac = self.fractions(unit_keep)
        removed = sum(layer.macs - self.layer_after(layer, frac) for layer in self.layers)
        return self.total_macs - removed

    def versions(self, cost: ConstantCost, element_keep: np.ndarray) -> dict[tuple, float]:
        """Distinct versions of a constant after pruning (signature -> size); () is the original."""
        out: dict[tuple, float] = {}
        for _, slices in cost.readers:
            sig, size = [], float(cost.numel)
            for ps in slices:
                slot = self.cg.slots[ps.slot]
                mask = element_keep[slot.offset:slot.offset + slot.size]
                if not mask.all():
                    sig.append((ps.axis, np.packbits(mask).tobytes(), int(mask.size)))
                    size *= float(mask.sum()) / mask.size
            out[tuple(sorted(sig))] = size
        return out

    def constant_after(self, cost: ConstantCost, element_keep: np.ndarray) -> float:
        return sum(self.versions(cost, element_keep).values())

    def group_rows(self, unit_keep: np.ndarray) -> dict[str, dict[str, int]]:
        """macs_before/after and params_before/after of every group's row (each counted once)."""
        frac = self.fractions(unit_keep)
        element_keep = unit_keep[self.cg.unit_of]
        rows = {g.name: {"macs_before": 0.0, "macs_after": 0.0, "params_before": 0.0, "params_after": 0.0} for g in self.cg.groups}
        for layer in self.layers:
            if layer.group in rows:
                rows[layer.group]["macs_before"] += layer.macs
                rows[layer.group]["macs_after"] += self.layer_after(layer, frac)
        for cost in self.constants:
            if cost.group in rows:
                rows[cost.group]["params_before"] += cost.numel
                rows[cost.group]["params_after"] += self.constant_after(cost, element_keep)
        return {g: {k: int(round(v)) for k, v in row.items()} for g, row in rows.items()}

    def params(self, unit_keep: np.ndarray) -> tuple[int, int]:
        """Parameters of every constant a slot slices, before and after (each constant once)."""
        element_keep = unit_keep[self.cg.unit_of]
        before = sum(c.numel for c in self.constants)
        return before, int(round(sum(self.constant_after(c, element_keep) for c in self.constants)))

    def shared_growth(self, unit_keep: np.ndarray) -> list[tuple[ConstantCost, float, set[str]]]:
        """Shared constants whose readers would need different slices, so that the copies hold more
        than the original: (constant, parameters added, groups whose slots slice it)."""
        element_keep = unit_keep[self.cg.unit_of]
        out = []
        for cost in self.constants:
            if not cost.shared:
                continue
            versions = self.versions(cost, element_keep)
            growth = sum(versions.values()) - cost.numel
            if len(versions) > 1 and growth > 0:
                groups = {self.group_of[ps.slot] for _, sl in cost.readers for ps in sl if ps.slot in self.group_of}
                out.append((cost, growth, groups))
        return out


def ratio_for_macs(selector: Selector, cost: CostModel, target_removed: float, weight: Callable[[Group], float]) -> tuple[float, np.ndarray]:
    """The smallest global ratio (times each group's ``weight``) removing at least ``target_removed`` of all MACs."""
    total = max(1, cost.total_macs)
    lo, hi = 0.0, 0.99

    def removed(r: float) -> tuple[float, np.ndarray]:
        keep = selector.select(lambda g: min(0.99, r * weight(g)))
        return 1.0 - cost.macs_after(keep) / total, keep

    best = removed(hi)
    if best[0] < target_removed:
        return hi, best[1]
    for _ in range(24):
        mid = (lo + hi) / 2
        got = removed(mid)
        if got[0] >= target_removed:
            hi, best = mid, got
        else:
            lo = mid
    return hi, best[1]
