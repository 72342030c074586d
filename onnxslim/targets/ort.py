"""ONNX Runtime on x86, ARM and CUDA: an offline-optimized model.onnx, session.json, model.ort on request.

* x86 / arm: onnxruntime's own graph optimizer runs once, offline, at the *extended* level for
  the CPU execution provider (fusions such as Conv+Activation, Gelu, Attention; QDQ groups become
  QLinear* kernels) and saves the result, so a deployed session skips that work. The layout level
  (NCHWc) is left to run time because it depends on the CPU's vector width. ``arm`` sets
  ``session.qdqisint8allowed=1`` (s8s8 kernels exist there), ``x86`` sets it to 0 (u8s8), the
  way onnxruntime's own converter does; INT8 placement itself (u8s8 QDQ on x86, s8s8 on ARM) was
  decided by ``--quantize int8`` for this --target/--device.
* cuda: only the basic, provider-independent level runs offline (the extended fusions assign
  nodes to the CPU provider); the CUDA provider optimizes the rest when the session starts.
* ``--ort-format``: the ORT format for mobile and minimal builds, written by onnxruntime's
  converter (``python -m onnxruntime.tools.convert_onnx_models_to_ort``, fixed optimizations for
  ``amd64`` or ``arm``) with its ``required_operators.config`` for a reduced-size build.

Checks: the emitted model (and model.ort) run on the CPU provider here and agree with the input
model on seeded inputs (fp32 tolerance; QDQ models, whose integer kernels round differently from
the float QDQ simulation, by cosine >= 0.999).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.external_data_helper
import onnxruntime as ort

from onnxslim.errors import UsageError, first_line
from onnxslim.targets import EmitResult
from onnxslim.targets.common import _external_locations, compare, copy_model, cosine, header, is_quantized, sample_feeds

MIN_QDQ_COSINE = 0.999
_LARGE_MODEL_BYTES = 1_500_000_000  # above this the optimized model keeps its weights in a .data file


def validate(device: str, options: dict[str, Any], model=None) -> dict[str, Any]:
    if options.get("ort_format") and device == "cuda":
        raise UsageError("--ort-format: the ORT format is for CPU mobile/minimal builds; use --device x86 or arm")
    threads = options.get("threads")
    if threads is not None and int(threads) < 0:
        raise UsageError("--ort-threads must be >= 0 (0: onnxruntime's default)")
    return options


def session_settings(device: str, threads: int | None) -> dict[str, Any]:
    """What session.json holds: provider list, threads, graph level, config entries."""
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    entries = {} if device == "cuda" else {"session.qdqisint8allowed": "1" if device == "arm" else "0"}
    return {
        "model": "model.onnx",
        "execution_providers": providers,
        "graph_optimization_level": "ORT_ENABLE_ALL",
        "intra_op_num_threads": int(threads or 0),
        "inter_op_num_threads": 1,
        "execution_mode": "ORT_SEQUENTIAL",
        "session_config_entries": entries,
    }


def session_from_settings(model_path: str | os.PathLike, settings: dict[str, Any]) -> ort.InferenceSession:
    """A session built the way session.json says (providers not installed here are skipped)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, settings["graph_optimization_level"])
    so.intra_op_num_threads = settings.get("intra_op_num_threads", 0)
    so.inter_op_num_threads = settings.get("inter_op_num_threads", 0)
    so.log_severity_level = 3
    for key, value in settings.get("session_config_entries", {}).items():
        so.add_session_config_entry(key, value)
    available = set(ort.get_available_providers())
    providers = [p for p in settings["execution_providers"] if p in available] or ["CPUExecutionProvider"]
    return ort.InferenceSession(str(model_path), so, providers=providers)


def emit(device: str, model_path: Path, out: Path, options: dict[str, Any], result: EmitResult) -> None:
    target = out / "model.onnx"
    settings = session_settings(device, options.get("threads"))
    _optimize_offline(device, model_path, target, result)
    (out / "session.json").write_text(json.dumps(settings, indent=2) + "\n")
    result.add_file(out / "session.json")
    _write_loader(out, result)

    model = header(model_path)
    feeds = sample_feeds(model, options.get("input_shapes"), seed=0, samples=2)
    try:
        names, want = _run(model_path, feeds)
    except Exception as exc:  # onnxruntime raises several unrelated types
        raise UsageError(f"--target ort: onnxruntime cannot run the model ({first_line(exc, 200)}); the optimized "
                         "model is written, nothing was emitted") from exc
    _check_same("model.onnx runs on ORT CPU and matches the input model", target, names, want, feeds,
                is_quantized(model), result)
    if options.get("ort_format"):
        ort_file = _convert_to_ort(device, model_path, out, result)
        if ort_file is not None:
            _check_same("model.ort runs on ORT CPU and matches the input model", ort_file, names, want, feeds,
                        is_quantized(model), result)


