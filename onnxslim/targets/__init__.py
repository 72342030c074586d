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

DIR is written as a whole or not at all: the emitter works in a hidden sibling folder that is
renamed into place at the end (an earlier emit's files are replaced, ``tuning_db/`` is kept) and
removed on any error or Ctrl-C. DIR may be new, empty, or an earlier emit (``emit.json`` lists
everything in it); a folder with other files is refused (:func:`check_out_dir`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from onnxslim.errors import OnnxSlimError, OutputError, UsageError, VerificationFailedError

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
        rel = os.path.relpath(path, getattr(self, "work_dir", None) or self.out_dir)
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

    def first_failure(self) -> Check | None:
        return next((c for c in self.checks if c.status == "failed"), None)

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


class EmitCheckFailedError(VerificationFailedError):
    """An emitted artifact failed a check (exit 1, like a failed verification). DIR holds the
    artifacts and ``emit.json`` says which check failed; ``result`` is the :class:`EmitResult`."""

    def __init__(self, message: str, result: EmitResult):
        super().__init__(message)
        self.result = result


MANIFEST = "emit.json"
KEPT = ("tuning_db",)  # kept across re-emits into the same DIR: meta-schedule records are costly to redo


def check_out_dir(out_dir: str | os.PathLike, probe: bool = False) -> None:
    """Refuse (OutputError, one line) an --emit DIR that cannot become the emitted folder: a file,
    a broken link, a folder holding files an earlier emit did not write, or a place where no
    folder can be created. ``probe`` also creates and removes it (or a sibling) to be sure."""
    out = Path(out_dir)
    if os.path.lexists(out) and not out.exists():
        raise OutputError(f"--emit {out}: is a broken link")
    if out.exists():
        if not out.is_dir():
            raise OutputError(f"--emit {out}: exists and is not a folder")
        _check_owned(out)
    else:
        ancestor = out.absolute().parent
        while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise OutputError(f"--emit {out}: cannot create it, {ancestor} is not a folder")
    if probe:
        with _staging(out):
            pass


def _check_owned(out: Path) -> None:
    try:
        entries = set(os.listdir(out))
    except OSError as exc:
        raise OutputError(f"--emit {out}: cannot read the folder: {exc.strerror or exc}") from None
    if not entries:
        return
    try:
        manifest = json.loads((out / MANIFEST).read_text())
        owned = {Path(f).parts[0] for f in manifest["files"]} | {MANIFEST, *KEPT}
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        raise OutputError(f"--emit {out}: the folder is not empty and holds no {MANIFEST} from an earlier emit; "
                          "choose a new or empty folder (its files are never deleted)") from None
    foreign = sorted(entries - owned)
    if foreign:
        raise OutputError(f"--emit {out}: holds {foreign[0]!r}, which no earlier emit wrote; choose a new or empty "
                          "folder, or move it away (the folder is replaced as a whole)")


def emit(target: str, device: str, model_path: str | os.PathLike, out_dir: str | os.PathLike,
         options: dict[str, Any] | None = None) -> EmitResult:
    """Write the deployable artifacts of ``model_path`` for (target, device) into ``out_dir``.

    ``options`` are those :func:`validate` returned (plus ``input_shapes`` when the user fixed
    any). Writes ``emit.json`` (the result) beside the artifacts; raises UsageError for models
    the backend cannot take (e.g. ops TVM cannot import), with the reason on one line. DIR is
    replaced as a whole at the end and left as it was on any error (:func:`check_out_dir`).
    With ``options["fail_on_check"]`` (the CLI) a failed check raises :class:`EmitCheckFailedError`
    once DIR is written; otherwise the result says so (``result.ok``).
    """
    import time

    options = validate(target, device, dict(options or {}))
    out = Path(out_dir)
    check_out_dir(out)
    result = EmitResult(target, device, str(out))
    quiet = not logging.getLogger("onnxslim").isEnabledFor(logging.WARNING)
    start = time.perf_counter()
    with _staging(out) as work:
        os.chmod(work, 0o755)  # it becomes DIR: a plain folder, not the private staging mode
        result.work_dir = str(work)
        result.dest_dir = str(out.resolve())
        try:
            for name in KEPT:  # carried over from the emit this one replaces
                if (out / name).is_dir():
                    shutil.copytree(out / name, work / name, symlinks=True)
                    result.add_file(work / name)
            with silenced(quiet):
                _module(target).emit(device, Path(model_path), work, options, result)
        except OnnxSlimError:
            raise
        except OSError as exc:
            raise OutputError(f"--emit {out}: cannot write the artifacts: {exc.strerror or exc}") from exc
        result.seconds = round(time.perf_counter() - start, 3)
        (work / MANIFEST).write_text(json.dumps(result.to_dict(), indent=2, default=str) + "\n")
        result.add_file(work / MANIFEST)
        _replace(work, out)
    del result.work_dir, result.dest_dir
    failed = result.first_failure()
    if failed is not None and options.get("fail_on_check"):
        raise EmitCheckFailedError(f"--emit {out}: check failed: {failed.name}: {failed.detail or 'failed'} "
                                   f"(the artifacts are in {out}; see {out / MANIFEST})", result)
    return result


def _staging(out: Path):
    """A hidden folder beside ``out`` (missing parents created); removed, with the parents it
    created, unless :func:`_replace` moved it into place. Ctrl-C included."""
    from onnxslim.io import staged

    return staged(out, make_parents=True, cannot=f"--emit {out}: cannot create it")


def _replace(work: Path, out: Path) -> None:
    """Move the finished folder into place; the earlier emit in ``out`` is removed only after."""
    dest = out.resolve()
    if not dest.exists():
        os.rename(work, dest)
        return
    old = dest.parent / f".{dest.name}.old-{os.getpid()}-{secrets.token_hex(4)}.tmp"
    os.rename(dest, old)
    try:
        os.rename(work, dest)
    except BaseException:
        os.rename(old, dest)
        raise
    finally:
        if os.path.lexists(dest):
            shutil.rmtree(old, ignore_errors=True)


_DEVNULL = None


@contextlib.contextmanager
def silenced(active: bool = True) -> Iterator[None]:
    """Send everything printed meanwhile to /dev/null: Python's sys.stdout/sys.stderr and the
    process's file descriptors 1 and 2 (TVM's C++ log and meta-schedule's workers write there)."""
    global _DEVNULL
    if not active:
        yield
        return
    if _DEVNULL is None:  # never closed: a logging handler created meanwhile may keep it
        _DEVNULL = open(os.devnull, "w")  # noqa: SIM115
    saved: list[tuple[int, int]] = []
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    try:
        for fd in (1, 2):
            try:
                saved.append((fd, os.dup(fd)))
            except OSError:
                continue
            os.dup2(_DEVNULL.fileno(), fd)
        with contextlib.redirect_stdout(_DEVNULL), contextlib.redirect_stderr(_DEVNULL):
            yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)


def _module(target: str):
    if target == "ort":
        from onnxslim.targets import ort as module
    elif target == "tensorrt":
        from onnxslim.targets import tensorrt as module
    else:
        from onnxslim.targets import tvm as module
    return module


__all__ = ["DEVICES", "TARGETS", "Check", "EmitCheckFailedError", "EmitResult", "check_out_dir", "emit", "refusal",
           "silenced", "validate"]
