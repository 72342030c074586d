"""The ``--quantize int8`` stage: options of INT8 post-training quantization (the ``insert_qdq`` pass).

    onnxslim optimize model.onnx --quantize int8 --calib-data calib/ --calib-method entropy \\
        --target ort --device x86 -o model.int8.onnx

Calibration data comes from the shared ``--calib-data``/``--calib-size`` options (``.npz``, a
folder of ``.npy``/``.npz``, or a folder of images with a ``preprocess.json`` spec); without it the
pass warns loudly and calibrates on synthetic inputs. ``--quant-exclude``/``--exclude`` and
``--quant-max-error``/``--max-error`` carry both spellings (the short ones are the issue's).
"""

from __future__ import annotations

import logging
from typing import Any

import click
import onnx

from onnxslim.errors import UsageError
from onnxslim.pipeline import PassContext
from onnxslim.quantization.methods import AUTO, METHODS
from onnxslim.quantization.options import ROUNDINGS, QuantOptions, split_list
from onnxslim.quantization.rules import rules_for
from onnxslim.stages import Stage

logger = logging.getLogger(__name__)

PASS = "insert_qdq"
QUANTIZED_PREFIXES = ("QuantizeLinear", "DequantizeLinear", "QLinear", "ConvInteger", "MatMulInteger",
                      "DynamicQuantize", "QGemm", "MatMulIntegerToFloat", "QAttention")
_DEPENDENT = ("calib_method", "calib_percentile", "calib_bins", "calib_override", "calib_batch_size",
              "quant_exclude", "quant_max_error", "quant_keep_activations", "quant_ops", "quant_rounding",
              "quant_bias_correction", "quant_rounding_samples")


