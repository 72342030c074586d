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
any op the rules do not understand, keeps those channels, and the report says why. A constant
shared by several layers (one initializer, two Convs) is sliced once per distinct slice its
readers need; groups whose slices would differ so that the copies outgrow the original are left
alone with a warning: pruning never adds parameters.
Options (``ctx.options["prune_channels"]``): ``ratio`` | ``macs`` | ``per_layer`` (dict name ->
ratio, ``"*"`` = default), ``criterion`` (l1, l2, bn, activation), ``round_to``, ``shared_weight``,
``reconstruct`` (None = when real calibration data is given), ``calib_samples``, ``positions``.
No amount at all is a UsageError; an amount of 0, a ratio too small for every group, every group
left alone, an unreachable MAC target and an explicit ``bn``/``activation`` criterion that some
groups cannot use are warnings. The pass prunes a graph once (a second run in the same pipeline,
e.g. ``--passes ...,prune_channels`` with ``--prune``, warns and does nothing). Calibration
activations that overflow skip the refit of the layers reading them (warning; the row says so).

Report: one row per group (see :func:`_group_rows` for ``status``, ``channels_*`` and how
``macs_*``/``params_*`` are attributed) and one per refit layer. Counters: ``groups``,
``groups_pruned``, ``groups_left_alone`` (fully frozen), ``channels_removed`` (sum of the rows'
``channels_before - channels_after``), ``macs_before``/``macs_after`` (the whole model),
``params_removed`` (constants the pruning sliced, each counted once), ``layers_reconstructed``,
``ratio`` (the ratio ``--prune-macs`` found).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from onnxslim.errors import UsageError
from onnxslim.graph import NameScope, export_model
from onnxslim.pipeline import Pass, PassContext, PassResult
from onnxslim.pruning.groups import LAYER_OPS, ChannelGraph, discover, feature_blocks
from onnxslim.pruning.importance import ActivationStats, fill_fallback, measured_slots, weight_scores
from onnxslim.pruning.reconstruct import GramCollector, Layer, dense_consumer, refit, write_back
from onnxslim.pruning.rewrite import Masks, apply_masks
from onnxslim.pruning.select import CostModel, Selector, ratio_for_macs
from onnxslim.svd.collect import fitting_batches, ort_failure

logger = logging.getLogger(__name__)


_APPLIED = "_onnxslim_prune_channels_applied"  # marks a graph this pass pruned (it runs once per graph)


class PruneChannels(Pass):
    """Remove whole channels by dependency group (ratio, MAC budget or per-layer), optionally refitting the next layer."""

    name = "prune_channels"
    lossy = True

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        opts = ctx.options_for(self.name)
        if not opts or not any(k in opts for k in ("ratio", "macs", "per_layer")):
            raise UsageError("prune_channels needs an amount: use --prune RATIO (or a JSON file of ratios) "
                             "or --prune-macs FRACTION")
        if not _requested(opts):
            logger.warning("prune_channels: the pruning amount is 0 (%s): nothing to prune; the model is left as it is",
                           "every ratio in the --prune file" if opts.get("per_layer") else
                           "--prune-macs 0" if "macs" in opts and opts.get("macs") is not None else "--prune 0")
            return PassResult(False)
        if graph.__dict__.get(_APPLIED):  # e.g. --passes ...,prune_channels together with --prune
            logger.warning("prune_channels: already applied to this model in this pipeline; it runs once "
                           "(leave prune_channels out of --passes when --prune or --prune-macs is given)")
            return PassResult(False)
        cg = discover(graph)
        if not cg.slots:
            ctx.decline(self.name, where="graph", reason="no Conv/Gemm/MatMul layer with constant weights")
            logger.warning("prune_channels: nothing to prune: the model has no Conv/Gemm/MatMul layer with constant weights")
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
        unit_keep, ratio_note = _keep_shared_whole(cg, selector, cost, opts, ctx, unit_keep, ratio_note)
        _warn_fallback(cg, criterion, fell_back, explicit=opts.get("criterion") is not None)
        details = _group_rows(graph, cg, cost, unit_keep, criterion, fell_back)
        for group in cg.groups:  # model inputs/outputs are expected; anything else is worth a note
            unusual = [r for r in group.reasons if not r.endswith(("is a model output", "is a model input"))]
            if unusual:
                ctx.decline(self.name, where=group.name, reason="; ".join(unusual[:3]))
        if unit_keep.all():
            _warn_nothing_removed(cg, opts)
            return PassResult(False, {"groups": len(cg.groups), "groups_pruned": 0}, details)
        if opts.get("macs"):
            reached = 1.0 - cost.macs_after(unit_keep) / max(1, cost.total_macs)
            if reached + 1e-9 < float(opts["macs"]):
                logger.warning("prune_channels: --prune-macs %g cannot be reached: %.1f%% of the MACs removed (every other "
                               "channel is left alone or is the last of its group)", float(opts["macs"]), 100 * reached)
        params_before, params_after = cost.params(unit_keep)
        masks = Masks(cg, unit_keep[cg.unit_of])
        scope = NameScope(graph)
        apply_masks(graph, cg, masks, scope)
        refits = _reconstruct(graph, cg, masks, layers, scope) if layers else []
        macs_after = cost.macs_after(unit_keep)
        counters: dict[str, Any] = {
            "groups": len(cg.groups),
            "groups_pruned": sum(r["status"] == "pruned" for r in details),
            "groups_left_alone": sum(1 for g in cg.groups if g.movable_units(cg.frozen) == 0),
            "channels_removed": int(sum(r["channels_before"] - r["channels_after"] for r in details)),
            "macs_before": int(cost.total_macs),
            "macs_after": int(macs_after),
            "params_removed": int(params_before - params_after),
            "layers_reconstructed": len({r["layer"] for r in refits if r.get("refit")}),
        }
        if ratio_note is not None:
            counters["ratio"] = round(ratio_note, 4)
        graph.__dict__[_APPLIED] = True
        return PassResult(True, counters, details + refits)


