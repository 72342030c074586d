"""TVM (Relax, apache-tvm 0.27) on x86, ARM and CUDA: a compiled model.so, its loader, and checks.

Import with ``tvm.relax.frontend.onnx.from_onnx`` (weights bound as constants, so they are
embedded in ``model.so``: no separate params file), build with ``tvm.compile`` for a target given
as a dict (TVM rejects target strings with flags):

* x86: ``{"kind": "llvm"}`` (``--tvm-mcpu`` adds e.g. ``"mcpu": "skylake-avx512"``; the default
  is portable x86-64). Checked: the .so loads in ``relax.VirtualMachine`` and matches onnxruntime
  at fp32 tolerance on seeded inputs.
* arm: ``{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}``, linked with
  ``aarch64-linux-gnu-g++`` (Debian: g++-aarch64-linux-gnu). Checked: the ELF header says AArch64;
  when ``ONNXSLIM_AARCH64_PYTHON`` is the command of an aarch64 Python with TVM (e.g.
  ``qemu-aarch64 -L SYSROOT -E PYTHONPATH=SITE SYSROOT/usr/bin/python3.11``), the loader runs
  there and its outputs are compared with onnxruntime.
* cuda: ``{"kind": "cuda", "arch": "sm_80"}`` (``--tvm-cuda-arch``) with an llvm host. No GPU is
  needed to build: the .so carries the kernels' CUDA C source, which TVM compiles on the GPU host
  when it loads the module (NVRTC through cuda-python, or ``TVM_CUDA_COMPILE_MODE=nvcc``). Checked:
  the source (kernels.cu) compiles with this machine's nvcc for sm_80 and sm_90.

Ops the importer has no converter for raise a UsageError that lists them; the cleanup pipeline
has already folded shape subgraphs by then, and ``--input-shape`` makes more of them static.
``--tvm-tune-trials N`` tunes with meta-schedule (:mod:`onnxslim.targets.tvm_tune`). A build, link
or tuning error of TVM on a model it imported is a UsageError too (exit 2, TVM's first line).
Options are checked up front: ``--tvm-mcpu`` against LLVM's CPU list for the device's triple (TVM
itself only warns and falls back to a generic CPU), the tuning database's JSON lines, ...
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from onnxslim.errors import UsageError, first_line
from onnxslim.targets import EmitResult
from onnxslim.targets.common import compare, header, input_specs, op_types, sample_feeds

CUDA_CHECK_ARCHS = ("sm_80", "sm_90")
ARM_CXX = "aarch64-linux-gnu-g++"
_EM_AARCH64 = 183


def validate(device: str, options: dict[str, Any], model=None) -> dict[str, Any]:
    if importlib.util.find_spec("tvm") is None:
        raise UsageError("--target tvm needs apache-tvm: pip install 'onnxslim[tvm]'")
    raw = options.get("tune_trials")
    if raw is not None and (isinstance(raw, bool) or not isinstance(raw, int)):
        raise UsageError(f"--tvm-tune-trials {raw!r}: expected a whole number of trials")
    trials = int(raw or 0)
    if trials < 0:
        raise UsageError("--tvm-tune-trials must be >= 0")
    db = options.get("tuning_db")
    if (trials or db) and device != "x86":
        raise UsageError("--tvm-tune-trials/--tvm-tuning-db: tuning measures kernels on this machine, so it applies "
                         "to --device x86 only")
    if db:
        _check_tuning_db(Path(db), trials)
    if device == "arm" and shutil.which(ARM_CXX) is None:
        raise UsageError(f"--target tvm --device arm needs the cross compiler {ARM_CXX} "
                         "(Debian: apt-get install g++-aarch64-linux-gnu)")
    if options.get("cuda_arch") and device != "cuda":
        raise UsageError(f"--tvm-cuda-arch applies to --device cuda, not {device}")
    arch = options.get("cuda_arch") or "sm_80"
    if not (isinstance(arch, str) and arch.startswith("sm_") and arch[3:].rstrip("a").isdigit()):
        raise UsageError(f"--tvm-cuda-arch {arch!r}: expected sm_XX, e.g. sm_80")
    mcpu = options.get("mcpu")
    if mcpu:
        if device == "cuda":
            raise UsageError("--tvm-mcpu: the LLVM CPU applies to --device x86 or arm; for cuda use --tvm-cuda-arch")
        _check_mcpu(str(mcpu), device)
    options.update(tune_trials=trials, cuda_arch=arch)
    if model is not None and (trials or db):
        dynamic = [s.name for s in input_specs(model, options.get("input_shapes")) if s.dynamic]
        if dynamic:
            raise UsageError(f"--tvm-tune-trials needs static input shapes; fix {', '.join(dynamic)} with --input-shape NAME:D1,D2,...")
    return options


_DB_FILES = ("database_tuning_record.json", "database_workload.json")


def _check_tuning_db(db: Path, trials: int) -> None:
    """A tuning database is a folder of two JSON-lines files: readable and parseable, or, when
    tuning will create it, a folder that can be created."""
    if db.exists() and not db.is_dir():
        raise UsageError(f"--tvm-tuning-db {db}: is a file; give the database folder (it holds {_DB_FILES[0]})")
    if not db.exists():
        if not trials:
            raise UsageError(f"--tvm-tuning-db {db}: no tuning database there (tune once with --tvm-tune-trials N)")
        ancestor = db.absolute().parent
        while not ancestor.exists() and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise UsageError(f"--tvm-tuning-db {db}: cannot create it, {ancestor} is not a folder")
        return
    if not trials and not (db / _DB_FILES[0]).is_file():
        raise UsageError(f"--tvm-tuning-db {db}: no tuning database there (tune once with --tvm-tune-trials N)")
    for name in _DB_FILES:
        path = db / name
        if not os.path.lexists(path):
            continue
        try:
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if line.strip():
                    json.loads(line)
        except OSError as exc:
            raise UsageError(f"--tvm-tuning-db {db}: cannot read {name}: {exc.strerror or exc}") from None
        except ValueError:
            raise UsageError(f"--tvm-tuning-db {db}: {name} line {number} is not JSON; not a meta-schedule "
                             "database (or a damaged one)") from None


def _check_mcpu(mcpu: str, device: str) -> None:
    """LLVM knows the CPU for the device's triple (otherwise TVM warns and silently uses generic)."""
    try:
        from tvm.target import codegen

        triple = "aarch64-linux-gnu" if device == "arm" else codegen.llvm_get_system_triple()
        valid = codegen.llvm_is_valid_cpu(mcpu, triple)
    except Exception:  # an older TVM without the query: let LLVM decide at build time
        return
    if not valid:
        example = "cortex-a76 or neoverse-n1" if device == "arm" else "skylake-avx512 or znver3"
        raise UsageError(f"--tvm-mcpu {mcpu!r}: LLVM knows no such CPU for {triple} (e.g. {example})")


