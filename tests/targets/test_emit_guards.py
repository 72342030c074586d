"""Guards of --emit and lint-trt found by an audit. Each refusal: exit 2 (bad input) or 1 (a failed
check), one line on stderr without a traceback, the input files byte-identical and no output,
DIR or staging folder left half-written.

1. lint-trt --json never replaces the model; a bad --json path is one line, exit 2; `| head -1`
   ends quietly.
2. --target ort with external data: DIR/model.onnx loads with DIR alone.
3. Emit options and DIR are checked before the model is optimized or -o written.
4. A late failure (TVM cannot take the model, a backend error, Ctrl-C) leaves DIR as it was; a
   re-emit replaces an earlier emit's files (no stale ones) but never a folder of other files.
5. A failed check of the emitted artifacts exits 1, -q or not.
6. -q silences TVM's own console output; TVM options are checked (one line, exit 2).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import helper

from onnxslim import cli
from onnxslim.errors import OutputError, UsageError
from onnxslim.targets import emit
from tests.helpers import random_feeds, vi
from tests.reliability.test_bad_inputs import check_rejected, snapshot
from tests.targets import qdq_models as qm
from tests.targets.models import conv_net, lstm, mlp, save

HAS_TVM = importlib.util.find_spec("tvm") is not None
needs_tvm = pytest.mark.skipif(not HAS_TVM, reason="apache-tvm not installed (extra [tvm])")


def _cli(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args], catch_exceptions=False)


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert "Traceback" not in stderr
    return lines[0]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp"))


# --------------------------------------------------------------------------------------------
# 1. lint-trt --json


@pytest.mark.parametrize("spelling", ["same", "dot", "symlink", "hardlink"])
def test_lint_trt_json_never_replaces_the_model(tmp_path, spelling):
    model = save(conv_net(), tmp_path, "m.onnx")
    json_path = {"same": model, "dot": tmp_path / "." / "m.onnx", "symlink": tmp_path / "link.json",
                 "hardlink": tmp_path / "hard.json"}[spelling]
    if spelling == "symlink":
        json_path.symlink_to(model)
    elif spelling == "hardlink":
        os.link(model, json_path)
    before = _sha(model)
    result = _cli("lint-trt", model, "--json", json_path)
    assert result.exit_code == 2, result.output
    assert "is the input model" in _one_line(result.stderr)
    assert _sha(model) == before and onnx.load(str(model)).graph.node


def test_lint_trt_json_never_replaces_the_external_data(tmp_path):
    model = tmp_path / "m.onnx"
    onnx.save(conv_net(), str(model), save_as_external_data=True, location="w.bin", size_threshold=0)
    before = snapshot(tmp_path)
    result = _cli("lint-trt", model, "--json", tmp_path / "w.bin")
    assert result.exit_code == 2 and "external data" in _one_line(result.stderr)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("where, message", [("missing/f.json", "does not exist"), ("folder", "is a folder")])
def test_lint_trt_bad_json_path_is_one_line_exit_2(tmp_path, where, message):
    model = save(conv_net(), tmp_path, "m.onnx")
    (tmp_path / "folder").mkdir()
    before = snapshot(tmp_path)
    result = _cli("lint-trt", model, "--json", tmp_path / where)
    assert result.exit_code == 2, result.output
    assert message in _one_line(result.stderr)
    assert snapshot(tmp_path) == before


def test_lint_trt_json_is_written_when_fine(tmp_path):
    model = tmp_path / "m.onnx"
    onnx.save(qm.conv_block(act_zp_dtype=np.uint8), str(model))
    result = _cli("lint-trt", model, "--json", tmp_path / "f.json")
    assert result.exit_code == 1
    assert {f["rule"] for f in json.loads((tmp_path / "f.json").read_text())} >= {"TRT-Q-INT8"}
    assert not _leftovers(tmp_path)


def test_lint_trt_into_a_closed_pipe_has_no_traceback(tmp_path):
    """`onnxslim lint-trt m.onnx | head -1`: the reader leaves after one line of 250 kB."""
    nodes = [helper.make_node("Custom", ["x" if i == 0 else f"t{i - 1}"], [f"t{i}" if i < 1999 else "y"], domain="acme",
                              name=f"custom_node_with_a_long_name_{i}") for i in range(2000)]
    graph = helper.make_graph(nodes, "g", [vi("x", [1])], [vi("y", [1])])
    model = tmp_path / "many.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("acme", 1)]), str(model))
    with open(tmp_path / "err.txt", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "onnxslim.cli", "lint-trt", str(model)], stdout=subprocess.PIPE, stderr=err)
        first = proc.stdout.readline()
        proc.stdout.close()
        code = proc.wait(timeout=60)
    stderr = (tmp_path / "err.txt").read_text()
    assert first.startswith(str(model).encode())
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr and "Exception ignored" not in stderr, stderr
    assert code == 1, stderr


# --------------------------------------------------------------------------------------------
# 2. ORT emit with external data


def test_ort_emit_with_external_data_is_self_contained(tmp_path):
    src = save(conv_net(), tmp_path, "in.onnx")
    result = _cli("optimize", src, "-o", tmp_path / "out.onnx", "--save-external-data", "--target", "ort",
                  "--emit", tmp_path / "E", "-q")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out.onnx.data").is_file()
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    for name in ("out.onnx", "out.onnx.data"):
        shutil.move(tmp_path / name, moved / name)
    feeds = random_feeds(conv_net())
    got = ort.InferenceSession(str(tmp_path / "E" / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    want = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    manifest = json.loads((tmp_path / "E" / "emit.json").read_text())
    assert manifest["ok"] and set(os.listdir(tmp_path / "E")) == {*manifest["files"], "emit.json"}


def test_ort_emit_rewrites_external_data_named_by_a_path(tmp_path):
    """Weights in a subfolder of the input's folder: DIR gets its own model.onnx.data."""
    (tmp_path / "src" / "weights").mkdir(parents=True)
    src = tmp_path / "src" / "m.onnx"
    onnx.save(conv_net(), str(src), save_as_external_data=True, location="weights/w.bin", size_threshold=0)
    result = emit("ort", "x86", src, tmp_path / "E", {})
    assert result.ok, result.checks
    shutil.rmtree(tmp_path / "src")
    sess = ort.InferenceSession(str(tmp_path / "E" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert sess.run(None, random_feeds(conv_net()))[0].shape == (1, 10)
    assert "model.onnx.data" in result.files


# --------------------------------------------------------------------------------------------
# 3. Options and DIR before any work


def _db(folder: Path, content: str | None) -> Path:
    db = folder / "db"
    if content is None:
        db.write_text("not a folder")
    else:
        db.mkdir()
        (db / "database_tuning_record.json").write_text(content)
        (db / "database_workload.json").write_text("")
    return db


def _case(case: str, extra: list[str], message: str, tvm: bool = False):
    return pytest.param(extra, message, id=case, marks=[needs_tvm] if tvm else [])


UP_FRONT = [
    _case("trt-shapes-unknown-input", ["--target", "tensorrt", "--device", "cuda", "--trt-shapes", "zz:1x16/1x16/1x16"], "not a model input"),
    _case("trt-shapes-wrong-rank", ["--target", "tensorrt", "--device", "cuda", "--trt-shapes", "x:1x16/1x16/1x16"], "rank 2 given, the input has rank 4"),
    _case("trt-shapes-fixed-dim", ["--target", "tensorrt", "--device", "cuda", "--trt-shapes", "x:1x16x8x8/1x16x8x8/2x16x8x8"], "fixed to 1"),
    _case("trt-shapes-syntax", ["--target", "tensorrt", "--device", "cuda", "--trt-shapes", "x:1/2"], "NAME:MIN/OPT/MAX"),
    _case("emit-is-a-file", ["--target", "ort", "--emit", "FILE"], "exists and is not a folder"),
    _case("emit-under-a-file", ["--target", "ort", "--emit", "FILE/sub"], "cannot create it"),
    _case("emit-holds-other-files", ["--target", "ort", "--emit", "FOREIGN"], "holds no emit.json"),
    _case("emit-holds-a-stray-file", ["--target", "ort", "--emit", "STRAY"], "holds 'mine.txt'"),
    _case("tvm-cuda-arch", ["--target", "tvm", "--device", "cuda", "--tvm-cuda-arch", "ampere"], "sm_XX", tvm=True),
    _case("tvm-cuda-arch-on-x86", ["--target", "tvm", "--device", "x86", "--tvm-cuda-arch", "sm_80"], "applies to --device cuda", tvm=True),
    _case("tvm-mcpu-unknown", ["--target", "tvm", "--device", "x86", "--tvm-mcpu", "bogus"], "no such CPU", tvm=True),
    _case("tvm-mcpu-on-cuda", ["--target", "tvm", "--device", "cuda", "--tvm-mcpu", "skylake"], "--tvm-cuda-arch", tvm=True),
    _case("tvm-trials-zero", ["--target", "tvm", "--tvm-tune-trials", "0"], "positive number", tvm=True),
    _case("tvm-trials-negative", ["--target", "tvm", "--tvm-tune-trials", "-3"], "positive number", tvm=True),
    _case("tvm-trials-not-a-number", ["--target", "tvm", "--tvm-tune-trials", "many"], "many", tvm=True),
    _case("tvm-db-missing", ["--target", "tvm", "--tvm-tuning-db", "MISSING"], "no tuning database", tvm=True),
    _case("tvm-db-is-a-file", ["--target", "tvm", "--tvm-tune-trials", "4", "--tvm-tuning-db", "DBFILE"], "is a file", tvm=True),
    _case("tvm-db-damaged", ["--target", "tvm", "--tvm-tuning-db", "DBBAD"], "not JSON", tvm=True),
]


@pytest.mark.parametrize("extra, message", UP_FRONT)
def test_emit_options_are_checked_before_any_work(tmp_path, extra, message):
    model = save(conv_net(), tmp_path, "model.onnx")
    (tmp_path / "file.txt").write_text("mine")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    places = {"FILE": tmp_path / "file.txt", "FOREIGN": tmp_path / "foreign", "STRAY": tmp_path / "stray",
              "MISSING": tmp_path / "nodb", "DBFILE": tmp_path / "db", "DBBAD": tmp_path / "db"}
    if "STRAY" in extra:  # an earlier emit, plus a file of the user's
        emit("ort", "x86", model, tmp_path / "stray", {})
        (tmp_path / "stray" / "mine.txt").write_text("mine")
    if "DBFILE" in extra:
        _db(tmp_path, None)
    if "DBBAD" in extra:
        _db(tmp_path, "{not json\n")
    args = [str(places.get(a.split("/")[0], a)) + ("/sub" if a == "FILE/sub" else "") for a in extra]
    if "--emit" not in args:
        args += ["--emit", str(tmp_path / "E")]
    check_rejected(tmp_path, [model, *args], message)
    assert not (tmp_path / "out.onnx").exists() and not (tmp_path / "E").exists()


# --------------------------------------------------------------------------------------------
# 4. Late failures leave DIR as it was; re-emits replace only what emit wrote


@needs_tvm
def test_tvm_cannot_take_the_model_leaves_no_dir(tmp_path):
    src = save(lstm(), tmp_path, "in.onnx")
    result = _cli("optimize", src, "-o", tmp_path / "out.onnx", "--target", "tvm", "--emit", tmp_path / "a" / "E", "-q")
    assert result.exit_code == 2, result.output
    assert "cannot take LSTM (1)" in _one_line(result.stderr)
    assert not (tmp_path / "a").exists() and not _leftovers(tmp_path)


@needs_tvm
def test_tvm_backend_error_is_exit_2_and_keeps_the_earlier_emit(tmp_path, monkeypatch):
    import tvm

    src = save(mlp(1), tmp_path, "in.onnx")
    out = tmp_path / "E"
    emit("ort", "x86", src, out, {})
    before = snapshot(out)

    def broken(*args, **kwargs):
        raise RuntimeError("TVMError: cannot schedule op\n  long C++ backtrace line")

    monkeypatch.setattr(tvm, "compile", broken)
    result = _cli("optimize", src, "-o", tmp_path / "out.onnx", "--target", "tvm", "--emit", out, "-q")
    assert result.exit_code == 2, result.output
    line = _one_line(result.stderr)
    assert "tvm.compile failed: TVMError: cannot schedule op" in line and "backtrace" not in line
    assert snapshot(out) == before and not _leftovers(tmp_path)


def test_ctrl_c_during_emit_leaves_no_dir(tmp_path, monkeypatch):
    from onnxslim.targets import ort as ort_target

    def interrupted(device, model_path, out, options, result):
        (out / "model.onnx").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(ort_target, "emit", interrupted)
    src = save(conv_net(), tmp_path, "in.onnx")
    with pytest.raises(KeyboardInterrupt):
        emit("ort", "x86", src, tmp_path / "new" / "E", {})
    assert not (tmp_path / "new").exists() and not _leftovers(tmp_path)
    emit("tensorrt", "cuda", src, tmp_path / "E", {"polygraphy": False})
    before = snapshot(tmp_path / "E")
    result = _cli("optimize", src, "-o", tmp_path / "out.onnx", "--target", "ort", "--emit", tmp_path / "E")
    assert result.exit_code == 130
    assert _one_line(result.stderr) == f"onnxslim: error: interrupted; {tmp_path / 'out.onnx'} was written, --emit {tmp_path / 'E'} was not"
    assert snapshot(tmp_path / "E") == before and not _leftovers(tmp_path)


def test_reemit_replaces_the_earlier_files_and_keeps_the_tuning_db(tmp_path):
    src = save(conv_net(), tmp_path, "in.onnx")
    out = tmp_path / "E"
    emit("tensorrt", "cuda", src, out, {"polygraphy": False})
    (out / "model.engine").write_bytes(b"an engine of an earlier emit")  # as if built on a GPU host
    manifest = json.loads((out / "emit.json").read_text())
    (out / "emit.json").write_text(json.dumps({**manifest, "files": [*manifest["files"], "model.engine"]}))
    (out / "tuning_db").mkdir()
    (out / "tuning_db" / "database_tuning_record.json").write_text("")
    result = _cli("optimize", src, "-o", tmp_path / "out.onnx", "--target", "ort", "--emit", out, "-q")
    assert result.exit_code == 0, result.output
    files = set(os.listdir(out))
    assert files == {"model.onnx", "session.json", "run_ort.py", "emit.json", "tuning_db"}, files
    assert json.loads((out / "emit.json").read_text())["target"] == "ort" and not _leftovers(tmp_path)
    assert out.stat().st_mode & 0o777 == 0o755  # a plain folder, not the 0700 of a private staging folder


def test_library_emit_refuses_a_folder_of_other_files(tmp_path):
    src = save(conv_net(), tmp_path, "in.onnx")
    with pytest.raises(OutputError, match="holds no emit.json"):
        emit("ort", "x86", src, tmp_path, {})  # the folder holding the input model
    (tmp_path / "E").write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        emit("ort", "x86", src, tmp_path / "E", {})


# --------------------------------------------------------------------------------------------
# 5. A failed check is a non-zero exit, -q or not


@pytest.mark.parametrize("quiet", [True, False])
def test_failed_emit_check_exits_1(tmp_path, monkeypatch, quiet):
    from onnxslim.targets import tensorrt as trt_target

    monkeypatch.setattr(trt_target, "_polygraphy_lint", lambda *a: None)  # speed: the linter fails already
    src = tmp_path / "in.onnx"
    onnx.save(qm.conv_block(act_zp_dtype=np.uint8), str(src))
    result = _cli("optimize", src, "-o", tmp_path / "out.onnx", "--target", "tensorrt", "--device", "cuda",
                  "--emit", tmp_path / "E", "--report", tmp_path / "r.json", *(["-q"] if quiet else []))
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    if quiet:
        assert len(lines) == 1 and result.stdout == ""
    assert lines[-1].startswith("onnxslim: error: --emit") and "check failed: TensorRT linter" in lines[-1]
    assert not json.loads((tmp_path / "E" / "emit.json").read_text())["ok"]
    report = json.loads((tmp_path / "r.json").read_text())  # the report is written too, and says why
    assert report["output"]["emit"]["ok"] is False and report["output"]["path"] == str(tmp_path / "out.onnx")
    assert any(c["status"] == "failed" and c["name"].startswith("TensorRT linter") for c in report["output"]["emit"]["checks"])


# --------------------------------------------------------------------------------------------
# 6. -q silences TVM


@needs_tvm
@pytest.mark.parametrize("quiet", [True, False])
def test_quiet_silences_tvm_chatter(tmp_path, monkeypatch, capfd, quiet):
    import tvm
    from tvm.target import codegen

    real = tvm.compile

    def chatty(mod, target=None, **kwargs):
        print("python-chatter")
        os.write(1, b"fd1-chatter\n")
        codegen.llvm_get_vector_width(tvm.target.Target({"kind": "llvm", "mcpu": "bogus"}))  # TVM's C++ log, fd 2
        return real(mod, target=target, **kwargs)

    monkeypatch.setattr(tvm, "compile", chatty)
    src = save(mlp(1), tmp_path, "in.onnx")
    result = _cli("optimize", src, "-o", tmp_path / "out.onnx", "--target", "tvm", "--emit", tmp_path / "E",
                  *(["-q"] if quiet else []))
    assert result.exit_code == 0, result.output
    captured = capfd.readouterr()
    everything = result.output + captured.out + captured.err
    if quiet:
        assert result.output == "" and "chatter" not in everything and "mcpu=bogus" not in everything, everything
    else:
        assert "python-chatter" in everything and "fd1-chatter" in everything and "mcpu=bogus" in everything


@needs_tvm
def test_tvm_library_options_are_checked():
    from onnxslim.targets import validate

    for options, message in [({"tune_trials": 2.5}, "whole number"), ({"mcpu": "cortex-a76"}, "no such CPU")]:
        with pytest.raises(UsageError, match=message):
            validate("tvm", "x86", options)
