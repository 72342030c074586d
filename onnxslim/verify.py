"""Numeric equivalence with onnxruntime: input synthesis, running, comparing.

Both models run under onnxruntime with its graph optimizations off, on the same seeded inputs
(or inputs the user gives in a ``.npz``). Float outputs pass when
``max|got - want| <= tolerance * max(1, max|want|)`` (NaNs must sit at the same places);
integer and boolean outputs must be equal.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from onnxslim.cpu import usable_cores
from onnxslim.errors import InputModelError, UsageError, first_line
from onnxslim.io import TWO_GB, save

# Default tolerance per output dtype (relative to the output's magnitude).
TOLERANCES: dict[str, float] = {"float64": 1e-9, "float32": 1e-4, "float16": 1e-2, "bfloat16": 5e-2}
DEFAULT_TOLERANCE = 1e-4
# Values tried for symbolic dimensions other than the first (the batch), until the model runs.
SYMBOLIC_DIM_CANDIDATES = (8, 32, 224)

ModelSource = onnx.ModelProto | str | os.PathLike


@dataclass
class OutputComparison:
    name: str
    shape: list[int]
    dtype: str
    max_abs: float
    max_rel: float
    tolerance: float
    ok: bool
    problem: str = ""


@dataclass
class VerificationResult:
    """Outcome of comparing two models. ``status`` is 'passed', 'failed' or 'skipped'."""

    status: str
    samples: int = 0
    seed: int = 0
    outputs: list[OutputComparison] = field(default_factory=list)
    reason: str = ""
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    mode: str = "exact"  # "exact": within tolerance; "lossy": fidelity measured on held-out inputs
    fidelity: list["OutputFidelity"] = field(default_factory=list)
    # lossy mode: what the samples are, "holdout" (calibration samples left out of calibration),
    # "inputs" (--inputs) or "synthetic" (seeded random: no calibration samples could be held out)
    samples_from: str = ""

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        if self.status == "skipped":
            return f"verification skipped: {self.reason}"
        if self.mode == "lossy":
            parts = []
            for f in self.fidelity:
                top1 = f", top-1 agreement {f.top1_agreement:.3f}" if f.top1_agreement is not None else ""
                parts.append(f"{f.name}: cosine {f.cosine:.5f}, SQNR {f.sqnr_db:.1f} dB, max abs {f.max_abs:.3g}{top1}")
            head = {"passed": "fidelity within budget", "failed": "fidelity BELOW budget", "measured": "fidelity"}[self.status]
            tail = f" ({self.reason})" if self.reason else ""
            what = {"synthetic": "synthetic sample(s) (no calibration samples could be held out)",
                    "inputs": "--inputs sample(s)"}.get(self.samples_from, "held-out sample(s)")
            return f"{head} on {self.samples} {what}: " + "; ".join(parts) + tail
        worst = max(self.outputs, key=lambda o: o.max_abs / max(o.tolerance, 1e-30), default=None)
        detail = f", worst max_abs={worst.max_abs:.3g} on {worst.name!r}" if worst else ""
        head = "verification passed" if self.status == "passed" else "verification FAILED"
        tail = f": {self.reason}" if self.reason else ""
        return f"{head} ({self.samples} sample(s){detail}){tail}"


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _session(source: ModelSource) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 4  # failures surface as exceptions; probing shapes must not spam stderr
    opts.intra_op_num_threads = usable_cores()
    # No pre-packed copies of constant weights: verification runs each model a few times, and
    # packing a 2 GB model's MatMul weights took 4.5 s and a second copy's worth of memory.
    opts.add_session_config_entry("session.disable_prepacking", "1")
    if isinstance(source, onnx.ModelProto):
        if source.ByteSize() < TWO_GB - 2**20:
            return ort.InferenceSession(source.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        with tempfile.TemporaryDirectory() as tmp:
            path = save(source, Path(tmp) / "model.onnx", external_data=True)
            return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return ort.InferenceSession(str(source), opts, providers=["CPUExecutionProvider"])


def _np_dtype(elem_type: int) -> np.dtype:
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, TypeError) as exc:
        raise UsageError(f"cannot synthesize inputs of ONNX type {elem_type}; give inputs with --inputs file.npz") from exc


def synthesize_inputs(
    model: onnx.ModelProto,
    input_shapes: dict[str, Sequence[int]] | None = None,
    seed: int = 0,
    samples: int = 1,
    symbolic_dim: int = 8,
) -> list[dict[str, np.ndarray]]:
    """Seeded inputs for every graph input. Symbolic dims: ``input_shapes`` first, then 1 for
    the first axis and ``symbolic_dim`` elsewhere (dims with the same name get the same value).
    Floats ~ N(0, 1); integers in {0, 1}; booleans random."""
    input_shapes = dict(input_shapes or {})
    rng = np.random.default_rng(seed)
    shapes: dict[str, tuple[int, ...]] = {}
    named: dict[str, int] = {}
    for inp in _graph_inputs(model):
        if inp.name in input_shapes:
            shapes[inp.name] = tuple(int(d) for d in input_shapes[inp.name])
            continue
        if not inp.type.HasField("tensor_type"):
            raise UsageError(f"input {inp.name!r} is not a tensor; give inputs with --inputs file.npz")
        dims = []
        for axis, d in enumerate(inp.type.tensor_type.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(d.dim_value)
            else:
                value = 1 if axis == 0 else symbolic_dim
                if d.dim_param:
                    value = named.setdefault(d.dim_param, value)
                dims.append(value)
        shapes[inp.name] = tuple(dims)
    feeds_list = []
    for _ in range(samples):
        feeds = {}
        for inp in _graph_inputs(model):
            dtype = _np_dtype(inp.type.tensor_type.elem_type)
            shape = shapes[inp.name]
            if dtype.kind == "f":
                feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
            elif dtype.kind == "b":
                feeds[inp.name] = rng.integers(0, 2, shape).astype(bool)
            elif dtype.kind in "iu":
                feeds[inp.name] = rng.integers(0, 2, shape).astype(dtype)
            else:
                raise UsageError(f"cannot synthesize inputs of dtype {dtype} for {inp.name!r}; use --inputs file.npz")
        feeds_list.append(feeds)
    return feeds_list


def load_inputs(path: str | os.PathLike, model: onnx.ModelProto) -> list[dict[str, np.ndarray]]:
    """Inputs from a ``.npz`` (input name -> array). One sample."""
    try:
        with open(path, "rb") as f:
            data = np.load(f, allow_pickle=False)
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise ValueError("not a .npz archive (input name -> array)")
            with data:
                feeds = {k: data[k] for k in data.files}
    except Exception as exc:  # a damaged file raises many types (BadZipFile, EOFError, zlib.error, ...)
        raise UsageError(f"{path}: cannot read inputs: {first_line(exc, limit=10**6)}") from None
    expected = {i.name for i in _graph_inputs(model)}
    missing, extra = expected - set(feeds), set(feeds) - expected
    if missing or extra:
        raise UsageError(f"{path}: inputs do not match the model (missing: {sorted(missing)}, unknown: {sorted(extra)})")
    return [feeds]


def run(source: ModelSource, feeds_list: list[dict[str, np.ndarray]]) -> tuple[list[str], list[list[np.ndarray]]]:
    """Run a model on each feed dict; returns output names and outputs per sample."""
    sess = _session(source)
    names = [o.name for o in sess.get_outputs()]
    wanted = {i.name for i in sess.get_inputs()}
    results = [sess.run(names, {k: v for k, v in feeds.items() if k in wanted}) for feeds in feeds_list]
    return names, results


def reference_outputs(
    original: ModelSource,
    model: onnx.ModelProto,
    input_shapes: dict[str, Sequence[int]] | None = None,
    inputs_file: str | os.PathLike | None = None,
    seed: int = 0,
    samples: int = 1,
) -> tuple[list[dict[str, np.ndarray]], list[str], list[list[np.ndarray]]]:
    """Feeds and the original model's outputs on them, trying larger symbolic dims if needed."""
    if inputs_file is not None:
        feeds_list = load_inputs(inputs_file, model)
        names, outs = run(original, feeds_list)
        return feeds_list, names, outs
    last_error: Exception | None = None
    candidates = SYMBOLIC_DIM_CANDIDATES if _has_symbolic_dims(model, input_shapes) else SYMBOLIC_DIM_CANDIDATES[:1]
    for dim in candidates:
        feeds_list = synthesize_inputs(model, input_shapes, seed, samples, dim)
        try:
            names, outs = run(original, feeds_list)
            return feeds_list, names, outs
        except (ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.InvalidArgument,
                ort.capi.onnxruntime_pybind11_state.RuntimeException) as exc:
            last_error = exc
    raise InputModelError(f"the original model does not run in onnxruntime on synthesized inputs: {first_line(last_error)}")


