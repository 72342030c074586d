"""The ``--emit DIR`` stage: write what ONNX Runtime, TensorRT or TVM deploys, for --target/--device.

    onnxslim optimize model.onnx --target tvm --device arm --emit out/
    onnxslim optimize model.onnx --quantize int8 --target tensorrt --device cuda --emit out/

This stage adds no pass: it checks the emit options and DIR up front (one-line UsageError or
OutputError, exit 2: before the model is optimized or -o written) and stores them in
``ctx.options["emit"]``; :func:`onnxslim.api.optimize_file` calls
:func:`onnxslim.targets.emit` once the output model is committed and verification did not fail,
and puts the result in the report (``output.emit``). Target-specific options (``--ort-*``,
``--trt-*``, ``--tvm-*``) are refused with another --target. A failed check of the emitted
artifacts then exits 1 (:class:`onnxslim.targets.EmitCheckFailedError`), -q or not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import onnx

from onnxslim.errors import UsageError
from onnxslim.pipeline import PassContext
from onnxslim.stages import Stage

# click parameter name -> (target it belongs to, key in the target's options)
_TARGET_OPTIONS = {
    "ort_format": ("ort", "ort_format"),
    "ort_threads": ("ort", "threads"),
    "trt_precision": ("tensorrt", "precision"),
    "trt_shapes": ("tensorrt", "shapes"),
    "tvm_tune_trials": ("tvm", "tune_trials"),
    "tvm_tuning_db": ("tvm", "tuning_db"),
    "tvm_mcpu": ("tvm", "mcpu"),
    "tvm_cuda_arch": ("tvm", "cuda_arch"),
}


def _given(value: Any) -> bool:
    return value is not None and value is not False and value != ()  # 0 is given (0 == False)


class TargetStage(Stage):
    name = "target"
    order = 90

    def click_options(self) -> list[click.Option]:
        return [
            click.Option(["--emit", "emit"], type=click.Path(path_type=str), default=None, metavar="DIR",
                         help="Write the deployable artifacts for --target/--device into DIR (docs/targets.md)."),
            click.Option(["--ort-format", "ort_format"], is_flag=True, default=None,
                         help="--target ort: also write model.ort (ORT mobile/minimal builds; x86 or arm)."),
            click.Option(["--ort-threads", "ort_threads"], type=int, default=None, metavar="N",
                         help="--target ort: intra-op threads in session.json (default 0: onnxruntime decides)."),
            click.Option(["--trt-precision", "trt_precision"], type=click.Choice(["auto", "fp32", "fp16", "strongly-typed"]),
                         default=None, help="--target tensorrt: engine precision flags (auto: int8+fp16 for Q/DQ models, fp16 otherwise)."),
            click.Option(["--trt-shapes", "trt_shapes"], multiple=True, metavar="NAME:MIN/OPT/MAX",
                         help="--target tensorrt: optimization profile of a dynamic input, e.g. input_ids:1x16/1x128/8x512 (repeatable)."),
            click.Option(["--tvm-tune-trials", "tvm_tune_trials"], type=int, default=None, metavar="N",
                         help="--target tvm --device x86: tune with meta-schedule for N measured trials (needs static shapes)."),
            click.Option(["--tvm-tuning-db", "tvm_tuning_db"], type=click.Path(path_type=str), default=None, metavar="PATH",
                         help="--target tvm: tuning database to extend or reuse (default DIR/tuning_db)."),
            click.Option(["--tvm-mcpu", "tvm_mcpu"], default=None, metavar="CPU",
                         help="--target tvm: LLVM CPU to generate code for, e.g. skylake-avx512 or cortex-a76 (default: portable)."),
            click.Option(["--tvm-cuda-arch", "tvm_cuda_arch"], default=None, metavar="sm_XX",
                         help="--target tvm --device cuda: GPU architecture (default sm_80)."),
        ]

    def configure(self, values: dict[str, Any], model: onnx.ModelProto, ctx: PassContext) -> list[str]:
        used = {k: values.get(k) for k in _TARGET_OPTIONS if _given(values.get(k))}
        out_dir = values.get("emit")
        if out_dir is None:
            if used:
                raise UsageError(f"--{next(iter(used)).replace('_', '-')} only applies with --emit DIR")
            return []
        out_dir = Path(out_dir)
        options: dict[str, Any] = {}
        for param, value in used.items():
            target, key = _TARGET_OPTIONS[param]
            if target != ctx.target:
                raise UsageError(f"--{param.replace('_', '-')} applies to --target {target}, not {ctx.target}")
            options[key] = list(value) if isinstance(value, tuple) else (str(value) if isinstance(value, Path) else value)
        if options.get("tune_trials") is not None and options["tune_trials"] < 1:  # 0 would silently tune nothing
            raise UsageError(f"--tvm-tune-trials {options['tune_trials']}: expected a positive number of trials "
                             "(leave it out to apply --tvm-tuning-db without measuring)")
        from onnxslim.targets import check_out_dir, validate

        options["input_shapes"] = {k: list(v) for k, v in ctx.input_shapes.items()}
        validate(ctx.target, ctx.device, options, model)
        check_out_dir(out_dir, probe=True)
        options["fail_on_check"] = True  # the CLI's contract: a failed check is a non-zero exit
        ctx.options["emit"] = {"dir": str(out_dir), "options": options}
        return []
