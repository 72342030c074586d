"""Calibration set readers. See the package docstring for the accepted layouts."""

from __future__ import annotations

import contextlib
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import onnx
from onnx import helper

from onnxslim.errors import UsageError

logger = logging.getLogger(__name__)

Feeds = dict[str, np.ndarray]


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    shape: tuple  # ints for fixed dims, None for symbolic ones


def model_inputs(model: onnx.ModelProto) -> list[InputSpec]:
    inits = {i.name for i in model.graph.initializer}
    specs = []
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        t = inp.type.tensor_type
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type))
        shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in t.shape.dim)
        specs.append(InputSpec(inp.name, dtype, shape))
    return specs


@dataclass
class CalibrationSet:
    """An ordered, re-iterable source of samples. ``sources`` are loaders of chunks of samples."""

    description: str
    inputs: list[InputSpec]
    sources: list[Callable[[], Feeds]] = field(repr=False, default_factory=list)
    limit: int | None = None
    synthetic: bool = False

    def chunks(self) -> Iterator[Feeds]:
        """Chunks as stored (each with a leading sample axis), up to ``limit`` samples."""
        left = self.limit
        for load in self.sources:
            if left is not None and left <= 0:
                return  # before loading: a file past the limit is never read (nor its errors raised)
            chunk = load()
            n = batch_rows(chunk)
            if left is not None:
                if n > left:
                    chunk = {k: v[:left] for k, v in chunk.items()}
                    n = left
                left -= n
            yield chunk

    def samples(self) -> Iterator[Feeds]:
        """One sample at a time (each array keeps a batch axis of 1)."""
        for chunk in self.chunks():
            for i in range(batch_rows(chunk)):
                yield {k: v[i : i + 1] for k, v in chunk.items()}

    def batches(self, batch_size: int) -> Iterator[Feeds]:
        """Samples regrouped into batches of ``batch_size`` (the last may be smaller).

        A batch that lies inside one stored chunk is a view of it (no copy); one that spans
        chunks is stacked from their pieces. Variable-length data (chunks whose samples differ in
        a dynamic dim) cannot be stacked: the batch is cut short where the sample shape changes,
        never padded, so the statistics do not depend on the batch size.
        """
        pending: list[Feeds] = []
        have, shape = 0, None
        for chunk in self.chunks():
            rows, start = batch_rows(chunk), 0
            if rows and (key := _sample_shapes(chunk)) != shape:
                if pending:
                    yield _stack(pending)
                    pending, have = [], 0
                shape = key
            while start < rows:
                take = min(batch_size - have, rows - start)
                part = {k: v[start : start + take] for k, v in chunk.items()}
                start += take
                if not pending and take == batch_size:
                    yield part
                    continue
                pending.append(part)
                have += take
                if have == batch_size:
                    yield _stack(pending)
                    pending, have = [], 0
        if pending:
            yield _stack(pending)

    def __len__(self) -> int:
        return sum(1 for _ in self.samples())

    def split(self, holdout: int) -> tuple["CalibrationSet", list[Feeds]]:
        """The last ``holdout`` samples kept apart (in memory) for measuring fidelity."""
        total = len(self)
        if holdout <= 0 or total <= holdout:
            return self, []
        held = [s for i, s in enumerate(self.samples()) if i >= total - holdout]
        head = CalibrationSet(self.description, self.inputs, self.sources, total - holdout, self.synthetic)
        return head, held


def fixed_batch(inputs: Sequence[InputSpec]) -> int | None:
    """The batch size a model takes when its inputs fix one leading dim (None: free or mixed)."""
    fixed = {s.shape[0] for s in inputs if s.shape and s.shape[0] is not None}
    return fixed.pop() if len(fixed) == 1 else None


def with_input_shapes(inputs: Sequence[InputSpec], input_shapes: dict[str, Sequence[int]] | None) -> list[InputSpec]:
    """The model's inputs as ``--input-shape`` fixes them."""
    shapes = input_shapes or {}
    return [InputSpec(s.name, s.dtype, tuple(int(d) for d in shapes[s.name])) if s.name in shapes else s for s in inputs]


