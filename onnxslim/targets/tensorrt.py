"""TensorRT on CUDA (and Jetson on ARM): a TensorRT-ready model.onnx, build_engine.sh, the engine where possible.

TensorRT builds its engine on the machine that runs it, so what is emitted is the input of that
build plus the command: ``model.onnx`` (the optimized model; with ``--quantize int8 --target
tensorrt`` its Q/DQ pairs follow TensorRT's explicit-quantization placement), ``build_engine.sh``
(``trtexec`` with the precision flags and, for dynamic inputs, ``--minShapes/--optShapes/
--maxShapes``; the equivalent ``polygraphy convert`` when trtexec is absent) and, when the
``tensorrt`` module imports and a GPU is present here, ``model.engine`` built in-process.

Precision (``--trt-precision``): ``auto`` gives ``--int8 --fp16`` for Q/DQ models (int8 where the
Q/DQ pairs say, fp16 elsewhere) and ``--fp16`` for float models; ``fp32`` adds no flag;
``strongly-typed`` passes ``--stronglyTyped`` (types exactly as in the ONNX file).

Dynamic dimensions need an optimization profile: ``--trt-shapes NAME:MIN/OPT/MAX`` (each shape
``1x3x224x224``); without one, a symbolic first axis gets 1/1/8 and other symbolic axes
1/128/512 (noted in the result), and dims that share a name share values.

Checks here: our TensorRT linter (:mod:`onnxslim.targets.lint`, written to lint.txt) and, when
polygraphy is installed, ``polygraphy check lint`` (it runs onnx.checker and onnxruntime node by
node; it does not need TensorRT; option ``polygraphy=False`` leaves it out).
"""

from __future__ import annotations

import importlib.util
import json
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

from onnxslim.errors import UsageError
from onnxslim.targets import EmitResult
from onnxslim.targets.common import InputSpec, copy_model, header, input_specs, is_quantized

PRECISIONS = ("auto", "fp32", "fp16", "strongly-typed")
_DEFAULT_BATCH = (1, 1, 8)
_DEFAULT_OTHER = (1, 128, 512)


