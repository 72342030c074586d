"""``--fail-if`` conditions: CI gates evaluated on a finished run's report.

Grammar (conditions are given with repeated ``--fail-if`` or comma-separated; spaces ignored)::

    condition := FLAG | METRIC OP NUMBER
    FLAG      := nodes-increased | params-increased | macs-increased | weight-bytes-increased
               | bytes-increased | verification-skipped
    METRIC    := cosine | sqnr | top1 | max-abs | seconds
               | SIZE | SIZE-reduction
    SIZE      := nodes | params | macs | weight-bytes | bytes
    OP        := <  <=  >  >=  ==  !=
    NUMBER    := a decimal, optionally followed by % (divides by 100) or k M G T (x 1e3 ... 1e12)

``SIZE`` is the optimized model's figure, ``SIZE-reduction`` is ``(before - after) / before``
(``macs-reduction<0.2``: fail when less than 20 % of the MACs went away). ``bytes`` counts the
model files on disk (external data included), ``weight-bytes`` the constants in the graph.
``cosine``, ``sqnr`` (dB) and ``top1`` are the worst output's fidelity measured by the lossy
verification; ``max-abs`` is the worst output's largest absolute error (either verification);
``seconds`` is the run's wall time. A condition whose metric was not measured in this run (e.g.
``cosine`` when no lossy pass ran) cannot be decided: that is a usage error, never a pass. A
measured NaN (a broken model) compares false with everything, so every condition on it holds:
NaN fails the gate, whatever the operator.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from onnxslim.errors import UsageError

SIZES = {"nodes": "nodes", "params": "parameters", "macs": "macs", "weight-bytes": "constant_bytes", "bytes": None}
FIDELITY = {"cosine": "cosine", "sqnr": "sqnr_db", "top1": "top1_agreement"}
OTHER = ("max-abs", "seconds")
FLAGS = tuple(f"{s}-increased" for s in SIZES) + ("verification-skipped",)
OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, ">=": operator.ge, "==": operator.eq, "!=": operator.ne, "<": operator.lt, ">": operator.gt,
}
_SUFFIX = {"%": 0.01, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_COMPARISON = re.compile(r"^([a-z0-9-]+)(<=|>=|==|!=|<|>)([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)([%kMGT]?)$")
GRAMMAR_HINT = ("expected a flag (" + ", ".join(FLAGS) + ") or METRIC OP NUMBER with METRIC one of "
                + ", ".join([*FIDELITY, *OTHER, *SIZES, *(f"{s}-reduction" for s in SIZES)]) + " and OP one of < <= > >= == !=")


class MetricUnavailable(UsageError):
    """The run did not measure what a condition asks about."""


@dataclass(frozen=True)
class Condition:
    text: str  # as written by the user, spaces removed
    metric: str  # a metric name or a flag
    op: str = ""  # "" for flags
    threshold: float = 0.0

    def evaluate(self, report: dict[str, Any]) -> tuple[bool, str]:
        """(holds, a short description of the measured value)."""
        if self.metric in FLAGS:
            return _flag(self.metric, report)
        value = metric_value(self.metric, report)
        shown = f"{self.metric} is {_fmt(value)}"
        return math.isnan(value) or OPERATORS[self.op](value, self.threshold), shown


def parse_conditions(values: Iterable[str]) -> list[Condition]:
    """Parse every ``--fail-if`` value (each may hold several comma-separated conditions)."""
    out: list[Condition] = []
    for value in values:
        for part in str(value).split(","):
            text = "".join(part.split())
            if text:
                out.append(parse_condition(text))
    return out


def parse_condition(text: str) -> Condition:
    if text in FLAGS:
        return Condition(text, text)
    m = _COMPARISON.match(text)
    if not m:
        raise UsageError(f"--fail-if {text!r}: {GRAMMAR_HINT}")
    metric, op, number, suffix = m.groups()
    known = [*FIDELITY, *OTHER, *SIZES, *(f"{s}-reduction" for s in SIZES)]
    if metric not in known:
        raise UsageError(f"--fail-if {text!r}: unknown metric {metric!r} (known: {', '.join(known)})")
    return Condition(text, metric, op, float(number) * _SUFFIX.get(suffix, 1.0))


def evaluate(conditions: list[Condition], report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per condition: ``{"condition", "holds", "value"}`` (MetricUnavailable propagates)."""
    rows = []
    for c in conditions:
        holds, shown = c.evaluate(report)
        rows.append({"condition": c.text, "holds": bool(holds), "value": shown})
    return rows


