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
from onnxslim.pruning.params import param_slices
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
    params: list[tuple[int, list[str]]]  # (numel, slots slicing it)


class CostModel:
    """MACs and parameters of the layers that touch slots, before and after a keep mask."""

    def __init__(self, graph: gs.Graph, cg: ChannelGraph):
        self.cg = cg
        self.layers: list[LayerCost] = []
        self.total_macs = 0
        for node in graph.nodes:
            macs, _ = node_macs(node)
            self.total_macs += macs
        for node in touched_nodes(cg, list(cg.slots)):
            macs, _ = node_macs(node)
            out = node.outputs[0].name if node.outputs and node.outputs[0].name in cg.slots else None
            x = node.inputs[0].name if node.inputs and node.inputs[0].name in cg.slots else None
            if node.op == "Conv" and int(node.attrs.get("group", 1)) > 1:
                x = None  # per-group input width is unchanged: MACs follow the output alone
            per_input: dict[int, list[str]] = {}
            for ps in param_slices(node, cg.slots):
                per_input.setdefault(ps.input_index, []).append(ps.slot)
            params = [(int(np.size(constant_value(node.inputs[i]))), slots) for i, slots in per_input.items()]
            self.layers.append(LayerCost(node, macs, out, x, params))

    def fractions(self, unit_keep: np.ndarray) -> dict[str, float]:
        keep = unit_keep[self.cg.unit_of].astype(float)
        kept = np.bincount(self.cg.slot_of_element, weights=keep, minlength=len(self.cg.slot_list))
        return {s.tensor.name: kept[s.index] / s.size for s in self.cg.slot_list}

    def layer_after(self, layer: LayerCost, frac: dict[str, float]) -> tuple[float, float]:
        f = (frac[layer.out_slot] if layer.out_slot else 1.0) * (frac[layer.in_slot] if layer.in_slot else 1.0)
        params = sum(n * math.prod(frac[s] for s in slots) for n, slots in layer.params)
        return layer.macs * f, params

    def macs_after(self, unit_keep: np.ndarray) -> float:
        frac = self.fractions(unit_keep)
        removed = sum(layer.macs - self.layer_after(layer, frac)[0] for layer in self.layers)
        return self.total_macs - removed

    def group_costs(self, group: Group, unit_keep: np.ndarray, frac: dict[str, float] | None = None) -> dict[str, float]:
        frac = frac or self.fractions(unit_keep)
        names = set(group.slots)
        row = {"macs_before": 0.0, "macs_after": 0.0, "params_before": 0.0, "params_after": 0.0}
        for layer in self.layers:
            if layer.out_slot in names or layer.in_slot in names or any(names & set(s) for _, s in layer.params):
                macs, params = self.layer_after(layer, frac)
                row["macs_before"] += layer.macs
                row["macs_after"] += macs
                row["params_before"] += sum(n for n, _ in layer.params)
                row["params_after"] += params
        return {k: int(round(v)) for k, v in row.items()}


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