def validate(device: str, options: dict[str, Any], model=None) -> dict[str, Any]:
    precision = options.get("precision") or "auto"
    if precision not in PRECISIONS:
        raise UsageError(f"--trt-precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    options["precision"] = precision
    options["shapes"] = parse_shapes(options.get("shapes") or ())
    if model is not None:  # names and ranks against the model's inputs, before any work
        profile(input_specs(model, options.get("input_shapes")), options["shapes"], [])
    return options


def parse_shapes(values) -> dict[str, tuple[list[int], list[int], list[int]]]:
    """``NAME:MIN/OPT/MAX`` strings (shapes as 1x3x224x224 or 1,3,224,224) -> {name: (min, opt, max)}."""
    if isinstance(values, dict):
        return {k: tuple([int(d) for d in s] for s in v) for k, v in values.items()}
    out = {}
    for value in values:
        name, sep, rest = str(value).rpartition(":")
        if name in out:
            raise UsageError(f"--trt-shapes {value!r}: {name} is given twice")
        parts = rest.split("/")
        if not sep or not name or len(parts) != 3:
            raise UsageError(f"--trt-shapes {value!r}: expected NAME:MIN/OPT/MAX, e.g. input_ids:1x16/1x128/8x512")
        try:
            shapes = [[int(d) for d in p.replace(",", "x").split("x") if d.strip()] for p in parts]
        except ValueError:
            raise UsageError(f"--trt-shapes {value!r}: dimensions must be integers") from None
        lo, mid, hi = shapes
        if not (len(lo) == len(mid) == len(hi)) or any(not 0 < a <= b <= c for a, b, c in zip(lo, mid, hi)):
            raise UsageError(f"--trt-shapes {value!r}: MIN <= OPT <= MAX, same rank, positive dims")
        out[name] = (lo, mid, hi)
    return out


def profile(specs: list[InputSpec], given: dict[str, tuple], notes: list[str]) -> dict[str, tuple[list[int], list[int], list[int]]]:
    """min/opt/max shapes for every dynamic input (user's first, then shared-name defaults)."""
    known = {s.name for s in specs}
    unknown = sorted(set(given) - known)
    if unknown:
        raise UsageError(f"--trt-shapes names {unknown[0]!r}, which is not a model input (inputs: {', '.join(sorted(known))})")
    named: dict[str, tuple[int, int, int]] = {}
    for spec in specs:  # dims named by the user's shapes fix the same-named dims elsewhere
        if spec.name in given:
            lo, mid, hi = given[spec.name]
            if len(lo) != len(spec.dims):
                raise UsageError(f"--trt-shapes {spec.name}: rank {len(lo)} given, the input has rank {len(spec.dims)}")
            for axis, d in enumerate(spec.dims):
                if isinstance(d, int) and not lo[axis] == mid[axis] == hi[axis] == d:
                    raise UsageError(f"--trt-shapes {spec.name}: axis {axis} is fixed to {d} in the model, "
                                     f"the profile gives {lo[axis]}/{mid[axis]}/{hi[axis]}")
                if isinstance(d, str) and d != "?":
                    named.setdefault(d, (lo[axis], mid[axis], hi[axis]))
    out, defaulted = {}, []
    for spec in specs:
        if not spec.dynamic:
            continue
        if spec.name in given:
            out[spec.name] = given[spec.name]
            continue
        triple = []
        for axis, d in enumerate(spec.dims):
            if isinstance(d, int):
                triple.append((d, d, d))
            else:
                value = named.get(d) if d != "?" else None
                if value is None:
                    value = _DEFAULT_BATCH if axis == 0 else _DEFAULT_OTHER
                    if d != "?":
                        named[d] = value
                    defaulted.append(f"{spec.name}[{axis}]")
                triple.append(value)
        out[spec.name] = tuple([t[i] for t in triple] for i in range(3))
    if defaulted:
        notes.append(f"dynamic dims without --trt-shapes got default ranges (first axis 1/1/8, others 1/128/512): "
                     f"{', '.join(defaulted)}")
    return out


def precision_flags(precision: str, quantized: bool) -> list[str]:
    if precision == "strongly-typed":
        return ["--stronglyTyped"]
    if precision == "fp32":
        return []
    if precision == "fp16":
        return ["--fp16"]
    return ["--int8", "--fp16"] if quantized else ["--fp16"]


def _dims(shape: list[int]) -> str:
    return "x".join(str(d) for d in shape)


def trtexec_command(shapes: dict[str, tuple], flags: list[str]) -> list[str]:
    cmd = ["trtexec", "--onnx=model.onnx", "--saveEngine=model.engine", *flags]
    if shapes:
        for i, key in enumerate(("--minShapes", "--optShapes", "--maxShapes")):
            cmd.append(f"{key}=" + ",".join(f"{n}:{_dims(s[i])}" for n, s in shapes.items()))
    return cmd


def polygraphy_command(shapes: dict[str, tuple], flags: list[str]) -> list[str]:
    cmd = ["polygraphy", "convert", "model.onnx", "--convert-to", "trt", "-o", "model.engine"]
    cmd += {"--stronglyTyped": ["--strongly-typed"]}.get(flags[0], flags) if flags else []
    for i, key in enumerate(("--trt-min-shapes", "--trt-opt-shapes", "--trt-max-shapes")):
        if shapes:
            cmd += [key, *(f"{n}:[{','.join(str(d) for d in s[i])}]" for n, s in shapes.items())]
    return cmd


def build_script(device: str, trtexec: list[str], polygraphy: list[str], precision: str) -> str:
    where = "a Jetson (JetPack's TensorRT)" if device == "arm" else "the deployment machine (NVIDIA GPU, TensorRT 10)"
    return f"""#!/usr/bin/env bash
# Build a TensorRT engine from model.onnx (written by onnxslim, --target tensorrt --device {device}).
# Run it on {where}: engines are specific to the GPU and TensorRT version.
# Precision: {precision}. Extra arguments are passed on, e.g. ./build_engine.sh --verbose
set -euo pipefail
cd "$(dirname "$0")"
PATH="$PATH:/usr/src/tensorrt/bin"
if command -v trtexec >/dev/null 2>&1; then
  {shlex.join(trtexec)} "$@"
else
  # The same build with polygraphy (pip install polygraphy tensorrt):
  {shlex.join(polygraphy)} "$@"
fi
# Compare the engine with onnxruntime on the same inputs:
#   polygraphy run model.onnx --trt --onnxrt --atol 1e-3 --rtol 1e-3
"""


def emit(device: str, model_path: Path, out: Path, options: dict[str, Any], result: EmitResult) -> None:
    target = out / "model.onnx"
    for path in copy_model(model_path, target):
        result.add_file(path)
    model = header(model_path)
    quantized = is_quantized(model)
    specs = input_specs(model, options.get("input_shapes"))
    shapes = profile(specs, options["shapes"], result.notes)
    flags = precision_flags(options["precision"], quantized)
    trtexec, polygraphy = trtexec_command(shapes, flags), polygraphy_command(shapes, flags)
    script = out / "build_engine.sh"
    script.write_text(build_script(device, trtexec, polygraphy, options["precision"]))
    script.chmod(0o755)
    result.add_file(script)
    (out / "trt_profile.json").write_text(json.dumps({"precision_flags": flags, "shapes": shapes,
                                                       "trtexec": shlex.join(trtexec), "polygraphy": shlex.join(polygraphy)}, indent=2) + "\n")
    result.add_file(out / "trt_profile.json")
    _lint(target, out, result)
    if options.get("polygraphy", True):
        _polygraphy_lint(target, out, shapes, result)
    _build_engine(target, out / "model.engine", shapes, flags, result)


def _lint(model_path: Path, out: Path, result: EmitResult) -> None:
    from onnxslim.targets.lint import lint_file

    findings = lint_file(model_path)
    (out / "lint.txt").write_text("".join(f.line("model.onnx") + "\n" for f in findings) or "no findings\n")
    result.add_file(out / "lint.txt")
    errors = [f for f in findings if f.level == "error"]
    detail = f"{len(errors)} error(s), {len(findings) - len(errors)} warning(s) (lint.txt)"
    if errors:
        detail += f"; first: {errors[0].where}: {errors[0].message}"
    result.check("TensorRT linter (TensorRT ONNX op support, Q/DQ placement)", "failed" if errors else "passed", detail)


def _polygraphy_lint(model_path: Path, out: Path, shapes: dict, result: EmitResult) -> None:
    name = "polygraphy check lint (onnx.checker + onnxruntime, no TensorRT needed)"
    exe = shutil.which("polygraphy")
    if exe is None:
        result.check(name, "skipped", "polygraphy is not installed (pip install 'onnxslim[tensorrt]')")
        return
    report = out / "polygraphy_lint.json"
    cmd = [exe, "check", "lint", str(model_path), "-o", str(report)]
    if shapes:
        cmd += ["--input-shapes", *(f"{n}:[{','.join(str(d) for d in s[1])}]" for n, s in shapes.items())]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired:
        result.check(name, "skipped", "timed out after 30 min")
        return
    failing = []
    if report.is_file():
        result.add_file(report)
        failing = json.loads(report.read_text()).get("summary", {}).get("failing", [])
    ok = proc.returncode == 0 and not failing
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
    result.check(name, "passed" if ok else "failed", "no failing nodes" if ok else f"{len(failing)} failing node(s): {tail[0][:200]}")


def _build_engine(model_path: Path, engine: Path, shapes: dict, flags: list[str], result: EmitResult) -> None:
    name = "TensorRT engine built in-process (model.engine)"
    if importlib.util.find_spec("tensorrt") is None:
        result.check(name, "skipped", "the tensorrt module is not installed here; run build_engine.sh on the GPU host")
        return
    if not _has_gpu():
        result.check(name, "skipped", "no NVIDIA GPU here (nvidia-smi finds none); run build_engine.sh on the GPU host")
        return
    import tensorrt as trt  # noqa: PLC0415 - optional dependency

    logger = trt.Logger(trt.Logger.WARNING)
    try:
        builder = trt.Builder(logger)
    except Exception as exc:  # a driver/CUDA mismatch: TensorRT raises at builder creation
        result.check(name, "skipped", f"TensorRT cannot start here: {str(exc).strip()[:200] or type(exc).__name__}")
        return
    strongly = "--stronglyTyped" in flags
    network_flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly else 0
    network = builder.create_network(network_flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(model_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        result.check(name, "failed", f"TensorRT's ONNX parser rejected the model: {errors[:300]}")
        return
    config = builder.create_builder_config()
    if "--fp16" in flags:
        config.set_flag(trt.BuilderFlag.FP16)
    if "--int8" in flags:
        config.set_flag(trt.BuilderFlag.INT8)
    if shapes:
        prof = builder.create_optimization_profile()
        for input_name, (lo, mid, hi) in shapes.items():
            prof.set_shape(input_name, lo, mid, hi)
        config.add_optimization_profile(prof)
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        result.check(name, "failed", "build_serialized_network returned nothing (see TensorRT's log)")
        return
    engine.write_bytes(bytes(blob))
    result.add_file(engine)
    result.check(name, "passed", f"{engine.stat().st_size} bytes with TensorRT {trt.__version__}")


def _has_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None and subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0
