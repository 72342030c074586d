"""Stages: how lossy features (pruning, SVD, quantization, ...) plug into ``onnxslim optimize``.

A stage owns a few CLI options (``--prune 0.3``, ``--svd energy=0.95``, ``--quantize int8``),
turns their values into pipeline steps (lossy passes appended after the cleanup pipeline) and
per-pass options in the :class:`~onnxslim.pipeline.PassContext`. Every :class:`Stage`
subclass defined in a module of this package is discovered; stages apply in ``order``.

Shared inputs every stage can use, set by the CLI/API before ``configure`` is called:
``ctx.data["calibration"]`` (a :class:`~onnxslim.calibration.CalibrationSet`, or None when the
user gave no ``--calib-data``) and ``ctx.data["holdout"]`` (a list of held-out feed dicts used
to measure fidelity).
"""

from __future__ import annotations

import functools
import importlib
from typing import Any, ClassVar

import click
import onnx

from onnxslim.pipeline import PassContext, discover


class Stage:
    """Base class. Subclasses set ``name``/``order`` and implement the two methods."""

    name: ClassVar[str] = ""
    order: ClassVar[int] = 100  # prune 10, svd 20, quantize 30, target 90

    def click_options(self) -> list[click.Option]:
        """The click options this stage adds to ``onnxslim optimize``."""
        return []

    def configure(self, values: dict[str, Any], model: onnx.ModelProto, ctx: PassContext) -> list[str]:
        """Validate option values (raise UsageError) and return pipeline steps to append; [] when unused."""
        return []


@functools.lru_cache(maxsize=1)
def stages() -> tuple[Stage, ...]:
    found = [cls() for cls in discover(importlib.import_module(__name__), Stage)]
    return tuple(sorted(found, key=lambda s: (s.order, s.name)))