class QuantizeStage(Stage):
    name = "quantize"
    order = 30

    def click_options(self) -> list[click.Option]:
        return [
            click.Option(["--quantize", "quantize"], type=click.Choice(["int8"]), default=None,
                         help="Post-training quantization: insert Q/DQ pairs placed for --target/--device."),
            click.Option(["--calib-method", "calib_method"], type=click.Choice((*METHODS, AUTO)), default=None,
                         help="--quantize: activation range method (default mse; auto: every method from the same "
                              "calibration pass, each model scored on the held-out samples, the best kept)."),
            click.Option(["--calib-percentile", "calib_percentile"], type=float, default=None, metavar="P",
                         help="--calib-method percentile: the percentile kept (default 99.99)."),
            click.Option(["--calib-bins", "calib_bins"], type=int, default=None, metavar="N",
                         help="--quantize: histogram bins over each tensor's range (default 2048)."),
            click.Option(["--calib-override", "calib_override"], multiple=True, metavar="NAME_OR_REGEX=METHOD",
                         help="--quantize: method for tensors (or their producer nodes) by name or regex, "
                              "e.g. 'logits=minmax' or '.*attn.*=percentile:99.9' (repeatable)."),
            click.Option(["--calib-batch-size", "calib_batch_size"], type=int, default=None, metavar="N",
                         help="--quantize: samples per calibration inference; two run at once (scales do not depend on it; default 2)."),
            click.Option(["--quant-exclude", "--exclude", "quant_exclude"], multiple=True, metavar="NAME|OP|REGEX",
                         help="--quantize: keep these nodes in float: node name, op type or regex over node names "
                              "(repeatable, or comma-separated; a fused node keeps the name of its "
                              "MatMul/Conv)."),
            click.Option(["--quant-max-error", "--max-error", "quant_max_error"], default=None, metavar="cosine=C|sqnr=DB",
                         help="--quantize: fall back the most sensitive layers to float until every output "
                              "keeps this cosine (or SQNR in dB) on held-out samples."),
            click.Option(["--quant-keep-activations", "quant_keep_activations"], is_flag=True, default=None,
                         help="--quantize: keep ReLU/Clip nodes that a Q/DQ boundary makes redundant."),
            click.Option(["--quant-rounding", "quant_rounding"], type=click.Choice(ROUNDINGS), default=None,
                         help="--quantize: int8 weight codes: nearest (default) or gptq (rounding that minimises "
                              "each layer's output error on calibration inputs; slower)."),
            click.Option(["--quant-bias-correction/--no-quant-bias-correction", "quant_bias_correction"], default=None,
                         help="--quantize: fold each layer's mean weight-rounding error into its bias "
                              "(default: on with --calib-data, off on synthetic inputs)."),
            click.Option(["--quant-rounding-samples", "quant_rounding_samples"], type=int, default=None, metavar="N",
                         help="--quantize: calibration samples behind gptq and bias correction (default 64 with gptq, else 16)."),
            click.Option(["--quant-ops", "quant_ops"], default=None, metavar="OPS",
                         help="--quantize: also quantize these ops left in float by default (Softmax,LayerNormalization)."),
        ]

    def configure(self, values: dict[str, Any], model: onnx.ModelProto, ctx: PassContext) -> list[str]:
        if not values.get("quantize"):
            # a False flag is "not given", except --no-quant-bias-correction, which is a choice
            used = [k for k in _DEPENDENT if values.get(k) not in (None, ()) and (values[k] is not False
                                                                               or k == "quant_bias_correction")]
            if used:
                raise UsageError(f"--{used[0].replace('_', '-')} only applies with --quantize int8")
            return []
        options: dict[str, Any] = {}
        if values.get("calib_method"):
            options["method"] = values["calib_method"]
        if values.get("calib_percentile") is not None:
            options["percentile"] = values["calib_percentile"]
        if values.get("calib_bins") is not None:
            options["bins"] = values["calib_bins"]
        if values.get("calib_batch_size") is not None:
            options["batch_size"] = values["calib_batch_size"]
        options["overrides"] = tuple(values.get("calib_override") or ())
        options["exclude"] = tuple(split_list(values.get("quant_exclude") or ()))
        if values.get("quant_max_error"):
            options["max_error"] = values["quant_max_error"]
        options["keep_activations"] = bool(values.get("quant_keep_activations"))
        if values.get("quant_rounding"):
            options["rounding"] = values["quant_rounding"]
        if values.get("quant_bias_correction") is not None:
            options["bias_correction"] = bool(values["quant_bias_correction"])
        if values.get("quant_rounding_samples") is not None:
            options["rounding_samples"] = values["quant_rounding_samples"]
        if values.get("quant_ops"):
            ops = split_list(values["quant_ops"])
            unknown = [op for op in ops if op not in ("Softmax", "LayerNormalization")]
            if unknown:
                raise UsageError(f"--quant-ops: only Softmax and LayerNormalization can be asked for, got {unknown}")
            options["extra_ops"] = tuple(ops)
        parsed = QuantOptions.from_dict(options)  # validate now: one-line UsageError before any work
        _warn_unused(values, parsed, synthetic=ctx.data.get("calibration") is None)
        rules_for(ctx.target, ctx.device)
        check_float_model(model)
        ctx.options[PASS] = {**ctx.options.get(PASS, {}), **options}
        return [PASS]


def _warn_unused(values: dict[str, Any], opts: QuantOptions, synthetic: bool) -> None:
    """Options given but without effect under the others: a warning, not silence."""
    methods = [opts.method.name] + [o.method.name for o in opts.overrides] + (list(METHODS) if opts.method.name == AUTO else [])
    unused = []
    if values.get("calib_percentile") is not None and "percentile" not in methods:
        unused.append(("--calib-percentile", "no tensor uses --calib-method percentile"))
    if values.get("calib_bins") is not None and set(methods) == {"minmax"}:
        unused.append(("--calib-bins", "minmax needs no histogram"))
    if values.get("quant_rounding_samples") is not None and opts.rounding != "gptq" and not opts.corrects_bias(synthetic):
        unused.append(("--quant-rounding-samples", "neither gptq rounding nor bias correction is on"))
    for flag, why in unused:
        logger.warning("%s has no effect: %s", flag, why)


def check_float_model(model: onnx.ModelProto) -> None:
    """UsageError when the model already holds Q/DQ or integer ops (no double quantization)."""
    found: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type.startswith(QUANTIZED_PREFIXES):
            found[node.op_type] = found.get(node.op_type, 0) + 1
    if found:
        listed = ", ".join(f"{n} {op}" for op, n in sorted(found.items(), key=lambda kv: -kv[1])[:4])
        raise UsageError(f"the model is already quantized ({listed}); --quantize needs the float model")
