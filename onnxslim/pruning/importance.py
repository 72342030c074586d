"""Channel importance, per element, aggregated over whole units.

Criteria:

* ``l1`` / ``l2``: the L1 / L2 norm of every weight slice a channel owns, over every layer of
  the group: a producer's filter (output side) and a consumer's input column (input side).
* ``bn``: |gamma| of every BatchNormalization in the group. Groups without one (BN folded into
  the convolution by ``fuse_conv_bn``) fall back to ``l1``; the report says so.
* ``activation``: mean |activation| per channel of every tensor in the group that a dense layer
  reads, measured on calibration data (streamed by one ActivationCollector session).

Each source (one weight, one tensor) is divided by its own mean before summing, so that layers
of different scales weigh alike; a unit's score is the sum over its elements.
"""

from __future__ import annotations

import numpy as np

from onnxslim.graph import constant_value
from onnxslim.pruning.groups import ChannelGraph
from onnxslim.pruning.params import param_slices
from onnxslim.pruning.rewrite import touched_nodes

CRITERIA = ("l1", "l2", "bn", "activation")


def _normalized(values: np.ndarray) -> np.ndarray:
    mean = float(values.mean()) if values.size else 0.0
    return values / mean if mean > 0 else values


def weight_scores(cg: ChannelGraph, criterion: str) -> tuple[np.ndarray, np.ndarray]:
    """Element scores and, per element, whether any source scored it (for fallbacks)."""
    scores = np.zeros(cg.elements)
    seen = np.zeros(cg.elements, dtype=bool)
    for node in touched_nodes(cg, list(cg.slots)):
        for ps in param_slices(node, cg.slots):
            if criterion == "bn":
                if node.op != "BatchNormalization" or ps.input_index != 1:
                    continue
            elif ps.role not in ("out", "in") or ps.input_index != 1:
                continue
            w = np.moveaxis(np.asarray(constant_value(node.inputs[ps.input_index]), dtype=np.float64), ps.axis, 0)
            w = w.reshape(w.shape[0], -1)
            norm = np.sqrt((w * w).sum(1)) if criterion == "l2" else np.abs(w).sum(1)
            slot = cg.slots[ps.slot]
            scores[slot.offset:slot.offset + slot.size] += _normalized(norm)
            seen[slot.offset:slot.offset + slot.size] = True
    return scores, seen


def measured_slots(cg: ChannelGraph) -> list[str]:
    """Slots read by a dense layer as its input channels: what the next layer sees."""
    names = []
    for node in touched_nodes(cg, list(cg.slots)):
        for ps in param_slices(node, cg.slots):
            if ps.role == "in" and ps.slot not in names:
                names.append(ps.slot)
    return names


class ActivationStats:
    """Streaming mean |x| per channel for chosen slots; an ActivationCollector observer."""

    def __init__(self, cg: ChannelGraph, names: list[str]):
        self.cg = cg
        self.sums = {n: np.zeros(cg.slots[n].size) for n in names}
        self.counts = dict.fromkeys(names, 0)

    def observe(self, name: str, value: np.ndarray) -> None:
        if name not in self.sums:
            return
        axis = self.cg.slots[name].axis
        x = np.moveaxis(np.abs(np.asarray(value, dtype=np.float32)), axis, 0).reshape(self.cg.slots[name].size, -1)
        with np.errstate(over="ignore", invalid="ignore"):
            self.sums[name] += x.sum(1, dtype=np.float64)
        self.counts[name] += x.shape[1]

    def scores(self) -> tuple[np.ndarray, np.ndarray]:
        scores = np.zeros(self.cg.elements)
        seen = np.zeros(self.cg.elements, dtype=bool)
        for name, total in self.sums.items():
            if not self.counts[name] or not np.isfinite(total).all():  # overflowed: not a measurement
                continue
            slot = self.cg.slots[name]
            scores[slot.offset:slot.offset + slot.size] += _normalized(total / self.counts[name])
            seen[slot.offset:slot.offset + slot.size] = True
        return scores, seen


def unit_scores(cg: ChannelGraph, element_scores: np.ndarray) -> np.ndarray:
    return np.bincount(cg.unit_of, weights=element_scores, minlength=cg.frozen.size)


def fill_fallback(cg: ChannelGraph, primary: tuple[np.ndarray, np.ndarray], fallback: np.ndarray) -> tuple[np.ndarray, set[str]]:
    """Unit scores from ``primary``; groups it did not score at all use ``fallback`` (named in the result)."""
    scores, seen = primary
    units_primary = unit_scores(cg, scores)
    units_fallback = unit_scores(cg, fallback)
    seen_units = np.bincount(cg.unit_of, weights=seen.astype(float), minlength=cg.frozen.size) > 0
    out = units_primary.copy()
    fell_back = set()
    for group in cg.groups:
        if not seen_units[group.units].any():
            out[group.units] = units_fallback[group.units]
            fell_back.add(group.name)
    return out, fell_back
