"""Calibration data that is damaged or malformed (``--quantize int8 --calib-data``).

Like the catalog of tests/reliability/test_bad_inputs.py (whose helpers these rows reuse): every
row must give exit code 2, one error line naming the file and the problem, and write nothing.
Below the table: data that is odd but valid (a first file with no samples, variable-length
sequences, a damaged file past --calib-size) must quantize, the same whatever the batch size.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper, numpy_helper

from onnxslim import cli
from onnxslim.calibration import ActivationCollector
from onnxslim.calibration.data import CalibrationSet, InputSpec, batch_rows
from tests.helpers import init, make_model, vi
from tests.reliability import models
from tests.reliability.test_bad_inputs import Case, _folder, _model, _npz, _write, check_rejected

QUANT = ("--quantize", "int8")
X = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)  # 4 samples for models.conv_model
Maker = Callable[[Path], Path]


def _calib(data: Maker, build: Callable[[], onnx.ModelProto] = models.conv_model):
    """Arguments for ``optimize`` with int8 quantization and ``data`` as --calib-data."""
    return _model(build, *QUANT, "--calib-data", data)


def _with(x: np.ndarray, index: tuple, value: float) -> np.ndarray:
    x = x.copy()
    x[index] = value
    return x


def _npz_bytes(compress: bool = False, **arrays) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compress else np.savez)(buf, **arrays)
    return buf.getvalue()


def _flipped(data: bytes, at: int) -> bytes:
    out = bytearray(data)
    out[at] ^= 0xFF
    return bytes(out)


def _bad_deflate(data: bytes) -> bytes:
    """A compressed .npz whose deflate stream starts with a reserved block type (zlib.error)."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        at = z.infolist()[0].header_offset
    # The local header's own name and extra lengths (its extra field is not the central directory's).
    start = at + 30 + int.from_bytes(data[at + 26 : at + 28], "little") + int.from_bytes(data[at + 28 : at + 30], "little")
    out = bytearray(data)
    out[start] = 0xFF
    return bytes(out)


def _files(name: str, **contents: bytes) -> Maker:
    """A folder ``name`` holding these bytes (``a_npz=...`` is a.npz; the loader reads in name order)."""

    def make(d: Path) -> Path:
        _folder(name)(d)
        for file, data in contents.items():
            _write(d / name / file.replace("_", "."), data)
        return d / name

    return make


def _arrays(d: Path, *samples: np.ndarray) -> Path:
    """A folder of .npy files, one sample each, in this order."""
    folder = _folder("calib")(d)
    for i, sample in enumerate(samples):
        np.save(folder / f"{chr(ord('a') + i)}.npy", sample)
    return folder


def _npy_as(path: Path, array: np.ndarray) -> Path:
    """A .npy file under another name (np.save would append .npy)."""
    np.save(path.with_suffix(".npy"), array)
    return path.with_suffix(".npy").rename(path)


def _fifo(d: Path) -> Path:
    os.mkfifo(d / "x.npz")
    return d / "x.npz"


def _images(preprocess: dict | None, *extra: str) -> Maker:
    """A folder with one 10x12 PNG, ``preprocess.json`` and one-sample .npy files named ``extra``."""

    def make(d: Path) -> Path:
        from PIL import Image

        folder = _folder("img")(d)
        Image.fromarray(np.full((10, 12, 3), 80, np.uint8)).save(folder / "a.png")
        if preprocess is not None:
            (folder / "preprocess.json").write_text(json.dumps(preprocess))
        for name in extra:
            np.save(folder / name, X[0])
        return folder

    return make


