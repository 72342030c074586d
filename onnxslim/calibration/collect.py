"""Collect intermediate activations with one onnxruntime session for many tensors at once.

The session runs the model with the requested tensors added as graph outputs; each batch of the
calibration set is run once and every requested tensor is handed to an observer, then dropped.
Memory is one batch of activations, independent of the number of samples.

The model is borrowed, not copied: the session is built from a weight-free skeleton of it (nodes,
small constants, the extra outputs), and the large initializers are handed to onnxruntime as
arrays over their bytes (``SessionOptions.add_external_initializers``). onnxruntime then neither
parses a serialized copy of the weights nor hits protobuf's 2 GB limit. The extra outputs are
declared with their element type where the model records it and left for onnxruntime to infer
otherwise, so no shape inference runs here.
"""

from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from onnxslim.calibration.data import CalibrationSet, Feeds, batch_rows
from onnxslim.cpu import usable_cores
from onnxslim.io import TWO_GB, save

Observer = Callable[[str, np.ndarray], None]

INLINE_LIMIT = 1024  # initializers up to this many bytes stay in the skeleton
_NATIVE = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.INT8,
           onnx.TensorProto.UINT8, onnx.TensorProto.INT16, onnx.TensorProto.UINT16, onnx.TensorProto.INT32,
           onnx.TensorProto.UINT32, onnx.TensorProto.INT64, onnx.TensorProto.UINT64, onnx.TensorProto.BOOL}


def _weight_array(t: onnx.TensorProto, given: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """The initializer's values as an array onnxruntime can take over; None to keep it inline.

    ``given``: arrays the caller already holds for some initializers (same values), used as they
    are instead of decoding the tensor's bytes, which costs a copy of the weights.
    """
    if t.data_type not in _NATIVE or onnx.external_data_helper.uses_external_data(t):
        return None
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type))
    if math.prod(t.dims) * dtype.itemsize <= INLINE_LIMIT:  # (ByteSize() would serialize the tensor)
        return None
    known = given.get(t.name)
    if known is not None and known.dtype == dtype and known.shape == tuple(t.dims):
        return np.ascontiguousarray(known)  # no copy when it is contiguous already
    if t.HasField("raw_data") and sys.byteorder == "little":
        return np.frombuffer(t.raw_data, dtype=dtype).reshape(tuple(t.dims))  # one copy: the bytes object
    return np.ascontiguousarray(numpy_helper.to_array(t))


def _external_placeholder(t: onnx.TensorProto) -> onnx.TensorProto:
    """An initializer entry whose data onnxruntime takes from ``add_external_initializers``."""
    out = onnx.TensorProto(name=t.name, dims=t.dims, data_type=t.data_type, data_location=onnx.TensorProto.EXTERNAL)
    entry = out.external_data.add()
    entry.key, entry.value = "location", "supplied-by-collector"
    return out


def _element_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element types the model records (value_info, inputs, outputs, initializers); no inference."""
    g = model.graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in [*g.value_info, *g.input, *g.output]
             if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type}
    for init in g.initializer:
        types.setdefault(init.name, init.data_type)
    return types


def _copy_fields(src, dst, skip: tuple[str, ...] = ()) -> None:
    """Copy the set fields of protobuf message ``src`` into ``dst``, except ``skip``."""
    for field, value in src.ListFields():
        if field.name in skip:
            continue
        if field.is_repeated:
            getattr(dst, field.name).extend(value)
        elif field.type == field.TYPE_MESSAGE:
            getattr(dst, field.name).CopyFrom(value)
        else:
            setattr(dst, field.name, value)


def _augmented(model: onnx.ModelProto, names: Sequence[str], given: Mapping[str, np.ndarray] | None = None
               ) -> tuple[onnx.ModelProto, list[str], list[np.ndarray]]:
    """(skeleton with ``names`` as extra outputs, external initializer names, their arrays)."""
    out = onnx.ModelProto()
    _copy_fields(model, out, skip=("graph",))
    src, g = model.graph, out.graph
    _copy_fields(src, g, skip=("initializer", "output"))
    ext_names: list[str] = []
    ext_values: list[np.ndarray] = []
    for t in src.initializer:
        arr = _weight_array(t, given or {})
        if arr is None:
            g.initializer.append(t)
        else:
            g.initializer.append(_external_placeholder(t))
            ext_names.append(t.name)
            ext_values.append(arr)
    g.output.extend(src.output)
    existing = {o.name for o in src.output}
    types = _element_types(model)
    for name in names:
        if name not in existing:  # an untyped output is typed by onnxruntime's own inference
            g.output.append(helper.make_tensor_value_info(name, types[name], None) if name in types
                            else onnx.ValueInfoProto(name=name))
    return out, ext_names, ext_values


class ActivationCollector:
    """Run a model over a calibration set and stream chosen intermediate tensors to observers.

    ``optimization_level``: onnxruntime's graph optimizations for the session (off by default;
    requested tensors stay graph outputs either way, since onnxruntime never fuses one away, and
    ``ORT_ENABLE_ALL`` runs convolutional nets several times faster). ``spinning``: let idle
    intra-op threads spin-wait (faster alone, wasteful beside other work in the same process).
    ``weights``: initializer arrays the caller holds (e.g. a gs graph's constants, which
    ``export_model`` copied into ``model``), taken instead of decoding ``model``'s bytes: a copy
    of every weight less. They must hold the model's values; the collector keeps them alive for
    the session's lifetime (an array whose dtype or shape does not match is ignored).
    """

    def __init__(self, model: onnx.ModelProto, tensor_names: Sequence[str], threads: int | None = None,
                 optimization_level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                 spinning: bool = True, weights: Mapping[str, np.ndarray] | None = None):
        self.names = list(dict.fromkeys(tensor_names))
        opts = ort.SessionOptions()
        opts.graph_optimization_level = optimization_level
        opts.log_severity_level = 4  # a failing run raises; its error is reported once, by the caller
        opts.intra_op_num_threads = threads or usable_cores()
        if not spinning:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        skeleton, ext_names, ext_values = _augmented(model, self.names, weights)
        # onnxruntime reads these arrays for the session's lifetime: the collector keeps them.
        self._external = dict(zip(ext_names, (ort.OrtValue.ortvalue_from_numpy(v) for v in ext_values)))
        if ext_names:
            opts.add_external_initializers(list(self._external), list(self._external.values()))
        if skeleton.ByteSize() < TWO_GB - 2**20:
            self.session = ort.InferenceSession(skeleton.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        else:  # huge constants inside nodes: through a file with external data
            with tempfile.TemporaryDirectory() as tmp:
                path = save(skeleton, Path(tmp) / "augmented.onnx", external_data=True)
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
            seen += batch_rows(feeds)
        return seen
