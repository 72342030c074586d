"""The Python API, mirroring the CLI: ``optimize`` (in memory) and ``optimize_file`` (on disk)."""

from __future__ import annotations

import gc
import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

import onnx
import onnx_graphsurgeon as gs

from onnxslim import io
from onnxslim.errors import InputModelError, UsageError, VerificationFailedError
from onnxslim.graph import export_model, import_model
from onnxslim.pipeline import DEFAULT_PIPELINE, PassContext, PassRecord, Pipeline, get_pass, parse_pipeline, registry, without_passes
from onnxslim.report import Report, file_digest
from onnxslim.stats import compute as compute_stats
from onnxslim.verify import reference_outputs, verify as verify_models, verify_against

logger = logging.getLogger(__name__)


def check_model(model: onnx.ModelProto, path: str | os.PathLike | None = None) -> None:
    """Structural validity (SSA, topological order, known opsets) with a one-line error."""
    try:
        if model.ByteSize() < io.TWO_GB - 2**20:
            onnx.checker.check_model(model)
        elif path is not None:
            onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid model"
        raise InputModelError(f"invalid ONNX model: {first[:300]}") from exc
    except (RuntimeError, ValueError) as exc:  # e.g. an opset newer than the installed onnx
        raise InputModelError(f"invalid ONNX model: {str(exc).strip().splitlines()[0][:300]}") from exc


def build_pipeline(passes: str | None = None, skip: Sequence[str] = ()) -> Pipeline:
    steps = parse_pipeline(passes or DEFAULT_PIPELINE)
    if skip:
        steps = without_passes(steps, set(skip))
        if not steps:
            raise UsageError("--skip removed every pass from the pipeline")
    return Pipeline(steps)


def apply_input_shapes(graph: gs.Graph, input_shapes: dict[str, Sequence[int]] | None) -> None:
    """Fix graph input dims; the input must exist and the rank must agree."""
    if not input_shapes:
        return
    by_name = {t.name: t for t in graph.inputs}
    for name, shape in input_shapes.items():
        if name not in by_name:
            known = ", ".join(sorted(by_name)) or "none"
            raise UsageError(f"--input-shape names {name!r}, which is not a model input (inputs: {known})")
        tensor = by_name[name]
        if any(int(d) <= 0 for d in shape):
            raise UsageError(f"--input-shape {name}: dimensions must be positive, got {list(shape)}")
        if tensor.shape is not None and len(tensor.shape) != len(shape):
            raise UsageError(f"--input-shape {name}: rank {len(shape)} given, the model's input has rank {len(tensor.shape)}")
        if tensor.shape is not None:
            for have, want in zip(tensor.shape, shape):
                if isinstance(have, int) and have > 0 and have != int(want):
                    raise UsageError(f"--input-shape {name}: {list(shape)} conflicts with the model's fixed shape {list(tensor.shape)}")
        tensor.shape = [int(d) for d in shape]


class _VerifyEach:
    """After-pass hook: verify after every changed pass; name the first pass that broke outputs."""

    def __init__(self, template: onnx.ModelProto, original: Any, input_shapes, inputs_file, tolerance, seed):
        self.template = template
        self.tolerance = tolerance
        self.seed = seed
        self.feeds, self.names, self.want = reference_outputs(original, template, input_shapes, inputs_file, seed)
        self.results: list[dict[str, Any]] = []

    def __call__(self, record: PassRecord, graph: gs.Graph) -> None:
        candidate = export_model(graph.copy(), self.template)
        result = verify_against(self.want, self.names, self.feeds, candidate, self.tolerance, self.seed)
        self.results.append({"pass": record.name, "round": record.round, "status": result.status, "reason": result.reason})
        if not result.ok:
            raise VerificationFailedError(f"pass {record.name!r} (round {record.round}) changed the outputs: {result.reason}")


def _run(
    model: onnx.ModelProto,
    report: Report,
    pipeline: Pipeline,
    ctx: PassContext,
    verify_each: _VerifyEach | None,
) -> onnx.ModelProto:
    graph = import_model(model)
    apply_input_shapes(graph, ctx.input_shapes)
    if "infer_shapes" in registry():
        get_pass("infer_shapes")().run(graph, ctx)
    report.before = compute_stats(graph)
    start = time.perf_counter()
    try:
        report.passes = pipeline.run(graph, ctx, verify_each)
    finally:
        report.seconds["passes"] = time.perf_counter() - start
        if verify_each is not None:
            report.verify_each = verify_each.results
        report.notes = ctx.notes
    report.after = compute_stats(graph)
    out = export_model(graph, model)
    return out


def _context(target, device, options, input_shapes, strict) -> PassContext:
    return PassContext(
        target=target,
        device=device,
        options=dict(options or {}),
        input_shapes={k: tuple(int(d) for d in v) for k, v in (input_shapes or {}).items()},
        strict=strict,
    )


