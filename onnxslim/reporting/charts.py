"""Charts of a report as inline SVG (matplotlib, the optional ``[report]`` extra).

Each ``*_chart(report)`` takes the report dict (``Report.to_dict()`` or a loaded report.json)
and returns an SVG string, or None when the run has nothing to show for it. Figures are built
with matplotlib's object API (no pyplot, no global figure state) under an ``rc_context``; text
stays text (``svg.fonttype: none``) and ids are prefixed per chart, so many charts can share one
HTML page. Nothing in the SVG refers to anything outside it.
"""

from __future__ import annotations

import io
import math
import re
from typing import Any, Callable

from onnxslim.errors import UsageError

BEFORE, AFTER, ACCENT, WARN = "#9aa5b1", "#2b6cb0", "#2f855a", "#c05621"
_RC = {
    "svg.fonttype": "none",
    "text.parse_math": False,  # labels are model names: 'a$b$' is a name, not math, and '$\frac$' must not crash
    "svg.hashsalt": "onnxslim",
    "font.family": "sans-serif",
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
}
MAX_BARS = 40  # per chart; the tables below the charts hold every row


def require_matplotlib() -> None:
    """UsageError naming the extra when matplotlib is not installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("--html needs matplotlib, which is not installed: pip install 'onnxslim[report]'") from None


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _svg(fig, prefix: str) -> str:
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context(_RC):
        fig.savefig(buf, format="svg", metadata={"Creator": None, "Date": None, "Format": None, "Type": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]  # drop the XML declaration and DOCTYPE: inline SVG in HTML5
    text = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{prefix}-{m.group(1)}"', text)
    text = re.sub(r"url\(#([^)]+)\)", lambda m: f"url(#{prefix}-{m.group(1)})", text)
    text = re.sub(r'href="#([^"]+)"', lambda m: f'href="#{prefix}-{m.group(1)}"', text)
    return text


def _render(prefix: str, build: Callable[[], Any]) -> str | None:
    import matplotlib

    with matplotlib.rc_context(_RC):
        fig = build()
    return None if fig is None else _svg(fig, prefix)


def _short(name: str, limit: int = 38) -> str:
    return name if len(name) <= limit else "…" + name[-(limit - 1):]


def _hbar_height(n: int) -> float:
    return 1.0 + 0.22 * n


# --------------------------------------------------------------------------------------------


def ops_chart(report: dict[str, Any]) -> str | None:
    stats = report.get("stats") or {}
    before, after = (stats.get("before") or {}).get("ops"), (stats.get("after") or {}).get("ops")
    if not before and not after:
        return None
    before, after = before or {}, after or {}
    ops = sorted(set(before) | set(after), key=lambda op: (-max(before.get(op, 0), after.get(op, 0)), op))[:MAX_BARS]
    ops.reverse()

    def build():
        fig = _figure(6.5, _hbar_height(len(ops)))
        ax = fig.add_subplot()
        ys = range(len(ops))
        ax.barh([y + 0.2 for y in ys], [before.get(o, 0) for o in ops], 0.4, color=BEFORE, label="before")
        ax.barh([y - 0.2 for y in ys], [after.get(o, 0) for o in ops], 0.4, color=AFTER, label="after")
        ax.set_yticks(list(ys), ops)
        ax.set_xlabel("nodes")
        ax.legend(loc="lower right", frameon=False)
        return fig

    return _render("ops", build)


def stages_chart(report: dict[str, Any]) -> str | None:
    stages = [s for s in report.get("stages") or [] if s.get("stats")]
    if not stages:
        stats = report.get("stats") or {}
        if not stats.get("before") or not stats.get("after"):
            return None
        stages = [{"name": "input", "stats": stats["before"]}, {"name": "output", "stats": stats["after"]}]
    names = [s["name"] for s in stages]
    panels = (("macs", "MACs"), ("parameters", "parameters"), ("constant_bytes", "weight bytes"))

    def build():
        from onnxslim.stats import human

        fig = _figure(7.5, 2.6)
        axes = fig.subplots(1, 3)
        for ax, (key, title) in zip(axes, panels):
            values = [float(s["stats"].get(key) or 0) for s in stages]
            bars = ax.bar(range(len(names)), values, color=[BEFORE] + [AFTER] * (len(names) - 1))
            ax.bar_label(bars, [human(v) for v in values], fontsize=7, padding=1)
            ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
            ax.set_yticks([])
            ax.spines["left"].set_visible(False)
            ax.set_title(title)
        return fig

    return _render("stages", build)


def pass_time_chart(report: dict[str, Any]) -> str | None:
    totals = sorted((t for t in report.get("pass_totals") or [] if t.get("seconds", 0) > 0), key=lambda t: t["seconds"])
    if not totals:
        return None
    totals = totals[-MAX_BARS:]

    def build():
        fig = _figure(6.5, _hbar_height(len(totals)))
        ax = fig.add_subplot()
        colors = [AFTER if t["changed"] else BEFORE for t in totals]
        bars = ax.barh(range(len(totals)), [t["seconds"] for t in totals], color=colors)
        ax.bar_label(bars, [f"{t['seconds']:.3f}s ×{t['runs']}" for t in totals], fontsize=7, padding=2)
        ax.set_yticks(range(len(totals)), [t["name"] for t in totals])
        ax.set_xlabel("seconds")
        ax.margins(x=0.2)
        return fig

    return _render("pass-time", build)


def details(report: dict[str, Any], pass_name: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for record in report.get("passes") or []:
        if record.get("name") == pass_name:
            rows.extend(record.get("details") or [])
    return rows


def quant_sensitivity_chart(report: dict[str, Any]) -> str | None:
    rows = [r for r in details(report, "insert_qdq") if r.get("detail") == "sensitivity" and r.get("alone_sqnr_db") is not None]
    if not rows:
        return None
    rows = sorted(rows, key=lambda r: r["rank"])[:MAX_BARS][::-1]
    finite = [float(r["alone_sqnr_db"]) for r in rows if math.isfinite(float(r["alone_sqnr_db"]))]
    top = max(finite, default=60.0) * 1.1 or 60.0  # a layer whose quantization changes nothing: drawn at the top

    def build():
        fig = _figure(6.5, _hbar_height(len(rows)))
        ax = fig.add_subplot()
        colors = [WARN if r.get("fallback") else AFTER for r in rows]
        values = [float(r["alone_sqnr_db"]) if math.isfinite(float(r["alone_sqnr_db"])) else top for r in rows]
        bars = ax.barh(range(len(rows)), values, color=colors)
        ax.bar_label(bars, [f"{v:.1f} dB" if math.isfinite(float(r["alone_sqnr_db"])) else "no loss" for v, r in zip(values, rows)],
                     fontsize=7, padding=2)
        ax.margins(x=0.15)
        ax.set_yticks(range(len(rows)), [_short(r["layer"]) for r in rows])
        ax.set_xlabel("output SQNR with only this layer quantized (dB)")
        return fig

    return _render("quant-sensitivity", build)


def quant_ranges_chart(report: dict[str, Any]) -> str | None:
    rows = [r for r in details(report, "insert_qdq") if r.get("detail") == "tensor" and r.get("range") and r.get("observed_max") is not None]
    if not rows:
        return None
    rows = rows[:MAX_BARS][::-1]

    def kept(r: dict[str, Any]) -> float:
        observed = float(r["observed_max"]) - float(r["observed_min"])
        return 1.0 if observed <= 0 else min(1.0, (float(r["range"][1]) - float(r["range"][0])) / observed)

    def build():
        fig = _figure(6.5, _hbar_height(len(rows)))
        ax = fig.add_subplot()
        ax.barh(range(len(rows)), [kept(r) for r in rows], color=AFTER)
        ax.set_yticks(range(len(rows)), [f"{_short(r['tensor'])} ({r.get('method', '')})" for r in rows])
        ax.set_xlim(0, 1.05)
        ax.set_xlabel("fraction of the observed range kept")
        return fig

    return _render("quant-ranges", build)


def svd_chart(report: dict[str, Any]) -> str | None:
    rows = [r for r in details(report, "factorize_svd") if r.get("energy_kept") is not None][:MAX_BARS][::-1]
    if not rows:
        return None
    errors = [r.get("holdout_error") if r.get("holdout_error") is not None else r.get("calib_error") for r in rows]

    def build():
        fig = _figure(7.5, _hbar_height(len(rows)))
        left, right = fig.subplots(1, 2, sharey=True)
        ys = range(len(rows))
        left.barh(ys, [r["energy_kept"] for r in rows], color=[AFTER if r.get("factorized") else BEFORE for r in rows])
        left.set_yticks(list(ys), [f"{_short(r['layer'], 30)} r={r.get('rank')}/{r.get('full_rank')}" for r in rows])
        left.set_xlim(0, 1.05)
        left.set_xlabel("energy kept")
        left.set_title("SVD: energy per layer")
        if any(e is not None for e in errors):
            right.barh(ys, [e or 0.0 for e in errors], color=WARN)
        else:
            right.text(0.5, 0.5, "not measured\n(data-aware SVD with --calib-data measures it)", ha="center", va="center",
                       transform=right.transAxes, color="#718096")
            right.set_xticks([])
        right.set_xlabel("relative output error")
        right.set_title("SVD: error per layer")
        return fig

    return _render("svd", build)


def pruning_chart(report: dict[str, Any]) -> str | None:
    rows = [r for r in details(report, "prune_channels") if r.get("channels_before")][:MAX_BARS][::-1]
    if not rows:
        return None

    def build():
        fig = _figure(6.5, _hbar_height(len(rows)))
        ax = fig.add_subplot()
        ratios = [1 - r["channels_after"] / r["channels_before"] for r in rows]
        bars = ax.barh(range(len(rows)), ratios, color=[AFTER if r.get("status") == "pruned" else BEFORE for r in rows])
        ax.bar_label(bars, [f"{r['channels_before']}→{r['channels_after']}" for r in rows], fontsize=7, padding=2)
        ax.set_yticks(range(len(rows)), [_short(r.get("group", "?")) for r in rows])
        ax.set_xlim(0, 1.1)
        ax.set_xlabel("fraction of channels removed")
        return fig

    return _render("pruning", build)


def fidelity_chart(report: dict[str, Any]) -> str | None:
    stages = [s for s in report.get("stages") or [] if s.get("fidelity")]
    if not stages:
        return None
    names = [s["name"] for s in stages]
    cos = [min(f["cosine"] for f in s["fidelity"] if f.get("cosine") is not None) for s in stages]
    sqnr = [min((f["sqnr_db"] for f in s["fidelity"] if f.get("sqnr_db") is not None), default=None) for s in stages]

    def build():
        fig = _figure(7.5, 2.6)
        left, right = fig.subplots(1, 2)
        bars = left.bar(range(len(names)), cos, color=AFTER)
        left.bar_label(bars, [f"{c:.4f}" for c in cos], fontsize=7, padding=1)
        left.set_ylim(min(0.0, min(cos)), 1.08)
        left.set_title("Worst output cosine after each lossy stage")
        finite = [s for s in sqnr if s is not None]
        top = max(finite, default=60.0) * 1.1 or 60.0  # identical outputs (infinite SQNR) drawn at the top
        bars = right.bar(range(len(names)), [s if s is not None else top for s in sqnr], color=ACCENT)
        right.bar_label(bars, [f"{s:.1f}" if s is not None else "identical" for s in sqnr], fontsize=7, padding=1)
        right.set_title("Worst output SQNR (dB)")
        for ax in (left, right):
            ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
        return fig

    return _render("fidelity", build)


CHARTS: dict[str, tuple[str, Callable[[dict[str, Any]], str | None], str]] = {
    "chart-ops": ("Operator histogram", ops_chart, "Nodes per operator in the input (grey) and the output (blue)."),
    "chart-stages": ("MACs, parameters and bytes per stage", stages_chart,
                     "After each stage: the input, the cleanup pipeline, then each lossy pass in order."),
    "chart-pass-time": ("Time per pass", pass_time_chart, "Seconds over every run of the pass (×runs); blue: it changed the graph."),
    "chart-fidelity": ("Fidelity of each lossy stage", fidelity_chart,
                       "The model as it stands after each lossy pass against the original, on the held-out inputs of the final check."),
    "chart-pruning": ("Pruning ratios per group", pruning_chart, "Fraction of each group's channels removed (before→after); grey: left alone."),
    "chart-svd": ("SVD energy and error per layer", svd_chart,
                  "Spectral energy the kept rank holds (grey: left alone) and the layer's relative output error (held-out, else calibration)."),
    "chart-quant-sensitivity": ("Quantization sensitivity per layer", quant_sensitivity_chart,
                                "Output SQNR with only this layer quantized (lower is more sensitive); orange: kept in float to meet the budget."),
    "chart-quant-ranges": ("Quantization ranges per tensor", quant_ranges_chart,
                           "Fraction of the observed activation range that the calibrated range keeps (the rest is clipped)."),
}