def _has_symbolic_dims(model: onnx.ModelProto, input_shapes: dict | None) -> bool:
    for inp in _graph_inputs(model):
        if input_shapes and inp.name in input_shapes:
            continue
        if any(not d.HasField("dim_value") for d in inp.type.tensor_type.shape.dim):
            return True
    return False


def compare_outputs(
    names_a: list[str],
    want: list[list[np.ndarray]],
    names_b: list[str],
    got: list[list[np.ndarray]],
    tolerance: float | None = None,
) -> list[OutputComparison]:
    """Compare per output name, worst case over samples."""
    comparisons = []
    index_b = {n: i for i, n in enumerate(names_b)}
    for i, name in enumerate(names_a):
        ref0 = want[0][i]
        dtype = str(np.asarray(ref0).dtype)
        tol = tolerance if tolerance is not None else TOLERANCES.get(dtype, DEFAULT_TOLERANCE)
        if name not in index_b:
            comparisons.append(OutputComparison(name, list(np.shape(ref0)), dtype, float("inf"), float("inf"), tol, False, "output missing"))
            continue
        max_abs = max_rel = 0.0
        problem = ""
        for sample_want, sample_got in zip(want, got):
            a, b = np.asarray(sample_want[i]), np.asarray(sample_got[index_b[name]])
            if a.shape != b.shape:
                problem = f"shape {list(b.shape)} != {list(a.shape)}"
                break
            if a.dtype != b.dtype:
                problem = f"dtype {b.dtype} != {a.dtype}"
                break
            if a.dtype.kind not in "fc":
                diff = int(np.count_nonzero(a != b)) if a.size else 0
                if diff:
                    problem = f"{diff} element(s) differ"
                    max_abs = max(max_abs, float(diff))
                continue
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            nan_a, nan_b = np.isnan(a64), np.isnan(b64)
            if not np.array_equal(nan_a, nan_b):
                problem = "NaN positions differ"
                max_abs = float("inf")
                continue
            finite = ~nan_a
            if not finite.any():
                continue
            inf_mismatch = np.isinf(a64[finite]) | np.isinf(b64[finite])
            if inf_mismatch.any() and not np.array_equal(a64[finite][inf_mismatch], b64[finite][inf_mismatch]):
                problem = "infinite values differ"
                max_abs = float("inf")
                continue
            err = np.abs(a64[finite][~inf_mismatch] - b64[finite][~inf_mismatch])
            ref = np.abs(a64[finite][~inf_mismatch])
            if err.size:
                max_abs = max(max_abs, float(err.max()))
                scale = max(1.0, float(ref.max()))
                max_rel = max(max_rel, float(err.max()) / scale)
        ok = not problem and max_rel <= tol
        if not ok and not problem:
            problem = f"max error {max_rel:.3g} (relative to max |output|) > tolerance {tol:g}"
        comparisons.append(OutputComparison(name, list(np.shape(ref0)), dtype, max_abs, max_rel, tol, ok, problem))
    return comparisons


