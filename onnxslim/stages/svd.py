"""``--svd``: low-rank factorization of MatMul/Gemm/1x1-Conv weights (the factorize_svd pass).

    onnxslim optimize model.onnx --svd energy=0.95 [--svd-min-size 256] [--calib-data calib/]

With ``--calib-data`` the factorization is data-aware (whitened by activation statistics) and
per-layer output errors on held-out samples go to the report; ``method=plain`` forces plain SVD.
The option grammar is in :mod:`onnxslim.svd.spec`. Calibration samples are checked against the
model's inputs up front (one-line error); ``infer_shapes`` runs after the pass so the statistics
after it count the MACs of every new node.
"""

from __future__ import annotations

from typing import Any

import click
import onnx

from onnxslim.errors import UsageError
from onnxslim.pipeline import PassContext
from onnxslim.stages import Stage, warn_left_over
from onnxslim.svd.spec import SvdSpec

PASS_NAME = "factorize_svd"


class SvdStage(Stage):
    """Adds ``--svd SPEC`` and ``--svd-min-size N``; appends factorize_svd to the pipeline."""

    name = "svd"
    order = 20  # after pruning (10), before quantization (30)

    def click_options(self) -> list[click.Option]:
        return [
            click.Option(
                ["--svd", "svd"],
                metavar="SPEC",
                help="Low-rank (SVD) factorization of MatMul/Gemm/1x1-Conv weights: energy=F | rank=N | ratio=F | error=F, "
                "optionally ,method=auto|plain|whiten ,damp=F ,min_saving=F ,spatial=1 "
                "(data-aware with --calib-data).",
            ),
            click.Option(
                ["--svd-min-size", "svd_min_size"],
                type=int,
                metavar="N",
                help="--svd: leave layers with min(K, N) below N alone (default 256).",
            ),
        ]

    def configure(self, values: dict[str, Any], model: onnx.ModelProto, ctx: PassContext) -> list[str]:
        text, min_size = values.get("svd"), values.get("svd_min_size")
        if text is None:
            if min_size is not None:
                raise UsageError("--svd-min-size only applies with --svd")
            return []
        spec = SvdSpec.parse(text, min_size=min_size)
        warn_left_over(model, ctx, "--svd")
        ctx.options[PASS_NAME] = spec.to_options()
        # Shapes of the new intermediate tensors (a spatial Conv's kh x 1 output), for MAC counts.
        return [PASS_NAME, "infer_shapes"]

