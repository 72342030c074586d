"""The bad-input catalog: every way a user can hand ``onnxslim optimize`` something wrong.

Each row of :data:`CATALOG` builds its inputs in a fresh folder and runs the real CLI. Every row
must give exit code 2, exactly one error line on stderr naming the problem, leave every file in
the folder byte-identical (the input is never touched) and add none (no output, no staging
leftovers). Special cases below the table: models that are odd but valid (custom ops, integer
outputs, no nodes, already quantized) must succeed; a full disk, a read-only folder and Ctrl-C
must leave nothing behind; a few rows run in a subprocess to prove no traceback reaches stderr.

Kinds already tested in tests/test_cli.py and not repeated here: missing file, a directory,
empty file, JSON, random bytes, truncated protobuf (test_bad_input_files_give_one_line_and_exit_2);
dangling input name (test_invalid_graph_dangling_input_is_rejected); output equal to input and
missing output folder (test_output_equal_to_input_and_missing_folder); --input-shape with an
unknown input, a wrong rank, a zero dim, bad syntax (test_bad_input_shape_is_usage_error);
unknown pass, unclosed '[', unknown --skip (test_malformed_pipeline_and_unknown_skip).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import pytest
from click.testing import CliRunner, Result

from onnxslim import cli
from onnxslim import pipeline as pl
from tests.helpers import op_counts
from tests.reliability import models

Setup = Callable[[Path], list]


@dataclass(frozen=True)
class Case:
    id: str
    message: str  # a regular expression the error line must match
    setup: Setup  # writes the inputs into the folder; returns the CLI arguments after "optimize"


# --------------------------------------------------------------------------------------------
# Builders of inputs


def _model(build: Callable[[], onnx.ModelProto], *extra) -> Setup:
    def setup(d: Path) -> list:
        path = d / "model.onnx"
        path.write_bytes(build().SerializeToString())
        return [path, *(e(d) if callable(e) else e for e in extra)]

    return setup


def _bytes(make: Callable[[], bytes]) -> Setup:
    def setup(d: Path) -> list:
        path = d / "model.onnx"
        path.write_bytes(make())
        return [path]

    return setup


def _dangling_symlink(d: Path) -> list:
    link = d / "model.onnx"
    link.symlink_to(d / "gone.onnx")
    return [link]


def _external(damage: Callable[[Path, onnx.ModelProto], None]) -> Setup:
    def setup(d: Path) -> list:
        path = d / "model.onnx"
        onnx.save_model(models.conv_model(), path, save_as_external_data=True, location="model.data", size_threshold=0)
        damage(path, onnx.load_model(path, load_external_data=False))
        return [path]

    return setup


def _truncate_data(path: Path, _model: onnx.ModelProto) -> None:
    data = path.with_name("model.data")
    data.write_bytes(data.read_bytes()[:100])


def _relocate_data(path: Path, model: onnx.ModelProto) -> None:
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../model.data"  # the real file is beside the model: this one escapes
    path.write_bytes(model.SerializeToString())


def _npz(name: str, **arrays) -> Callable[[Path], Path]:
    def write(d: Path) -> Path:
        np.savez(d / name, **arrays)
        return d / name

    return write


def _folder(name: str) -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        (d / name).mkdir()
        return d / name

    return make


def _symlink_to_input(d: Path) -> Path:
    (d / "alias.onnx").symlink_to(d / "model.onnx")
    return d / "alias.onnx"


def _external_named(data_name: str) -> Setup:
    def setup(d: Path) -> list:
        path = d / "model.onnx"
        onnx.save_model(models.slow_mlp(2, 64), path, save_as_external_data=True, location=data_name, size_threshold=0)
        return [path]

    return setup


X_SHAPE = (1, 3, 8, 8)  # models.conv_model's input
conv = models.conv_model
ALL_CLEANUP = ",".join(["infer_shapes", *pl.CLEANUP_PASSES])

CATALOG = [
    # Input files that are not ONNX models.
    Case("dangling-symlink", "no such file", _dangling_symlink),
    Case("onnx-text-format", "not a valid ONNX protobuf", _bytes(lambda: str(models.tiny()).encode())),
    Case("gzip-compressed", "not a valid ONNX protobuf", _bytes(lambda: gzip.compress(models.tiny().SerializeToString()))),
    Case("zip-archive", "not an ONNX model", lambda d: [_npz("model.onnx.npz", x=np.zeros(3))(d).rename(d / "model.onnx")]),
    Case("tensor-not-model", "not a valid ONNX protobuf", _bytes(models.tensor_proto_bytes)),
    Case("model-without-graph", "no graph", _model(models.no_graph)),
    # Models that parse but are not valid graphs.
    Case("cycle", "topologically sorted", _model(models.cycle)),
    Case("duplicate-node-outputs", "single static assignment", _model(models.duplicate_outputs)),
    Case("duplicate-graph-inputs", "single static assignment", _model(models.duplicate_input_names)),
    Case("unknown-default-domain-op", "No Op registered for FrobnicateAll", _model(models.unknown_default_op)),
    Case("opset-newer-than-onnx", "opset 999 .* newer than the installed onnx", _model(models.future_opset)),
    Case("ir-version-newer-than-onnx", "ir_version 999", _model(models.future_ir_version)),
    Case("output-never-produced", "not an output of any node", _model(models.output_never_produced)),
    Case("missing-required-input", "Conv.* input size 1", _model(models.missing_required_input)),
    Case("initializer-bytes-short", "too small for the declared shape", _model(models.corrupt_initializer)),
    Case("no-opset-import", "opset_import", _model(models.no_opset_import)),
    Case("attribute-wrong-type", "Mismatched attribute type", _model(models.wrong_attribute_type)),
    # External data.
    Case("external-data-missing", "external data file 'model.data' not found", _external(lambda p, m: p.with_name("model.data").unlink())),
    Case("external-data-truncated", "external data file 'model.data' is truncated", _external(_truncate_data)),
    Case("external-data-escapes-folder", "escapes the model folder", _external(_relocate_data)),
    # Where the output goes.
    Case("output-is-input-other-spelling", "output path is the input path", _model(conv, "-o", lambda d: d / "." / ".." / d.name / "model.onnx")),
    Case("output-is-symlink-to-input", "output path is the input path", _model(conv, "-o", _symlink_to_input)),
    Case("output-is-directory", "is a directory", _model(conv, "-o", lambda d: d)),
    Case("output-folder-is-a-file", "does not exist", _model(conv, "-o", lambda d: d / "model.onnx" / "out.onnx")),
    Case("output-data-overwrites-input-data", "overwrite w.onnx.data, the input's external data",
         lambda d: [*_external_named("w.onnx.data")(d), "-o", d / "w.onnx", "--save-external-data"]),
    Case("output-is-input-data-file", "overwrite w.onnx.data, the input's external data",
         lambda d: [*_external_named("w.onnx.data")(d), "-o", d / "w.onnx.data"]),
    Case("output-under-sysfs", "not writable|cannot write", _model(conv, "-o", "/sys/onnxslim-test.onnx")),
    Case("report-folder-missing", "does not exist", _model(conv, "--report", lambda d: d / "nowhere" / "r.json")),
    Case("report-is-input", "input path", _model(conv, "--report", lambda d: d / "model.onnx")),
    # --input-shape (other kinds: tests/test_cli.py).
    Case("input-shape-not-integers", "must be integers", _model(conv, "--input-shape", "x:a,b,c,d")),
    Case("input-shape-conflicts-fixed-dims", "conflicts with the model's fixed shape", _model(conv, "--input-shape", "x:2,3,8,8")),
    # --passes / --skip (other kinds: tests/test_cli.py).
    Case("passes-empty", "empty pipeline", _model(conv, "--passes", "")),
    Case("passes-blank", "empty pipeline", _model(conv, "--passes", "   ")),
    Case("passes-empty-step", "empty step", _model(conv, "--passes", "dedupe,,eliminate_dead")),
    Case("passes-trailing-comma", "trailing ','", _model(conv, "--passes", "dedupe,")),
    Case("passes-dash-in-name", "unexpected '-constants'", _model(conv, "--passes", "fold-constants")),
    Case("passes-nested-group", "nested or misplaced", _model(conv, "--passes", "[[dedupe]]")),
    Case("passes-stray-bracket", "misplaced ']'", _model(conv, "--passes", "dedupe]")),
    Case("passes-cap-zero", "cap must be 1..1000", _model(conv, "--passes", "[dedupe]*0")),
    Case("passes-wrong-case", "unknown pass 'Dedupe'", _model(conv, "--passes", "Dedupe")),
    Case("skip-every-pass", "removed every pass", _model(conv, "--skip", ALL_CLEANUP)),
    # Verification options.
    Case("tolerance-zero", "must be a positive", _model(conv, "--tolerance", "0")),
    Case("tolerance-negative", "must be a positive", _model(conv, "--tolerance", "-1e-3")),
    Case("inputs-missing", "no such file", _model(conv, "--inputs", lambda d: d / "nope.npz")),
    Case("inputs-wrong-names", "do not match", _model(conv, "--inputs", _npz("in.npz", image=np.zeros(X_SHAPE, np.float32)))),
    Case("inputs-wrong-shape", r"'x' has shape \[1, 3, 4, 4\]", _model(conv, "--inputs", _npz("in.npz", x=np.zeros((1, 3, 4, 4), np.float32)))),
    Case("inputs-wrong-dtype", "'x' is int64, the model expects float32", _model(conv, "--inputs", _npz("in.npz", x=np.zeros(X_SHAPE, np.int64)))),
    # Calibration data.
    Case("calib-missing", "no such file or folder", _model(conv, "--calib-data", lambda d: d / "nope.npz")),
    Case("calib-wrong-names", "input names do not match", _model(conv, "--calib-data", _npz("c.npz", image=np.zeros((4, 3, 8, 8), np.float32)))),
    Case("calib-wrong-dtype", "is int64, the model expects float32", _model(conv, "--calib-data", _npz("c.npz", x=np.zeros((4, 3, 8, 8), np.int64)))),
    Case("calib-wrong-shape", r"has shape \[4, 3, 8, 9\]", _model(conv, "--calib-data", _npz("c.npz", x=np.zeros((4, 3, 8, 9), np.float32)))),
    Case("calib-wrong-rank", "has rank 3", _model(conv, "--calib-data", _npz("c.npz", x=np.zeros((4, 3, 8), np.float32)))),
    Case("calib-zero-samples", "empty", _model(conv, "--calib-data", _npz("c.npz", x=np.zeros((0, 3, 8, 8), np.float32)))),
    Case("calib-empty-folder", "empty", _model(conv, "--calib-data", _folder("calib"))),
    Case("calib-not-npz", "expected a .npz file", _model(conv, "--calib-data", lambda d: _write(d / "c.txt", b"1,2,3"))),
    Case("calib-size-zero", "must be positive", _model(conv, "--calib-size", "0", "--calib-data", _npz("c.npz", x=np.zeros((4, 3, 8, 8), np.float32)))),
    Case("quantize-already-quantized", "already quantized", _model(models.quantized, "--quantize", "int8")),
    Case("prune-and-prune-macs", "either --prune or --prune-macs", _model(conv, "--prune", "0.3", "--prune-macs", "0.5")),
    # Option values click itself rejects (reported in our one-line format too).
    Case("min-cosine-out-of-range", "--min-cosine.*not in the range", _model(conv, "--min-cosine", "2")),
    Case("calib-size-not-a-number", "--calib-size.*not a valid integer", _model(conv, "--calib-size", "many")),
]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------------------------
# Running and checking


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``folder`` (hidden ones too): content digest and modification time."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            out[str(path.relative_to(folder))] = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
        elif path.is_symlink() or path.is_dir():
            out[str(path.relative_to(folder))] = ("link" if path.is_symlink() else "dir", 0)
    return out


def error_line(stderr: str) -> str:
    """The one error line: the whole of stderr (click's usage errors included)."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert lines[0].startswith("onnxslim: error: "), stderr
    return lines[0]


def invoke(args: list) -> Result:
    if "-o" not in [str(a) for a in args]:
        args = [*args, "-o", Path(args[0]).with_name("out.onnx")]
    return CliRunner().invoke(cli.main, ["optimize", *(str(a) for a in args)], catch_exceptions=False)


def check_rejected(folder: Path, args: list, message: str) -> str:
    """``onnxslim optimize ARGS`` is refused: exit 2, one line matching ``message``, nothing changed."""
    return check_refusal(folder, lambda: invoke(args), message)


def check_refusal(folder: Path, command: Callable[[], Result], message: str) -> str:
    """``command()`` (a CLI invocation) is refused: exit 2, one error line matching ``message``, no
    stdout, no traceback, and ``folder`` as it was (no input changed, no output or staging file left)."""
    before = snapshot(folder)
    result = command()
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.output}"
    line = error_line(result.stderr)
    assert re.search(message, line), f"{line!r} does not match {message!r}"
    assert "Traceback" not in result.output and result.stdout == ""
    assert snapshot(folder) == before, "input files changed, or an output / staging file was left behind"
    return line