def target_for(device: str, options: dict[str, Any]):
    """The tvm.target.Target of a device (built from dicts)."""
    import tvm

    if device == "cuda":
        return tvm.target.Target({"kind": "cuda", "arch": options.get("cuda_arch", "sm_80")}, host={"kind": "llvm"})
    spec: dict[str, Any] = {"kind": "llvm"}
    if device == "arm":
        spec.update(mtriple="aarch64-linux-gnu", mattr=["+neon"])
    if options.get("mcpu"):
        spec["mcpu"] = options["mcpu"]
    if options.get("tune_trials") or options.get("tuning_db"):
        spec["num-cores"] = os.cpu_count() or 1
    return tvm.target.Target(spec)


def unsupported_ops(model) -> dict[str, int]:
    """Op types (with counts) TVM's ONNX importer has no converter for."""
    from tvm.relax.frontend.onnx import onnx_frontend

    known = set(onnx_frontend._get_convert_map()) | {"If", "Constant"}  # If is handled by the importer itself
    return {op: n for op, n in sorted(op_types(model).items()) if op not in known}


def import_model(model_path: Path):
    """The Relax IRModule of the model, or UsageError naming what TVM cannot import."""
    from onnxslim import io
    from tvm.relax.frontend.onnx import from_onnx

    model = io.load(model_path)
    missing = unsupported_ops(model)
    if missing:
        listed = ", ".join(f"{op} ({n})" for op, n in missing.items())
        raise UsageError(f"--target tvm: TVM's ONNX importer cannot take {listed}; the optimized model is written, "
                         "but nothing was emitted (fixing dynamic shapes with --input-shape may fold them away)")
    try:
        return from_onnx(model, keep_params_in_input=False)
    except Exception as exc:  # the importer raises many types; the first line says what
        raise UsageError(f"--target tvm: TVM's ONNX importer failed: {first_line(exc)}") from exc


