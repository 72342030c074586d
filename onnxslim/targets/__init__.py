"""Targets: what a user of ONNX Runtime, TensorRT or TVM deploys, written after the optimized model.

    onnxslim optimize model.onnx --target ort|tensorrt|tvm --device x86|arm|cuda --emit out/

:func:`emit` is called by :func:`onnxslim.api.optimize_file` once the output model is committed
(and only when verification did not fail); the ``target`` stage (:mod:`onnxslim.stages.target`)
validates the options up front and stores them in ``ctx.options["emit"]``.

The nine (target, device) cells and what each writes:

=========  =====================================  ===========================================
target     x86 / arm                              cuda
=========  =====================================  ===========================================
ort        model.onnx optimized offline for the   model.onnx (EP-independent optimizations),
           CPU EP (+ model.ort on request),       session.json for the CUDA EP
           session.json
tensorrt   x86: refused (TensorRT needs an        model.onnx (TensorRT-ready, linted),
           NVIDIA GPU); arm = Jetson, as cuda     build_engine.sh (trtexec/polygraphy),
                                                  model.engine when tensorrt + a GPU are here
tvm        model.so for llvm (arm: cross-         model.so with CUDA kernels (source compiled
           compiled aarch64), run_tvm.py          at load time), kernels checked with nvcc
=========  =====================================  ===========================================

Every emitter returns an :class:`EmitResult`: the files written and the checks run on them here
(numeric comparison with onnxruntime, ELF header, nvcc, linter), each passed, failed or skipped
with a reason. Nothing here decides the model's numerics: the passes did that already.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from onnxslim.errors import UsageError

logger = logging.getLogger(__name__)

TARGETS = ("ort", "tensorrt", "tvm")
DEVICES = ("x86", "arm", "cuda")


@dataclass
class Check:
    """One verification of an emitted artifact: ``status`` is passed, failed or skipped."""

    name: str
    status: str
    detail: str = ""


@dataclass
class EmitResult:
    target: str
    device: str
    out_dir: str
    files: list[str] = field(default_factory=list)  # relative to out_dir
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(c.status != "failed" for c in self.checks)

    def add_file(self, path: str | os.PathLike) -> Path:
        rel = os.path.relpath(path, self.out_dir)
        if rel not in self.files:
            self.files.append(rel)
        return Path(path)

    def check(self, name: str, status: str, detail: str = "") -> Check:
        entry = Check(name, status, detail)
        self.checks.append(entry)
        log = logger.warning if status == "failed" else logger.info
        log("emit %s/%s: %s %s%s", self.target, self.device, name, status, f": {detail}" if detail else "")
        return entry

    def note(self, text: str) -> None:
        logger.warning("emit %s/%s: %s", self.target, self.device, text)
        self.notes.append(text)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        return out

    def summary(self) -> str:
        counts = {s: sum(c.status == s for c in self.checks) for s in ("passed", "failed", "skipped")}
        checks = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        return f"emitted {self.target}/{self.device} to {self.out_dir}: {', '.join(self.files)}" + (f" ({checks})" if checks else "")


def refusal(target: str, device: str) -> str | None:
    """Why a (target, device) cell cannot be emitted, or None when it can."""
    if target == "tensorrt" and device == "x86":
        return ("TensorRT runs only on NVIDIA GPUs: use --device cuda for an x86 host with an NVIDIA GPU, "
                "--device arm for Jetson, or --target ort/tvm for x86 CPUs")
    return None


def validate(target: str, device: str, options: dict[str, Any], model=None) -> dict[str, Any]:
    """Check emit options before any work (UsageError, one line); returns them normalized.

    ``model`` (a ModelProto, weights not needed) allows checks that depend on its inputs."""
    if target not in TARGETS:
        raise UsageError(f"--target {target!r}: expected one of {', '.join(TARGETS)}")
    if device not in DEVICES:
        raise UsageError(f"--device {device!r}: expected one of {', '.join(DEVICES)}")
    why = refusal(target, device)
    if why:
        raise UsageError(f"--emit --target tensorrt --device x86: {why}")
    module = _module(target)
    return module.validate(device, dict(options), model)


def emit(target: str, device: str, model_path: str | os.PathLike, out_dir: str | os.PathLike,
         options: dict[str, Any] | None = None) -> EmitResult:
    """Write the deployable artifacts of ``model_path`` for (target, device) into ``out_dir``.

    ``options`` are those :func:`validate` returned (plus ``input_shapes`` when the user fixed
    any). Writes ``emit.json`` (the result) beside the artifacts; raises UsageError for models
    the backend cannot take (e.g. ops TVM cannot import), with the reason on one line.
    """
    import time

    options = validate(target, device, dict(options or {}))
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--emit {out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    result = EmitResult(target, device, str(out))
    start = time.perf_counter()
    _module(target).emit(device, Path(model_path), out, options, result)
    result.seconds = round(time.perf_counter() - start, 3)
    manifest = out / "emit.json"
    manifest.write_text(json.dumps(result.to_dict(), indent=2, default=str) + "\n")
    result.add_file(manifest)
    return result


def _module(target: str):
    if target == "ort":
        from onnxslim.targets import ort as module
    elif target == "tensorrt":
        from onnxslim.targets import tensorrt as module
    else:
        from onnxslim.targets import tvm as module
    return module


__all__ = ["DEVICES", "TARGETS", "Check", "EmitResult", "emit", "refusal", "validate"]