def verify(
    original: ModelSource,
    candidate: ModelSource,
    *,
    input_shapes: dict[str, Sequence[int]] | None = None,
    inputs_file: str | os.PathLike | None = None,
    tolerance: float | None = None,
    seed: int = 0,
    samples: int = 1,
    header: onnx.ModelProto | None = None,
) -> VerificationResult:
    """Run both models on the same inputs and compare every output.

    ``header``: a model proto whose graph inputs describe ``original`` (only inputs are read);
    given, it spares parsing ``original`` again when that is a path.
    """
    if header is None:
        header = original if isinstance(original, onnx.ModelProto) else onnx.load_model(str(original), load_external_data=False)
    try:
        feeds_list, names_a, want = reference_outputs(original, header, input_shapes, inputs_file, seed, samples)
    except InputModelError as exc:
        return VerificationResult("skipped", reason=str(exc), seed=seed)
    return verify_against(want, names_a, feeds_list, candidate, tolerance, seed)


def verify_against(
    want: list[list[np.ndarray]],
    names_a: list[str],
    feeds_list: list[dict[str, np.ndarray]],
    candidate: ModelSource,
    tolerance: float | None = None,
    seed: int = 0,
) -> VerificationResult:
    """Compare ``candidate`` with reference outputs computed earlier (used by --verify-each)."""
    shapes = {k: list(v.shape) for k, v in feeds_list[0].items()} if feeds_list else {}
    try:
        names_b, got = run(candidate, feeds_list)
    except Exception as exc:  # onnxruntime raises several unrelated types for a broken model
        return VerificationResult("failed", len(feeds_list), seed, [], f"optimized model does not run: {first_line(exc)}", shapes)
    comparisons = compare_outputs(names_a, want, names_b, got, tolerance)
    status = "passed" if all(c.ok for c in comparisons) else "failed"
    bad = [f"{c.name}: {c.problem}" for c in comparisons if not c.ok]
    return VerificationResult(status, len(feeds_list), seed, comparisons, "; ".join(bad)[:500], shapes)