def fit_to_model(calibration: "CalibrationSet | None", held: list[Feeds], model: onnx.ModelProto,
                 input_shapes: dict[str, Sequence[int]] | None = None) -> list[Feeds]:
    """Up front, before any stage runs: the samples must fit the model's inputs as ``--input-shape``
    fixes them (UsageError, one line), and a model whose batch is fixed at B > 1 needs at least B
    calibration samples. Returns the held-out samples in batches the model takes (a short
    remainder left out: padding would count repeated samples twice)."""
    if calibration is None:
        return held
    inputs = with_input_shapes(model_inputs(model), input_shapes)
    first = next((c for c in calibration.chunks() if batch_rows(c)), None)
    if first is None:
        return held
    _validate(first, inputs, calibration.description)
    batch = fixed_batch(inputs)
    if batch is None or batch <= 1:
        return held
    count = len(calibration)
    if count < batch:
        spec = next(s for s in inputs if s.shape and s.shape[0] == batch)
        have = [count, *first[spec.name].shape[1:]]
        raise UsageError(f"calibration data {calibration.description}: {spec.name!r} has {count} sample(s) {have}, but the model's "
                         f"batch is fixed at {batch} ({[d if d is not None else '?' for d in spec.shape]}): give at least {batch}")
    return [feeds for feeds in regroup(held, batch) if batch_rows(feeds) == batch]


def regroup(samples: Iterable[Feeds], size: int) -> Iterator[Feeds]:
    """In-memory feeds (a sample or a batch each) regrouped ``size`` samples at a time, exactly
    as :meth:`CalibrationSet.batches` regroups stored chunks (cut where the sample shape changes)."""
    return CalibrationSet("in-memory samples", [], [lambda s=s: s for s in samples]).batches(size)


def left_over(calibration: "CalibrationSet | None", model: onnx.ModelProto, input_shapes=None) -> tuple[int, int]:
    """(fixed batch B, calibration samples that do not fill a batch of B); (0, 0) for a free batch."""
    batch = fixed_batch(with_input_shapes(model_inputs(model), input_shapes)) if calibration is not None else None
    if batch is None or batch <= 1:
        return 0, 0
    return batch, len(calibration) % batch


def batch_rows(chunk: Feeds) -> int:
    """Samples in a batch of feeds (the first axis of any input)."""
    return int(next(iter(chunk.values())).shape[0]) if chunk else 0


def _sample_shapes(chunk: Feeds) -> tuple:
    """Per-sample shape of every input: chunks that differ in it cannot share a batch."""
    return tuple(sorted((k, v.shape[1:]) for k, v in chunk.items()))


def _stack(samples: list[Feeds]) -> Feeds:
    return {k: np.concatenate([s[k] for s in samples], axis=0) for k in samples[0]}


