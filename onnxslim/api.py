"""The Python API, mirroring the CLI: ``optimize`` (in memory) and ``optimize_file`` (on disk)."""

from __future__ import annotations

import gc
import logging
import os
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxslim import io
from onnxslim.errors import InputModelError, UsageError, VerificationFailedError, first_line
from onnxslim.graph import export_model, export_parts, import_model, iter_subgraphs, proto_graphs
from onnxslim.pipeline import DEFAULT_PIPELINE, PassContext, PassRecord, Pipeline, get_pass, parse_pipeline, registry, without_passes
from onnxslim.report import Report, file_digest
from onnxslim.reporting.recorder import StageRecorder, chain_hooks
from onnxslim.stats import MAC_OPS, ModelStats, compute as compute_stats
from onnxslim.verify import VerificationResult, measure_fidelity, reference_outputs, synthesize_inputs, verify as verify_models, verify_against

logger = logging.getLogger(__name__)


def check_model(model: onnx.ModelProto, path: str | os.PathLike | None = None) -> None:
    """Structural validity (SSA, topological order, known opsets) with a one-line error."""
    _check_opsets_known(model)
    try:
        onnx.checker.check_model(io.skeleton(model))
    except onnx.checker.ValidationError as exc:
        raise InputModelError(f"invalid ONNX model: {first_line(exc) if str(exc).strip() else 'invalid model'}") from exc
    except (RuntimeError, ValueError) as exc:  # e.g. an opset newer than the installed onnx
        raise InputModelError(f"invalid ONNX model: {first_line(exc)}") from exc


def _check_opsets_known(model: onnx.ModelProto) -> None:
    """The checker accepts opset versions newer than the installed onnx; passes would misread them."""
    _, _, onnx_max, ml_max, _ = onnx.helper.VERSION_TABLE[-1]
    for entry in model.opset_import:
        known = {"": onnx_max, "ai.onnx": onnx_max, "ai.onnx.ml": ml_max}.get(entry.domain)
        if known is not None and entry.version > known:
            raise InputModelError(f"invalid ONNX model: opset {entry.version} of domain {entry.domain or 'ai.onnx'!r} is newer "
                                  f"than the installed onnx {onnx.__version__} knows (up to {known})")


def build_pipeline(passes: str | None = None, skip: Sequence[str] = (), extra: Sequence[str] = ()) -> Pipeline:
    text = DEFAULT_PIPELINE if passes is None else passes
    if extra:
        named = set(Pipeline(parse_pipeline(text)).pass_names()) if passes is not None else set()
        # A stage's lossy pass already named in --passes runs where the user put it, once.
        extra = [name for name in extra if name == "infer_shapes" or name not in named or not get_pass(name).lossy]
        text = ",".join([text, *extra])
    steps = parse_pipeline(text)
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
    check_input_shapes({name: t.shape for name, t in by_name.items()}, input_shapes)
    for name, shape in input_shapes.items():
        by_name[name].shape = [int(d) for d in shape]


def check_input_shapes(inputs: dict[str, Sequence[Any] | None], input_shapes: dict[str, Sequence[int]] | None) -> None:
    """``--input-shape`` against the model's inputs (name -> dims, a symbol or None where dynamic):
    the input must exist, the rank agree and fixed dims match; UsageError otherwise."""
    for name, shape in (input_shapes or {}).items():
        if name not in inputs:
            known = ", ".join(sorted(inputs)) or "none"
            raise UsageError(f"--input-shape names {name!r}, which is not a model input (inputs: {known})")
        have_shape = inputs[name]
        if any(int(d) <= 0 for d in shape):
            raise UsageError(f"--input-shape {name}: dimensions must be positive, got {list(shape)}")
        if have_shape is not None and len(have_shape) != len(shape):
            raise UsageError(f"--input-shape {name}: rank {len(shape)} given, the model's input has rank {len(have_shape)}")
        for have, want in zip(have_shape or (), shape):
            if isinstance(have, int) and have > 0 and have != int(want):
                raise UsageError(f"--input-shape {name}: {list(shape)} conflicts with the model's fixed shape {list(have_shape)}")