# --------------------------------------------------------------------------------------------
# Steps


def _requested(opts: dict) -> bool:
    """Whether the options ask for any pruning at all (``--prune 0`` does not)."""
    if opts.get("per_layer"):
        return any(float(v) > 0 for v in opts["per_layer"].values())
    return bool(opts.get("ratio") or opts.get("macs"))


def _calibration(graph: gs.Graph, ctx: PassContext, opts: dict, criterion: str):
    from onnxslim.calibration import synthetic
    from onnxslim.calibration.data import fixed_batch, model_inputs

    calibration = ctx.data.get("calibration")
    if calibration is not None:
        return calibration, not getattr(calibration, "synthetic", False)
    if criterion != "activation" and not opts.get("reconstruct"):
        return None, False
    count = int(opts.get("calib_samples", 32))
    logger.warning("prune_channels: NO CALIBRATION DATA (--calib-data): using %d synthetic random inputs for %s; "
                   "results will not reflect real data", count,
                   "activation importance" if criterion == "activation" else "reconstruction")
    model = export_model(graph)
    batch = fixed_batch(model_inputs(model)) or 1
    return synthetic(model, -(-count // batch) * batch, seed=int(ctx.data.get("seed", 0))), False


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
    size = collector.fixed_batch or int(opts.get("batch_size", 8))

    def observe(name: str, value: np.ndarray) -> None:
        if stats:
            stats.observe(name, value)
        grams.observe(name, value)

    try:  # a fixed-batch model only takes whole batches: the rest is left out
        collector.collect(fitting_batches(calibration, size, collector.fixed_batch is not None, "prune_channels"), observe)
    except Exception as exc:
        error = ort_failure(exc, "prune_channels")
        if error is exc:
            raise
        raise error from None


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


def _keep_shared_whole(cg: ChannelGraph, selector: Selector, cost: CostModel, opts: dict, ctx: PassContext,
                       unit_keep: np.ndarray, ratio_note: float | None) -> tuple[np.ndarray, float | None]:
    """Leave alone the groups that would slice a shared constant (one initializer read by several
    layers) differently for its readers: each would need its own copy and the model would grow.
    Readers that need the same slice share one sliced copy (see rewrite), so only growth counts."""
    for _ in range(len(cg.groups) + 1):
        growing = cost.shared_growth(unit_keep)
        if not growing:
            break
        for constant, growth, groups in growing:
            readers = ", ".join(sorted({n.name or n.op for n, _ in constant.readers}))
            reason = (f"{constant.tensor.name!r} is shared by {readers}, which would need different channels removed "
                      f"(the model would grow by {int(growth)} parameters)")
            logger.warning("prune_channels: %s: group(s) %s left alone", reason, ", ".join(sorted(groups)))
            for group in cg.groups:
                if group.name in groups:
                    cg.frozen[group.units] = True
                    group.reasons.append(reason)
        unit_keep, ratio_note = _select(cg, selector, cost, opts)
    return unit_keep, ratio_note


def _warn_fallback(cg: ChannelGraph, criterion: str, fell_back: set[str], explicit: bool) -> None:
    """--prune-criterion bn/activation that some prunable groups cannot use: they use l1, said once."""
    if criterion not in ("bn", "activation") or not explicit:
        return
    movable = [g.name for g in cg.groups if g.name in fell_back and g.movable_units(cg.frozen)]
    if not movable:
        return
    if criterion == "bn":
        why = ("no BatchNormalization is left in the model (the cleanup folds it into the convolutions; add "
               "--skip fuse_conv_bn to keep it)" if not any(n.op == "BatchNormalization" for n in _nodes(cg))
               else "no BatchNormalization reads their channels")
    else:
        why = "no layer reading their channels was measured on the calibration data (or the values overflowed)"
    logger.warning("prune_channels: --prune-criterion %s: %d of %d prunable group(s) (e.g. %r) fall back to l1: %s",
                   criterion, len(movable), sum(1 for g in cg.groups if g.movable_units(cg.frozen)), movable[0], why)


def _nodes(cg: ChannelGraph) -> list[gs.Node]:
    seen: dict[int, gs.Node] = {}
    for slot in cg.slots.values():
        for node in [*slot.tensor.inputs, *slot.tensor.outputs]:
            seen.setdefault(id(node), node)
    return list(seen.values())


def _warn_nothing_removed(cg: ChannelGraph, opts: dict) -> None:
    """A request that removes no channel: say why instead of writing an unchanged model silently."""
    movable = [g for g in cg.groups if g.movable_units(cg.frozen)]
    if not movable:
        reasons = [r for g in cg.groups for r in g.reasons]
        logger.warning("prune_channels: nothing could be pruned: every channel group is left alone (e.g. %s)",
                       reasons[0] if reasons else "no group")
        return
    what = f"--prune-macs {opts['macs']:g}" if opts.get("macs") else (
        "the --prune file's ratios" if opts.get("per_layer") else f"--prune {float(opts.get('ratio', 0)):g}")
    smallest = min(g.movable_units(cg.frozen) for g in movable)
    logger.warning("prune_channels: %s removes no channel: the prunable groups are too small for it (the smallest has "
                   "%d prunable unit(s)%s); the model is left as it is", what, smallest,
                   f", --prune-round-to {opts['round_to']}" if int(opts.get("round_to", 1)) > 1 else "")


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


def _group_rows(graph: gs.Graph, cg: ChannelGraph, cost: CostModel, unit_keep: np.ndarray, criterion: str,
                fell_back: set[str]) -> list[dict]:
    """One report row per group.

    ``status``: ``pruned`` (the group lost channels), ``inputs pruned`` (its channels stay, but
    its layers read channels another group lost, so their MACs/parameters dropped), ``unchanged``
    (prunable, but the ratio removed nothing) or ``left alone`` (frozen; ``reason`` says why).
    Only ``pruned`` and ``inputs pruned`` rows have after != before.
    ``channels_before/after``: channels of the group's widest tensor, counted as channels of the
    layer that writes them: a tensor flattened into Gemm/MatMul features counts each channel
    once, not once per feature (the reader then loses channels x H x W input features);
    ``units_*``: what is kept or removed as a whole (one channel, or one group of a grouped Conv).
    ``macs_*``/``params_*``: every layer and every constant is counted in exactly one row (see
    :class:`CostModel`), so the rows add up to the pass's totals.
    """
    frac = cost.fractions(unit_keep)
    blocks = feature_blocks(graph, cg)
    costs = cost.group_rows(unit_keep)
    rows = []
    for group in cg.groups:
        before = [cg.slots[n].size / blocks[n] for n in group.slots]
        after = [frac[n] * cg.slots[n].size / blocks[n] for n in group.slots]
        movable = group.movable_units(cg.frozen)
        removed = int(np.count_nonzero(~unit_keep[group.units]))
        numbers = costs[group.name]
        touched = numbers["macs_after"] != numbers["macs_before"] or numbers["params_after"] != numbers["params_before"]
        status = "pruned" if removed else ("inputs pruned" if touched else ("left alone" if movable == 0 else "unchanged"))
        used = f"{criterion} (fell back to l1: no {'BatchNormalization' if criterion == 'bn' else 'measurement'} in group)" \
            if group.name in fell_back and criterion != "l1" else criterion
        row = {"group": group.name, "status": status, "tensors": len(group.slots),
               "channels_before": int(round(max(before))), "channels_after": int(round(max(after))),
               "units_before": int(group.units.size), "units_after": int(group.units.size) - removed,
               "criterion": used, **numbers}
        if group.reasons:
            row["reason"] = "; ".join(group.reasons[:3])
            row["frozen_units"] = int(group.units.size - movable)
        rows.append(row)
    return rows


def _reconstruct(graph: gs.Graph, cg: ChannelGraph, masks: Masks, layers: dict[str, list[Layer]], scope: NameScope) -> list[dict]:
    rows = []
    overflow = []
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
            elif "overflow" in str(layer.result.get("reconstruction", "")):
                overflow.append(layer.node.name)
            rows.append({"layer": layer.node.name, "refit": result is not None, **layer.result})
            layer.fit = layer.val = None  # free the Grams as we go
    if overflow:
        logger.warning("prune_channels: reconstruction skipped for %d layer(s) (e.g. %r): their calibration activations "
                       "overflow (huge values in --calib-data?); their weights are only sliced", len(overflow), overflow[0])
    return rows