def _validate(chunk: Feeds, inputs: Sequence[InputSpec], origin: str) -> Feeds:
    expected = {s.name: s for s in inputs}
    missing, extra = set(expected) - set(chunk), set(chunk) - set(expected)
    if missing or extra:
        raise UsageError(f"calibration data {origin}: input names do not match the model "
                         f"(missing: {sorted(missing)}, unknown: {sorted(extra)})")
    counts = {k: v.shape[0] if v.ndim else None for k, v in chunk.items()}
    out = {}
    for name, arr in chunk.items():
        spec = expected[name]
        if arr.ndim != len(spec.shape):
            raise UsageError(f"calibration data {origin}: {name!r} has rank {arr.ndim}, the model expects "
                             f"{len(spec.shape)} (first axis = samples/batch)")
        for axis, (have, want) in enumerate(zip(arr.shape[1:], spec.shape[1:]), start=1):
            if want is not None and have != want:
                raise UsageError(f"calibration data {origin}: {name!r} has shape {list(arr.shape)}, the model expects "
                                 f"{list(d if d is not None else '?' for d in spec.shape)} (axis {axis})")
        if arr.dtype != spec.dtype:
            if arr.dtype.kind == spec.dtype.kind or (arr.dtype.kind in "iu" and spec.dtype.kind in "iu"):
                with np.errstate(over="ignore"):  # a float that overflows becomes inf: rejected below
                    arr = arr.astype(spec.dtype)
            else:
                raise UsageError(f"calibration data {origin}: {name!r} is {arr.dtype}, the model expects {spec.dtype}")
        # Checked here, the one pass over every chunk: a NaN would make every range (and the model) NaN.
        if arr.dtype.kind == "f" and not (finite := np.isfinite(arr)).all():
            raise UsageError(f"calibration data {origin}: input {name!r} has NaN/inf values "
                             f"({arr.size - np.count_nonzero(finite)} of {arr.size})")
        out[name] = arr
    if len(set(counts.values())) > 1:
        raise UsageError(f"calibration data {origin}: inputs have different sample counts {counts}")
    return out


@contextlib.contextmanager
def _reading(path: Path, what: str = "") -> Iterator[None]:
    """Any failure while reading a file is a fault of the file, not a bug of ours.

    numpy, zipfile and Pillow raise a zoo of types for damaged files (BadZipFile, EOFError,
    zlib.error, NotImplementedError, struct.error, ...); all become one UsageError.
    """
    try:
        yield
    except UsageError:
        raise
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UsageError(f"calibration data {path}: cannot read{what}: {reason}") from exc


def _npz_loader(path: Path, inputs: Sequence[InputSpec]) -> Callable[[], Feeds]:
    def load() -> Feeds:
        with _reading(path), open(path, "rb") as fh:  # our handle: np.load leaks its own on a bad zip
            data = np.load(fh, allow_pickle=False)
            if isinstance(data, np.ndarray):
                raise UsageError(f"calibration data {path}: cannot read: a .npy array, not a .npz archive")
            with data:
                chunk = {k: data[k] for k in data.files}
            if bad := [k for k, v in chunk.items() if not isinstance(v, np.ndarray)]:
                raise UsageError(f"calibration data {path}: cannot read: {bad[0]!r} is not a .npy array")
        return _validate(chunk, inputs, str(path))

    return load


def _npy_loader(path: Path, inputs: Sequence[InputSpec]) -> Callable[[], Feeds]:
    def load() -> Feeds:
        with _reading(path), open(path, "rb") as fh:
            arr = np.load(fh, allow_pickle=False)
            if not isinstance(arr, np.ndarray):
                arr.close()
                raise UsageError(f"calibration data {path}: cannot read: a .npz archive, not a .npy array")
        spec = inputs[0]
        if arr.ndim == len(spec.shape) - 1:
            arr = arr[None]
        return _validate({spec.name: arr}, inputs, str(path))

    return load


def load_calibration(path: str | os.PathLike, model: onnx.ModelProto, limit: int | None = None) -> CalibrationSet:
    """Open a calibration source; validates chunks up to the first sample eagerly so errors come early."""
    path = Path(path)
    inputs = model_inputs(model)
    if limit is not None and limit <= 0:
        raise UsageError("--calib-size must be positive")
    if not path.exists():
        raise UsageError(f"calibration data {path}: no such file or folder")
    if path.is_file():
        if path.suffix != ".npz":
            raise UsageError(f"calibration data {path}: expected a .npz file, or a folder of .npy/.npz files or images")
        sources = [_npz_loader(path, inputs)]
    elif path.is_dir():
        with _reading(path):
            entries = sorted(p for p in path.iterdir() if p.is_file())
        files = [p for p in entries if p.suffix in (".npz", ".npy")]
        if files and any(p.suffix.lower() in IMAGE_SUFFIXES for p in entries):
            raise UsageError(f"calibration data {path}: the folder mixes arrays (.npy/.npz) and images; keep one kind")
        if any(p.suffix == ".npy" for p in files) and len(inputs) != 1:
            raise UsageError(f"calibration data {path}: .npy files only work for single-input models; use .npz")
        sources = [_npz_loader(p, inputs) if p.suffix == ".npz" else _npy_loader(p, inputs) for p in files]
        if not sources:
            sources = _image_sources(path, inputs)
    else:  # /dev/null, a FIFO, a socket: nothing np.load can seek in
        raise UsageError(f"calibration data {path}: cannot read: not a regular file or folder")
    if not sources:
        raise UsageError(f"calibration data {path}: empty (no .npy, .npz or image files)")
    calib = CalibrationSet(str(path), inputs, sources, limit)
    if next((c for c in calib.chunks() if batch_rows(c)), None) is None:  # a file may hold 0 samples
        raise UsageError(f"calibration data {path}: empty (no samples)")
    return calib