def proto_input_shapes(model: onnx.ModelProto) -> dict[str, list[Any] | None]:
    """Graph inputs that are not initializers: name -> dims (int, symbol string, or None)."""
    inits = {t.name for t in model.graph.initializer}
    out: dict[str, list[Any] | None] = {}
    for value in model.graph.input:
        if value.name in inits:
            continue
        t = value.type.tensor_type
        out[value.name] = ([d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
                           if t.HasField("shape") else None)
    return out


def check_inputs_file(path: str | os.PathLike, model: onnx.ModelProto, input_shapes: dict[str, Sequence[int]] | None = None) -> None:
    """``--inputs`` must give every input with the model's dtype, rank and fixed dims (else onnxruntime fails late)."""
    from onnxslim.verify import load_inputs

    feeds = load_inputs(path, model)[0]
    for inp in model.graph.input:
        if inp.name not in feeds:
            continue
        arr, t = feeds[inp.name], inp.type.tensor_type
        want = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type) if t.elem_type else arr.dtype
        if arr.dtype != want:
            raise UsageError(f"--inputs {path}: {inp.name!r} is {arr.dtype}, the model expects {want}")
        dims = list((input_shapes or {}).get(inp.name) or [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim])
        if t.HasField("shape") and (arr.ndim != len(dims) or any(w and w != h for h, w in zip(arr.shape, dims))):
            shown = [w if w else "?" for w in dims]
            raise UsageError(f"--inputs {path}: {inp.name!r} has shape {list(arr.shape)}, the model expects {shown}")


class _VerifyEach:
    """After-pass hook: verify after every changed pass; name the first pass that broke outputs.

    A lossy pass (pruning, SVD, quantization) changes the outputs on purpose: its fidelity is
    the stage's own measurement, and the passes after it are checked against its outputs."""

    def __init__(self, template: onnx.ModelProto, original: Any, input_shapes, inputs_file, tolerance, seed):
        self.template = template
        self.tolerance = tolerance
        self.seed = seed
        self.feeds, self.names, self.want = reference_outputs(original, template, input_shapes, inputs_file, seed)
        self.results: list[dict[str, Any]] = []

    def __call__(self, record: PassRecord, graph: gs.Graph) -> None:
        from onnxslim.verify import run

        candidate = export_model(graph.copy(), self.template)
        if get_pass(record.name).lossy:
            try:
                names, want = run(candidate, self.feeds)
            except Exception as exc:  # onnxruntime raises several unrelated types for a broken model
                reason = first_line(exc)
                self.results.append({"pass": record.name, "round": record.round, "status": "failed", "reason": reason})
                raise VerificationFailedError(f"pass {record.name!r} (round {record.round}) made a model onnxruntime cannot run: {reason}") from None
            if names == self.names:  # the next passes must keep this pass's outputs
                self.want = want
            self.results.append({"pass": record.name, "round": record.round, "status": "lossy",
                                 "reason": "changes outputs by design; its fidelity is in the stage's measurement"})
            return
        result = verify_against(self.want, self.names, self.feeds, candidate, self.tolerance, self.seed)
        self.results.append({"pass": record.name, "round": record.round, "status": result.status, "reason": result.reason})
        if not result.ok:
            err = VerificationFailedError(f"pass {record.name!r} (round {record.round}) changed the outputs: {result.reason}")
            err.candidate = candidate  # the model right after that pass, for the caller to keep
            raise err