def emit(device: str, model_path: Path, out: Path, options: dict[str, Any], result: EmitResult) -> None:
    import tvm

    mod = import_model(model_path)
    target = target_for(device, options)
    tuning = None
    if device == "x86" and (options.get("tune_trials") or options.get("tuning_db")):
        from onnxslim.targets import tvm_tune

        db, shown = _tuning_db(options.get("tuning_db"), out, result)
        with _backend("meta-schedule tuning"):
            mod, tuning = tvm_tune.tune(mod, target, db, int(options.get("tune_trials") or 0))
        tuning["database"] = str(shown)
        if db.is_relative_to(out):
            result.add_file(out / db.relative_to(out).parts[0])
        result.notes.append(f"meta-schedule: {tuning['trials']} trial(s) this run, database {shown} "
                            f"({tuning['records']} record(s); reuse it with --tvm-tuning-db)")
    with _backend("tvm.compile"), _quiet_cuda_compile(device):
        executable = tvm.compile(mod, target=target)
    library = out / "model.so"
    with _backend("export_library (linking model.so)"):
        if device == "arm":
            from tvm.support import cc

            executable.export_library(str(library), fcompile=cc.cross_compiler(ARM_CXX))
        else:
            executable.export_library(str(library))
    result.add_file(library)
    model = header(model_path)
    meta = _metadata(model, device, target, options, tuning)
    (out / "tvm_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    result.add_file(out / "tvm_meta.json")
    (out / "run_tvm.py").write_text(_LOADER)
    result.add_file(out / "run_tvm.py")
    if device == "x86":
        _check_against_ort(library, model_path, model, options, result)
    elif device == "arm":
        _check_elf(library, result)
        _check_under_qemu(out, model_path, model, options, result)
    else:
        _check_cuda_kernels(executable, out, result)


def _tuning_db(given: str | None, out: Path, result: EmitResult) -> tuple[Path, Path]:
    """(where tuning writes, what the user is told). The default DIR/tuning_db, or a database the
    user named inside DIR, is worked on in the staging folder (seeded from DIR's copy) so that it
    moves into place with the rest; a database elsewhere is extended where it is."""
    final = Path(getattr(result, "dest_dir", None) or result.out_dir)
    if not given:
        return out / "tuning_db", Path(result.out_dir) / "tuning_db"
    path = Path(given)
    try:
        inside = path.resolve().relative_to(final.resolve())
    except ValueError:
        return path, path
    work = out / inside
    if not work.exists() and (final / inside).is_dir():
        shutil.copytree(final / inside, work, symlinks=True)
    return work, path


class _backend:
    """TVM failing on a model it accepted (a build, link or tuning error) is this model/target
    combination failing, not a bug of ours: a UsageError (exit 2) with TVM's first line."""

    def __init__(self, what: str):
        self.what = what

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None or not isinstance(exc, Exception) or isinstance(exc, (UsageError, OSError)):
            return False

        raise UsageError(f"--target tvm: {self.what} failed: {first_line(exc)}; the optimized model is written, "
                         "nothing was emitted") from exc


def _metadata(model, device: str, target, options: dict[str, Any], tuning: dict | None) -> dict[str, Any]:
    import tvm

    specs = input_specs(model, options.get("input_shapes"))
    return {
        "device": device,
        "target": str(target.export()) if hasattr(target, "export") else str(target),
        "tvm": tvm.__version__,
        "inputs": [{"name": s.name, "shape": list(s.dims), "dtype": str(s.dtype)} for s in specs],
        "outputs": [o.name for o in model.graph.output],
        "params": "embedded in model.so",
        "tuning": tuning,
    }


def run_library(library: Path, feeds_list: list[dict[str, np.ndarray]], input_names: list[str]) -> list[list[np.ndarray]]:
    """Outputs of the compiled model for each feed dict (CPU)."""
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.runtime.load_module(str(library)), tvm.cpu())
    results = []
    for feeds in feeds_list:
        out = vm["main"](*[tvm.runtime.tensor(feeds[n]) for n in input_names])
        results.append([np.asarray(t.numpy()) for t in _flatten(out)])
    return results