def _optimize_offline(device: str, source: Path, target: Path, result: EmitResult) -> None:
    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_BASIC if device == "cuda"
                                   else ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)
    so.optimized_model_filepath = str(target)
    so.log_severity_level = 3
    if device != "cuda":
        so.add_session_config_entry("session.qdqisint8allowed", "1" if device == "arm" else "0")
    if _model_bytes(source) > _LARGE_MODEL_BYTES:
        so.add_session_config_entry("session.optimized_model_external_initializers_file_name", target.name + ".data")
        so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    try:
        ort.InferenceSession(str(source), so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises several unrelated types
        first = first_line(exc, 200)
        result.note(f"onnxruntime could not optimize the model offline ({first}); model.onnx is the input model as is")
        for path in copy_model(source, target):
            result.add_file(path)
        return
    result.add_file(target)
    if (target.parent / (target.name + ".data")).is_file():
        result.add_file(target.parent / (target.name + ".data"))
    for path in _own_external_data(source, target):
        result.add_file(path)
    level = "basic (provider-independent)" if device == "cuda" else "extended (CPU provider)"
    result.notes.append(f"model.onnx: onnxruntime graph optimizations at the {level} level applied offline")


def _own_external_data(source: Path, target: Path) -> list[Path]:
    """Make DIR self-contained: onnxruntime's optimized model still names the input's external-data
    file(s) for the weights it left alone, relative to the input's folder. Copy those files beside
    model.onnx (plain file names, as onnxslim writes them), or rewrite the model with its own
    model.onnx.data when a name is a path or would collide with an emitted file."""
    names = sorted(_external_locations(header(target)))
    missing = [n for n in names if not (target.parent / n).is_file()]
    if not missing:
        return []
    reserved = {target.name, target.name + ".data", "session.json", "run_ort.py", "model.ort", "emit.json"}
    if all(Path(n).name == n and n not in reserved and (source.parent / n).is_file() for n in missing):
        for name in missing:
            shutil.copyfile(source.parent / name, target.parent / name)
        return [target.parent / n for n in missing]
    model = onnx.load(str(target), load_external_data=False)
    onnx.external_data_helper.load_external_data_for_model(model, str(source.parent))
    data = target.name + ".data"
    onnx.save_model(model, str(target), save_as_external_data=True, all_tensors_to_one_file=True, location=data,
                    size_threshold=1024)
    return [target.parent / data] if (target.parent / data).is_file() else []


def _model_bytes(path: Path) -> int:
    total = path.stat().st_size
    data = path.with_name(path.name + ".data")
    return total + (data.stat().st_size if data.is_file() else 0)


def _run(path: Path, feeds: list[dict[str, np.ndarray]]) -> tuple[list[str], list[list[np.ndarray]]]:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return names, [sess.run(names, f) for f in feeds]


def _check_same(name: str, path: Path, names: list[str], want, feeds, quantized: bool, result: EmitResult) -> None:
    try:
        _, got = _run(path, feeds)
    except Exception as exc:  # a broken artifact is a failed check, not a crash
        result.check(name, "failed", f"does not run: {first_line(exc, 200)}")
        return
    if not quantized:
        ok, detail = compare(names, want, got)
        result.check(name, "passed" if ok else "failed", detail)
        return
    worst = min(cosine(w, g) for ws, gs in zip(want, got) for w, g in zip(ws, gs))
    status = "passed" if worst >= MIN_QDQ_COSINE else "failed"
    result.check(name, status, f"integer kernels vs QDQ simulation: worst cosine {worst:.5f} (>= {MIN_QDQ_COSINE})")


def _convert_to_ort(device: str, source: Path, out: Path, result: EmitResult) -> Path | None:
    """Run onnxruntime's converter on a copy named model.onnx; keep model.ort and its op config."""
    with tempfile.TemporaryDirectory(prefix="onnxslim-ort-") as tmp:
        work = Path(tmp) / "src"
        work.mkdir()
        copy_model(source, work / "model.onnx")
        cmd = [sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", str(work / "model.onnx"),
               "--output_dir", str(Path(tmp) / "out"), "--optimization_style", "Fixed",
               "--target_platform", "arm" if device == "arm" else "amd64"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        except subprocess.TimeoutExpired:
            result.check("model.ort written by onnxruntime's converter", "failed", "timed out after 1 h")
            return None
        produced = sorted((Path(tmp) / "out").glob("*.ort"))
        if proc.returncode != 0 or not produced:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            result.check("model.ort written by onnxruntime's converter", "failed", tail[0][:200])
            return None
        dest = out / "model.ort"
        shutil.move(str(produced[0]), dest)
        result.add_file(dest)
        for config in (Path(tmp) / "out").glob("*.config"):
            shutil.move(str(config), out / config.name)
            result.add_file(out / config.name)
    return dest


_LOADER = '''"""Run the emitted model with the settings in session.json (written by onnxslim).

    python run_ort.py [inputs.npz]      # without inputs: seeded random ones
"""
import json, pathlib, sys
import numpy as np
import onnx
import onnx.external_data_helper
import onnxruntime as ort

here = pathlib.Path(__file__).parent
cfg = json.loads((here / "session.json").read_text())
so = ort.SessionOptions()
so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, cfg["graph_optimization_level"])
so.intra_op_num_threads = cfg["intra_op_num_threads"]
so.inter_op_num_threads = cfg["inter_op_num_threads"]
for key, value in cfg["session_config_entries"].items():
    so.add_session_config_entry(key, value)
providers = [p for p in cfg["execution_providers"] if p in ort.get_available_providers()]
sess = ort.InferenceSession(str(here / cfg["model"]), so, providers=providers)
if len(sys.argv) > 1:
    feeds = dict(np.load(sys.argv[1]))
else:
    rng = np.random.default_rng(0)
    feeds = {}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) else (1 if k == 0 else 8) for k, d in enumerate(i.shape)]
        kind = i.type[len("tensor("):-1]
        dtype = {"float": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32}.get(kind, np.float32)
        feeds[i.name] = rng.standard_normal(shape).astype(dtype) if dtype in (np.float32, np.float16) else np.zeros(shape, dtype)
for out, value in zip(sess.get_outputs(), sess.run(None, feeds)):
    print(out.name, value.shape, value.dtype)
'''


def _write_loader(out: Path, result: EmitResult) -> None:
    (out / "run_ort.py").write_text(_LOADER)
    result.add_file(out / "run_ort.py")
