"""ORT CPU layout rewrites for an INT8 model, after ``--quantize int8`` (no CLI options of its own).

On ``--target ort --device x86`` the quantized graph gets :mod:`space_to_depth_stem`: a stride-2
stem conv over a few channels (ResNet's 7x7) becomes SpaceToDepth on the integer input plus a
stride-1 conv, which halves the stem's time in onnxruntime's QLinearConv and leaves the outputs
bit-identical. Measured on x86 only, so other devices do not get it.
"""

from __future__ import annotations

from typing import Any

import onnx

from onnxslim.pipeline import PassContext
from onnxslim.stages import Stage


class OrtInt8Layout(Stage):
    name = "ort_int8_layout"
    order = 31  # right after quantize (30)

    def configure(self, values: dict[str, Any], model: onnx.ModelProto, ctx: PassContext) -> list[str]:
        if values.get("quantize") and ctx.target == "ort" and ctx.device == "x86":
            return ["space_to_depth_stem"]
        return []