GOOD = _npz_bytes(x=X)
CASES = [
    # Non-finite values.
    Case("nan", r"c\.npz: input 'x' has NaN/inf values \(1 of 768\)", _calib(_npz("c.npz", x=_with(X, (1, 2, 3, 4), np.nan)))),
    Case("inf", r"input 'x' has NaN/inf values \(1 of 768\)", _calib(_npz("c.npz", x=_with(X, (0, 0, 0, 0), -np.inf)))),
    Case("float64-overflows-float32", r"input 'x' has NaN/inf values", _calib(_npz("c.npz", x=_with(X.astype(np.float64), (3, 0, 0, 0), 1e300)))),
    Case("nan-in-a-later-npy", r"b\.npy: input 'x' has NaN/inf values \(192 of 192\)",
         _calib(lambda d: _arrays(d, X[0], np.full_like(X[0], np.nan)))),
    # Files that cannot be read.
    Case("npz-truncated", r"c\.npz: cannot read: File is not a zip file", _calib(lambda d: _write(d / "c.npz", GOOD[: len(GOOD) // 2]))),
    Case("npz-bad-crc", r"c\.npz: cannot read: Bad CRC-32", _calib(lambda d: _write(d / "c.npz", _flipped(GOOD, len(GOOD) // 3)))),
    Case("npz-bad-deflate", r"c\.npz: cannot read: Error -3 while decompressing",
         _calib(lambda d: _write(d / "c.npz", _bad_deflate(_npz_bytes(True, x=X))))),
    Case("npz-zero-bytes", r"c\.npz: cannot read: No data left in file", _calib(lambda d: _write(d / "c.npz", b""))),
    Case("npy-zero-bytes", r"a\.npy: cannot read: No data left in file", _calib(_files("calib", a_npy=b""))),
    Case("npy-holds-an-npz", r"a\.npy: cannot read: a \.npz archive", _calib(_files("calib", a_npy=GOOD))),
    Case("npz-holds-an-npy", r"c\.npz: cannot read: a \.npy array", _calib(lambda d: _npy_as(d / "c.npz", X))),
    Case("corrupt-file-after-a-good-one", r"b\.npz: cannot read: Bad CRC-32",
         _calib(_files("calib", a_npz=GOOD, b_npz=_flipped(GOOD, len(GOOD) // 3)))),
    Case("dev-null", r"/dev/null: cannot read: not a regular file or folder", _calib(lambda d: Path("/dev/null"))),
    Case("fifo", r"x\.npz: cannot read: not a regular file or folder", _calib(_fifo)),
]
IMAGE_CASES = [  # preprocess.json (models.conv_model: x is NCHW [1, 3, 8, 8], fixed)
    Case("mean-too-short", r'"mean" must be a number or a list of 3, one per channel, got \[0.1, 0.2\]', _calib(_images({"mean": [0.1, 0.2]}))),
    Case("mean-not-a-number", r'"mean" must be a number', _calib(_images({"mean": ["a", 0, 0]}))),
    Case("std-zero", r'"std" must be a positive number.*no 0.*got 0', _calib(_images({"std": 0}))),
    Case("std-has-a-zero", r'"std" must be a positive number.*got \[0.5, 0, 0.5\]', _calib(_images({"std": [0.5, 0, 0.5]}))),
    Case("scale-string", r'"scale" must be a positive number, got "x"', _calib(_images({"scale": "x"}))),
    Case("resize-number", r'"resize" must be \[H, W\], two positive integers, got 8', _calib(_images({"resize": 8}))),
    Case("resize-string", r'"resize" must be \[H, W\].*got "abc"', _calib(_images({"resize": "abc"}))),
    Case("resize-zero", r'"resize" must be \[H, W\].*got \[0, 0\]', _calib(_images({"resize": [0, 0]}))),
    Case("resize-negative", r'"resize" must be \[H, W\].*got \[-1, 8\]', _calib(_images({"resize": [-1, 8]}))),
    Case("resize-not-the-fixed-size", r'"resize": \[4, 4\] does not match the model input', _calib(_images({"resize": [4, 4]}))),
    Case("layout-invalid", r'"layout" must be "NCHW" or "NHWC", got "CHW"', _calib(_images({"layout": "CHW"}))),
    Case("layout-does-not-match", r'"layout": "NHWC" does not match the model input \'x\'', _calib(_images({"layout": "NHWC"}))),
    Case("color-invalid", r'"color" must be "RGB", "BGR" or "L", got 5', _calib(_images({"color": 5}))),
    Case("color-gray-on-rgb-model", r"color L gives 1 channel\(s\), the model input 'x'", _calib(_images({"color": "L"}))),
    Case("arrays-and-images-mixed", r"img: the folder mixes arrays \(\.npy/\.npz\) and images", _calib(_images(None, "b.npy"))),
]


needs_pillow = pytest.mark.skipif(importlib.util.find_spec("PIL") is None, reason="image folders need Pillow")


@pytest.mark.filterwarnings("error::RuntimeWarning")  # numpy's overflow warning would be a second line on stderr
@pytest.mark.parametrize("case", [*CASES, *(pytest.param(c, marks=needs_pillow) for c in IMAGE_CASES)],
                         ids=[c.id for c in [*CASES, *IMAGE_CASES]])
def test_bad_calibration_data_is_rejected_cleanly(tmp_path, case):
    folder = tmp_path / "work"
    folder.mkdir()
    line = check_rejected(folder, case.setup(folder), case.message)
    assert "dynamic" not in line and "internal error" not in line


@needs_pillow
def test_resize_is_still_asked_for_on_a_dynamic_input(tmp_path):
    def dynamic_hw() -> onnx.ModelProto:
        model = models.conv_model()
        for axis, name in ((2, "h"), (3, "w")):
            model.graph.input[0].type.tensor_type.shape.dim[axis].dim_param = name
        return model

    check_rejected(tmp_path, _calib(_images({}), dynamic_hw)(tmp_path), r'give "resize": \[H, W\].*the model input is dynamic')


# --------------------------------------------------------------------------------------------
# Odd but valid data


def _quantize(tmp_path: Path, model: onnx.ModelProto, calib: Path, *extra: str) -> onnx.ModelProto:
    src, out = tmp_path / "m.onnx", tmp_path / f"out{'_'.join(extra)}.onnx"
    onnx.save(model, src)
    args = ["optimize", str(src), *QUANT, "--calib-data", str(calib), "-o", str(out), *extra]
    result = CliRunner().invoke(cli.main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return onnx.load(out)


def _scales(model: onnx.ModelProto) -> dict[str, bytes]:
    """The scale initializer of every QuantizeLinear, as raw bytes."""
    inits = {t.name: t for t in model.graph.initializer}
    return {n.input[1]: numpy_helper.to_array(inits[n.input[1]]).tobytes()
            for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[1] in inits}


def test_a_first_file_without_samples_is_skipped(tmp_path):
    (tmp_path / "calib").mkdir()
    np.savez(tmp_path / "calib" / "a.npz", x=X[:0])
    np.savez(tmp_path / "calib" / "b.npz", x=X)
    assert _scales(_quantize(tmp_path, models.conv_model(), tmp_path / "calib"))


def test_a_damaged_file_past_calib_size_is_never_read(tmp_path):
    (tmp_path / "calib").mkdir()
    np.savez(tmp_path / "calib" / "a.npz", x=X)
    _write(tmp_path / "calib" / "b.npz", b"")
    assert _scales(_quantize(tmp_path, models.conv_model(), tmp_path / "calib", "--calib-size", "4"))


def _sequence_model() -> onnx.ModelProto:
    """x [n, seq, 8] -> MatMul -> Relu -> MatMul: a dynamic sequence dim, like a text model."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    inits = [init("w1", rng.standard_normal((8, 8)).astype(np.float32)), init("w2", rng.standard_normal((8, 4)).astype(np.float32))]
    return make_model(nodes, [vi("x", ["n", "seq", 8])], [vi("y", ["n", "seq", 4])], inits)


def test_variable_length_sequences_quantize_the_same_at_every_batch_size(tmp_path, monkeypatch):
    run, rows = ActivationCollector.run_raw, []
    monkeypatch.setattr(ActivationCollector, "run_raw", lambda self, feeds: (rows.append(batch_rows(feeds)), run(self, feeds))[1])
    (tmp_path / "calib").mkdir()
    rng = np.random.default_rng(1)
    # a and b share a length (a batch may span them), c is longer, d is short again.
    for name, n, length in (("a", 3, 16), ("b", 2, 16), ("c", 4, 32), ("d", 3, 16)):
        np.savez(tmp_path / "calib" / f"{name}.npz", x=rng.standard_normal((n, length, 8)).astype(np.float32))
    model, scales, batches = _sequence_model(), [], []
    for size in ([], ["--calib-batch-size", "1"], ["--calib-batch-size", "4"]):
        rows.clear()
        scales.append(_scales(_quantize(tmp_path, model, tmp_path / "calib", *size)))
        batches.append(max(rows))
    assert batches == [2, 1, 4]  # the runs really were batched differently (the default is 2)
    assert len(scales[0]) >= 2  # x and the Relu output
    assert scales[0] == scales[1] == scales[2]


@pytest.mark.parametrize("batch_size", [1, 2, 3, 4, 16])
def test_batches_are_cut_where_the_sample_shape_changes(batch_size):
    rng = np.random.default_rng(3)
    chunks = [{"x": rng.standard_normal((n, length, 2)).astype(np.float32)} for n, length in ((3, 4), (2, 4), (0, 9), (5, 6), (1, 4))]
    data = CalibrationSet("chunks", [InputSpec("x", np.dtype(np.float32), (None, None, 2))], [lambda c=c: c for c in chunks])
    got = list(data.batches(batch_size))
    assert all(len(b["x"]) <= batch_size for b in got)
    assert np.array_equal(np.concatenate([b["x"].reshape(-1) for b in got]), np.concatenate([c["x"].reshape(-1) for c in chunks]))
    # Runs of equal shape: 5 samples of length 4, 5 of length 6, 1 of length 4.
    lengths = [b["x"].shape[1] for b in got for _ in range(len(b["x"]))]
    assert lengths == [4] * 5 + [6] * 5 + [4]
    assert [len(b["x"]) for b in got] == [*_split(5, batch_size), *_split(5, batch_size), 1]


def _split(n: int, size: int) -> list[int]:
    return [size] * (n // size) + ([n % size] if n % size else [])