def _run(
    model: onnx.ModelProto,
    report: Report,
    pipeline: Pipeline,
    ctx: PassContext,
    verify_each: _VerifyEach | None,
    streaming: bool = False,
    weights: dict[str, np.ndarray] | None = None,
    recorder: StageRecorder | None = None,
):
    graph = import_model(model)
    _attach_weights(graph, weights)
    unrepresentable = _unrepresentable_attribute(model)
    if unrepresentable:  # onnx-graphsurgeon would silently drop it: leave the model as it is
        logger.warning("model left unchanged: %s, which onnx-graphsurgeon cannot represent", unrepresentable)
        ctx.notes.append({"pass": "import", "where": "model", "reason": f"left unchanged: {unrepresentable}"})
        report.before = report.after = compute_stats(graph)
        report.notes = ctx.notes
        return _as_parts(model, weights) if streaming else model
    _untype_optionals(graph)
    apply_input_shapes(graph, ctx.input_shapes)
    if "infer_shapes" in registry():
        get_pass("infer_shapes")().run(graph, ctx)
    report.before = _before_stats(graph, ctx)
    start = time.perf_counter()
    try:
        report.passes = pipeline.run(graph, ctx, chain_hooks(verify_each, recorder))
    finally:
        report.seconds["passes"] = time.perf_counter() - start
        if verify_each is not None:
            report.verify_each = verify_each.results
        report.notes = ctx.notes
    report.after = compute_stats(graph)
    if recorder is not None:  # stats per pass and per stage, fidelity per lossy stage
        recorder.fill(report)
    keep_value_info = len(model.graph.value_info) > 0
    if streaming:
        header, initializers = export_parts(graph, model)
        _restore_io_types(header, model)
        _drop_value_info_unless(keep_value_info, header)
        return header, initializers
    return _drop_value_info_unless(keep_value_info, _restore_io_types(export_model(graph, model), model))


_SHAPE_PASSES = ("fold_shapes", "simplify_reshape_shape", "infer_shapes")


def _unknown_dims(shape) -> bool:
    """No shape, or a dimension that is neither a number nor a symbol (shape inference gave up)."""
    return shape is None or any(not isinstance(d, (int, np.integer, str)) or (not isinstance(d, str) and d < 0) for d in shape)


def _before_stats(graph: gs.Graph, ctx: PassContext) -> ModelStats:
    """Stats of the input. Where a MAC-counting node's shapes are unknown until the cleanup
    resolves them (a MatMul after Shape -> Gather -> Concat -> Reshape), the MACs are counted
    on a copy that the lossless shape passes ran over: else the input would count 0 MACs for
    that node and a cleanup would seem to add them (and --fail-if macs-reduction would trip)."""
    stats = compute_stats(graph)
    unresolved = any(n.op in MAC_OPS and any(_unknown_dims(t.shape) for t in [*n.inputs[:1], *n.outputs[:1]]) for n in graph.nodes)
    if not unresolved or not all(name in registry() for name in _SHAPE_PASSES):
        return stats
    try:
        resolved = graph.copy()  # weights are shared, not copied
        scratch = PassContext(target=ctx.target, device=ctx.device, options=dict(ctx.options), input_shapes=ctx.input_shapes)
        for name in _SHAPE_PASSES:
            get_pass(name)().run(resolved, scratch)
        counted = compute_stats(resolved)
    except Exception as exc:  # a figure in a summary is not worth failing the run for
        logger.debug("could not resolve shapes for the input's MAC count: %s", exc)
        return stats
    if counted.macs > stats.macs:
        stats.macs, stats.macs_exact, stats.macs_by_op = counted.macs, counted.macs_exact, counted.macs_by_op
    return stats


def _drop_value_info_unless(keep: bool, model: onnx.ModelProto) -> onnx.ModelProto:
    """Intermediate shape annotations are written only when the input carried some: onnxruntime
    infers them anyway, and a model must not grow for them (a ~1% size increase otherwise)."""
    if not keep:
        for graph in proto_graphs(model.graph):  # subgraphs too: shape inference annotates them now
            del graph.value_info[:]
    return model


_UNREPRESENTABLE_ATTRIBUTES = {onnx.AttributeProto.TYPE_PROTO, onnx.AttributeProto.TYPE_PROTOS, onnx.AttributeProto.TENSORS,
                               onnx.AttributeProto.SPARSE_TENSOR, onnx.AttributeProto.SPARSE_TENSORS, onnx.AttributeProto.GRAPHS}


def _unrepresentable_attribute(model: onnx.ModelProto) -> str | None:
    """The first node attribute onnx-graphsurgeon's importer skips (a type, a sparse tensor, ...)."""
    nodes = [n for g in proto_graphs(model.graph) for n in g.node] + [n for f in model.functions for n in f.node]
    for node in nodes:
        for attr in node.attribute:
            if attr.type in _UNREPRESENTABLE_ATTRIBUTES and not attr.ref_attr_name:
                kind = onnx.AttributeProto.AttributeType.Name(attr.type)
                return f"node {node.name or node.output[0]!r} ({node.op_type}) has a {kind} attribute {attr.name!r}"
    return None


