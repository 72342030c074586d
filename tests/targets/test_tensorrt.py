"""TensorRT emitter: TensorRT-ready model, build_engine.sh (trtexec + polygraphy), profiles, refusals."""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest

from onnxslim.errors import UsageError
from onnxslim.targets import emit, refusal, validate
from onnxslim.targets.common import input_specs
from onnxslim.targets.tensorrt import parse_shapes, profile
from tests.targets import qdq_models as qm
from tests.targets.models import conv_net, mlp, save

FAST = {"polygraphy": False}  # polygraphy check lint has its own test


def test_x86_is_refused_with_the_reason():
    assert "NVIDIA GPU" in refusal("tensorrt", "x86")
    with pytest.raises(UsageError, match="TensorRT runs only on NVIDIA GPUs"):
        validate("tensorrt", "x86", {})


def test_float_model_gets_fp16_script_and_lint(tmp_path):
    src = save(conv_net(), tmp_path)
    result = emit("tensorrt", "cuda", src, tmp_path / "out", FAST)
    assert {"model.onnx", "build_engine.sh", "trt_profile.json", "lint.txt"} <= set(result.files)
    script = (tmp_path / "out" / "build_engine.sh").read_text()
    assert "trtexec --onnx=model.onnx --saveEngine=model.engine --fp16" in script
    assert "polygraphy convert model.onnx --convert-to trt -o model.engine --fp16" in script
    assert "Shapes" not in script  # static input: no profile
    statuses = {c.name.split(" (")[0]: c.status for c in result.checks}
    assert statuses["TensorRT linter"] == "passed"
    assert (tmp_path / "out" / "build_engine.sh").stat().st_mode & 0o111


def test_qdq_model_gets_int8_flags(tmp_path):
    src = save(qm.conv_block(), tmp_path)
    emit("tensorrt", "cuda", src, tmp_path / "out", FAST)
    assert "--int8 --fp16" in (tmp_path / "out" / "build_engine.sh").read_text()
    emit("tensorrt", "cuda", src, tmp_path / "st", {**FAST, "precision": "strongly-typed"})
    assert "--stronglyTyped" in (tmp_path / "st" / "build_engine.sh").read_text()
    assert "--strongly-typed" in (tmp_path / "st" / "build_engine.sh").read_text()


def test_lint_errors_fail_the_check_and_land_in_lint_txt(tmp_path):
    import numpy as np

    src = save(qm.conv_block(act_zp_dtype=np.uint8), tmp_path)
    result = emit("tensorrt", "cuda", src, tmp_path / "out", FAST)
    lint_check = next(c for c in result.checks if c.name.startswith("TensorRT linter"))
    assert lint_check.status == "failed" and "TRT" not in lint_check.detail.split(";")[0]
    assert "[TRT-Q-INT8]" in (tmp_path / "out" / "lint.txt").read_text()
    assert not result.ok


def test_dynamic_inputs_get_a_profile(tmp_path):
    src = save(mlp("batch"), tmp_path)
    result = emit("tensorrt", "arm", src, tmp_path / "out", FAST)
    script = (tmp_path / "out" / "build_engine.sh").read_text()
    assert "--minShapes=x:1x24 --optShapes=x:1x24 --maxShapes=x:8x24" in script
    assert "Jetson" in script
    assert any("default ranges" in n for n in result.notes)
    given = emit("tensorrt", "cuda", src, tmp_path / "given", {**FAST, "shapes": ["x:2x24/4x24/16x24"]})
    assert "--maxShapes=x:16x24" in (tmp_path / "given" / "build_engine.sh").read_text()
    assert json.loads((tmp_path / "given" / "trt_profile.json").read_text())["shapes"]["x"][2] == [16, 24]
    assert not given.notes


def test_shared_dim_names_share_the_profile():
    import onnx
    from onnx import TensorProto, helper

    from tests.helpers import make_model, vi

    model = make_model([helper.make_node("Add", ["a", "b"], ["y"])],
                       [vi("a", ["batch", "seq"], TensorProto.INT64), vi("b", ["batch", "seq"], TensorProto.INT64)],
                       [vi("y", ["batch", "seq"], TensorProto.INT64)])
    shapes = profile(input_specs(model), parse_shapes(["a:1x4/2x64/4x128"]), [])
    assert shapes["b"] == ([1, 4], [2, 64], [4, 128])
    assert isinstance(model, onnx.ModelProto)


@pytest.mark.parametrize("bad", ["x:1x24/4x24", "x:4x24/2x24/8x24", "x:1xA/1x2/1x3", "nocolon"])
def test_bad_shape_profiles(bad):
    with pytest.raises(UsageError, match="--trt-shapes"):
        parse_shapes([bad])


def test_profile_names_an_unknown_input(tmp_path):
    with pytest.raises(UsageError, match="not a model input"):
        profile(input_specs(mlp()), parse_shapes(["nope:1x1/1x1/1x1"]), [])


@pytest.mark.skipif(shutil.which("polygraphy") is None, reason="polygraphy not installed (extra [tensorrt])")
def test_polygraphy_check_lint_runs_without_tensorrt(tmp_path):
    src = save(conv_net(), tmp_path)
    result = emit("tensorrt", "cuda", src, tmp_path / "out", {"polygraphy": True})
    check = next(c for c in result.checks if c.name.startswith("polygraphy check lint"))
    assert check.status == "passed", check


def test_engine_build_is_skipped_without_tensorrt_or_gpu(tmp_path):
    src = save(conv_net(), tmp_path)
    result = emit("tensorrt", "cuda", src, tmp_path / "out", FAST)
    check = next(c for c in result.checks if c.name.startswith("TensorRT engine"))
    if importlib.util.find_spec("tensorrt") is None or shutil.which("nvidia-smi") is None:
        assert check.status == "skipped"
    else:  # a GPU machine with TensorRT: the engine is built in-process
        assert check.status == "passed" and (tmp_path / "out" / "model.engine").is_file()
