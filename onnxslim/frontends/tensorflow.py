"""TensorFlow / Keras -> ONNX through tf2onnx, checked against TensorFlow before it is kept.

    from onnxslim.frontends.tensorflow import export

    result = export(keras_model, [np.zeros((1, 224, 224, 3), np.float32)], "model.onnx",
                    input_names=["images"], dynamic_batch=True)

Needs ``tensorflow`` and ``tf2onnx`` (the optional ``[tensorflow]`` extra; checked with
tensorflow 2.21.0 and tf2onnx 1.17.0). Keras 3 models go through ``tf2onnx.convert.from_function``
on a ``tf.function`` of the model (tf2onnx's ``from_keras`` fails on Keras 3's tensor names); a
SavedModel folder goes through the same call on its ``serving_default`` signature. The result must pass the ONNX checker and
match TensorFlow's outputs on the example inputs under onnxruntime
(``max|ort - tf| <= tolerance * max(1, max|tf|)``); the file is written atomically.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from onnxslim.errors import OnnxSlimError, UsageError, first_line

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 17


class ExportError(OnnxSlimError):
    """tf2onnx failed, or its model does not match TensorFlow's outputs."""


@dataclass
class ExportResult:
    path: Path
    converter: str  # "tf2onnx.from_function" or "tf2onnx.from_function(saved_model)"
    opset: int
    max_abs_error: float
    outputs: int

    def __str__(self) -> str:
        return f"{self.path}: {self.converter}, opset {self.opset}, max |ORT - TF| {self.max_abs_error:.3g} on {self.outputs} output(s)"


def _require():
    try:
        import tensorflow as tf
        import tf2onnx
    except ImportError as exc:
        raise UsageError(f"the TensorFlow front end needs tensorflow and tf2onnx ({exc.name} is missing): "
                         "pip install 'onnxslim[tensorflow]'") from None
    return tf, tf2onnx


def export(
    model: Any,
    example_inputs: Sequence[np.ndarray],
    path: str | os.PathLike,
    *,
    input_names: Sequence[str] | None = None,
    dynamic_batch: bool = False,
    opset: int = DEFAULT_OPSET,
    tolerance: float = 1e-4,
) -> ExportResult:
    """Convert a Keras model (or a SavedModel folder) to ONNX at ``path`` and check it.

    ``example_inputs``: one NumPy array per model input, in order; their shapes and dtypes make
    the input signature (the batch axis dynamic with ``dynamic_batch``).
    """
    tf, tf2onnx = _require()
    from onnxslim import io

    arrays = [np.asarray(a) for a in example_inputs]
    names = list(input_names) if input_names else [f"input_{i}" for i in range(len(arrays))]
    if len(names) != len(arrays):
        raise UsageError(f"{len(names)} input name(s) for {len(arrays)} example input(s)")
    signature = tuple(tf.TensorSpec((None, *a.shape[1:]) if dynamic_batch else a.shape, tf.as_dtype(a.dtype), name=n)
                      for a, n in zip(arrays, names))
    if isinstance(model, (str, os.PathLike)):  # a SavedModel folder: its serving signature
        converter = "tf2onnx.from_function(saved_model)"
        loaded = tf.saved_model.load(str(model))  # keep it alive: the signature refers to its variables
        serving = loaded.signatures["serving_default"]
        keys = list(serving.structured_input_signature[1])
        if len(keys) != len(arrays):
            raise UsageError(f"{model}: the serving signature takes {len(keys)} input(s) ({', '.join(keys)}), {len(arrays)} given")
        function = tf.function(lambda *xs: serving(**dict(zip(keys, xs))))
    else:
        converter = "tf2onnx.from_function"
        function = tf.function(lambda *xs: model(list(xs)) if len(xs) > 1 else model(xs[0]))
    expected = _flatten(function(*[tf.constant(a) for a in arrays]))
    try:
        proto, _ = tf2onnx.convert.from_function(function, input_signature=signature, opset=opset)
    except Exception as exc:  # tf2onnx raises anything
        raise ExportError(f"tf2onnx could not convert {model if converter.endswith('(saved_model)') else type(model).__name__}: "
                          f"{first_line(exc)}") from exc
    error = _check(proto, arrays, expected, tolerance)
    path = Path(path)
    io.save(proto, path)
    return ExportResult(path, converter, opset, error, len(expected))


def _check(proto, inputs: list[np.ndarray], expected: list[np.ndarray], tolerance: float) -> float:
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(proto)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {i.name: a for i, a in zip(session.get_inputs(), inputs)})
    if len(got) != len(expected):
        raise ExportError(f"the ONNX model has {len(got)} output(s), TensorFlow returned {len(expected)}")
    worst = 0.0
    for i, (g, w) in enumerate(zip(got, expected)):
        if g.shape != w.shape:
            raise ExportError(f"output {i}: shape {list(g.shape)} differs from TensorFlow's {list(w.shape)}")
        if w.size and w.dtype.kind in "fc":
            err = float(np.max(np.abs(g.astype(np.float64) - w.astype(np.float64))))
            bound = tolerance * max(1.0, float(np.max(np.abs(w))))
            if not err <= bound:
                raise ExportError(f"output {i}: max |ORT - TF| {err:.3g} exceeds {bound:.3g}")
            worst = max(worst, err)
    return worst


def _flatten(outputs: Any) -> list[np.ndarray]:
    if isinstance(outputs, dict):
        return [a for k in sorted(outputs) for a in _flatten(outputs[k])]
    if isinstance(outputs, (tuple, list)):
        return [a for v in outputs for a in _flatten(v)]
    return [np.asarray(outputs)]