def failure_line(rows: list[dict[str, Any]]) -> str:
    held = [f"{r['condition']} ({r['value']})" for r in rows if r["holds"]]
    return "--fail-if: " + "; ".join(held) + (" holds" if len(held) == 1 else " hold")


# --------------------------------------------------------------------------------------------


def _size(name: str, report: dict[str, Any]) -> tuple[float, float]:
    """(before, after) of a SIZE metric."""
    if name == "bytes":
        before, after = report.get("input") or {}, report.get("output") or {}
        b = before.get("total_bytes", before.get("bytes"))
        a = after.get("total_bytes", after.get("bytes"))
        if b is None or a is None:
            raise MetricUnavailable("--fail-if on bytes: this run has no input and output files (use it with optimize on files)")
        return float(b), float(a)
    stats = report.get("stats") or {}
    if not stats.get("before") or not stats.get("after"):
        raise MetricUnavailable(f"--fail-if on {name}: this run recorded no model statistics")
    field = SIZES[name]
    return float(stats["before"][field]), float(stats["after"][field])


def _flag(flag: str, report: dict[str, Any]) -> tuple[bool, str]:
    if flag == "verification-skipped":
        v = report.get("verification")
        status = v["status"] if v else "off"
        return status in ("skipped", "off"), f"verification {status}"
    name = flag[: -len("-increased")]
    before, after = _size(name, report)
    return math.isnan(before) or math.isnan(after) or after > before, f"{name} {_fmt(before)} -> {_fmt(after)}"


def metric_value(metric: str, report: dict[str, Any]) -> float:
    if metric in SIZES:
        return _size(metric, report)[1]
    if metric.endswith("-reduction"):
        before, after = _size(metric[: -len("-reduction")], report)
        return 0.0 if before == 0 else (before - after) / before
    if metric == "seconds":
        seconds = report.get("seconds") or {}
        return float(seconds.get("total", sum(seconds.values())))
    verification = report.get("verification")
    if not verification or verification.get("status") == "skipped":
        raise MetricUnavailable(f"--fail-if on {metric}: outputs were not compared in this run "
                                f"(verification {'skipped' if verification else 'off'})")
    if metric == "max-abs":
        if verification.get("mode") == "lossy":
            values = [f["max_abs"] for f in verification.get("fidelity") or []]
        else:
            values = [o["max_abs"] for o in verification.get("outputs") or []]
        if not values:
            raise MetricUnavailable("--fail-if on max-abs: no output was compared")
        return _worst(values, max)
    field = FIDELITY[metric]
    values = [f[field] for f in verification.get("fidelity") or [] if f.get(field) is not None]
    if verification.get("mode") != "lossy" or not values:
        raise MetricUnavailable(f"--fail-if on {metric}: no lossy pass ran, so no fidelity was measured "
                                "(exact verification checks outputs within --tolerance instead)")
    return _worst(values, min)


def check_measurable(conditions: list[Condition], verify: bool, lossy: bool) -> None:
    """Before any work: refuse a condition on a metric this run cannot measure (fidelity without
    a lossy stage, anything compared with outputs under --no-verify), rather than after the
    output is written. ``lossy``: whether the run asked for a lossy stage."""
    for c in conditions:
        if c.metric not in FIDELITY and c.metric != "max-abs" and c.metric != "verification-skipped":
            continue
        if not verify and c.metric != "verification-skipped":
            raise MetricUnavailable(f"--fail-if on {c.metric}: outputs are not compared under --no-verify")
        if c.metric in FIDELITY and not lossy:
            raise MetricUnavailable(f"--fail-if on {c.metric}: no lossy stage (--quantize, --prune, --svd) was asked for, so no "
                                    "fidelity will be measured (exact verification checks outputs within --tolerance instead)")


def _worst(values: list[Any], pick: Callable[[list[float]], float]) -> float:
    """``pick`` (min or max) of ``values``, or NaN when one is NaN: min() and max() return NaN or
    skip it depending on where it stands in the list, and a NaN output must reach the gate."""
    floats = [float(v) for v in values]
    return math.nan if any(math.isnan(v) for v in floats) else pick(floats)


def _fmt(value: float) -> str:
    if math.isinf(value) or math.isnan(value):
        return str(value)
    if float(value).is_integer() and abs(value) >= 1:
        return str(int(value))
    return f"{value:.4g}"