def _flatten(value) -> list:
    import tvm

    if isinstance(value, tvm.runtime.Tensor):
        return [value]
    return [t for item in value for t in _flatten(item)]


def _reference(model_path: Path, feeds_list) -> tuple[list[str], list[list[np.ndarray]]]:
    from onnxslim.verify import run

    return run(str(model_path), feeds_list)


def _check_against_ort(library: Path, model_path: Path, model, options, result: EmitResult) -> None:
    name = "model.so runs in relax.VirtualMachine and matches onnxruntime (fp32 tolerance)"
    feeds = sample_feeds(model, options.get("input_shapes"), seed=0, samples=2)
    names, want = _reference(model_path, feeds)
    try:
        got = run_library(library, feeds, [s.name for s in input_specs(model)])
    except Exception as exc:  # a broken library is a failed check
        result.check(name, "failed", f"does not run: {first_line(exc, 200)}")
        return
    ok, detail = compare(names, want, got)
    result.check(name, "passed" if ok else "failed", detail)


def elf_machine(path: Path) -> tuple[bool, int]:
    """(64-bit little-endian ELF, e_machine) of a shared library."""
    head = path.read_bytes()[:20]
    is_elf = head[:4] == b"\x7fELF" and head[4] == 2 and head[5] == 1
    return is_elf, int.from_bytes(head[18:20], "little") if is_elf else -1


def _check_elf(library: Path, result: EmitResult) -> None:
    is_elf, machine = elf_machine(library)
    ok = is_elf and machine == _EM_AARCH64
    result.check("model.so is an AArch64 ELF shared library", "passed" if ok else "failed",
                 f"e_machine {machine} ({'AArch64' if ok else 'expected 183, AArch64'})")


def _check_under_qemu(out: Path, model_path: Path, model, options, result: EmitResult) -> None:
    name = "model.so runs on aarch64 (qemu) and matches onnxruntime"
    command = os.environ.get("ONNXSLIM_AARCH64_PYTHON")
    if not command:
        result.check(name, "skipped", "set ONNXSLIM_AARCH64_PYTHON to a command running an aarch64 Python with "
                     "apache-tvm (e.g. through qemu-aarch64; docs/targets.md)")
        return
    feeds = sample_feeds(model, options.get("input_shapes"), seed=0, samples=1)
    names, want = _reference(model_path, feeds)
    with tempfile.TemporaryDirectory(prefix="onnxslim-qemu-") as tmp:
        np.savez(Path(tmp) / "inputs.npz", **feeds[0])
        cmd = [*shlex.split(command), str(out / "run_tvm.py"), str(Path(tmp) / "inputs.npz"), "--save", str(Path(tmp) / "out.npz")]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            result.check(name, "failed", f"{type(exc).__name__}: {exc}"[:200])
            return
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            result.check(name, "failed", tail[0][:200])
            return
        with np.load(Path(tmp) / "out.npz") as data:
            got = [[data[f"out{i}"] for i in range(len(data.files))]]
    ok, detail = compare(names, want, got)
    result.check(name, "passed" if ok else "failed", detail)