def test_catalog_is_large_and_ids_unique():
    assert len(CATALOG) >= 25
    assert len({c.id for c in CATALOG}) == len(CATALOG)


@pytest.mark.parametrize("case", CATALOG, ids=[c.id for c in CATALOG])
def test_bad_input_is_rejected_cleanly(tmp_path, case):
    folder = tmp_path / "work"
    folder.mkdir()
    args = case.setup(folder)
    check_rejected(folder, args, case.message)


# --------------------------------------------------------------------------------------------
# Options of the lossy stages (written by others; skipped until the option exists)


def _optimize_options() -> str:
    return CliRunner().invoke(cli.main, ["optimize", "--help"]).output


STAGE_VALUES = [
    ("--prune", "1.5"), ("--prune", "-0.1"), ("--prune", "half"),
    ("--svd", "energy=1.5"), ("--svd", "rank=-1"), ("--svd", "energy"),
    ("--quantize", "int3"),
]


@pytest.mark.parametrize("option, value", STAGE_VALUES, ids=[f"{o}={v}" for o, v in STAGE_VALUES])
def test_stage_option_out_of_range(tmp_path, option, value):
    if option not in _optimize_options():
        pytest.skip(f"`onnxslim optimize` has no {option} option yet (its stage is being written)")
    args = _model(conv, option, value)(tmp_path)
    check_rejected(tmp_path, args, re.escape(option.lstrip("-")))


