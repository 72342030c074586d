"""Options of the ``insert_qdq`` pass, and parsers for their command-line spellings.

Every parser raises :class:`~onnxslim.errors.UsageError` with a one-line message on bad values.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from onnxslim.errors import UsageError
from onnxslim.quantization.methods import AUTO, METHODS, MethodSpec


@dataclass(frozen=True)
class ErrorBudget:
    """``cosine >= value`` or ``sqnr >= value`` dB on every output, on held-out samples."""

    metric: str
    value: float

    def met(self, cosine: float, sqnr_db: float) -> bool:
        return (cosine if self.metric == "cosine" else sqnr_db) >= self.value

    def __str__(self) -> str:
        return f"{self.metric}={self.value:g}"


@dataclass(frozen=True)
class Override:
    """Calibration method for tensors whose name equals, or fully matches, ``pattern``."""

    pattern: str
    method: MethodSpec

    def matches(self, name: str) -> bool:
        if name == self.pattern:
            return True
        regex = compile_pattern(self.pattern)
        return regex is not None and regex.fullmatch(name) is not None


@dataclass(frozen=True)
class QuantOptions:
    method: MethodSpec = MethodSpec("mse")  # best or near-best on every bench model
    bins: int = 2048
    overrides: tuple[Override, ...] = ()
    exclude: tuple[str, ...] = ()
    max_error: ErrorBudget | None = None
    batch_size: int = 2  # per lane (two lanes run at once; onnxslim.quantization.calibrate)
    keep_activations: bool = False
    extra_ops: frozenset = field(default_factory=frozenset)
    progress: bool = True  # a bar on stderr when it is a terminal (onnxslim.progress)
    synthetic_samples: int = 32  # when no calibration data is given
    histogram_sample: int = 16384  # histogram values per sample and tensor (0: all)
    rounding: str = "nearest"  # int8 weight codes: "nearest" or "gptq" (data-aware, onnxslim.quantization.rounding)
    bias_correction: bool | None = None  # fold each layer's mean rounding error into its bias (None: with real data)
    rounding_samples: int | None = None  # calibration samples behind gptq / bias correction (None: 64 / 16)
    rounding_max_width: int = 1024  # gptq only for input vectors up to this many values (cost grows as width^2)

    @property
    def moment_samples(self) -> int:
        """gptq needs several input vectors per weight column; the means of bias correction need few."""
        return self.rounding_samples or (64 if self.rounding == "gptq" else 16)

    def corrects_bias(self, synthetic_data: bool) -> bool:
        """Bias correction on? By default only with real calibration data (random inputs give wrong means)."""
        return (not synthetic_data) if self.bias_correction is None else self.bias_correction

    def method_for(self, tensor: str) -> MethodSpec:
        for o in self.overrides:
            if o.matches(tensor):
                return o.method
        return self.method

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "QuantOptions":
        """Build from ``ctx.options['insert_qdq']`` (already-parsed values or CLI strings)."""
        kwargs: dict[str, Any] = {}
        percentile = parse_percentile(values.get("percentile", 99.99))
        method = values.get("method", "mse")
        kwargs["method"] = method if isinstance(method, MethodSpec) else parse_method(str(method), percentile, allow_auto=True)
        if "bins" in values:
            kwargs["bins"] = parse_bins(values["bins"])
        overrides = values.get("overrides", ())
        kwargs["overrides"] = tuple(o if isinstance(o, Override) else parse_override(str(o), percentile) for o in overrides)
        kwargs["exclude"] = tuple(split_list(values.get("exclude", ())))
        budget = values.get("max_error")
        kwargs["max_error"] = budget if budget is None or isinstance(budget, ErrorBudget) else parse_budget(str(budget))
        if "batch_size" in values:
            kwargs["batch_size"] = parse_positive(values["batch_size"], "--calib-batch-size")
        kwargs["keep_activations"] = bool(values.get("keep_activations", False))
        kwargs["extra_ops"] = frozenset(split_list(values.get("extra_ops", ())))
        kwargs["progress"] = bool(values.get("progress", True))
        if "histogram_sample" in values:
            kwargs["histogram_sample"] = 0 if values["histogram_sample"] in (0, "0") else parse_positive(
                values["histogram_sample"], "histogram sample")
        if "rounding" in values:
            kwargs["rounding"] = parse_rounding(values["rounding"])
        if values.get("bias_correction") is not None:
            kwargs["bias_correction"] = bool(values["bias_correction"])
        for key, what in (("rounding_samples", "--quant-rounding-samples"), ("rounding_max_width", "rounding max width")):
            if key in values:
                kwargs[key] = parse_positive(values[key], what)
        if "synthetic_samples" in values:
            kwargs["synthetic_samples"] = parse_positive(values["synthetic_samples"], "synthetic samples")
        return cls(**kwargs)


def split_list(values: str | Iterable[str] | None) -> list[str]:
    """Comma-separated and/or repeated values, flattened; empty items dropped. A comma inside
    brackets, braces or parentheses does not split: ``conv[0-9]{1,2}`` stays one regex."""
    if values is None:
        return []
    items = [values] if isinstance(values, str) else list(values)
    return [p.strip() for item in items for p in _top_level_split(str(item)) if p.strip()]


def _top_level_split(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def compile_pattern(pattern: str) -> re.Pattern | None:
    """The regex of a name-or-regex pattern, or None when it is not a valid regex (a literal name)."""
    try:
        return re.compile(pattern)
    except re.error:
        return None


def parse_percentile(value: Any) -> float:
    try:
        p = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"--calib-percentile: expected a number in (50, 100], got {value!r}") from None
    if not (50.0 < p <= 100.0):
        raise UsageError(f"--calib-percentile: expected a number in (50, 100], got {value!r}")
    return p


def parse_method(text: str, percentile: float = 99.99, allow_auto: bool = False) -> MethodSpec:
    """``minmax``, ``entropy``, ``mse``, ``percentile`` or ``percentile:99.9``; with ``allow_auto``
    (the model-wide method, not a per-tensor override) also ``auto``."""
    name, _, param = text.strip().lower().partition(":")
    if name not in METHODS and not (allow_auto and name == AUTO):
        choices = METHODS + ((AUTO,) if allow_auto else ())
        raise UsageError(f"unknown calibration method {text!r} (choose from {', '.join(choices)})")
    if param and name != "percentile":
        raise UsageError(f"calibration method {name!r} takes no parameter (got {text!r})")
    return MethodSpec(name, parse_percentile(param) if param else percentile)


def parse_override(text: str, percentile: float = 99.99) -> Override:
    """``NAME_OR_REGEX=METHOD[:PARAM]`` (split at the last '=')."""
    pattern, sep, method = text.rpartition("=")
    if not sep or not pattern.strip() or not method.strip():
        raise UsageError(f"--calib-override: expected NAME_OR_REGEX=METHOD, got {text!r}")
    return Override(pattern.strip(), parse_method(method, percentile))


ROUNDINGS = ("nearest", "gptq")
MIN_BINS = 512  # the histogram of |x| then has >= 512 bins, twice the 256 int8 levels


def parse_rounding(value: Any) -> str:
    text = str(value).strip().lower()
    if text not in ROUNDINGS:
        raise UsageError(f"--quant-rounding: expected one of {', '.join(ROUNDINGS)}, got {value!r}")
    return text


def parse_bins(value: Any) -> int:
    bins = parse_positive(value, "--calib-bins")
    if not MIN_BINS <= bins <= 65536:
        # entropy compares candidate ranges of more bins than the 256 int8 levels; with fewer it
        # has nothing to choose from and silently gives the min/max range
        raise UsageError(f"--calib-bins: expected {MIN_BINS}..65536, got {bins}")
    return bins


def parse_positive(value: Any, what: str) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise UsageError(f"{what}: expected a positive integer, got {value!r}") from None
    if n <= 0 or str(value).strip() not in (str(n), f"+{n}") and not isinstance(value, int):
        raise UsageError(f"{what}: expected a positive integer, got {value!r}")
    return n


def parse_budget(text: str) -> ErrorBudget:
    """``cosine=0.99`` or ``sqnr=30`` (dB)."""
    metric, sep, value = text.strip().lower().partition("=")
    if not sep or metric not in ("cosine", "sqnr"):
        raise UsageError(f"--quant-max-error: expected cosine=VALUE or sqnr=DB, got {text!r}")
    try:
        v = float(value)
    except ValueError:
        raise UsageError(f"--quant-max-error: {metric} needs a number, got {value!r}") from None
    if metric == "cosine" and not (0.0 < v <= 1.0):
        raise UsageError(f"--quant-max-error: cosine must be in (0, 1], got {v:g}")
    if metric == "sqnr" and not (math.isfinite(v) and v > 0):
        raise UsageError(f"--quant-max-error: sqnr must be a positive number of dB, got {value!r}")
    return ErrorBudget(metric, v)