def optimize(
    model: onnx.ModelProto | str | os.PathLike,
    *,
    passes: str | None = None,
    skip: Sequence[str] = (),
    verify: bool = True,
    verify_each: bool = False,
    input_shapes: dict[str, Sequence[int]] | None = None,
    inputs_file: str | os.PathLike | None = None,
    tolerance: float | None = None,
    target: str = "ort",
    device: str = "x86",
    options: dict[str, dict[str, Any]] | None = None,
    strict: bool = False,
    seed: int = 0,
) -> tuple[onnx.ModelProto, Report]:
    """Optimize a model in memory. Returns the new model and the report.

    ``model`` may be a ModelProto (left unchanged) or a path. Raises
    :class:`VerificationFailedError` when verification is on and outputs differ.
    """
    original_source: Any = model
    if not isinstance(model, onnx.ModelProto):
        original_source = str(model)
        model = io.load(model)
        check_model(model, original_source)
    else:
        check_model(model)
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        original_source, model = model, copy
    pipeline = build_pipeline(passes, skip)
    ctx = _context(target, device, options, input_shapes, strict)
    report = Report(pipeline=str(pipeline), options=_options_dict(locals()))
    hook = _VerifyEach(model, original_source, input_shapes, inputs_file, tolerance, seed) if verify_each else None
    out = _run(model, report, pipeline, ctx, hook)
    if verify:
        start = time.perf_counter()
        report.verification = verify_models(original_source, out, input_shapes=input_shapes, inputs_file=inputs_file, tolerance=tolerance, seed=seed)
        report.seconds["verify"] = time.perf_counter() - start
        if report.verification.status == "failed":
            raise VerificationFailedError(report.verification.summary())
    return out, report


def failed_output_name(output: Path) -> Path:
    """Where an output that failed verification is written: ``x.onnx`` -> ``x.verify-failed.onnx``."""
    suffix = output.suffix or ".onnx"
    return output.with_name(output.name[: len(output.name) - len(output.suffix)] + ".verify-failed" + suffix)


def default_output(input_path: str | os.PathLike) -> Path:
    p = Path(input_path)
    stem = p.name[: -len(p.suffix)] if p.suffix else p.name
    return p.with_name(stem + ".opt.onnx")


def optimize_file(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike | None = None,
    *,
    passes: str | None = None,
    skip: Sequence[str] = (),
    verify: bool = True,
    verify_each: bool = False,
    input_shapes: dict[str, Sequence[int]] | None = None,
    inputs_file: str | os.PathLike | None = None,
    tolerance: float | None = None,
    external_data: bool | None = None,
    target: str = "ort",
    device: str = "x86",
    options: dict[str, dict[str, Any]] | None = None,
    strict: bool = False,
    seed: int = 0,
) -> Report:
    """Optimize a file into another file, atomically, verifying from disk to keep memory low.

    On a verification failure the output is written as ``<name>.verify-failed.onnx`` and
    :class:`VerificationFailedError` is raised with the report attached as ``.report``.
    """
    t0 = time.perf_counter()
    io.check_input_file(input_path)
    output = Path(output_path) if output_path is not None else default_output(input_path)
    io.check_output_path(output, [input_path])
    pipeline = build_pipeline(passes, skip)
    model = io.load(input_path)
    check_model(model, input_path)
    report = Report(pipeline=str(pipeline), options=_options_dict(locals()))
    report.input = file_digest(input_path)
    report.seconds["load"] = time.perf_counter() - t0
    ctx = _context(target, device, options, input_shapes, strict)
    hook = _VerifyEach(model, str(input_path), input_shapes, inputs_file, tolerance, seed) if verify_each else None
    out = _run(model, report, pipeline, ctx, hook)
    del model, hook
    gc.collect()
    with io.staged(output) as tmp:
        t1 = time.perf_counter()
        staged_file = tmp / output.name
        written = io.write_into(out, staged_file, external_data)
        del out
        gc.collect()
        report.seconds["save"] = time.perf_counter() - t1
        if verify:
            t2 = time.perf_counter()
            report.verification = verify_models(str(input_path), str(staged_file), input_shapes=input_shapes, inputs_file=inputs_file, tolerance=tolerance, seed=seed)
            report.seconds["verify"] = time.perf_counter() - t2
        failed = report.verification is not None and report.verification.status == "failed"
        final = failed_output_name(output) if failed else output
        if failed:  # rare: re-save under the failed name so external-data names match it
            io.save(io.load(staged_file), final, external_data=len(written) > 1)
        else:
            io.commit(tmp, final, written)
    report.output = file_digest(final)
    report.seconds["total"] = time.perf_counter() - t0
    if failed:
        err = VerificationFailedError(f"{report.verification.summary()}; output kept as {final}")
        err.report = report
        raise err
    return report


def _options_dict(local_vars: dict[str, Any]) -> dict[str, Any]:
    keys = ("passes", "skip", "verify", "verify_each", "input_shapes", "inputs_file", "tolerance", "target", "device", "options", "strict", "seed", "external_data")
    out = {}
    for k in keys:
        if k in local_vars:
            v = local_vars[k]
            if isinstance(v, (tuple, set)):
                v = list(v)
            if isinstance(v, os.PathLike):
                v = str(v)
            out[k] = v
    return out
