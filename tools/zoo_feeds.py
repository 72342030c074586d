"""Seeded, plausible inputs for a zoo model, shared by the zoo's self-check and the bench.

Shapes: a full shape given for the input by name wins; otherwise each symbolic dimension takes
its value from ``dims`` by name, or 1. Integer inputs get values that make sense for text models:
attention masks are ones with the last quarter padded out, token types are zeros, and other
integers (token ids) are drawn from ``[low, high)`` given by ``ranges`` (default ``[0, 100)``).

Trained OCR models answer noise with all-zero maps, which would make any numeric comparison
vacuous, so a spec may ask for ``text_image`` inputs: lines of random words rendered with
Pillow's built-in font, black on white, normalized with the given mean and std (falls back to
noise, with a warning, where Pillow is missing).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import onnx
from onnx import helper

log = logging.getLogger("zoo")

DEFAULT_INT_RANGE = (0, 100)
WORDS = "the quick brown fox jumps over lazy dog text line 2024 ONNX model 0123456789 invoice total".split()


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The graph inputs that are not initializers, with numpy dtype and (possibly symbolic) shape."""
    initializers = {tensor.name for tensor in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        dims = tuple(
            dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or None) for dim in tensor_type.shape.dim
        )
        specs.append(InputSpec(value.name, np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)), dims))
    return specs


def concrete_shape(spec: InputSpec, shapes: Mapping[str, Sequence[int]], dims: Mapping[str, int]) -> tuple[int, ...]:
    if spec.name in shapes:
        return tuple(int(d) for d in shapes[spec.name])
    return tuple(d if isinstance(d, int) and d > 0 else int(dims.get(d, 1)) if isinstance(d, str) else 1 for d in spec.shape)


def _integers(name: str, shape: tuple[int, ...], dtype: np.dtype, ranges: Mapping[str, Sequence[int]], rng: np.random.Generator) -> np.ndarray:
    lowered = name.lower()
    if "mask" in lowered:
        mask = np.ones(shape, dtype=dtype)
        if shape and shape[-1] >= 4:
            mask[..., shape[-1] - shape[-1] // 4 :] = 0
        return mask
    if "token_type" in lowered or "segment" in lowered:
        return np.zeros(shape, dtype=dtype)
    low, high = ranges.get(name, DEFAULT_INT_RANGE)
    return rng.integers(low, high, size=shape).astype(dtype)


def render_text_image(shape: tuple[int, ...], mean: Sequence[float], std: Sequence[float], rng: np.random.Generator) -> np.ndarray | None:
    """(N, 3, H, W) float32 of rendered text lines, normalized per channel; None without Pillow."""
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        return None
    batch, channels, height, width = shape
    lines = max(1, height // 48)
    pitch = height / lines
    try:
        font = ImageFont.load_default(size=max(8, int(pitch * 0.6)))
    except TypeError:  # Pillow < 10.1 has only the small bitmap font
        font = ImageFont.load_default()
    images = []
    for _ in range(batch):
        image = Image.new("RGB", (width, height), (255, 255, 255))
        draw = ImageDraw.Draw(image)
        for line in range(lines):
            words = " ".join(rng.choice(WORDS, size=max(1, width // 60)))
            draw.text((int(pitch * 0.3), int(line * pitch + pitch * 0.15)), words, fill=(0, 0, 0), font=font)
        images.append(np.asarray(image, dtype=np.float32)[..., :channels] / 255.0)
    array = (np.stack(images) - np.asarray(mean[:channels])) / np.asarray(std[:channels])
    return array.transpose(0, 3, 1, 2).astype(np.float32)


def synthesize_feeds(
    model: onnx.ModelProto,
    shapes: Mapping[str, Sequence[int]] | None = None,
    dims: Mapping[str, int] | None = None,
    ranges: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
    text_image: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, np.ndarray]:
    """One seeded input array per graph input; ``text_image`` = {"mean": [...], "std": [...]}."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in input_specs(model):
        shape = concrete_shape(spec, shapes or {}, dims or {})
        if spec.dtype == np.bool_:
            feeds[spec.name] = rng.random(shape) < 0.5
        elif np.issubdtype(spec.dtype, np.integer):
            feeds[spec.name] = _integers(spec.name, shape, spec.dtype, ranges or {}, rng)
        else:
            image = None
            if text_image and len(shape) == 4 and shape[1] in (1, 3):
                image = render_text_image(shape, text_image["mean"], text_image["std"], rng)
                if image is None:
                    log.warning("Pillow is not installed: %s gets noise instead of rendered text", spec.name)
            feeds[spec.name] = image.astype(spec.dtype) if image is not None else rng.standard_normal(shape).astype(spec.dtype)
    return feeds
