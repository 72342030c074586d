"""An offline TensorRT linter: checks an ONNX model against TensorRT's ONNX operator support and
the Q/DQ placement rules of explicit quantization, and says what is wrong and where.

    python -m onnxslim.targets.lint model.onnx [--json report.json]

One line per finding (``MODEL: error|warning: node 'x' (Conv): message [RULE]``). Exit 0: clean;
1: findings; 2: bad input (missing file, not an ONNX model, a --json path that is the model,
a folder or in a missing folder).

Rules (errors make the engine build fail or compute the wrong thing; warnings cost speed/accuracy):

* TRT-OP / TRT-QOP / TRT-OPSET / TRT-TYPE / TRT-RESTRICT: operators outside TensorRT's ONNX support
  table (:mod:`onnxslim.targets.trt_ops`), QOperator/integer ops, opsets outside 9..24, tensor types
  it lacks, per-operator restrictions (constant axes, MaxPool indices, Resize modes, ...).
* TRT-Q-INT8 / TRT-Q-ZERO / TRT-Q-SCALE: Q/DQ must be int8, symmetric (zero point 0) with constant,
  positive scales.
* TRT-BIAS: biases stay float (no int32 DequantizeLinear).
* TRT-QDQ-BOTH: Conv/ConvTranspose/Gemm/MatMul run in int8 only with Q/DQ on both inputs.
* TRT-PER-CHANNEL: weights per-channel on the output-channel axis (0 Conv, 1 ConvTranspose).
* TRT-CONV-ACT: no Q/DQ between a conv and its BatchNormalization/Relu (blocks the fusion).
* TRT-QDQ-USELESS: a Q/DQ whose readers all stay float (or a graph output) only adds reformats.
* TRT-RESIDUAL: a residual Add quantizes its skip input only (the conv branch fuses).
* TRT-SCALE-SHARE: Concat inputs (and pooling input/output) share one scale.
* TRT-LOW-GAIN: convs with < 16 channels and MatMul/Gemm weights under 64 gain little in int8.

The thresholds and op sets come from the TensorRT placement rules that ``--quantize int8 --target
tensorrt`` uses (:mod:`onnxslim.quantization.rules`), so a model that pass quantized lints clean.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxslim.graph import constant_value, import_model, is_constant
from onnxslim.quantization.rules import COMPUTE_OPS, rules_for
from onnxslim.targets import trt_ops

_POOLS = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool")
_FUSED_AFTER_CONV = ("BatchNormalization", "Relu")


@dataclass(frozen=True)
class Finding:
    level: str  # "error" | "warning"
    rule: str
    where: str
    message: str

    def line(self, path: str) -> str:
        return f"{path}: {self.level}: {self.where}: {self.message} [{self.rule}]"


def _where(node: gs.Node) -> str:
    return f"node {node.name or (node.outputs[0].name if node.outputs else '?')!r} ({node.op})"


def _producer(t: gs.Tensor) -> gs.Node | None:
    return t.inputs[0] if t.inputs else None


def _dq_of(t: gs.Tensor | None) -> gs.Node | None:
    """The DequantizeLinear that produces ``t``, if any."""
    node = _producer(t) if t is not None else None
    return node if node is not None and node.op == "DequantizeLinear" else None


def _used(graph_outputs: set[str], t: gs.Tensor) -> bool:
    return bool(t.name) and (bool(t.outputs) or t.name in graph_outputs)


class Linter:
    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.graph = import_model(model)
        self.rules = rules_for("tensorrt", "cuda")
        self.outputs = {t.name for t in self.graph.outputs}
        self.findings: list[Finding] = []

    def add(self, level: str, rule: str, where: str, message: str) -> None:
        self.findings.append(Finding(level, rule, where, message))

    def run(self) -> list[Finding]:
        self._opsets()
        self._io_types()
        self._ops(self.graph)
        for node in self.graph.nodes:
            if (node.domain or "") not in ("", "ai.onnx"):
                continue
            if node.op in ("QuantizeLinear", "DequantizeLinear"):
                self._qdq_node(node)
            elif node.op in COMPUTE_OPS:
                self._compute(node)
            elif node.op == "Add":
                self._residual(node)
            if node.op == "Concat" or node.op in _POOLS:
                self._shared_scale(node)
            self._restrictions(node)
        return self.findings

    # -- operator support ------------------------------------------------------------------

    def _opsets(self) -> None:
        for entry in self.model.opset_import:
            if entry.domain in ("", "ai.onnx") and not trt_ops.OPSET_MIN <= entry.version <= trt_ops.OPSET_MAX:
                self.add("error", "TRT-OPSET", "model", f"opset {entry.version} is outside the {trt_ops.OPSET_MIN}.."
                         f"{trt_ops.OPSET_MAX} TensorRT {trt_ops.TRT_VERSION} imports")

    def _io_types(self) -> None:
        for t in [*self.graph.inputs, *self.graph.outputs]:
            if t.dtype is None:
                continue
            name = onnx.TensorProto.DataType.Name(onnx.helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype))) \
                if not isinstance(t.dtype, int) else onnx.TensorProto.DataType.Name(t.dtype)
            if name not in trt_ops.TENSOR_TYPES or name in trt_ops.QUANTIZED_TYPES:
                self.add("error", "TRT-TYPE", f"tensor {t.name!r}", f"graph input/output of type {name}, which TensorRT does not take")

    def _ops(self, graph: gs.Graph) -> None:
        for node in graph.nodes:
            state = trt_ops.status(node.op, node.domain or "")
            if node.op.startswith(trt_ops.QOPERATOR_PREFIXES):
                self.add("error", "TRT-QOP", _where(node), "QOperator/integer op: TensorRT takes explicit quantization "
                         "as QuantizeLinear/DequantizeLinear pairs only (re-quantize with --target tensorrt)")
            elif state == "unsupported":
                what = f"custom-domain op ({node.domain}) needs a TensorRT plugin" if (node.domain or "") not in ("", "ai.onnx") \
                    else f"not supported by TensorRT {trt_ops.TRT_VERSION}'s ONNX parser"
                self.add("error", "TRT-OP", _where(node), what)
            elif state == "unknown":
                self.add("warning", "TRT-OP", _where(node), f"not in TensorRT {trt_ops.TRT_VERSION}'s ONNX operator table")
            for attr in node.attrs.values():
                for sub in (attr if isinstance(attr, list) else [attr]):
                    if isinstance(sub, gs.Graph):
                        self._ops(sub)

    def _restrictions(self, node: gs.Node) -> None:
        op, ins, attrs = node.op, node.inputs, node.attrs
        fail = lambda msg: self.add("error", "TRT-RESTRICT", _where(node), msg)  # noqa: E731
        if op in ("MaxPool", "AveragePool", "LpPool"):
            if op != "LpPool" and len(attrs.get("kernel_shape", [0, 0])) not in (2, 3):
                fail("only 2D or 3D pooling is supported")
            if any(int(d) != 1 for d in attrs.get("dilations", []) or []):
                fail("dilations must be all ones")
            if op == "MaxPool" and len(node.outputs) > 1 and _used(self.outputs, node.outputs[1]):
                fail("the Indices output is unsupported")
        elif op.startswith("Reduce") and len(ins) > 1 and ins[1].name and not is_constant(ins[1]):
            fail("axes must be an initializer")
        elif op == "TopK":
            k = constant_value(ins[1]) if len(ins) > 1 else None
            if k is None:
                fail("K must be a constant")
            elif int(np.asarray(k).ravel()[0]) >= 3840:
                fail(f"K = {int(np.asarray(k).ravel()[0])} must be below 3840")
            if int(attrs.get("sorted", 1)) != 1:
                fail("sorted must be 1")
        elif op in ("Squeeze", "Unsqueeze") and len(ins) > 1 and ins[1].name and not is_constant(ins[1]):
            self.add("warning", "TRT-RESTRICT", _where(node), "axes must be resolvable to a constant at build time")
        elif op in ("CumSum", "OneHot") and len(ins) > 1 and not is_constant(ins[1]):
            fail(f"{'axis' if op == 'CumSum' else 'depth'} must be a build-time constant")
        elif op == "Dropout" and len(ins) > 2 and ins[2].name:
            value = constant_value(ins[2])
            if value is None or bool(np.asarray(value).ravel()[0]):
                fail("training_mode must be an initializer that is False")
        elif op == "LayerNormalization" and any(_used(self.outputs, t) for t in node.outputs[1:]):
            fail("only the first output (Y) is supported")
        elif op == "ScatterND" and attrs.get("reduction", "none") != "none":
            fail(f"reduction {attrs['reduction']!r} is unsupported (only none)")
        elif op == "Resize":
            if attrs.get("mode", "nearest") not in ("nearest", "linear"):
                fail(f"mode {attrs['mode']!r} is unsupported (nearest, linear)")
            if attrs.get("coordinate_transformation_mode") == "tf_crop_and_resize":
                fail("coordinate_transformation_mode tf_crop_and_resize is unsupported")
            if int(attrs.get("antialias", 0)):
                fail("antialiasing is unsupported")
            if attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
                fail("only keep_aspect_ratio_policy stretch is supported")
        elif op == "Cast":
            to = onnx.TensorProto.DataType.Name(int(attrs.get("to", 1)))
            if to not in trt_ops.TENSOR_TYPES or to in trt_ops.QUANTIZED_TYPES:
                fail(f"cast to {to}, which TensorRT does not take")

    # -- Q/DQ placement -------------------------------------------------------------------

    def _qdq_node(self, node: gs.Node) -> None:
        ins = node.inputs
        scale = constant_value(ins[1]) if len(ins) > 1 else None
        if scale is None:
            self.add("error", "TRT-Q-SCALE", _where(node), "scale must be a constant")
        elif not (np.all(np.isfinite(scale)) and np.all(np.asarray(scale) > 0)):
            self.add("error", "TRT-Q-SCALE", _where(node), "scale must be positive and finite")
        zp = ins[2] if len(ins) > 2 and ins[2].name else None
        if zp is not None:
            zp_value = constant_value(zp)
            zp_type = np.dtype(zp.dtype) if zp.dtype is not None else None
            if zp_value is None:
                self.add("error", "TRT-Q-ZERO", _where(node), "zero point must be a constant 0")
            elif np.any(np.asarray(zp_value).astype(np.float64) != 0):
                self.add("error", "TRT-Q-ZERO", _where(node), "zero point must be 0 (TensorRT quantization is symmetric)")
            dtype = str(zp_type) if zp_type is not None else "?"
        elif node.op == "QuantizeLinear":
            out = int(node.attrs.get("output_dtype", 0))
            dtype = "int8" if out == onnx.TensorProto.INT8 else ("uint8" if out in (0, onnx.TensorProto.UINT8) else str(out))
        else:
            data = ins[0]
            dtype = str(np.dtype(data.dtype)) if data.dtype is not None and not isinstance(data.dtype, int) else "?"
        if dtype == "int32" and node.op == "DequantizeLinear" and any(c.op in COMPUTE_OPS and len(c.inputs) > 2 and c.inputs[2] is node.outputs[0]
                                                                     for c in node.outputs[0].outputs):
            self.add("error", "TRT-BIAS", _where(node), "int32 bias dequantization: TensorRT keeps biases in float "
                     "(leave the bias a float initializer)")
        elif dtype not in ("int8", "?") and "float8" not in dtype and "int4" not in dtype:
            self.add("error", "TRT-Q-INT8", _where(node), f"{dtype} quantization: TensorRT's explicit quantization is int8 "
                     "(int8 zero point of 0)")
        if node.op == "DequantizeLinear" and not is_constant(ins[0]):
            self._useless(node)

    def _useless(self, dq: gs.Node) -> None:
        out = dq.outputs[0]
        readers = sorted({c.op for c in out.outputs})
        if out.name in self.outputs:
            self.add("warning", "TRT-QDQ-USELESS", _where(dq), f"graph output {out.name!r} is quantized: outputs stay "
                     "float unless their consumer takes int8")
        elif readers and not any(op in trt_ops.INT8_CONSUMERS for op in readers):
            self.add("warning", "TRT-QDQ-USELESS", _where(dq), f"feeds only float ops ({', '.join(readers)}): "
                     "the Q/DQ pair adds reformats and gains nothing")

    def _compute(self, node: gs.Node) -> None:
        ins = node.inputs
        if len(ins) < 2:
            return
        dqs = [_dq_of(ins[0]), _dq_of(ins[1])]
        if (dqs[0] is None) != (dqs[1] is None):
            quantized = 0 if dqs[0] is not None else 1
            self.add("warning", "TRT-QDQ-BOTH", _where(node), f"only input {quantized} has Q/DQ: TensorRT runs it in "
                     f"int8 only with Q/DQ on both inputs (input {1 - quantized} {ins[1 - quantized].name!r} has none)")
        if dqs[0] is not None and dqs[1] is not None:
            self._weights(node, dqs)
        self._conv_act(node)

    def _weights(self, node: gs.Node, dqs: list[gs.Node]) -> None:
        slot = next((i for i in (1, 0) if is_constant(dqs[i].inputs[0])), None)
        if slot is None:
            return  # two activations (e.g. attention scores): nothing to check per channel
        dq = dqs[slot]
        w = constant_value(dq.inputs[0])
        scale = constant_value(dq.inputs[1])
        if w is None or scale is None or w.ndim < 2:
            return
        group = int(node.attrs.get("group", 1))
        if node.op == "Conv":
            axis, cout, cin = 0, w.shape[0], w.shape[1] * group
        elif node.op == "ConvTranspose":
            axis, cout, cin = 1, w.shape[1] * group, w.shape[0]
        elif node.op == "Gemm":
            axis = 0 if node.attrs.get("transB", 0) else 1
            cout = cin = None
        else:
            axis = w.ndim - 1 if slot == 1 else w.ndim - 2
            cout = cin = None
        if np.asarray(scale).size > 1:
            got = int(dq.attrs.get("axis", 1))
            got = got + w.ndim if got < 0 else got
            if got != axis:
                self.add("error", "TRT-PER-CHANNEL", _where(node), f"weight scales are per-channel on axis {got}; "
                         f"{node.op} needs axis {axis} (its output channels)")
        elif w.shape[axis] > 1:
            self.add("warning", "TRT-PER-CHANNEL", _where(node), f"per-tensor weight scale; per-channel on axis {axis} "
                     "keeps accuracy at no cost")
        r = self.rules
        if cout is not None and min(cout, cin) < r.min_conv_channels:
            self.add("warning", "TRT-LOW-GAIN", _where(node), f"{min(cout, cin)} channels (< {r.min_conv_channels}): "
                     "little to gain in int8, keep it float")
        elif node.op in ("MatMul", "Gemm") and min(w.shape[-2:]) < r.min_matmul_size:
            self.add("warning", "TRT-LOW-GAIN", _where(node), f"weight {list(w.shape)} smaller than {r.min_matmul_size}: "
                     "little to gain in int8, keep it float")

    def _conv_act(self, node: gs.Node) -> None:
        if node.op not in ("Conv", "ConvTranspose"):
            return
        for q in node.outputs[0].outputs:
            if q.op != "QuantizeLinear":
                continue
            for dq in q.outputs[0].outputs:
                if dq.op != "DequantizeLinear":
                    continue
                fused = sorted({c.op for c in dq.outputs[0].outputs if c.op in _FUSED_AFTER_CONV})
                if fused:
                    self.add("warning", "TRT-CONV-ACT", _where(node), f"Q/DQ between the conv and its {'/'.join(fused)} "
                             "keeps TensorRT from fusing them: quantize after the activation")

    def _residual(self, node: gs.Node) -> None:
        if len(node.inputs) != 2:
            return
        dqs = [_dq_of(t) for t in node.inputs]
        if any(d is None for d in dqs):
            return
        for dq in dqs:
            q = _producer(dq.inputs[0])
            conv = _producer(q.inputs[0]) if q is not None and q.op == "QuantizeLinear" else None
            if conv is not None and conv.op in COMPUTE_OPS:
                self.add("warning", "TRT-RESIDUAL", _where(node), f"Q/DQ on the input from {conv.op} {conv.name!r}: "
                         "a residual Add quantizes only its skip input, so TensorRT fuses it into the conv")
                return

    def _shared_scale(self, node: gs.Node) -> None:
        scales = []
        for t in node.inputs:
            dq = _dq_of(t)
            if dq is not None and not is_constant(dq.inputs[0]):
                scales.append(constant_value(dq.inputs[1]))
        if node.op in _POOLS and scales:
            for q in node.outputs[0].outputs:
                if q.op == "QuantizeLinear":
                    scales.append(constant_value(q.inputs[1]))
        known = [np.asarray(s, np.float64).ravel() for s in scales if s is not None]
        if len(known) > 1 and any(k.shape != known[0].shape or not np.allclose(k, known[0], rtol=1e-6, atol=0) for k in known[1:]):
            what = "inputs" if node.op == "Concat" else "input and output"
            self.add("warning", "TRT-SCALE-SHARE", _where(node), f"{what} have different Q/DQ scales: TensorRT needs one "
                     "shared scale to keep this op in int8")


def lint(model: onnx.ModelProto) -> list[Finding]:
    """Findings for ``model`` (errors first, then warnings; each in graph order)."""
    found = Linter(model).run()
    return [f for f in found if f.level == "error"] + [f for f in found if f.level != "error"]


def lint_file(path: str | Path) -> list[Finding]:
    from onnxslim import io

    io.check_input_file(path)
    return lint(io.load(path))


def main(argv: list[str] | None = None, prog: str = "onnxslim-lint") -> int:
    """Exit 0 clean, 1 findings, 2 bad input (model, --json path); errors are one line on stderr.
    The findings go to stdout; a reader that stops early (``| head -1``) ends the printing quietly."""
    parser = argparse.ArgumentParser(prog="python -m onnxslim.targets.lint",
                                     description="Check an ONNX model against TensorRT's ONNX support and Q/DQ rules.")
    parser.add_argument("model")
    parser.add_argument("--json", dest="json_path", help="also write the findings as JSON")
    args = parser.parse_args(argv)
    from onnxslim.errors import OnnxSlimError

    try:
        if args.json_path:
            from onnxslim import io

            io.check_input_file(args.model)  # a missing model is the first thing to say
            check_json_path(args.json_path, args.model)
        findings = lint_file(args.model)
    except OnnxSlimError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    from onnxslim.progress import say

    if findings:
        say("\n".join(f.line(args.model) for f in findings))
    if args.json_path:
        try:
            _write_atomically(Path(args.json_path), json.dumps([asdict(f) for f in findings], indent=2) + "\n")
        except OSError as exc:
            print(f"{prog}: error: --json {args.json_path}: cannot write it: {exc.strerror or exc}", file=sys.stderr)
            return 2
    errors = sum(f.level == "error" for f in findings)
    print(f"{args.model}: {errors} error(s), {len(findings) - errors} warning(s)", file=sys.stderr)
    return 1 if findings else 0


def check_json_path(json_path: str | Path, model: str | Path) -> None:
    """The --json file must not be the model (any spelling: symlink, hard link), nor one of its
    external-data files, and must be a writable file in an existing folder (OutputError)."""
    import os

    from onnxslim.errors import OutputError
    from onnxslim.targets.common import _external_locations, header

    out, model = Path(json_path), Path(model)
    inputs = [("the input model", model)]
    if model.is_file():
        try:
            inputs += [(f"the model's external data {name}", model.parent / name)
                       for name in sorted(_external_locations(header(model)))]
        except Exception:  # not a model: lint_file says so
            pass
    for what, path in inputs:
        try:
            if out.resolve() == path.resolve() or (out.exists() and path.exists() and os.path.samefile(out, path)):
                raise OutputError(f"--json {out}: is {what}; choose another path")
        except (OSError, RuntimeError):
            pass
    if out.is_dir():
        raise OutputError(f"--json {out}: is a folder; give a file name")
    parent = out.absolute().parent
    if not parent.is_dir():
        raise OutputError(f"--json {out}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"--json {out}: folder {parent} is not writable")


def _write_atomically(path: Path, text: str) -> None:
    import os
    import secrets

    tmp = path.absolute().parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


if __name__ == "__main__":
    sys.exit(main())
