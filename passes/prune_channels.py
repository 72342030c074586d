"""Structured channel pruning with dependency groups (lossy).

Removes whole channels so that the model stays a smaller *dense* model. The math, per group:

1. **Groups** (:mod:`onnxslim.pruning.groups`): every (tensor, channel axis) that must lose the
   same channels, found by propagating from each Conv/ConvTranspose/Gemm/MatMul output through
   BatchNormalization, activations, residual Add/Mul/Sub, Concat/Split/Slice, grouped and
   depthwise convolutions, pooling, Resize, Pad, Reshape/Flatten into Gemm/MatMul features,
   squeeze-excitation blocks and per-channel constants. Units (channels or channel blocks that
   go together) come from connected components of element-wise couplings.
2. **Importance** (:mod:`onnxslim.pruning.importance`): L1/L2 of the weights, BN gamma, or mean
   |activation| on calibration data, normalised per source and summed over the whole unit.
3. **Selection** (:mod:`onnxslim.pruning.select`): each group loses ``ratio`` of its units
   (per Concat/Split segment, rounded so channel counts stay multiples of ``round_to``); the
   ratio is global (``--prune R``), per group (a JSON file) or found by bisection for a MAC
   budget (``--prune-macs F``; the option ``shared_weight`` scales the ratio of groups written
   by several layers, i.e. residual streams: 0.5 helped MobileNetV2/EfficientNet-B0 and hurt
   ResNet-50 with reconstruction in tools/bench_prune.py, so the default stays 1, uniform).
4. **Rewrite** (:mod:`onnxslim.pruning.rewrite`): sliced weights, fixed ``group``/Split/Slice/
   Reshape/Resize, new shapes.
5. **Reconstruction** (:mod:`onnxslim.pruning.reconstruct`, with calibration data): the layer
   reading a pruned tensor is refit by least squares on the kept channels, bias included,
   when that lowers the error on held-out calibration batches.

Preconditions: shapes inferred (run after the cleanup pipeline). Never touches model inputs or
outputs, custom-domain nodes or tensors read inside subgraphs: a group reaching one of them, or
any op the rules do not understand, keeps those channels, and the report says why.
Options (``ctx.options["prune_channels"]``): ``ratio`` | ``macs`` | ``per_layer`` (dict name ->
ratio, ``"*"`` = default), ``criterion`` (l1, l2, bn, activation), ``round_to``, ``shared_weight``,
``reconstruct`` (None = when real calibration data is given), ``calib_samples``, ``positions``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from onnxslim.errors import UsageError
from onnxslim.graph import NameScope, export_model
from onnxslim.pipeline import Pass, PassContext, PassResult
from onnxslim.pruning.groups import LAYER_OPS, ChannelGraph, Group, discover
from onnxslim.pruning.importance import ActivationStats, fill_fallback, measured_slots, weight_scores
from onnxslim.pruning.reconstruct import GramCollector, Layer, dense_consumer, refit, write_back
from onnxslim.pruning.rewrite import Masks, apply_masks
from onnxslim.pruning.select import CostModel, Selector, ratio_for_macs

logger = logging.getLogger(__name__)


class PruneChannels(Pass):
    """Remove whole channels by dependency group (ratio, MAC budget or per-layer), optionally refitting the next layer."""

    name = "prune_channels"
    lossy = True

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        opts = ctx.options_for(self.name)
        if not (opts.get("ratio") or opts.get("macs") or opts.get("per_layer")):
            return PassResult(False)
        cg = discover(graph)
        if not cg.slots:
            ctx.decline(self.name, where="graph", reason="no Conv/Gemm/MatMul layer with constant weights")
            return PassResult(False)
        criterion = opts.get("criterion") or ("activation" if ctx.data.get("calibration") is not None else "l1")
        calibration, real = _calibration(graph, ctx, opts, criterion)
        flag = opts.get("reconstruct")
        reconstruct = real if flag is None else bool(flag)
        layers = _reconstruction_layers(cg) if reconstruct and calibration is not None else {}
        stats = ActivationStats(cg, measured_slots(cg)) if criterion == "activation" else None
        original = export_model(graph) if calibration is not None and (stats or layers) else None
        if original is not None:
            _collect(original, calibration, stats, layers, opts, ctx)
        scores, fell_back = _scores(cg, criterion, stats)
        selector = Selector(cg, scores, int(opts.get("round_to", 1)))
        cost = CostModel(graph, cg)
        unit_keep, ratio_note = _select(cg, selector, cost, opts)
        details = _group_rows(cg, cost, unit_keep, criterion, fell_back)
        for group in cg.groups:  # model inputs/outputs are expected; anything else is worth a note
            unusual = [r for r in group.reasons if not r.endswith(("is a model output", "is a model input"))]
            if unusual:
                ctx.decline(self.name, where=group.name, reason="; ".join(unusual[:3]))
        if unit_keep.all():
            return PassResult(False, {"groups": len(cg.groups), "groups_pruned": 0}, details)
        masks = Masks(cg, unit_keep[cg.unit_of])
        scope = NameScope(graph)
        apply_masks(graph, cg, masks, scope)
        refits = _reconstruct(graph, cg, masks, layers, scope) if layers else []
        macs_after = cost.macs_after(unit_keep)
        counters: dict[str, Any] = {
            "groups": len(cg.groups),
            "groups_pruned": sum(r["status"] == "pruned" for r in details),
            "groups_left_alone": sum(r["status"] == "left alone" for r in details),
            "channels_removed": int(sum(r["channels_before"] - r["channels_after"] for r in details)),
            "macs_before": int(cost.total_macs),
            "macs_after": int(macs_after),
            "layers_reconstructed": len({r["layer"] for r in refits if r.get("refit")}),
        }
        if ratio_note is not None:
            counters["ratio"] = round(ratio_note, 4)
        return PassResult(True, counters, details + refits)


# --------------------------------------------------------------------------------------------
# Steps


def _calibration(graph: gs.Graph, ctx: PassContext, opts: dict, criterion: str):
    from onnxslim.calibration import synthetic

    calibration = ctx.data.get("calibration")
    if calibration is not None:
        return calibration, not getattr(calibration, "synthetic", False)
    if criterion != "activation" and not opts.get("reconstruct"):
        return None, False
    count = int(opts.get("calib_samples", 32))
    logger.warning("prune_channels: NO CALIBRATION DATA (--calib-data): using %d synthetic random inputs for %s; "
                   "results will not reflect real data", count,
                   "activation importance" if criterion == "activation" else "reconstruction")
    return synthetic(export_model(graph), count, seed=int(ctx.data.get("seed", 0))), False


def _reconstruction_layers(cg: ChannelGraph) -> dict[str, list[Layer]]:
    """Dense consumers of slots with movable channels, by input tensor name."""
    layers: dict[str, list[Layer]] = {}
    for name, slot in cg.slots.items():
        if cg.frozen[cg.unit_of[slot.offset:slot.offset + slot.size]].all():
            continue
        for node in slot.tensor.outputs:
            if node.inputs and node.inputs[0] is slot.tensor and node.op in ("Conv", "Gemm", "MatMul"):
                layer = dense_consumer(node)
                if layer is not None and all(la.node is not node for la in layers.get(name, [])):
                    layers.setdefault(name, []).append(layer)
    return layers


def _collect(original, calibration, stats, layers, opts, ctx) -> None:
    from onnxslim.calibration import ActivationCollector

    names = list(stats.sums) if stats else []
    names += [n for n in layers if n not in names]
    grams = GramCollector(layers, int(opts.get("positions", 1024)), int(ctx.data.get("seed", 0)))
    collector = ActivationCollector(original, names)

    def observe(name: str, value: np.ndarray) -> None:
        if stats:
            stats.observe(name, value)
        grams.observe(name, value)

    collector.collect(calibration, observe, int(opts.get("batch_size", 8)))


def _scores(cg: ChannelGraph, criterion: str, stats: ActivationStats | None) -> tuple[np.ndarray, set[str]]:
    l1 = weight_scores(cg, "l1")
    if criterion in ("l1", "l2"):
        primary = l1 if criterion == "l1" else weight_scores(cg, "l2")
    elif criterion == "bn":
        primary = weight_scores(cg, "bn")
    else:
        primary = stats.scores()
    return fill_fallback(cg, primary, l1[0])


def _select(cg: ChannelGraph, selector: Selector, cost: CostModel, opts: dict) -> tuple[np.ndarray, float | None]:
    if opts.get("per_layer"):
        ratios = _resolve_per_layer(cg, opts["per_layer"])
        return selector.select(lambda g: ratios.get(g.name, 0.0)), None
    if opts.get("macs"):
        weight = _shared_weight(cg, float(opts.get("shared_weight", 1.0)))
        ratio, keep = ratio_for_macs(selector, cost, float(opts["macs"]), weight)
        return keep, ratio
    ratio = float(opts["ratio"])
    return selector.select(lambda g: ratio), None


def _shared_weight(cg: ChannelGraph, shared: float):
    """Ratio multiplier per group: ``shared`` for groups written by several layers (residual streams)."""
    writers = {g.name: sum(1 for n in g.slots if cg.slots[n].tensor.inputs and cg.slots[n].tensor.inputs[0].op in LAYER_OPS)
               for g in cg.groups}
    return lambda g: shared if writers[g.name] > 1 else 1.0


def _resolve_per_layer(cg: ChannelGraph, table: dict[str, float]) -> dict[str, float]:
    """Map keys (group names, layer names or tensor names; '*' = default) to group ratios."""
    owner: dict[str, str] = {}
    for group in cg.groups:
        owner[group.name] = group.name
        for name in group.slots:
            owner.setdefault(name, group.name)
            t = cg.slots[name].tensor
            if t.inputs and t.inputs[0].name:
                owner.setdefault(t.inputs[0].name, group.name)
    default = float(table.get("*", 0.0))
    ratios = {g.name: default for g in cg.groups}
    unknown = [k for k in table if k != "*" and k not in owner]
    if unknown:
        sample = ", ".join(g.name for g in cg.groups[:5])
        raise UsageError(f"--prune file names {unknown[0]!r}, which is no pruning group or layer of this model "
                         f"(groups: {sample}{', ...' if len(cg.groups) > 5 else ''})")
    for key, value in table.items():
        if key != "*":
            ratios[owner[key]] = float(value)
    return ratios


def _group_rows(cg: ChannelGraph, cost: CostModel, unit_keep: np.ndarray, criterion: str, fell_back: set[str]) -> list[dict]:
    frac = cost.fractions(unit_keep)
    rows = []
    for group in cg.groups:
        sizes = [cg.slots[n].size for n in group.slots]
        kept = [int(round(frac[n] * cg.slots[n].size)) for n in group.slots]
        movable = group.movable_units(cg.frozen)
        removed = int(np.count_nonzero(~unit_keep[group.units]))
        status = "pruned" if removed else ("left alone" if movable == 0 else "unchanged")
        used = f"{criterion} (fell back to l1: no {'BatchNormalization' if criterion == 'bn' else 'measurement'} in group)" \
            if group.name in fell_back and criterion != "l1" else criterion
        row = {"group": group.name, "status": status, "tensors": len(group.slots),
               "channels_before": max(sizes), "channels_after": max(kept),
               "units_before": int(group.units.size), "units_after": int(group.units.size) - removed,
               "criterion": used, **cost.group_costs(group, unit_keep, frac)}
        if group.reasons:
            row["reason"] = "; ".join(group.reasons[:3])
            row["frozen_units"] = int(group.units.size - movable)
        rows.append(row)
    return rows


def _reconstruct(graph: gs.Graph, cg: ChannelGraph, masks: Masks, layers: dict[str, list[Layer]], scope: NameScope) -> list[dict]:
    rows = []
    for name, consumers in layers.items():
        in_keep = masks.of(name)
        if in_keep.all():
            continue
        for layer in consumers:
            out_mask = masks.of(layer.node.outputs[0].name)
            out_keep = out_mask if out_mask is not None else np.ones(layer.weight.shape[0], dtype=bool)
            result = refit(layer, in_keep, out_keep)
            if result is not None:
                write_back(graph, layer, result[0], result[1], scope)
            rows.append({"layer": layer.node.name, "refit": result is not None, **layer.result})
            layer.fit = layer.val = None  # free the Grams as we go
    return rows