# --------------------------------------------------------------------------------------------
# Odd but valid models: they must succeed


def _optimize_ok(tmp_path: Path, model: onnx.ModelProto, *extra: str) -> tuple[onnx.ModelProto, str]:
    src, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save_model(model, src)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    result = CliRunner().invoke(cli.main, ["optimize", str(src), "-o", str(out), *extra], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert hashlib.sha256(src.read_bytes()).hexdigest() == digest
    optimized = onnx.load(out)
    onnx.checker.check_model(optimized)
    return optimized, result.output


def test_custom_domain_op_passes_through_and_the_rest_is_optimized(tmp_path):
    original = models.custom_op()
    optimized, output = _optimize_ok(tmp_path, original)
    custom = [n for n in optimized.graph.node if n.domain == "acme.vision"]
    assert len(custom) == 1
    want = next(n for n in original.graph.node if n.domain == "acme.vision")
    assert custom[0].op_type == want.op_type and list(custom[0].attribute) == list(want.attribute)
    assert {o.domain: o.version for o in optimized.opset_import}.get("acme.vision") == 1
    # Around it: both Identity nodes removed, BatchNormalization folded into the Conv.
    assert op_counts(optimized) == {"Warp": 1, "Conv": 1}
    assert "verification skipped" in output and "acme.vision" in output


def test_integer_and_boolean_outputs_are_verified_exactly(tmp_path, monkeypatch):
    optimized, output = _optimize_ok(tmp_path, models.integer_outputs())
    assert "verification passed" in output and "Identity" not in op_counts(optimized)
    assert [o.type.tensor_type.elem_type for o in optimized.graph.output] == [onnx.TensorProto.INT64, onnx.TensorProto.BOOL]

    class FlipGreater(pl.Pass):
        """Turns Greater into Less: breaks only the boolean output."""

        name = "flip_greater"

        def run(self, graph, ctx):
            hits = [n for n in graph.nodes if n.op == "Greater"]
            for node in hits:
                node.op = "Less"
            return pl.PassResult(bool(hits))

    passes = {**pl.registry(), "flip_greater": FlipGreater}
    monkeypatch.setattr(pl, "registry", lambda: passes)
    src = tmp_path / "in.onnx"
    result = CliRunner().invoke(cli.main, ["optimize", str(src), "-o", str(tmp_path / "bad.onnx"), "--passes", "flip_greater"])
    assert result.exit_code == 1, result.output
    assert "positive: " in result.output and "element(s) differ" in result.output


@pytest.mark.parametrize("build", [models.zero_nodes, models.constant_only], ids=["input-is-output", "constant-output"])
def test_model_with_zero_nodes(tmp_path, build):
    optimized, output = _optimize_ok(tmp_path, build())
    assert len(optimized.graph.node) == 0
    assert [o.name for o in optimized.graph.output] == [o.name for o in build().graph.output]
    assert "verification passed" in output


def test_already_quantized_model_keeps_its_int8_weights(tmp_path):
    original = models.quantized()
    optimized, output = _optimize_ok(tmp_path, original)
    assert op_counts(optimized) == op_counts(original)
    weights = {t.name: t.data_type for t in optimized.graph.initializer}
    assert weights["wq"] == onnx.TensorProto.INT8, "int8 weights must not be folded back to float"
    assert "verification passed" in output


# --------------------------------------------------------------------------------------------
# Disk full, read-only folder


class _FullDisk:
    """A file object that accepts ``room`` bytes and then fails like a full disk."""

    def __init__(self, real, room: int):
        self.real, self.room = real, room

    def write(self, data) -> int:
        if len(data) > self.room:
            self.real.write(bytes(data[: self.room]))
            raise OSError(28, "No space left on device")
        self.room -= len(data)
        return self.real.write(data)

    def __getattr__(self, name):
        return getattr(self.real, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.real.close()


@pytest.mark.parametrize("external", [False, True], ids=["inline", "external-data"])
def test_disk_full_simulated(tmp_path, monkeypatch, external):
    import builtins

    import onnxslim.io as io_module

    real_open = builtins.open

    def full_open(file, mode="r", *args, **kwargs):
        fh = real_open(file, mode, *args, **kwargs)
        return _FullDisk(fh, 200) if "w" in mode else fh

    args = _model(lambda: models.slow_mlp(2, 64))(tmp_path)
    if external:
        args.append("--save-external-data")
    monkeypatch.setattr(io_module, "open", full_open, raising=False)
    check_rejected(tmp_path, args, "disk full")


@pytest.mark.parametrize("external", [False, True], ids=["inline", "external-data"])
def test_disk_full_real_tmpfs(tmp_path, tiny_fs, external):
    src = tmp_path / "model.onnx"
    onnx.save_model(models.slow_mlp(2, 256), src)  # ~0.5 MB: does not fit in 256 KiB
    before = snapshot(tmp_path)
    args = ["optimize", str(src), "-o", str(tiny_fs / "out.onnx"), *(["--save-external-data"] if external else [])]
    result = CliRunner().invoke(cli.main, args, catch_exceptions=False)
    assert result.exit_code == 2 and "disk full" in error_line(result.stderr)
    assert list(tiny_fs.iterdir()) == []
    assert {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("full")} == {k: v for k, v in before.items() if not k.startswith("full")}


def test_output_folder_read_only(tmp_path, read_only_dir):
    (tmp_path / "in").mkdir()
    args = _model(conv)(tmp_path / "in")
    before = snapshot(tmp_path / "in")
    result = invoke([*args, "-o", read_only_dir / "out.onnx"])
    assert result.exit_code == 2 and "is not writable" in error_line(result.stderr)
    assert snapshot(tmp_path / "in") == before and list(read_only_dir.iterdir()) == []


# --------------------------------------------------------------------------------------------
# In a real process: no traceback on stderr; Ctrl-C leaves nothing behind


def _cli(*args, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, "-m", "onnxslim.cli", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


SUBPROCESS_CASES = ["gzip-compressed", "opset-newer-than-onnx", "external-data-truncated", "inputs-wrong-shape"]


@pytest.mark.parametrize("case_id", SUBPROCESS_CASES)
def test_subprocess_one_line_no_traceback(tmp_path, case_id):
    case = next(c for c in CATALOG if c.id == case_id)
    args = case.setup(tmp_path)
    before = snapshot(tmp_path)
    proc = _cli("optimize", *args, "-o", tmp_path / "out.onnx")
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2, stderr
    assert stdout == "" and "Traceback" not in stderr
    assert re.search(case.message, error_line(stderr))
    assert snapshot(tmp_path) == before


def _big_model(tmp_path: Path) -> Path:
    src = tmp_path / "big.onnx"
    onnx.save_model(models.slow_mlp(), src)  # ~100 MB: an optimize run takes a second or two
    return src


def _interrupt_when(proc: subprocess.Popen, ready: Callable[[], bool], limit: float = 60.0) -> tuple[str, str]:
    deadline = time.monotonic() + limit
    while proc.poll() is None and not ready():
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the run never reached the point where it should be interrupted")
        time.sleep(0.002)
    if proc.poll() is not None:
        pytest.skip("the run finished before it could be interrupted (machine too fast)")
    proc.send_signal(signal.SIGINT)
    return proc.communicate(timeout=60)


def test_ctrl_c_during_passes_writes_nothing(tmp_path):
    src = _big_model(tmp_path)
    before = snapshot(tmp_path)
    proc = _cli("optimize", src, "-o", tmp_path / "out.onnx", "-vv")
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + 60
    while proc.poll() is None and not any("(round 1)" in line for line in seen):
        assert time.monotonic() < deadline
        time.sleep(0.002)
    if proc.poll() is not None:
        pytest.skip("the run finished before it could be interrupted")
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    reader.join(timeout=10)
    assert proc.returncode == 130, "".join(seen[-5:])
    assert seen[-1].startswith("onnxslim: error: interrupted") and not any("Traceback" in line for line in seen)
    assert snapshot(tmp_path) == before


def test_ctrl_c_while_saving_or_verifying_writes_nothing(tmp_path):
    src = _big_model(tmp_path)
    before = snapshot(tmp_path)
    proc = _cli("optimize", src, "-o", tmp_path / "out.onnx")
    _, stderr = _interrupt_when(proc, lambda: any(p.name.startswith(".out.onnx.") for p in tmp_path.iterdir()))
    assert proc.returncode == 130, stderr
    assert error_line(stderr) == "onnxslim: error: interrupted; no output written"
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("array, message", [(np.zeros((1, 3, 4, 4), np.float32), r"has shape \[1, 3, 4, 4\]"),
                                             (np.zeros(X_SHAPE, np.float64), "is float64, the model expects float32")],
                         ids=["shape", "dtype"])
def test_verify_command_rejects_wrong_inputs(tmp_path, array, message):
    src = tmp_path / "model.onnx"
    onnx.save_model(conv(), src)
    np.savez(tmp_path / "in.npz", x=array)
    result = CliRunner().invoke(cli.main, ["verify", str(src), str(src), "--inputs", str(tmp_path / "in.npz")], catch_exceptions=False)
    assert result.exit_code == 2 and re.search(message, error_line(result.stderr)), result.output
