"""insert_qdq: INT8 post-training quantization with QuantizeLinear/DequantizeLinear pairs.

Math: a tensor ``x`` is replaced by ``DQ(Q(x)) = s * (clamp(round(x / s) + z, qmin, qmax) - z)``
with a per-tensor scale ``s`` and zero point ``z`` from its calibrated range; constant weights by
symmetric per-channel int8 ``s_c * W_q`` (exact DQ of stored int8 values); biases, where the
target wants it, by int32 values on the scale ``s_x * s_w``. The model computes the same function
up to these rounding errors, which the pipeline measures on held-out samples (``lossy = True``).

Where pairs go and with which integer types is decided by the (target, device) placement rules
(:mod:`onnxslim.quantization.rules`); ranges come from one streaming pass over the calibration
samples (:mod:`onnxslim.quantization.calibrate`) and a method per tensor (minmax, percentile,
entropy, mse). With real calibration data, each layer's mean weight-rounding error
``(W_q - W) E[x]`` is subtracted from its bias (bias correction); ``rounding="gptq"`` chooses the
int8 codes that minimise each layer's output error on calibration inputs instead of rounding to
nearest (:mod:`onnxslim.quantization.rounding`; both read input moments gathered on the first
calibration samples of the same runs, :mod:`onnxslim.quantization.moments`). With ``max_error``,
the most sensitive layers fall back to float until the budget holds on held-out samples
(:mod:`onnxslim.quantization.sensitivity`).

Preconditions: a float32 model at opset >= 10 (per-channel weights need opset >= 13) that is not
already quantized (Q/DQ or integer ops present -> UsageError). Nodes in non-default domains and
inside subgraphs are left in float. Options: ``ctx.options["insert_qdq"]``, see
:class:`onnxslim.quantization.options.QuantOptions`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Callable, Mapping

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import version_converter

from onnxslim.calibration import CalibrationSet, synthetic
from onnxslim.errors import UsageError
from onnxslim.graph import NameScope, export_model, import_model, opset
from onnxslim.passes.fuse_hardswish import HARDSWISH_OPSET, fuse_hardsigmoid_products, has_hardsigmoid_products
from onnxslim.pipeline import Pass, PassContext, PassResult
from onnxslim.quantization.calibrate import Rider, collect_stats, merged
from onnxslim.quantization.emit import Emitter, QParams, activation_params
from onnxslim.quantization.histogram import TensorStats
from onnxslim.quantization.methods import AUTO, METHODS, MethodSpec, effective_method, select_range
from onnxslim.quantization.moments import MomentObserver, plan_layouts
from onnxslim.quantization.options import QuantOptions, compile_pattern
from onnxslim.quantization.plan import QuantPlan, exclusion_matcher, make_plan, unmatched_exclusions
from onnxslim.quantization.rounding import WeightRounder
from onnxslim.quantization.rules import FOLDABLE_ACTIVATIONS, PlacementRules, rules_for
from onnxslim.quantization.sensitivity import FidelityProbe, find_fallback, single_layer_exclusions

logger = logging.getLogger(__name__)

QUANTIZED_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
    "ConvInteger", "MatMulInteger", "QLinearAdd", "QLinearMul", "QLinearConcat", "QLinearAveragePool",
    "QLinearGlobalAveragePool", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax", "QGemm",
    "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QAttention", "QOrderedMatMul", "MatMulNBits",
})


def check_not_quantized(graph: gs.Graph) -> None:
    """UsageError when the graph already holds Q/DQ or integer (QOperator) ops."""
    found: dict[str, int] = {}
    for node in graph.nodes:
        if node.op in QUANTIZED_OPS:
            found[node.op] = found.get(node.op, 0) + 1
    if found:
        listed = ", ".join(f"{n} {op}" for op, n in sorted(found.items(), key=lambda kv: -kv[1])[:4])
        raise UsageError(f"the model is already quantized ({listed}); quantize the float model instead")


class InsertQdq(Pass):
    """INT8 quantization: calibrate activations, insert Q/DQ pairs where the target fuses them."""

    name = "insert_qdq"
    lossy = True

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        check_not_quantized(graph)
        if opset(graph) < 10:
            raise UsageError(f"INT8 quantization needs opset >= 10 (the model has {opset(graph)}); convert it first")
        opts = QuantOptions.from_dict(ctx.options_for(self.name))
        rules = rules_for(ctx.target, ctx.device).with_extra_ops(opts.extra_ops)
        raised, hardswish = _raise_opset_for_per_channel(graph, rules)
        _name_nodes(graph)
        aliases = _aliases(graph)
        _check_patterns(graph, opts, aliases)
        excluded = exclusion_matcher(opts.exclude)
        plan = make_plan(graph, rules, excluded)
        if not plan.layers:
            reason = "no quantizable layer (float32 Conv/Gemm/MatMul) found"
            if plan.skipped:
                reason = f"every quantizable layer is left in float ({_why(plan.skipped)})"
            logger.warning("insert_qdq: nothing quantized: %s", reason)
            ctx.decline(self.name, where="graph", reason=reason)
            return PassResult(bool(raised), {"int8_layers": 0, "opset_raised_to": raised, "hardswish_fused": hardswish})
        reference = export_model(graph.copy())
        # Decoding the graph's (lazily loaded) weights is model loading, which weight quantization
        # needs anyway: it is done before the calibration clock starts.
        weights = _weight_arrays(graph)
        start = time.perf_counter()
        observed = _observation_set(graph, rules, excluded, plan, opts)
        calibration = _calibration_set(ctx, reference, opts)
        rider, make_rounder = _weight_rounding(graph, plan, calibration, opts) or (None, None)
        stats, samples = collect_stats(reference, observed, calibration, bins=opts.bins,
                                       histogram=_needs_histogram(observed, plan, opts, aliases),
                                       batch_size=opts.batch_size, progress=opts.progress,
                                       sample_cap=opts.histogram_sample, riders=[rider] if rider else [],
                                       weights=weights)
        del weights  # the float weights must not outlive their replacement by quantized ones
        rounder = make_rounder() if make_rounder else None
        rounding_samples, moments_seconds = (rider.seen, rider.seconds) if rider else (0, 0.0)
        ranges_start = time.perf_counter()
        choice: list[dict] = []
        probe = None
        if opts.method.name == AUTO:  # statistics are method-free: the choice is timed apart from calibration
            calib_seconds, range_seconds = time.perf_counter() - start, 0.0
            choice_start = time.perf_counter()
            probe = FidelityProbe(reference, _holdout(ctx, reference, "--calib-method auto"))
            opts, ranges, choice = _choose_method(graph, plan, stats, rules, opts, aliases, excluded, probe, rounder)
            choice_seconds = time.perf_counter() - choice_start
        else:
            ranges = _RangeBook(stats, plan, rules, opts, aliases)
            for members in plan.groups().values():
                ranges.group_range(members, plan.derived)  # the method's range search is part of calibration (results are cached)
            calib_seconds = time.perf_counter() - start
            range_seconds = time.perf_counter() - ranges_start
        if probe is None and opts.max_error is not None:
            probe = FidelityProbe(reference, _holdout(ctx, reference, "--quant-max-error"))
        del reference  # the float model's weights are not needed any more

        fallback: list[str] = []
        details: list[dict] = []
        if opts.max_error is not None:

            def build(extra: frozenset) -> onnx.ModelProto:
                return _candidate(graph, rules, lambda n: excluded(n) or n.name in extra, ranges, opts, rounder)

            result = find_fallback(build, plan.layers, probe, opts.max_error)
            fallback = result.fallback
            ops = {n.name: n.op for n in graph.nodes}
            details += [{"detail": "sensitivity", "op": ops.get(r["layer"]), **r} for r in result.rows]
            details.append({"detail": "budget", "budget": str(opts.max_error), "met": result.met,
                            "cosine_before": result.before.cosine, "sqnr_before_db": result.before.sqnr_db,
                            "cosine_after": result.after.cosine, "sqnr_after_db": result.after.sqnr_db})
            if not result.met:
                logger.warning("insert_qdq: the budget %s is not met even with every layer in float", opts.max_error)
            if fallback:
                chosen = set(fallback)
                plan = make_plan(graph, rules, lambda n: excluded(n) or n.name in chosen)
                for row in plan.skipped:
                    if row["layer"] in chosen and row["reason"] == "excluded":
                        row["reason"] = f"fallback: among the most sensitive layers for {opts.max_error}"
                if not plan.layers:
                    logger.warning("insert_qdq: every int8 layer fell back to float for %s: the output is the float model",
                                   opts.max_error)

        params = ranges.params(plan)
        if not rules.float_layers_read_per_axis_dq:
            _warn_ineffective_exclusions(graph, plan, excluded)
        emitter = Emitter(graph, plan, params, rules, not opts.keep_activations, rounder)
        counters = emitter.emit()
        for note in emitter.notes:
            ctx.decline(self.name, where=note["where"], reason=note["reason"])
        details = (ranges.rows(plan, params) + emitter.rounding_rows + [{"detail": "float_layer", **s} for s in plan.skipped]
                   + choice + details)
        details += [{"detail": "fallback", "layer": name, "reason": f"most sensitive layers kept in float for {opts.max_error}"}
                    for name in fallback]
        counters.update({"opset_raised_to": raised, "hardswish_fused": hardswish, "fallback_layers": len(fallback), "tensors_calibrated": len(observed),
                         "calib_samples": samples, "calib_seconds": round(calib_seconds, 3),
                         "range_seconds": round(range_seconds, 3)})
        if choice:
            counters["method_choice_seconds"] = round(choice_seconds, 3)
        if rounder is not None:
            counters.update({"rounding_samples": rounding_samples, "moments_seconds": round(moments_seconds, 3),
                             "rounding_seconds": round(rounder.seconds, 3)})
        return PassResult(counters["qdq_pairs"] + counters["weights_quantized"] > 0, counters, details)


# --------------------------------------------------------------------------------------------
# Helpers


def _name_nodes(graph: gs.Graph) -> None:
    """Give unnamed and same-named nodes unique names: the plan refers to layers by name."""
    scope = NameScope(graph)
    seen: set[str] = set()
    for node in graph.nodes:
        if not node.name or node.name in seen:
            node.name = scope.fresh(f"{node.op}_{len(seen)}")
        seen.add(node.name)


def _candidate(graph: gs.Graph, rules: PlacementRules, excluded, ranges: "_RangeBook", opts: QuantOptions,
               rounder: WeightRounder | None) -> onnx.ModelProto:
    """A quantized copy of ``graph`` (left as it is) with nodes matching ``excluded`` in float, for
    scoring on held-out samples (--calib-method auto, --quant-max-error)."""
    copy = graph.copy()
    plan = make_plan(copy, rules, excluded)
    Emitter(copy, plan, ranges.params(plan), rules, not opts.keep_activations, rounder).emit()
    return export_model(copy)


def _choose_method(graph: gs.Graph, plan: QuantPlan, stats: dict[str, TensorStats], rules: PlacementRules,
                   opts: QuantOptions, aliases: dict, excluded, probe: FidelityProbe, rounder: WeightRounder | None
                   ) -> tuple[QuantOptions, "_RangeBook", list[dict]]:
    """``--calib-method auto``: every method's ranges from the same statistics (one calibration pass),
    each quantized model scored on the held-out samples; the best cosine (then SQNR) is kept.
    Per-tensor overrides still apply. Returns (options with the chosen method, its ranges, one
    ``method_choice`` report row per method)."""
    rows, best = [], None
    for name in METHODS:
        candidate = dataclasses.replace(opts, method=MethodSpec(name, opts.method.percentile))
        book = _RangeBook(stats, plan, rules, candidate, aliases)
        score = probe.score(_candidate(graph, rules, excluded, book, opts, rounder))
        rows.append({"detail": "method_choice", "method": name, "cosine": score.cosine, "sqnr_db": score.sqnr_db,
                     "held_out": len(probe.feeds), "chosen": False})
        if best is None or (score.cosine, score.sqnr_db) > best[0]:
            best = ((score.cosine, score.sqnr_db), candidate, book, len(rows) - 1)
    _, chosen, book, index = best
    rows[index]["chosen"] = True
    logger.info("insert_qdq: --calib-method auto chose %s (%s)", chosen.method.name,
                ", ".join(f"{r['method']} cosine {r['cosine']:.5f}" for r in rows))
    return chosen, book, rows


def _raise_opset_for_per_channel(graph: gs.Graph, rules: PlacementRules) -> tuple[int, int]:
    """Per-channel DequantizeLinear needs opset 13: convert an opset 10-12 graph in place. A graph
    with ``x * HardSigmoid(x)`` products (fuse_hardswish's spelling below 14) goes to 14 instead,
    where each becomes one HardSwish, when the rules allow it. Returns (opset raised to, or 0;
    HardSwish nodes made)."""
    if not rules.per_channel or opset(graph) >= 13:
        return 0, 0
    targets = [13]
    if rules.hardswish_opset and has_hardsigmoid_products(graph):
        targets.insert(0, HARDSWISH_OPSET)
    for target in targets:
        try:
            converted = version_converter.convert_version(export_model(graph.copy()), target)
            break
        except Exception as exc:  # the converter raises several types; per-tensor weights still work
            failure = exc
    else:
        logger.warning("insert_qdq: cannot convert opset %d to 13 (%s); weights will be per-tensor", opset(graph), failure)
        return 0, 0
    new = import_model(converted)
    graph.nodes, graph.inputs, graph.outputs = new.nodes, new.inputs, new.outputs
    graph.opset, graph.import_domains = new.opset, new.import_domains
    fused = fuse_hardsigmoid_products(graph)
    logger.info("insert_qdq: opset raised to %d for per-channel weights%s", target,
                f" ({fused} HardSwish)" if fused else "")
    return target, fused


def _observation_set(graph: gs.Graph, rules: PlacementRules, excluded, plan: QuantPlan, opts: QuantOptions) -> list[str]:
    """Tensors to calibrate: the plan's, plus (with a budget) those any single-layer plan needs."""
    names = dict.fromkeys(plan.observed)
    if opts.max_error is not None:  # the single-layer plans find_fallback will build
        for _, others in single_layer_exclusions(plan.layers):
            sub = make_plan(graph, rules, lambda n, others=others: excluded(n) or n.name in others)
            names.update(dict.fromkeys(sub.observed))
    return list(names)


def _weight_rounding(graph: gs.Graph, plan: QuantPlan, calibration: CalibrationSet,
                     opts: QuantOptions) -> tuple[Rider, Callable[[], WeightRounder]] | None:
    """GPTQ rounding and/or bias correction: the input moments of the planned weights, gathered on the
    calibration runs over the first samples (a rider: no second session or inference pass)."""
    gptq = opts.rounding == "gptq"
    correct = opts.corrects_bias(bool(getattr(calibration, "synthetic", False)))
    if not (gptq or correct):
        return None
    observer = MomentObserver(plan_layouts(graph, plan), opts.rounding_max_width if gptq else 0,
                              samples=opts.moment_samples)
    rider = Rider(observer.tensors, observer.observe, opts.moment_samples, observer.batch_axes, blocked_ok=True)
    return rider, lambda: WeightRounder(observer.moments(), gptq, correct)


def _needs_histogram(observed: list[str], plan: QuantPlan, opts: QuantOptions, aliases: dict) -> set[str]:
    """Observed tensors whose range a histogram method sets: by their own method, or by that of a
    tensor sharing their scale (an override on any member decides its group's method)."""
    def method(name: str):
        return _method(opts, aliases.get(name, (name,)))

    out = {name for name in observed if method(name).name != "minmax"}
    for members in plan.groups().values():
        if any(method(m).name != "minmax" for m in members):
            for m in members:
                seen: set[str] = set()
                while m not in seen:  # the member and the tensors it derives its values from
                    seen.add(m)
                    out.add(m)
                    m = plan.derived.get(m, m)
    return out & set(observed)


def _method(opts: QuantOptions, names: tuple[str, ...]):
    """The method of the first override matching any of ``names`` (a tensor's :func:`_aliases`)."""
    for o in opts.overrides:
        if any(o.matches(n) for n in names):
            return o.method
    return opts.method


def _aliases(graph: gs.Graph) -> dict[str, tuple[str, ...]]:
    """The names a --calib-override may give a tensor: the tensor, its producer node and, back
    through the ReLU/Clip nodes its quantization folds (``Conv -> Relu -> Q``), the tensors and
    nodes before them: ``conv1=minmax`` reaches the Q that follows conv1's folded ReLU."""
    out = {}
    for name, tensor in graph.tensors().items():
        names, t = [name], tensor
        while t.inputs:
            node = t.inputs[0]
            names.append(node.name)
            if node.op not in FOLDABLE_ACTIVATIONS or not node.inputs or len(node.inputs[0].outputs) != 1:
                break
            t = node.inputs[0]
            names.append(t.name)
        out[name] = tuple(dict.fromkeys(n for n in names if n))
    return out


def _check_patterns(graph: gs.Graph, opts: QuantOptions, aliases: dict) -> None:
    """--exclude and --calib-override patterns that match nothing: a typo when the pattern is not
    even a valid regex (UsageError), else a warning (cleanup may have fused the node it names)."""
    for p in unmatched_exclusions(opts.exclude, graph):
        if compile_pattern(p) is None:
            raise UsageError(f"--exclude {p!r}: no node has this name or op type, and it is not a valid regex")
        logger.warning("insert_qdq: --exclude %r matches no node name or op type of the graph being quantized "
                       "(cleanup may have fused it: e.g. MatMul+Add become a Gemm named after the MatMul)", p)
    names = {n for names in aliases.values() for n in names}
    for o in opts.overrides:
        if not any(o.matches(n) for n in names):
            if compile_pattern(o.pattern) is None:
                raise UsageError(f"--calib-override {o.pattern!r}: no tensor or node has this name, "
                                 "and it is not a valid regex")
            logger.warning("insert_qdq: --calib-override %r matches no tensor or node of the graph being quantized",
                           o.pattern)


def _why(skipped: list[dict]) -> str:
    reasons: dict[str, int] = {}
    for row in skipped:
        key = "excluded" if row["reason"] == "excluded" else "too small to gain"
        reasons[key] = reasons.get(key, 0) + 1
    return ", ".join(f"{n} {why}" for why, n in reasons.items())


def _warn_ineffective_exclusions(graph: gs.Graph, plan: QuantPlan, excluded) -> None:
    """An excluded node without weights whose inputs and output are all quantized for its int8
    neighbours still sits between Q/DQ pairs, which a backend may fuse (TensorRT does; for
    onnxruntime the emitter gives such nodes per-axis DQ inputs, which it does not fuse): say so,
    since --exclude promised float."""
    for node in graph.nodes:
        if node.op in ("Conv", "ConvTranspose", "Gemm", "MatMul") or not excluded(node):
            continue
        ins = [t for t in node.inputs if t.name and not isinstance(t, gs.Constant)]
        outs = [t for t in node.outputs if t.name]
        if ins and outs and all(t.name in plan.all_readers for t in ins) and all(t.name in plan.tensors for t in outs):
            logger.warning("insert_qdq: --exclude %s (%s): its inputs and output stay quantized for the int8 layers "
                           "around it, so a backend may still fuse it into int8; exclude those layers to keep it float",
                           node.name, node.op)


def _weight_arrays(graph: gs.Graph) -> dict[str, np.ndarray]:
    """The graph's constant arrays by name: the collector session takes them as they are instead of
    decoding a copy of every weight from the exported model."""
    return {name: t.values for name, t in graph.tensors().items()
            if isinstance(t, gs.Constant) and isinstance(t.values, np.ndarray)}


def _calibration_set(ctx: PassContext, reference: onnx.ModelProto, opts: QuantOptions) -> CalibrationSet:
    data = ctx.data.get("calibration")
    if data is not None:
        return data
    seed = int(ctx.data.get("seed", 0) or 0)
    logger.warning("insert_qdq: NO CALIBRATION DATA (--calib-data): calibrating on %d synthetic random inputs; "
                   "ranges will not match real data and accuracy may suffer", opts.synthetic_samples)
    return synthetic(reference, opts.synthetic_samples, seed=seed)


def _holdout(ctx: PassContext, reference: onnx.ModelProto, why: str) -> list[dict]:
    feeds = list(ctx.data.get("holdout") or [])
    if feeds:
        return feeds
    logger.warning("insert_qdq: no held-out samples for %s; measuring on synthetic random inputs", why)
    seed = int(ctx.data.get("seed", 0) or 0) + 1
    return list(synthetic(reference, 8, seed=seed).samples())


HUGE = 1e30  # ranges beyond this hold masks/sentinels (e.g. float32 min in attention masks), not data


class _RangeBook:
    """Ranges and quantization parameters per shared-scale group, from calibration statistics."""

    def __init__(self, stats: dict[str, TensorStats], plan: QuantPlan, rules: PlacementRules, opts: QuantOptions,
                 aliases: dict[str, tuple[str, ...]]):
        self.stats = stats
        self.rules = rules
        self.opts = opts
        self.derived = dict(plan.derived)
        self.aliases = aliases
        self._cache: dict[tuple[str, ...], tuple] = {}

    def _source_stats(self, name: str) -> TensorStats | None:
        seen = set()
        while name not in self.stats and name in self.derived and name not in seen:
            seen.add(name)
            name = self.derived[name]
        return self.stats.get(name)

    def group_range(self, members: list[str], derived: Mapping[str, str]):
        """The range of a group, pooled over the members that the plan at hand observes (``derived``:
        that plan's derived tensors): statistics gathered for another plan (a --quant-max-error
        single-layer plan) never widen or reshape this plan's histograms."""
        own = tuple(sorted(m for m in members if m not in derived and m in self.stats))
        key = (tuple(sorted(members)), own)
        if key not in self._cache:
            observed = list(own) or members
            pooled = merged({m: self._source_stats(m) for m in observed if self._source_stats(m) is not None}, observed)
            method = next((self._method(m) for m in members if self._method(m) is not self.opts.method), self.opts.method)
            if pooled is None or pooled.empty:
                self._cache[key] = (None, method, None)
            else:
                lo, hi = select_range(pooled, method, self.rules.symmetric_activations)
                used = effective_method(pooled, method)
                self._cache[key] = ((lo, hi), method if used == method else f"{method}->{used} (few values)", pooled)
        return self._cache[key]

    def _method(self, tensor: str):
        return _method(self.opts, self.aliases.get(tensor, (tensor,)))

    def params(self, plan: QuantPlan) -> dict[int, QParams]:
        out: dict[int, QParams] = {}
        for gid, members in plan.groups().items():
            rng, _, _ = self.group_range(members, plan.derived)
            if rng is None:
                for m in members:  # nothing observed: leave these tensors in float
                    plan.tensors.pop(m, None)
                continue
            if max(abs(rng[0]), abs(rng[1])) >= HUGE:
                logger.warning("insert_qdq: %s spans [%.3g, %.3g] (a mask or sentinel value?): int8 keeps no resolution "
                               "of its real values; keep its readers in float (--exclude)", members[0], rng[0], rng[1])
            out[gid] = activation_params(rng[0], rng[1], self.rules.activation_dtype, self.rules.symmetric_activations)
        return out

    def rows(self, plan: QuantPlan, params: dict[int, QParams]) -> list[dict]:
        rows = []
        for gid, members in sorted(plan.groups().items()):
            rng, method, pooled = self.group_range(members, plan.derived)
            if rng is None or gid not in params:
                continue
            p = params[gid]
            for m in members:
                rows.append({"detail": "tensor", "tensor": m, "group": gid, "method": str(method),
                             "observed_min": pooled.minimum, "observed_max": pooled.maximum,
                             "range": [rng[0], rng[1]], "scale": float(p.scale), "zero_point": p.zero_point,
                             "dtype": "uint8" if p.dtype.__name__ == "uint8" else "int8",
                             "shared": len(members) > 1})
        return rows
