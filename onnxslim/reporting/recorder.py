"""Stats after every pass that changed the graph, and the fidelity of each lossy stage.

:class:`StageRecorder` is an after-pass hook of the pass manager (called only after a pass that
changed the graph). It records compact stats (nodes, parameters, weight bytes, MACs) after each
such pass, and after each *lossy* pass it also runs the graph as it stands under onnxruntime on
the held-out inputs the final lossy verification uses, so the report shows which stage (pruning,
SVD, quantization) cost how much fidelity. :meth:`StageRecorder.fill` writes both into the
report and drops every reference to the model.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxslim.calibration.data import batch_rows
from onnxslim.errors import first_line
from onnxslim.graph import export_model
from onnxslim.pipeline import PassContext, PassRecord, get_pass
from onnxslim.stats import ModelStats, compute as compute_stats

logger = logging.getLogger(__name__)

COMPACT_FIELDS = ("nodes", "parameters", "constant_bytes", "macs", "macs_exact")

Hook = Callable[[PassRecord, gs.Graph], None]


def compact(stats: ModelStats | None) -> dict[str, Any] | None:
    """The few numbers a stage or a pass is judged by."""
    if stats is None:
        return None
    return {name: getattr(stats, name) for name in COMPACT_FIELDS}


def chain_hooks(*hooks: Hook | None) -> Hook | None:
    """One after-pass hook calling each given hook in order (None when none is given)."""
    present = [h for h in hooks if h is not None]
    if not present:
        return None
    if len(present) == 1:
        return present[0]

    def chained(record: PassRecord, graph: gs.Graph) -> None:
        for hook in present:
            hook(record, graph)

    return chained


def _finite(value: float) -> float | None:
    """JSON has no inf/nan: keep finite floats, else None."""
    return float(value) if value is not None and np.isfinite(value) else None


class StageRecorder:
    """After-pass hook recording stats per changed pass and fidelity per lossy pass.

    ``options`` is the run's :class:`onnxslim.api.Options` (verify, inputs_file, input_shapes,
    seed, holdout); fidelity is measured only when ``options.verify`` is set.
    """

    def __init__(self, original: onnx.ModelProto, ctx: PassContext, options: Any):
        self._original: onnx.ModelProto | None = original
        self._ctx = ctx
        self._options = options
        self._after: list[tuple[PassRecord, dict[str, Any]]] = []
        self._lossy: list[dict[str, Any]] = []
        self._cleanup: dict[str, Any] | None = None
        self._reference: tuple[list[dict], list[str], list[list[np.ndarray]]] | None = None

    def __call__(self, record: PassRecord, graph: gs.Graph) -> None:
        stats = compact(compute_stats(graph))
        self._after.append((record, stats))
        if not get_pass(record.name).lossy:
            if not self._lossy:
                self._cleanup = stats
            return
        stage: dict[str, Any] = {"name": record.name, "stats": stats, "pass_seconds": record.seconds, "fidelity": None}
        if self._options is not None and self._options.verify and self._original is not None:
            start = time.perf_counter()
            stage["fidelity"], stage["fidelity_error"] = self._fidelity(graph)
            stage["fidelity_seconds"] = time.perf_counter() - start
        self._lossy.append(stage)

    def _feeds(self) -> list[dict[str, np.ndarray]]:
        from onnxslim.verify import load_inputs, synthesize_inputs

        opts = self._options
        if opts.inputs_file is not None:
            return load_inputs(opts.inputs_file, self._original)
        held = list(self._ctx.data.get("holdout") or [])
        if held:
            return held
        return synthesize_inputs(self._original, opts.input_shapes, seed=opts.seed + 1, samples=opts.holdout)

    def _fidelity(self, graph: gs.Graph) -> tuple[list[dict[str, Any]] | None, str]:
        from onnxslim.verify import fidelity, run

        try:
            if self._reference is None:
                feeds = self._feeds()
                names, want = run(self._original, feeds)
                self._reference = (feeds, names, want)
            feeds, names, want = self._reference
            candidate = export_model(graph.copy(), self._original)
            got_names, got = run(candidate, feeds)
        except Exception as exc:  # onnxruntime raises many types; a stage that cannot run is reported, not fatal
            reason = first_line(exc)
            logger.warning("could not measure the fidelity after this stage: %s", reason)
            return None, reason
        rows = []
        for f in fidelity(names, want, got_names, got):
            rows.append({"name": f.name, "cosine": _finite(f.cosine), "sqnr_db": _finite(f.sqnr_db), "rel_l2": _finite(f.rel_l2),
                         "max_abs": _finite(f.max_abs), "top1_agreement": f.top1_agreement,
                         "samples": sum(max(1, batch_rows(x)) for x in feeds)})
        return rows, ""

    def fill(self, report: Any) -> None:
        """Write per-pass stats and stages into ``report``; release the model and reference outputs."""
        index = {id(r): i for i, r in enumerate(report.passes)}
        before = compact(report.before)
        previous = before
        pass_stats: dict[int, dict[str, Any]] = {}
        for record, stats in self._after:
            i = index.get(id(record))
            if i is not None:
                pass_stats[i] = {"before": previous, "after": stats}
                previous = stats
        report.pass_stats = pass_stats
        after = compact(report.after)
        cleanup = self._cleanup if self._lossy else after
        stages = [{"name": "input", "stats": before}, {"name": "cleanup", "stats": cleanup or before}]
        stages += self._lossy
        if after != stages[-1]["stats"]:
            stages.append({"name": "output", "stats": after})
        report.stages = stages
        self._original = None
        self._reference = None
        self._after = []