def _as_parts(model: onnx.ModelProto, weights: dict[str, np.ndarray] | None = None):
    """``model`` split the way :func:`export_parts` returns it: a header and its initializers."""
    header = onnx.ModelProto()
    header.CopyFrom(model)
    del header.graph.initializer[:]
    weights = weights or {}
    tensors = (onnx.numpy_helper.from_array(np.asarray(weights[t.name]), t.name) if t.name in weights else t for t in model.graph.initializer)
    return header, tensors


def load_mapped(path: str | os.PathLike) -> tuple[onnx.ModelProto, dict[str, np.ndarray] | None]:
    """``path`` checked, with weights in external data memory-mapped, never copied into the
    process (``weights``: name -> mapped array, to attach with :func:`_attach_weights`); read
    into the proto only where they cannot be mapped (``weights`` is None then)."""
    model = io.load(path, load_external_data=False)
    weights = io.map_external_data(model, path)
    if weights is None:
        io.read_external_data(model, path)
    check_model(model, path)
    return model, weights


def _attach_weights(graph: gs.Graph, weights: dict[str, np.ndarray] | None) -> None:
    """Constants whose data is memory-mapped from external data (see :func:`io.map_external_data`)."""
    for tensor in graph.tensors().values() if weights else ():
        if isinstance(tensor, gs.Constant) and tensor.name in weights:
            tensor.values = weights[tensor.name]
            tensor.data_location = None  # exported with its bytes; the writer decides where they go


def _untype_optionals(graph: gs.Graph) -> None:
    """onnx-graphsurgeon imports optional-typed values but cannot export them: drop their type
    (passes then treat them as unknown), in subgraphs too; :func:`_restore_io_types` puts the
    types of graph and subgraph inputs and outputs back from the original model."""
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Variable) and tensor.type not in ("tensor_type", "sequence_type", "sparse_tensor_type"):
            tensor.dtype, tensor.shape = None, None
    for node in graph.nodes:
        for sub in iter_subgraphs(node):
            _untype_optionals(sub)


def _restore_io_types(out: onnx.ModelProto, original: onnx.ModelProto) -> onnx.ModelProto:
    types = {v.name: v.type for g in proto_graphs(original.graph) for v in [*g.input, *g.output]}
    for g in proto_graphs(out.graph):
        for value in [*g.input, *g.output]:
            if not value.type.WhichOneof("value") and value.name in types:
                value.type.CopyFrom(types[value.name])
    return out


def _context(target, device, options, input_shapes, strict) -> PassContext:
    return PassContext(
        target=target,
        device=device,
        options=dict(options or {}),
        input_shapes={k: tuple(int(d) for d in v) for k, v in (input_shapes or {}).items()},
        strict=strict,
    )


