"""Low-rank (SVD) factorization of constant weights in MatMul, Gemm and 1x1 Conv (lossy).

A layer ``Y = X W + b`` with a constant ``W`` (K x N) becomes ``Y = (X A) B + b`` with ``A``
(K x r) and ``B`` (r x N) from a truncated SVD: MACs and weight bytes go from ``K N`` to
``r (K + N)`` per output row. How ``W`` is read out of each node (Gemm's alpha/transA/transB,
a constant first MatMul operand, 1x1 and, with ``spatial=1``, kxk convolutions) and how the
two replacement nodes look is in :mod:`onnxslim.svd.sites`; the math in :mod:`onnxslim.svd.linalg`.

Factorizations:

* plain: SVD of ``W``; minimises the weight error ``||W - A B||_F``;
* whitened (data-aware): SVD of ``L^T W`` with ``L L^T = X^T X / n + lambda I`` from calibration
  activations, ``A = L^-T U_r S_r^1/2``; minimises the error of the layer's *output* on real data.

Rank rules (``ctx.options["factorize_svd"]``, see :class:`onnxslim.svd.SvdSpec`): spectral energy
kept, a fixed rank, a parameter ratio, or a relative output-error budget per layer. A layer is
rewritten only when ``r (K + N) <= (1 - min_saving) K N`` (and its MACs drop as much); otherwise it
is left as it is, with a ``ctx.decline`` note and a details row saying why.

Preconditions: default domain; exactly one operand constant, 2-D and float; the weight read by
this node only; Conv with group 1 and constant bias; ``min(K, N) >= min_size``. Every candidate
that misses one has a details row (``factorized: false`` and the ``reason``). Activation
statistics (when calibration data is given, or the method or rule needs data) come from one
onnxruntime session over all layers; per-layer errors on held-out inputs go to the report.
Statistics that overflow (huge calibration values) or that no batch filled are dropped with a
warning: those layers use plain SVD (row ``note``); a decomposition that still fails leaves the
layer alone with a row saying why. ``method=whiten`` on spatial convolutions (plain only) warns.
The pass factorizes a graph once (a second run in the same pipeline warns and does nothing).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from onnxslim.calibration import synthetic
from onnxslim.calibration.data import fixed_batch, model_inputs
from onnxslim.errors import UsageError
from onnxslim.graph import NameScope, consumers, export_model, opset
from onnxslim.pipeline import Pass, PassContext, PassResult
from onnxslim.svd.collect import Cache, collect_moments, weight_digest
from onnxslim.svd.linalg import Decomposition, choose_rank, decompose
from onnxslim.svd.sites import Site, emit, find_site, macs
from onnxslim.svd.spec import SvdSpec

logger = logging.getLogger(__name__)

_APPLIED = "_onnxslim_factorize_svd_applied"  # marks a graph this pass factorized (it runs once per graph)


class FactorizeSvd(Pass):
    """Split MatMul/Gemm/1x1-Conv weights into two low-rank factors (SVD, plain or data-aware)."""

    name = "factorize_svd"
    lossy = True

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        options = ctx.options_for(self.name)
        if not options:
            raise UsageError("factorize_svd needs a rank rule: use --svd energy=0.95 (or rank=N, ratio=F, error=F)")
        spec = SvdSpec.from_options(dict(options))
        if graph.__dict__.get(_APPLIED):  # e.g. --passes ...,factorize_svd together with --svd
            logger.warning("factorize_svd: already applied to this model in this pipeline; it runs once "
                           "(leave factorize_svd out of --passes when --svd is given)")
            return PassResult(False, {"layers_factorized": 0, "layers_declined": 0})
        rows: list[dict[str, Any]] = []
        sites = self._sites(graph, spec, ctx, rows)
        counters: dict[str, int | float] = {"layers_factorized": 0, "layers_declined": len(rows)}
        if not sites:
            return PassResult(False, counters, rows)
        if spec.method == "whiten":
            spatial = [s.node.name for s in sites if s.layout is None]
            if spatial:
                logger.warning("factorize_svd: method=whiten does not apply to spatial (kxk) convolutions: %d layer(s) "
                               "(e.g. %r) use plain SVD", len(spatial), spatial[0])
        calibration, holdout, real_data = self._data(graph, spec, sites, ctx)
        method_whitens = spec.method == "whiten" or (spec.method == "auto" and real_data)
        # Statistics are cached by the identity of the caller's data objects (real data only).
        cache = Cache(ctx.data.get("svd_cache") if real_data else None, ctx.data.get("calibration"), ctx.data.get("holdout"))
        calib_m, held_m = self._moments(graph, sites, calibration, holdout, spec, cache)
        unusable = _drop_unusable(calib_m, held_m, want=method_whitens)
        scope = NameScope(graph)
        totals = {"params_removed": 0, "bytes_removed": 0, "macs_removed": 0}
        for site in sites:
            whiten = method_whitens and site.stats_key in calib_m
            try:
                dec = self._decomposition(site, spec, whiten, calib_m, held_m, cache)
            except (np.linalg.LinAlgError, ValueError) as exc:
                dec, reason = self._fallback(site, spec, whiten, exc)
                if dec is None:
                    ctx.decline(self.name, where=site.node.name, reason=reason)
                    rows.append({"layer": site.node.name, "op": site.node.op, "kind": site.kind, "shape": [site.k, site.n],
                                 "factorized": False, "reason": reason})
                    counters["layers_declined"] += 1
                    continue
                whiten = False
            rank = choose_rank(spec.rule, spec.value, dec, site.k, site.n)
            row = _row(site, dec, rank, whiten)
            if site.stats_key is not None and site.stats_key in unusable:
                row["note"] = unusable[site.stats_key]
            reason = _no_gain(row, spec.min_saving)
            if reason:
                ctx.decline(self.name, where=site.node.name, reason=reason)
                rows.append({**row, "factorized": False, "reason": reason})
                counters["layers_declined"] += 1
                continue
            emit(graph, scope, site, *dec.factors(rank))
            rows.append({**row, "factorized": True, "reason": ""})
            counters["layers_factorized"] += 1
            totals["params_removed"] += row["params_before"] - row["params_after"]
            totals["bytes_removed"] += row["bytes_before"] - row["bytes_after"]
            if row["macs_before"] is not None:
                totals["macs_removed"] += row["macs_before"] - row["macs_after"]
        if counters["layers_factorized"]:
            counters.update(totals)
            graph.__dict__[_APPLIED] = True
        return PassResult(counters["layers_factorized"] > 0, counters, rows)

    @staticmethod
    def _fallback(site: Site, spec: SvdSpec, whiten: bool, exc: Exception) -> tuple[Decomposition | None, str]:
        """After a failed decomposition: plain SVD when whitening failed, else why the layer is skipped."""
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if whiten:
            logger.warning("factorize_svd: whitening failed for %s (%s); it uses plain SVD", site.node.name, first)
            try:
                return decompose(site.weight, site.bias, whiten=False), ""
            except (np.linalg.LinAlgError, ValueError) as again:
                first = (str(again).strip().splitlines() or [type(again).__name__])[0]
        logger.warning("factorize_svd: skipped %s: its weight cannot be decomposed (%s)", site.node.name, first)
        return None, f"the decomposition failed: {first}"

    def _sites(self, graph: gs.Graph, spec: SvdSpec, ctx: PassContext, rows: list[dict[str, Any]]) -> list[Site]:
        graph_opset = opset(graph)
        sites = []
        for node in graph.nodes:
            found = find_site(node, graph_opset, spec.spatial)
            if found is None:
                continue
            if isinstance(found, str):
                ctx.decline(self.name, where=node.name, reason=found)
                rows.append({"layer": node.name, "op": node.op, "factorized": False, "reason": found})
                continue
            readers = len(consumers(found.weight_tensor))
            if readers > 1:
                reason = f"weight {found.weight_tensor.name!r} is shared by {readers} nodes"
                ctx.decline(self.name, where=node.name, reason=reason)
                rows.append({"layer": node.name, "op": node.op, "kind": found.kind, "shape": [found.k, found.n],
                             "factorized": False, "reason": reason})
                continue
            if min(found.k, found.n) < spec.min_size:  # the user's filter, not a failure: no decline
                reason = f"{found.k}x{found.n} is smaller than the minimum size {spec.min_size}"
                logger.debug("factorize_svd: skipped %s: %s", node.name, reason)
                rows.append({"layer": node.name, "op": node.op, "kind": found.kind, "shape": [found.k, found.n],
                             "factorized": False, "reason": reason})
                continue
            sites.append(found)
        return sites

    def _data(self, graph: gs.Graph, spec: SvdSpec, sites: list[Site], ctx: PassContext):
        """(calibration set, held-out feeds, whether the data is real); (None, [], False) when plain SVD needs none."""
        calibration, holdout = ctx.data.get("calibration"), list(ctx.data.get("holdout") or [])
        wants_data = spec.method == "whiten" or spec.rule == "error"
        if not any(s.layout is not None for s in sites):
            return None, [], False
        if calibration is None and wants_data:
            logger.warning("factorize_svd: no --calib-data given; %s uses %d SYNTHETIC random inputs for activation "
                           "statistics, which may not resemble real data (give --calib-data)",
                           "data-aware SVD" if spec.method == "whiten" else f"the error budget {spec.value:g}", spec.calib_samples)
            header = export_model(gs.Graph(inputs=list(graph.inputs), opset=graph.opset))  # inputs only
            batch = fixed_batch(model_inputs(header)) or 1
            count = -(-spec.calib_samples // batch) * batch  # whole batches of a fixed-batch model
            calibration = synthetic(header, count, seed=int(ctx.data.get("seed", 0)),
                                    dims={k: list(v) for k, v in ctx.input_shapes.items()} or None)
            return calibration, holdout, False
        if calibration is None:
            logger.warning("factorize_svd: plain SVD without calibration data; per-layer output errors are not measured "
                           "(give --calib-data for data-aware SVD and held-out errors)")
            return None, [], False
        return calibration, holdout, True

    @staticmethod
    def _moments(graph, sites, calibration, holdout, spec: SvdSpec, cache: Cache):
        if calibration is None:
            return {}, {}
        requests = {s.stats_key: s.k for s in sites if s.stats_key is not None}
        calib, held = {}, {}
        missing = {}
        for key, k in requests.items():
            hit = cache.get(("moments", key))
            if hit is None:
                missing[key] = k
            else:
                calib[key], held_value = hit
                if held_value is not None:
                    held[key] = held_value
        if missing:
            new_calib, new_held = collect_moments(graph, missing, calibration, holdout, spec.batch_size)
            thin = [key for key, k in missing.items() if 0 < new_calib[key].count < k]
            if thin:
                first = thin[0]
                logger.warning("factorize_svd: %d activation(s) have fewer calibration rows than dimensions (e.g. %r: %d rows "
                               "for %d dims): data-aware SVD may overfit them; give more --calib-data",
                               len(thin), first[0], new_calib[first].count, missing[first])
            for key in missing:
                calib[key] = new_calib[key]
                if key in new_held:
                    held[key] = new_held[key]
                cache.put(("moments", key), (new_calib[key], new_held.get(key)))
        return calib, held

    @staticmethod
    def _decomposition(site: Site, spec: SvdSpec, whiten: bool, calib_m, held_m, cache: Cache) -> Decomposition:
        key = site.stats_key
        cache_key = None
        if cache.store is not None:
            cache_key = ("decomposition", site.kind, weight_digest(site.weight), key, whiten, spec.damp if whiten else None)
            hit = cache.get(cache_key)
            if hit is not None:
                return hit
        dec = decompose(site.weight, site.bias, calib_m.get(key), held_m.get(key), whiten=whiten, damp=spec.damp)
        if cache_key is not None:
            cache.put(cache_key, dec)
        return dec


def _drop_unusable(calib_m: dict, held_m: dict, want: bool) -> dict:
    """Remove statistics that cannot be used (overflowed, or no batch the model could take); a
    warning says so. Returns {stats key: note for the report row}."""
    notes = {}
    for key, m in list(calib_m.items()):
        if m.count and m.finite():
            continue
        why = ("calibration activations overflow (non-finite statistics)" if m.count
               else "no calibration batch the model could take")
        notes[key] = f"{why}: {'plain SVD, ' if want else ''}errors not measured"
        del calib_m[key]
        held_m.pop(key, None)
    for key, m in list(held_m.items()):
        if not m.finite():
            notes.setdefault(key, "held-out activations overflow (non-finite statistics): held-out errors not measured")
            del held_m[key]
    if notes:
        key, note = next(iter(notes.items()))
        logger.warning("factorize_svd: %d activation(s) unusable for statistics (e.g. %r: %s)", len(notes), key[0], note)
    return notes


def _row(site: Site, dec: Decomposition, rank: int, whiten: bool) -> dict[str, Any]:
    """The report row of one layer at ``rank``."""
    k, n = site.k, site.n
    itemsize = site.weight.dtype.itemsize
    macs_before, macs_after, macs_exact = macs(site, rank)
    return {
        "layer": site.node.name,
        "op": site.node.op,
        "kind": site.kind,
        "shape": [k, n],
        "method": "whiten" if whiten else "plain",
        "rank": rank,
        "full_rank": dec.full_rank,
        "energy_kept": round(float(dec.energy()[rank - 1]), 6),
        "calib_error": None if dec.calib is None else round(dec.calib.relative(rank), 6),
        "holdout_error": None if dec.holdout is None else round(dec.holdout.relative(rank), 6),
        "params_before": k * n,
        "params_after": rank * (k + n),
        "bytes_before": k * n * itemsize,
        "bytes_after": rank * (k + n) * itemsize,
        "macs_before": macs_before,
        "macs_after": macs_after,
        "macs_exact": macs_exact,
    }


def _no_gain(row: dict[str, Any], min_saving: float) -> str:
    """Why factorizing at this rank does not pay; empty when it does."""
    budget = (1.0 - min_saving) * row["params_before"]
    if row["params_after"] > budget:
        return (f"rank {row['rank']} of {row['shape'][0]}x{row['shape'][1]} would not shrink it by {min_saving:.0%} "
                f"(r(K+N)={row['params_after']} vs K*N={row['params_before']})")
    if row["macs_before"] is not None and row["macs_after"] > (1.0 - min_saving) * row["macs_before"]:
        return f"rank {row['rank']}: MACs would not drop by {min_saving:.0%} ({row['macs_after']} vs {row['macs_before']})"
    return ""
