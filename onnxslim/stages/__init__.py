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
import logging
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


def warn_left_over(model: onnx.ModelProto, ctx: PassContext, who: str) -> None:
    """A model whose batch is fixed at B takes the calibration samples B at a time: say how many
    a stage leaves out (the quantization calibration says so itself, once it has run)."""
    from onnxslim.calibration.data import left_over

    batch, left = left_over(ctx.data.get("calibration"), model, ctx.input_shapes)
    if left:
        logging.getLogger("onnxslim").warning("%s: the model's batch is fixed at %d; %d calibration sample(s) that do not "
                                              "fill a batch are left out", who, batch, left)
