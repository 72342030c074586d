"""Calibration set readers. See the package docstring for the accepted layouts."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

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
            chunk = load()
            n = batch_rows(chunk)
            if left is not None:
                if left <= 0:
                    return
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
        chunks is stacked from their pieces.
        """
        pending: list[Feeds] = []
        have = 0
        for chunk in self.chunks():
            rows, start = batch_rows(chunk), 0
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


def batch_rows(chunk: Feeds) -> int:
    """Samples in a batch of feeds (the first axis of any input)."""
    return int(next(iter(chunk.values())).shape[0]) if chunk else 0


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
                arr = arr.astype(spec.dtype)
            else:
                raise UsageError(f"calibration data {origin}: {name!r} is {arr.dtype}, the model expects {spec.dtype}")
        out[name] = arr
    if len(set(counts.values())) > 1:
        raise UsageError(f"calibration data {origin}: inputs have different sample counts {counts}")
    return out


def _npz_loader(path: Path, inputs: Sequence[InputSpec]) -> Callable[[], Feeds]:
    def load() -> Feeds:
        try:
            with np.load(path, allow_pickle=False) as data:
                chunk = {k: data[k] for k in data.files}
        except (OSError, ValueError) as exc:
            raise UsageError(f"calibration data {path}: cannot read: {exc}") from exc
        return _validate(chunk, inputs, str(path))

    return load


def _npy_loader(path: Path, inputs: Sequence[InputSpec]) -> Callable[[], Feeds]:
    def load() -> Feeds:
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise UsageError(f"calibration data {path}: cannot read: {exc}") from exc
        spec = inputs[0]
        if arr.ndim == len(spec.shape) - 1:
            arr = arr[None]
        return _validate({spec.name: arr}, inputs, str(path))

    return load


def load_calibration(path: str | os.PathLike, model: onnx.ModelProto, limit: int | None = None) -> CalibrationSet:
    """Open a calibration source; validates the first chunk eagerly so errors come early."""
    path = Path(path)
    inputs = model_inputs(model)
    if limit is not None and limit <= 0:
        raise UsageError("--calib-size must be positive")
    if not path.exists():
        raise UsageError(f"calibration data {path}: no such file or folder")
    if path.is_file():
        if path.suffix != ".npz":
            raise UsageError(f"calibration data {path}: expected a .npz file or a folder of .npy/.npz files")
        sources = [_npz_loader(path, inputs)]
    else:
        files = sorted(p for p in path.iterdir() if p.suffix in (".npz", ".npy") and p.is_file())
        if any(p.suffix == ".npy" for p in files) and len(inputs) != 1:
            raise UsageError(f"calibration data {path}: .npy files only work for single-input models; use .npz")
        sources = [_npz_loader(p, inputs) if p.suffix == ".npz" else _npy_loader(p, inputs) for p in files]
        if not sources:
            sources = _image_sources(path, inputs)
    if not sources:
        raise UsageError(f"calibration data {path}: empty (no .npy, .npz or image files)")
    calib = CalibrationSet(str(path), inputs, sources, limit)
    first = next(calib.chunks(), None)
    if first is None or batch_rows(first) == 0:
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
    per channel after scaling (0 / 1), ``layout`` "NCHW" or "NHWC" (default: from where the model
    input has 1 or 3 channels), ``color`` "RGB", "BGR" or "L".
    """

    resize: tuple[int, int] | None = None
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: str | None = None
    color: str = "RGB"


def _image_spec(folder: Path, spec: InputSpec) -> ImageSpec:
    import json

    raw: dict = {}
    file = folder / PREPROCESS_FILE
    if file.is_file():
        try:
            raw = json.loads(file.read_text())
        except ValueError as exc:
            raise UsageError(f"calibration data {file}: not valid JSON ({exc})") from None
        if not isinstance(raw, dict) or set(raw) - {"resize", "scale", "mean", "std", "layout", "color"}:
            raise UsageError(f"calibration data {file}: expected keys resize, scale, mean, std, layout, color")
    layout = str(raw.get("layout") or ("NHWC" if len(spec.shape) == 4 and spec.shape[3] in (1, 3) else "NCHW")).upper()
    if len(spec.shape) != 4 or layout not in ("NCHW", "NHWC"):
        raise UsageError(f"calibration data {folder}: images need a rank-4 NCHW or NHWC input, {spec.name!r} has {spec.shape}")
    h, w = (spec.shape[1], spec.shape[2]) if layout == "NHWC" else (spec.shape[2], spec.shape[3])
    resize = raw.get("resize") or ((h, w) if h and w else None)
    if resize is None or len(resize) != 2 or min(int(v) for v in resize) <= 0:
        raise UsageError(f"calibration data {folder}: give \"resize\": [H, W] in {PREPROCESS_FILE} (the model input is dynamic)")
    color = str(raw.get("color", "RGB")).upper()
    if color not in ("RGB", "BGR", "L"):
        raise UsageError(f"calibration data {file}: color must be RGB, BGR or L")
    try:
        return ImageSpec((int(resize[0]), int(resize[1])), float(raw.get("scale", 1.0 / 255.0)),
                         tuple(float(v) for v in raw.get("mean", [0.0])), tuple(float(v) for v in raw.get("std", [1.0])),
                         layout, color)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"calibration data {file}: bad value ({exc})") from None


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
            try:
                with Image.open(path) as img:
                    img = img.convert("L" if spec.color == "L" else "RGB").resize((spec.resize[1], spec.resize[0]), Image.BILINEAR)
                    arr = np.asarray(img, dtype=np.float32)
            except OSError as exc:
                raise UsageError(f"calibration data {path}: cannot read image: {exc}") from None
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
