"""Collect intermediate activations with one onnxruntime session for many tensors at once.

The model is copied with the requested tensors added as graph outputs; each batch of the
calibration set is run once and every requested tensor is handed to an observer, then
dropped. Memory is one batch of activations, independent of the number of samples.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, shape_inference

from onnxslim.calibration.data import CalibrationSet, Feeds
from onnxslim.io import TWO_GB, save

Observer = Callable[[str, np.ndarray], None]


def _tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element types of every value in the graph (initializer data left out of inference)."""
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(model) if model.ByteSize() < 64 * 2**20 else _copy_without_weights(model, skeleton)
    try:
        inferred = shape_inference.infer_shapes(skeleton, strict_mode=False)
    except Exception:  # shape inference is best effort here; missing types are handled below
        inferred = skeleton
    types: dict[str, int] = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    for init in model.graph.initializer:
        types[init.name] = init.data_type
    return types


def _copy_without_weights(model: onnx.ModelProto, out: onnx.ModelProto) -> None:
    out.CopyFrom(model)
    for t in out.graph.initializer:
        if t.ByteSize() > 1024:
            t.ClearField("raw_data")
            for f in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                t.ClearField(f)


class ActivationCollector:
    """Run a model over a calibration set and stream chosen intermediate tensors to observers."""

    def __init__(self, model: onnx.ModelProto, tensor_names: Sequence[str], threads: int | None = None):
        self.names = list(dict.fromkeys(tensor_names))
        types = _tensor_types(model)
        augmented = onnx.ModelProto()
        augmented.CopyFrom(model)
        existing = {o.name for o in augmented.graph.output}
        for name in self.names:
            if name in existing:
                continue
            elem = types.get(name, onnx.TensorProto.FLOAT)
            augmented.graph.output.append(helper.make_tensor_value_info(name, elem, None))
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.log_severity_level = 3
        opts.intra_op_num_threads = threads or min(4, os.cpu_count() or 1)
        if augmented.ByteSize() < TWO_GB - 2**20:
            self.session = ort.InferenceSession(augmented.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        else:
            with tempfile.TemporaryDirectory() as tmp:
                path = save(augmented, Path(tmp) / "augmented.onnx", external_data=True)
                self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_names = {i.name for i in self.session.get_inputs()}
        fixed = {i.shape[0] for i in self.session.get_inputs() if i.shape and isinstance(i.shape[0], int)}
        # A model exported with a fixed batch takes batches of exactly that size.
        self.fixed_batch = fixed.pop() if len(fixed) == 1 else None

    def run(self, feeds: Feeds) -> dict[str, np.ndarray]:
        """Activations of one batch, by name."""
        values = self.session.run(self.names, {k: v for k, v in feeds.items() if k in self.input_names})
        return dict(zip(self.names, values))

    def collect(self, data: CalibrationSet | Iterable[Feeds], observe: Observer, batch_size: int = 8) -> int:
        """Feed every batch through the model; call ``observe(name, array)`` per tensor. Returns samples seen."""
        if self.fixed_batch is not None:
            batch_size = self.fixed_batch
        batches = data.batches(batch_size) if isinstance(data, CalibrationSet) else data
        seen = 0
        for feeds in batches:
            for name, value in self.run(feeds).items():
                observe(name, value)
            seen += int(next(iter(feeds.values())).shape[0]) if feeds else 0
        return seen