class _quiet_cuda_compile:
    """Keep TVM from compiling CUDA kernels at build time (no GPU here): the source is embedded and
    compiled on the GPU host at load. TVM registers an NVRTC callback on import; lift it meanwhile."""

    def __init__(self, device: str):
        self.device = device
        self.saved = None

    def __enter__(self):
        if self.device == "cuda":
            import tvm_ffi

            self.saved = tvm_ffi.get_global_func("tvm_callback_cuda_compile", allow_missing=True)
            if self.saved is not None:
                tvm_ffi.remove_global_func("tvm_callback_cuda_compile")
        return self

    def __exit__(self, *exc):
        if self.saved is not None:
            import tvm_ffi

            tvm_ffi.register_global_func("tvm_callback_cuda_compile", self.saved, override=True)
        return False


def cuda_source(executable) -> str:
    """The CUDA C source of every kernel in a built executable."""
    sources = []

    def walk(module):
        if module.kind == "cuda":
            sources.append(module.inspect_source(""))
        for sub in module.imports:
            walk(sub)

    walk(executable.mod)
    return "\n".join(s for s in sources if s)


def _check_cuda_kernels(executable, out: Path, result: EmitResult) -> None:
    source = cuda_source(executable)
    kernels = out / "kernels.cu"
    kernels.write_text(source)
    result.add_file(kernels)
    count = source.count("__global__") // 2 or source.count("__global__")
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").is_file() else None)
    for arch in CUDA_CHECK_ARCHS:
        name = f"CUDA kernels compile with nvcc for {arch}"
        if not source:
            result.check(name, "failed", "no CUDA source found in the built module")
            continue
        if nvcc is None:
            result.check(name, "skipped", "nvcc is not installed here")
            continue
        with tempfile.TemporaryDirectory(prefix="onnxslim-nvcc-") as tmp:
            cmd = [nvcc, "-c", f"-arch={arch}", "-O3", "-w", "--expt-relaxed-constexpr", "-o", str(Path(tmp) / "k.o"), str(kernels)]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        if proc.returncode == 0:
            result.check(name, "passed", f"{count} kernel(s), nvcc -c -arch={arch}")
        else:
            errors = [ln for ln in (proc.stderr or proc.stdout).splitlines() if "error" in ln][:1] or ["failed"]
            result.check(name, "failed", errors[0][:200])
    result.check("model.so runs on a GPU", "skipped", "no GPU here; run_tvm.py on the GPU host runs it")


_LOADER = '''"""Run the TVM-compiled model (written by onnxslim).

    python run_tvm.py [inputs.npz] [--save outputs.npz]   # without inputs: seeded random ones

Needs apache-tvm (same version as tvm_meta.json says). For CUDA the kernels are compiled when
the module loads: install cuda-python (NVRTC) or set TVM_CUDA_COMPILE_MODE=nvcc.
"""
import json, pathlib, sys
import numpy as np
import tvm
from tvm import relax

here = pathlib.Path(__file__).parent
meta = json.loads((here / "tvm_meta.json").read_text())
dev = tvm.cuda(0) if meta["device"] == "cuda" else tvm.cpu()
vm = relax.VirtualMachine(tvm.runtime.load_module(str(here / "model.so")), dev)
args = [a for a in sys.argv[1:] if not a.startswith("--")]
save = sys.argv[sys.argv.index("--save") + 1] if "--save" in sys.argv else None
if args and args[0] != save:
    feeds = dict(np.load(args[0]))
else:
    rng = np.random.default_rng(0)
    feeds = {}
    for i in meta["inputs"]:
        shape = [d if isinstance(d, int) else (1 if k == 0 else 8) for k, d in enumerate(i["shape"])]
        dtype = np.dtype(i["dtype"])
        feeds[i["name"]] = rng.standard_normal(shape).astype(dtype) if dtype.kind == "f" else np.zeros(shape, dtype)
out = vm["main"](*[tvm.runtime.tensor(feeds[i["name"]], dev) for i in meta["inputs"]])

def flatten(v):
    return [v] if isinstance(v, tvm.runtime.Tensor) else [t for x in v for t in flatten(x)]

values = [t.numpy() for t in flatten(out)]
for name, value in zip(meta["outputs"], values):
    print(name, value.shape, value.dtype)
if save:
    np.savez(save, **{f"out{k}": v for k, v in enumerate(values)})
'''
