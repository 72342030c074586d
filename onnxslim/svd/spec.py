"""The ``--svd`` option: how ranks are chosen and which factorization is used.

Text form (CLI): one rank rule, then optional settings, comma-separated::

    energy=0.95          keep the smallest rank whose singular values hold 95% of the energy
    rank=64              a fixed rank (capped at min(K, N))
    ratio=0.5            the rank that keeps at most half of the layer's parameters
    error=0.05           the smallest rank whose relative output error is <= 5% (needs data)
    method=auto|plain|whiten   whiten = data-aware (activation statistics); auto = whiten when
                               calibration data is given, else plain
    damp=0.01            whitening damping, relative to the mean activation second moment
    min_saving=0.1       factorize only when MACs and bytes drop by at least this fraction
    spatial=1            also split kxk Convs into kx1 + 1xk (plain SVD only)

The pass reads the same settings as a dict (``ctx.options["factorize_svd"]``, see
:meth:`SvdSpec.to_options`). Every bad value raises :class:`UsageError` with one line.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from onnxslim.errors import UsageError

RULES = ("energy", "rank", "ratio", "error")
METHODS = ("auto", "plain", "whiten")
_SYNTAX = "expected energy=F, rank=N, ratio=F or error=F, optionally followed by ,method=auto|plain|whiten,damp=F,min_saving=F,spatial=0|1"


@dataclass(frozen=True)
class SvdSpec:
    """Validated settings of the factorize_svd pass."""

    rule: str
    value: float
    method: str = "auto"
    damp: float = 0.01
    min_saving: float = 0.1  # below 0 forces factorization even when a layer would grow (tests)
    min_size: int = 256  # layers with min(K, N) below this are left alone
    spatial: bool = False
    calib_samples: int = 32  # synthetic samples when data is needed but none was given
    batch_size: int = 8

    def __post_init__(self) -> None:
        _check(self)

    @classmethod
    def parse(cls, text: str, min_size: int | None = None) -> "SvdSpec":
        """Parse the ``--svd`` text (see the module docstring)."""
        if not isinstance(text, str) or not text.strip():
            raise UsageError(f"--svd: {_SYNTAX}")
        fields: dict[str, Any] = {}
        for item in text.split(","):
            key, sep, raw = item.strip().partition("=")
            key, raw = key.strip().lower().replace("-", "_"), raw.strip()
            if not sep or not key or not raw:
                raise UsageError(f"--svd: cannot read {item.strip()!r}; {_SYNTAX}")
            if key in fields or (key in RULES and "rule" in fields):
                raise UsageError(f"--svd: {key if key in fields else 'a rank rule'} given twice in {text!r}")
            if key in RULES:
                fields["rule"], fields["value"] = key, _number(key, raw, integer=key == "rank")
            elif key == "method":
                fields["method"] = raw.lower()
            elif key in ("damp", "min_saving"):
                fields[key] = _number(key, raw)
            elif key == "spatial":
                if raw.lower() not in ("0", "1", "true", "false", "on", "off"):
                    raise UsageError(f"--svd: spatial must be 0 or 1, got {raw!r}")
                fields["spatial"] = raw.lower() in ("1", "true", "on")
            else:
                raise UsageError(f"--svd: unknown setting {key!r}; {_SYNTAX}")
        if "rule" not in fields:
            raise UsageError(f"--svd: no rank rule in {text!r}; {_SYNTAX}")
        if fields.get("min_saving", 0.0) < 0:
            raise UsageError(f"--svd: min_saving must be in [0, 1), got {fields['min_saving']}")
        if min_size is not None:
            fields["min_size"] = min_size
        return cls(**fields)

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> "SvdSpec":
        """Settings from ``ctx.options['factorize_svd']`` (the dict form of :meth:`to_options`)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise UsageError(f"factorize_svd: unknown option(s) {unknown}; known: {sorted(known)}")
        if "rule" not in options or "value" not in options:
            raise UsageError("factorize_svd: options need 'rule' (energy|rank|ratio|error) and 'value' (e.g. --svd energy=0.95)")
        return cls(**options)

    def to_options(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        value = int(self.value) if self.rule == "rank" else self.value
        return f"{self.rule}={value}"


def _number(key: str, raw: str, integer: bool = False) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"--svd: {key} must be a number, got {raw!r}") from None
    if integer and (not value.is_integer()):
        raise UsageError(f"--svd: {key} must be a whole number, got {raw!r}")
    return value


def _check(spec: SvdSpec) -> None:
    v = spec.value
    if spec.rule not in RULES:
        raise UsageError(f"--svd: unknown rank rule {spec.rule!r}; {_SYNTAX}")
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise UsageError(f"--svd: {spec.rule} must be a finite number, got {v!r}")
    if spec.rule == "energy" and not 0 < v <= 1:
        raise UsageError(f"--svd: energy must be in (0, 1], got {v:g}")
    if spec.rule == "rank" and (v < 1 or not float(v).is_integer()):
        raise UsageError(f"--svd: rank must be a whole number >= 1, got {v:g}")
    if spec.rule == "ratio" and not 0 < v < 1:
        raise UsageError(f"--svd: ratio must be in (0, 1), got {v:g}")
    if spec.rule == "error" and not 0 < v < 1:
        raise UsageError(f"--svd: error must be in (0, 1), got {v:g}")
    if spec.method not in METHODS:
        raise UsageError(f"--svd: method must be one of {', '.join(METHODS)}, got {spec.method!r}")
    if not (isinstance(spec.damp, (int, float)) and 0 <= spec.damp <= 10):
        raise UsageError(f"--svd: damp must be in [0, 10], got {spec.damp!r}")
    if not (isinstance(spec.min_saving, (int, float)) and spec.min_saving < 1):
        raise UsageError(f"--svd: min_saving must be below 1, got {spec.min_saving!r}")
    if not isinstance(spec.min_size, int) or isinstance(spec.min_size, bool) or spec.min_size < 1:
        raise UsageError(f"--svd-min-size must be a whole number >= 1, got {spec.min_size!r}")
    if spec.calib_samples < 1 or spec.batch_size < 1:
        raise UsageError("factorize_svd: calib_samples and batch_size must be >= 1")