# --------------------------------------------------------------------------------------------
# Fidelity of lossy pipelines


@dataclass
class OutputFidelity:
    """How close a lossy model's output is to the original's (worst or mean over samples)."""

    name: str
    cosine: float  # mean cosine similarity of flattened per-sample outputs
    sqnr_db: float  # 10*log10(sum ref^2 / sum err^2) over all samples
    rel_l2: float  # ||err|| / ||ref|| over all samples
    max_abs: float
    top1_agreement: float | None = None  # for [N, classes] float outputs


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def fidelity(names: list[str], want: list[list[np.ndarray]], names_b: list[str], got: list[list[np.ndarray]]) -> list[OutputFidelity]:
    """Per-output cosine / SQNR / relative L2 / max error / top-1 agreement across samples."""
    index_b = {n: i for i, n in enumerate(names_b)}
    out = []
    for i, name in enumerate(names):
        if name not in index_b:
            out.append(OutputFidelity(name, 0.0, float("-inf"), float("inf"), float("inf")))
            continue
        cos, sig, err, max_abs, agree, total = [], 0.0, 0.0, 0.0, 0, 0
        classes = True
        for w_s, g_s in zip(want, got):
            a = np.asarray(w_s[i], dtype=np.float64)
            b = np.asarray(g_s[index_b[name]], dtype=np.float64)
            if a.shape != b.shape:
                cos.append(0.0)
                err = float("inf")
                continue
            cos.append(_cosine(a.ravel(), b.ravel()))
            sig += float(np.sum(a * a))
            err += float(np.sum((a - b) ** 2))
            if a.size:
                worst = float(np.max(np.abs(a - b)))
                max_abs = worst if math.isnan(worst) or math.isnan(max_abs) else max(max_abs, worst)  # NaN stays
            if a.ndim == 2 and a.shape[1] > 1 and np.asarray(w_s[i]).dtype.kind == "f" and not _unit_rows(a):
                agree += int(np.sum(a.argmax(1) == b.argmax(1)))
                total += a.shape[0]
            else:
                classes = False
        sqnr = float("inf") if err == 0 else (10 * np.log10(sig / err) if sig > 0 else float("-inf"))
        rel = 0.0 if err == 0 else (float(np.sqrt(err / sig)) if sig > 0 else float("inf"))
        out.append(OutputFidelity(name, float(np.mean(cos)) if cos else 1.0, float(sqnr), rel, max_abs,
                                  (agree / total) if classes and total else None))
    return out


def _unit_rows(a: np.ndarray) -> bool:
    """Rows of L2 norm 1: normalised embeddings, not class scores (their argmax means nothing)."""
    return bool(np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-3))


def measure_fidelity(original: ModelSource, candidate: ModelSource, feeds_list: list[dict[str, np.ndarray]]) -> list[OutputFidelity]:
    """Run both models on ``feeds_list`` (held-out inputs) and compare them."""
    names_a, want = run(original, feeds_list)
    names_b, got = run(candidate, feeds_list)
    return fidelity(names_a, want, names_b, got)