# --------------------------------------------------------------------------------------------
# Image folders (Pillow, optional: pip install 'onnxslim[images]')

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
PREPROCESS_FILE = "preprocess.json"


@dataclass(frozen=True)
class ImageSpec:
    """How an image becomes an input: ``preprocess.json`` beside the images; unset keys default.

    ``resize`` [H, W] (default: the model input's fixed H and W), ``scale`` (1/255), ``mean``/``std``
    after scaling, one number or one per channel (0 / 1), ``layout`` "NCHW" or "NHWC" (default:
    from where the model input has 1 or 3 channels), ``color`` "RGB", "BGR" or "L".
    """

    resize: tuple[int, int] | None = None
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: str | None = None
    color: str = "RGB"


def _image_spec(folder: Path, spec: InputSpec) -> ImageSpec:
    """Every key checked up front: a bad value would otherwise surface as a NumPy error mid-run."""
    import json

    raw: dict = {}
    file = folder / PREPROCESS_FILE
    if file.is_file():
        with _reading(file):
            text = file.read_text()
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise UsageError(f"calibration data {file}: not valid JSON ({exc})") from None
        if not isinstance(raw, dict) or set(raw) - {"resize", "scale", "mean", "std", "layout", "color"}:
            raise UsageError(f"calibration data {file}: expected keys resize, scale, mean, std, layout, color")

    def bad(key: str, form: str) -> UsageError:
        return UsageError(f"calibration data {file}: \"{key}\" must be {form}, got {json.dumps(raw[key])}")

    if len(spec.shape) != 4:
        raise UsageError(f"calibration data {folder}: images need a rank-4 NCHW or NHWC input, {spec.name!r} has {spec.shape}")
    layout, color = raw.get("layout"), raw.get("color", "RGB")
    if layout is not None and (not isinstance(layout, str) or layout.upper() not in ("NCHW", "NHWC")):
        raise bad("layout", '"NCHW" or "NHWC"')
    if not isinstance(color, str) or color.upper() not in ("RGB", "BGR", "L"):
        raise bad("color", '"RGB", "BGR" or "L"')
    layout = layout.upper() if layout else ("NHWC" if spec.shape[3] in (1, 3) else "NCHW")
    color, axis = color.upper(), 3 if layout == "NHWC" else 1
    shape = [d if d is not None else "?" for d in spec.shape]
    channels, have = 1 if color == "L" else 3, spec.shape[axis]
    if have is not None and have not in (1, 3):
        given = f"\"layout\": \"{layout}\" does not match" if "layout" in raw else f"images (layout {layout}) do not fit"
        raise UsageError(f"calibration data {folder}: {given} the model input {spec.name!r} {shape}: "
                         f"its channel axis {axis} has {have}, images give 1 or 3")
    if have is not None and have != channels:
        raise UsageError(f"calibration data {folder}: color {color} gives {channels} channel(s), the model input "
                         f"{spec.name!r} {shape} has {have} (set \"color\" in {PREPROCESS_FILE})")
    h, w = (spec.shape[1], spec.shape[2]) if layout == "NHWC" else (spec.shape[2], spec.shape[3])
    resize = raw.get("resize")
    if resize is None:
        if not (h and w):
            raise UsageError(f"calibration data {folder}: give \"resize\": [H, W] in {PREPROCESS_FILE} (the model input is dynamic)")
        resize = [h, w]
    elif not (isinstance(resize, list) and len(resize) == 2 and all(type(v) is int and v > 0 for v in resize)):
        raise bad("resize", "[H, W], two positive integers")
    elif (h and h != resize[0]) or (w and w != resize[1]):
        raise UsageError(f"calibration data {file}: \"resize\": {resize} does not match the model input {spec.name!r} {shape}")
    scale = raw.get("scale", 1.0 / 255.0)
    if not _number(scale) or scale <= 0:
        raise bad("scale", "a positive number")
    mean, std = raw.get("mean", 0.0), raw.get("std", 1.0)
    mean, std = [mean] if _number(mean) else mean, [std] if _number(std) else std
    listed = f" or a list of {channels}, one per channel" if channels > 1 else ""
    if not (isinstance(mean, list) and len(mean) in (1, channels) and all(_number(v) for v in mean)):
        raise bad("mean", "a number" + listed)
    if not (isinstance(std, list) and len(std) in (1, channels) and all(_number(v) and v > 0 for v in std)):
        raise bad("std", "a positive number" + listed + " (it divides: no 0)")
    return ImageSpec((resize[0], resize[1]), float(scale), tuple(map(float, mean)), tuple(map(float, std)), layout, color)