def configure_stages(
    model: onnx.ModelProto,
    ctx: PassContext,
    stage_values: dict[str, Any] | None,
    calib_data: str | os.PathLike | None = None,
    calib_size: int | None = None,
    holdout: int = 8,
    seed: int = 0,
) -> list[str]:
    """Load calibration data into ``ctx`` and let every stage add its lossy steps."""
    from onnxslim.calibration import load_calibration
    from onnxslim.calibration.data import fit_to_model
    from onnxslim.stages import stages

    calibration = None
    held: list[dict] = []
    if calib_size is not None and calib_data is None:
        if calib_size <= 0:
            raise UsageError("--calib-size must be positive")
        logger.warning("--calib-size has no effect without --calib-data")
    if calib_data is not None:
        calibration = load_calibration(calib_data, model, calib_size)
        calibration, held = calibration.split(min(holdout, max(0, len(calibration) // 5)))
        held = fit_to_model(calibration, held, model, ctx.input_shapes)  # up front: samples that fit, batches it takes
    ctx.data["calibration"] = calibration
    ctx.data["holdout"] = held
    ctx.data["seed"] = seed
    steps: list[str] = []
    for stage in stages():
        steps.extend(stage.configure(dict(stage_values or {}), model, ctx))
    return steps


def _lossy_verification(original: Any, candidate: Any, ctx: PassContext, header: onnx.ModelProto,
                        input_shapes, inputs_file, min_cosine: float | None, seed: int, holdout: int) -> VerificationResult:
    """Fidelity of a lossy pipeline on held-out inputs; fails only below ``min_cosine``.

    Synthetic inputs stand in when there are no real ones: the result says so (``samples_from``),
    and a warning too when calibration data was given, since its user expects real-data fidelity."""
    from onnxslim.verify import load_inputs

    feeds, source = list(ctx.data.get("holdout") or []), "holdout"
    if inputs_file is not None:
        feeds, source = load_inputs(inputs_file, header), "inputs"
    if not feeds:
        feeds, source = synthesize_inputs(header, input_shapes, seed=seed + 1, samples=holdout), "synthetic"
        calibration = ctx.data.get("calibration")
        if calibration is not None:
            logger.warning("fidelity is measured on %d synthetic random input(s), not real data: %d calibration sample(s) "
                           "are too few to hold some out (give more, or real inputs with --inputs)", len(feeds), len(calibration))
    try:
        fid = measure_fidelity(original, candidate, feeds)
    except Exception as exc:  # onnxruntime raises unrelated types for a broken model
        return VerificationResult("failed", _rows(feeds), seed, reason=f"model does not run: {first_line(exc)}",
                                  mode="lossy", samples_from=source)
    status, reason = "measured", ""
    if min_cosine is not None:  # a NaN cosine (a broken model) is the worst, never hidden by min()
        worst = min((f.cosine for f in fid), key=lambda c: (not np.isnan(c), c), default=1.0)
        status = "passed" if worst >= min_cosine else "failed"
        reason = f"worst cosine {worst:.5f} vs budget {min_cosine}"
    return VerificationResult(status, _rows(feeds), seed, reason=reason, mode="lossy", fidelity=fid, samples_from=source)


def _rows(feeds: list[dict[str, np.ndarray]]) -> int:
    """Samples in a list of feeds: a fixed-batch model's held-out feeds hold a batch each."""
    from onnxslim.calibration.data import batch_rows

    return sum(max(1, batch_rows(f)) for f in feeds)


@dataclass
class Options:
    """Every option of an optimize run; the CLI flags map one to one (see ``onnxslim optimize -h``)."""

    passes: str | None = None
    skip: Sequence[str] = ()
    verify: bool = True
    verify_each: bool = False
    input_shapes: dict[str, Sequence[int]] | None = None
    inputs_file: str | None = None
    tolerance: float | None = None
    target: str = "ort"
    device: str = "x86"
    options: dict[str, dict[str, Any]] | None = None
    strict: bool = False
    seed: int = 0
    stage_values: dict[str, Any] | None = None  # values of stage options, e.g. {"svd": "energy=0.95"}
    calib_data: str | None = None
    calib_size: int | None = None
    min_cosine: float | None = None  # budget for lossy pipelines
    holdout: int = 8  # held-out samples for measuring fidelity of lossy pipelines
    external_data: bool | None = None
    digests: bool = True  # sha256 of input and output files in the report (the CLI: only when one is written)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


def _plain(value: Any) -> Any:
    """JSON-ready: paths as strings, tuples/sets as lists, recursively (stage values hold paths)."""
    if isinstance(value, os.PathLike):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    return value


def _prepare(model: onnx.ModelProto, opts: Options) -> tuple[Pipeline, PassContext]:
    ctx = _context(opts.target, opts.device, opts.options, opts.input_shapes, opts.strict)
    extra = configure_stages(model, ctx, opts.stage_values, opts.calib_data, opts.calib_size, opts.holdout, opts.seed)
    return build_pipeline(opts.passes, opts.skip, extra), ctx


def _verification(original: Any, candidate: Any, pipeline: Pipeline, ctx: PassContext, header: onnx.ModelProto, opts: Options) -> VerificationResult:
    if pipeline.lossy:
        return _lossy_verification(original, candidate, ctx, header, opts.input_shapes, opts.inputs_file,
                                   opts.min_cosine, opts.seed, opts.holdout)
    return verify_models(original, candidate, input_shapes=opts.input_shapes, inputs_file=opts.inputs_file,
                         tolerance=opts.tolerance, seed=opts.seed, header=header)


def _copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _check_path_argument(what: str, value: Any, optional: bool = False) -> None:
    if not (isinstance(value, (str, os.PathLike)) or (optional and value is None)):
        raise UsageError(f"{what}: expected a path (str or os.PathLike){' or None' if optional else ''}, got {type(value).__name__}")


def _options(given: dict[str, Any]) -> Options:
    """The ``**options`` of :func:`optimize` / :func:`optimize_file` as :class:`Options`. An
    unknown name or a value of the wrong kind is a one-line UsageError here, before any work,
    not a TypeError or AttributeError from deep inside (or a value silently misread)."""
    import difflib
    import math
    import reprlib

    from onnxslim.targets import DEVICES, TARGETS

    known = [f.name for f in fields(Options)]
    for name in given:
        if name not in known:
            close = difflib.get_close_matches(str(name), known, 1)
            raise UsageError(f"unknown option {name!r} ({f'did you mean {close[0]!r}?' if close else 'options: ' + ', '.join(known)})")
    opts = Options(**given)

    def bad(name: str, want: str) -> UsageError:
        return UsageError(f"option {name}: expected {want}, got {reprlib.repr(getattr(opts, name))}")

    if opts.passes is not None and not isinstance(opts.passes, str):
        raise bad("passes", "a pipeline string such as 'dedupe,eliminate_dead', or None")
    if opts.skip is None:
        opts.skip = ()
    if not isinstance(opts.skip, (list, tuple, set, frozenset)) or not all(isinstance(s, str) for s in opts.skip):
        raise bad("skip", "a list of pass names, e.g. ['dedupe', 'eliminate_dead']")
    for name in ("verify", "verify_each", "strict", "digests"):
        if not isinstance(getattr(opts, name), (bool, np.bool_)):
            raise bad(name, "True or False")
    if opts.external_data is not None and not isinstance(opts.external_data, (bool, np.bool_)):
        raise bad("external_data", "True, False or None (automatic)")
    if opts.input_shapes is not None:
        if not isinstance(opts.input_shapes, dict):
            raise bad("input_shapes", "a dict of input name -> list of ints, e.g. {'x': [1, 3, 224, 224]}")
        for name, dims in opts.input_shapes.items():
            if not isinstance(name, str) or not isinstance(dims, (list, tuple)) or not all(_is_int(d) for d in dims):
                raise UsageError(f"option input_shapes: {name!r}: expected a list of ints, e.g. {{'x': [1, 3, 224, 224]}}, "
                                 f"got {reprlib.repr(dims)}")
    if opts.tolerance is not None and not (_is_number(opts.tolerance) and 0 < opts.tolerance < math.inf):
        raise bad("tolerance", "a positive number (relative to max |output|) or None")
    if opts.min_cosine is not None and not (_is_number(opts.min_cosine) and -1 <= opts.min_cosine <= 1):
        raise bad("min_cosine", "a number in [-1, 1] or None")
    if not (_is_int(opts.seed) and 0 <= opts.seed < 2**32):
        raise bad("seed", "an integer in [0, 2**32)")
    if not (_is_int(opts.holdout) and opts.holdout >= 0):
        raise bad("holdout", "a non-negative integer")
    if opts.calib_size is not None and not _is_int(opts.calib_size):  # positive: checked with the calibration data
        raise bad("calib_size", "a positive integer or None")
    if opts.target not in TARGETS:
        raise bad("target", f"one of {', '.join(TARGETS)}")
    if opts.device not in DEVICES:
        raise bad("device", f"one of {', '.join(DEVICES)}")
    for name in ("inputs_file", "calib_data"):
        _check_path_argument(f"option {name}", getattr(opts, name), optional=True)
    if opts.options is not None and not (isinstance(opts.options, dict) and all(isinstance(v, dict) for v in opts.options.values())):
        raise bad("options", "a dict of pass name -> dict of that pass's options, or None")
    opts.stage_values = _stage_values(opts.stage_values)
    return opts


def _stage_values(values: Any) -> dict[str, Any] | None:
    """``stage_values`` checked and converted like the CLI converts its stage options
    (``{"quantize": "int8", "prune": "0.3"}``); an unknown key is an error, not ignored."""
    import difflib
    import reprlib

    import click

    from onnxslim.stages import stages

    if values is None:
        return None
    if not isinstance(values, dict):
        raise UsageError(f"option stage_values: expected a dict of stage option -> value, e.g. {{'quantize': 'int8'}}, "
                         f"got {reprlib.repr(values)}")
    params = {o.name: o for stage in stages() for o in stage.click_options()}
    out: dict[str, Any] = {}
    for name, value in values.items():
        param = params.get(name)
        if param is None:
            close = difflib.get_close_matches(str(name), list(params), 1)
            raise UsageError(f"option stage_values: unknown stage option {name!r} "
                             f"({f'did you mean {close[0]!r}?' if close else 'known: ' + ', '.join(sorted(params))})")
        if value is None:
            out[name] = None
            continue
        flag = getattr(param, "is_flag", False) and not getattr(param, "count", False)
        whole = param.type is click.INT or isinstance(param.type, click.IntRange)
        real = param.type is click.FLOAT or isinstance(param.type, click.FloatRange)
        items = value if param.multiple and isinstance(value, (list, tuple)) else [value]
        want = ("a list" if param.multiple and not isinstance(value, (list, tuple))
                else "one value, not a list" if not param.multiple and isinstance(value, (list, tuple, set, dict))
                else "True or False" if flag and not all(isinstance(v, (bool, np.bool_)) for v in items)
                else "an integer" if whole and not all(_is_int(v) for v in items)
                else "a number" if real and not all(_is_number(v) for v in items) else "")
        if want:
            raise UsageError(f"option stage_values[{name!r}]: expected {want}, got {reprlib.repr(value)}")
        try:
            out[name] = param.type_cast_value(None, value)
        except click.BadParameter as exc:
            raise UsageError(f"option stage_values[{name!r}]: {' '.join(exc.format_message().splitlines())}") from None
    return out


def optimize(model: onnx.ModelProto | str | os.PathLike, **options: Any) -> tuple[onnx.ModelProto, Report]:
    """Optimize a model in memory. Returns the new model and the report.

    ``model`` may be a ModelProto (left unchanged) or a path; ``options`` are the fields of
    :class:`Options`. Raises :class:`VerificationFailedError` when outputs differ, and a
    one-line :class:`UsageError` for an unknown option or a value of the wrong kind.
    """
    opts = _options(options)
    if not isinstance(model, (onnx.ModelProto, str, os.PathLike)):
        raise UsageError(f"model: expected an onnx.ModelProto or the path of an .onnx file, got {type(model).__name__}")
    original_source: Any = model
    if not isinstance(model, onnx.ModelProto):
        original_source = str(model)
        model = io.load(model)
        check_model(model, original_source)
    else:
        check_model(model)
        original_source, model = model, _copy_model(model)
    build_pipeline(opts.passes, opts.skip)  # usage errors before any work
    if opts.inputs_file is not None:
        check_inputs_file(opts.inputs_file, model, opts.input_shapes)
    pipeline, ctx = _prepare(model, opts)
    report = Report(pipeline=str(pipeline), options=opts.to_dict())
    hook = _VerifyEach(model, original_source, opts.input_shapes, opts.inputs_file, opts.tolerance, opts.seed) if opts.verify_each else None
    # The untouched original: the caller's proto as given, else a copy of the freshly loaded one.
    header = original_source if isinstance(original_source, onnx.ModelProto) else _copy_model(model)
    out = _run(model, report, pipeline, ctx, hook, recorder=StageRecorder(header, ctx, opts))
    if opts.verify:
        start = time.perf_counter()
        report.verification = _verification(original_source, out, pipeline, ctx, header, opts)
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


def optimize_file(input_path: str | os.PathLike, output_path: str | os.PathLike | None = None, **options: Any) -> Report:
    """Optimize a file into another file, atomically, verifying from disk to keep memory low.

    ``options`` are the fields of :class:`Options`. On a verification failure the output is
    written as ``<name>.verify-failed.onnx`` and :class:`VerificationFailedError` is raised with
    the report attached as ``.report``.
    """
    opts = _options(options)
    _check_path_argument("input_path", input_path)
    _check_path_argument("output_path", output_path, optional=True)
    t0 = time.perf_counter()
    io.check_input_file(input_path)
    output = Path(output_path) if output_path is not None else default_output(input_path)
    io.check_output_path(output, [input_path])
    io.check_not_input_data(output, input_path)
    build_pipeline(opts.passes, opts.skip)  # usage errors before loading a large model
    model, weights = load_mapped(input_path)  # lossy stages read the weights in below: they run it in onnxruntime
    if opts.inputs_file is not None:
        check_inputs_file(opts.inputs_file, model, opts.input_shapes)
    pipeline, ctx = _prepare(model, opts)
    if weights and pipeline.lossy:
        io.read_external_data(model, input_path)
        weights = None
    report = Report(pipeline=str(pipeline), options=opts.to_dict())
    report.input = file_digest(input_path, opts.digests)
    report.seconds["load"] = time.perf_counter() - t0
    hook = _VerifyEach(model, str(input_path), opts.input_shapes, opts.inputs_file, opts.tolerance, opts.seed) if opts.verify_each else None
    try:
        out_header, out_initializers = _run(model, report, pipeline, ctx, hook, streaming=True, weights=weights,
                                            recorder=StageRecorder(model, ctx, opts))
    except VerificationFailedError as exc:  # --verify-each: keep the model after the breaking pass, and the report
        candidate = getattr(exc, "candidate", None)
        if candidate is not None:
            final = failed_output_name(output)
            io.save(candidate, final, external_data=opts.external_data)
            report.output = file_digest(final, opts.digests)
            exc.args = (f"{exc}; the model after that pass kept as {final}",)
        report.seconds["total"] = time.perf_counter() - t0
        exc.report = report
        raise
    header = onnx.ModelProto()
    header.graph.input.extend(model.graph.input)
    input_names = {i.name for i in model.graph.input}
    for t in model.graph.initializer:  # names only: marks inputs that have defaults
        if t.name in input_names:
            header.graph.initializer.add(name=t.name)
    del hook
    external = opts.external_data
    if external is None:
        external = report.after.constant_bytes > io.EXTERNAL_DATA_THRESHOLD
    with io.staged(output) as tmp:
        t1 = time.perf_counter()
        staged_file = tmp / output.name
        written = io.write_streaming(out_header, out_initializers, staged_file, external)
        del out_header, out_initializers, model, weights  # unmaps the input weights before verification
        gc.collect()
        report.seconds["save"] = time.perf_counter() - t1
        if opts.verify:
            t2 = time.perf_counter()
            report.verification = _verification(str(input_path), str(staged_file), pipeline, ctx, header, opts)
            report.seconds["verify"] = time.perf_counter() - t2
        failed = report.verification is not None and report.verification.status == "failed"
        final = failed_output_name(output) if failed else output
        if failed:  # rare: re-save under the failed name so external-data names match it
            io.save(io.load(staged_file), final, external_data=len(written) > 1)
            report.output = file_digest(final, opts.digests)
        else:  # digest the staged files (same names and bytes): the commit is the last step, so
            report.output = {**file_digest(staged_file, opts.digests), "path": str(final)}  # Ctrl-C after it is rare
            io.commit(tmp, final, written)
    emit_options = ctx.options.get("emit")
    if emit_options and not failed:  # --emit DIR (stage "target"): deployable artifacts for --target/--device
        from onnxslim.targets import EmitCheckFailedError, emit

        t3 = time.perf_counter()
        try:
            report.output["emit"] = emit(ctx.target, ctx.device, final, emit_options["dir"], emit_options["options"]).to_dict()
        except KeyboardInterrupt:
            raise KeyboardInterrupt(f"{final} was written, --emit {emit_options['dir']} was not") from None
        except EmitCheckFailedError as exc:  # DIR is written and says which check failed: so does the report
            report.output["emit"] = exc.result.to_dict()
            report.seconds["emit"] = report.seconds["total"] = time.perf_counter() - t0
            exc.report = report
            raise
        report.seconds["emit"] = time.perf_counter() - t3
    report.seconds["total"] = time.perf_counter() - t0
    if failed:
        err = VerificationFailedError(f"{report.verification.summary()}; output kept as {final}")
        err.report = report
        raise err
    return report