def _number(value) -> bool:
    """A finite JSON number (``true`` is not one, though Python counts it as an int)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _image_sources(folder: Path, inputs: Sequence[InputSpec]) -> list[Callable[[], Feeds]]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        return []
    if len(inputs) != 1:
        raise UsageError(f"calibration data {folder}: image folders only work for single-input models")
    try:
        from PIL import Image
    except ImportError:
        raise UsageError("calibration images need Pillow: pip install 'onnxslim[images]'") from None
    spec = _image_spec(folder, inputs[0])

    def loader(path: Path) -> Callable[[], Feeds]:
        def load() -> Feeds:
            with _reading(path, " image"), Image.open(path) as img:
                img = img.convert("L" if spec.color == "L" else "RGB").resize((spec.resize[1], spec.resize[0]), Image.BILINEAR)
                arr = np.asarray(img, dtype=np.float32)
            arr = arr[..., None] if arr.ndim == 2 else (arr[..., ::-1] if spec.color == "BGR" else arr)
            arr = (arr * spec.scale - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
            arr = arr if spec.layout == "NHWC" else arr.transpose(2, 0, 1)
            return _validate({inputs[0].name: np.ascontiguousarray(arr[None])}, inputs, str(path))

        return load

    return [loader(p) for p in files]


def synthetic(model: onnx.ModelProto, count: int, seed: int = 0, dims: dict[str, Sequence[int]] | None = None) -> CalibrationSet:
    """Seeded N(0,1) floats / {0,1} integers; symbolic dims 1 (batch) or 8 unless ``dims`` says."""
    inputs = model_inputs(model)
    rng = np.random.default_rng(seed)

    def sample_shape(spec: InputSpec) -> list[int]:
        if dims and spec.name in dims:
            return [1, *list(dims[spec.name])[1:]]
        return [1] + [d if d is not None else 8 for d in spec.shape[1:]]

    chunks = []
    for _ in range(count):
        feeds = {}
        for spec in inputs:
            shape = sample_shape(spec)
            if spec.dtype.kind == "f":
                feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
            elif spec.dtype.kind == "b":
                feeds[spec.name] = rng.integers(0, 2, shape).astype(bool)
            else:
                feeds[spec.name] = rng.integers(0, 2, shape).astype(spec.dtype)
        chunks.append(feeds)
    return CalibrationSet(f"synthetic({count}, seed={seed})", inputs, [lambda c=c: c for c in chunks], synthetic=True)
