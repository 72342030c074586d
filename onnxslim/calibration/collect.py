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

Observed tensors without a reorder (``direct=True``): with ``ORT_ENABLE_ALL`` on x86, onnxruntime
runs convolutions in its blocked NCHWc layout and puts a ``ReorderOutput`` (NCHWc -> NCHW) before
every graph output, so that each observed activation costs a transposing copy (over a third of
onnxruntime's time in MobileNetV2's calibration). A direct collector saves the session's optimized graph,
makes the reorders' NCHWc inputs the outputs instead, and runs that graph: :meth:`run_raw` hands
those tensors over in the blocked layout (:class:`Blocked` says how to read them; statistics
that do not care about the order of values read them as they are), :meth:`run` unblocks them.
"""

from __future__ import annotations

import functools
import logging
import math
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from onnxslim.calibration.data import CalibrationSet, Feeds, batch_rows
from onnxslim.cpu import usable_cores
from onnxslim.errors import first_line
from onnxslim.io import TWO_GB, save

logger = logging.getLogger(__name__)

Observer = Callable[[str, np.ndarray], None]

INLINE_LIMIT = 1024  # initializers up to this many bytes stay in the skeleton
_NATIVE = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.INT8,
           onnx.TensorProto.UINT8, onnx.TensorProto.INT16, onnx.TensorProto.UINT16, onnx.TensorProto.INT32,
           onnx.TensorProto.UINT32, onnx.TensorProto.INT64, onnx.TensorProto.UINT64, onnx.TensorProto.BOOL}


NCHWC_DOMAIN = "com.microsoft.nchwc"
DIRECT_WEIGHT_LIMIT = 1 << 30  # a direct collector writes the weights to a temporary file once: not for huge models


@dataclass(frozen=True)
class Blocked:
    """How to read an activation onnxruntime hands over in its NCHWc layout.

    The array's shape reads ``(N, P, H, W)`` with ``P`` the channels padded to a multiple of
    ``block``; its memory holds ``(N, P // block, H, W, block)``: channel ``c`` of pixel ``(h, w)``
    is ``[n, c // block, h, w, c % block]``. Channels from ``channels`` to ``P`` are padding.
    """

    channels: int
    block: int

    def check(self, x: np.ndarray, name: str) -> None:
        """Fail loudly if ``x`` cannot be this layout (an onnxruntime that pads channels otherwise)."""
        p = x.shape[1] if x.ndim == 4 else 0
        if not (p % self.block == 0 and p - self.block < self.channels <= p):
            raise RuntimeError(f"collector: {name!r} has shape {list(x.shape)}, not NCHWc with {self.channels} "
                               f"channels in blocks of {self.block}")

    def blocks(self, x: np.ndarray) -> np.ndarray:
        """The 5-D view ``(N, P // block, H, W, block)`` of ``x`` (no copy)."""
        n, p, h, w = x.shape
        return x.reshape(n, p // self.block, h, w, self.block)

    def to_nchw(self, x: np.ndarray) -> np.ndarray:
        """The activation in NCHW (a copy), as a session without the layout would give it."""
        n, p, h, w = x.shape
        return np.ascontiguousarray(self.blocks(x).transpose(0, 1, 4, 2, 3).reshape(n, p, h, w)[:, :self.channels])

    def parts(self, x: np.ndarray) -> list[np.ndarray]:
        """Every real (not padding) value, as flat arrays: views of ``x`` when there is no padding."""
        if x.shape[1] == self.channels:
            return [x.reshape(-1)]
        full, rest = divmod(self.channels, self.block)
        b = self.blocks(x)
        return [*(b[n, :full].reshape(-1) for n in range(x.shape[0])), np.ascontiguousarray(b[:, full, ..., :rest]).reshape(-1)]

    def pixel_sample(self, x: np.ndarray, step: int) -> list[np.ndarray]:
        """The real values of every ``step``-th pixel of each sample (a pixel's channels lie in ``block``-wide runs)."""
        n, p, h, w = x.shape
        pixels = x.reshape(n, p // self.block, h * w, self.block)[:, :, ::step]  # a strided view
        full, rest = divmod(self.channels, self.block)
        if not rest:
            return [pixels]
        return [pixels[:, :full], pixels[:, full, :, :rest]]


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
    ``direct``: with ``ORT_ENABLE_ALL``, NCHWc activations without onnxruntime's output reorders
    (see the module's notes; :attr:`blocked` lists them). Anything that goes wrong building that
    session falls back to the plain one.
    """

    def __init__(self, model: onnx.ModelProto, tensor_names: Sequence[str], threads: int | None = None,
                 optimization_level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                 spinning: bool = True, weights: Mapping[str, np.ndarray] | None = None, direct: bool = False):
        self.names = list(dict.fromkeys(tensor_names))

        def options(level: ort.GraphOptimizationLevel = optimization_level, skeleton: bool = True) -> ort.SessionOptions:
            return _options(level, threads or usable_cores(), spinning, self._external if skeleton else None)

        skeleton, ext_names, ext_values = _augmented(model, self.names, weights)
        # onnxruntime reads these arrays for the session's lifetime: the collector keeps them.
        self._external = dict(zip(ext_names, (ort.OrtValue.ortvalue_from_numpy(v) for v in ext_values)))
        self.blocked: dict[str, Blocked] = {}  # observed tensors that run_raw hands over in NCHWc
        self._fetch = list(self.names)  # what the session is asked for, name by name
        self.session = None
        if direct and optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL and _may_block(skeleton, ext_values):
            try:
                self._open_direct(skeleton, options)
            except Exception as exc:  # onnxruntime's own files: never worth failing calibration for
                logger.debug("collector: no direct outputs (%s)", first_line(exc))
                self.session, self.blocked, self._fetch = None, {}, list(self.names)
        if self.session is None:
            self.session = _session(skeleton, options())
        self._unique_fetch = list(dict.fromkeys(self._fetch))  # two observed tensors may share a source
        self.input_names = {i.name for i in self.session.get_inputs()}
        fixed = {i.shape[0] for i in self.session.get_inputs() if i.shape and isinstance(i.shape[0], int)}
        # A model exported with a fixed batch takes batches of exactly that size.
        self.fixed_batch = fixed.pop() if len(fixed) == 1 else None

    def _open_direct(self, skeleton: onnx.ModelProto, options: Callable[..., ort.SessionOptions]) -> None:
        """The session over onnxruntime's optimized graph with the output reorders taken out."""
        block = nchwc_block()
        found = _direct_session(skeleton, set(self.names), options) if block else None
        if found is None:
            return
        self.session, sources = found
        self.blocked = {name: Blocked(channels, block) for name, (_, channels) in sources.items()}
        self._fetch = [sources[name][0] if name in sources else name for name in self.names]
        self._external = {}  # the session holds its own weights

    def run_raw(self, feeds: Feeds) -> dict[str, np.ndarray]:
        """Activations of one batch, by name; those in :attr:`blocked` in their NCHWc layout."""
        fetch = self._unique_fetch
        by_fetch = dict(zip(fetch, self.session.run(fetch, {k: v for k, v in feeds.items() if k in self.input_names})))
        out = {name: by_fetch[fetch] for name, fetch in zip(self.names, self._fetch)}
        for name, layout in self.blocked.items():
            layout.check(out[name], name)
        return out

    def run(self, feeds: Feeds) -> dict[str, np.ndarray]:
        """Activations of one batch, by name (in the model's own layout)."""
        values = self.run_raw(feeds)
        for name, blocked in self.blocked.items():
            values[name] = blocked.to_nchw(values[name])
        return values

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


def _options(level: ort.GraphOptimizationLevel, threads: int, spinning: bool = True,
             external: Mapping[str, ort.OrtValue] | None = None) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = level
    opts.log_severity_level = 4  # a failing run raises; its error is reported once, by the caller
    opts.intra_op_num_threads = threads
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if external:
        opts.add_external_initializers(list(external), list(external.values()))
    return opts


def _direct_session(skeleton: onnx.ModelProto, names: set[str], options: Callable[..., ort.SessionOptions]
                    ) -> tuple[ort.InferenceSession, dict[str, tuple[str, int]]] | None:
    """A session over onnxruntime's optimized graph of ``skeleton`` (``options()``: ORT_ENABLE_ALL)
    whose outputs in ``names`` come straight from their NCHWc sources (see _unreorder_outputs),
    and the sources; None when no output has one."""
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        opts = options()
        opts.optimized_model_filepath = str(optimized)
        opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", "optimized.data")
        opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", str(INLINE_LIMIT))
        _session(skeleton, opts)  # builds, writes the optimized graph, and is dropped
        graph_model = onnx.load(str(optimized), load_external_data=False)
        sources = _unreorder_outputs(graph_model, names)
        if not sources:
            return None
        onnx.save(graph_model, str(Path(tmp) / "direct.onnx"))
        # The graph is optimized already; its weights are in optimized.data, not among the skeleton's.
        session = ort.InferenceSession(str(Path(tmp) / "direct.onnx"),
                                       options(ort.GraphOptimizationLevel.ORT_DISABLE_ALL, skeleton=False),
                                       providers=["CPUExecutionProvider"])
    return session, sources


def _session(skeleton: onnx.ModelProto, opts: ort.SessionOptions) -> ort.InferenceSession:
    if skeleton.ByteSize() < TWO_GB - 2**20:
        return ort.InferenceSession(skeleton.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    with tempfile.TemporaryDirectory() as tmp:  # huge constants inside nodes: through a file with external data
        path = save(skeleton, Path(tmp) / "augmented.onnx", external_data=True)
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _may_block(skeleton: onnx.ModelProto, ext_values: list[np.ndarray]) -> bool:
    """Worth a direct session: a convolutional net (2-D convolutions with constant weights, what
    onnxruntime runs in NCHWc, hold at least half the weight bytes; a 1-D or 3-D one stays NCHW)
    whose weights are small enough to write to a temporary file once. A transformer with a
    convolutional stem (ViT's patch embedding) would pay for writing all its weights (1.1 s more
    session time for ViT-B/16) to spare one reorder."""
    if sum(v.nbytes for v in ext_values) > DIRECT_WEIGHT_LIMIT or skeleton.ByteSize() > DIRECT_WEIGHT_LIMIT:
        return False
    inits = {t.name: t for t in skeleton.graph.initializer if t.data_type in _NATIVE}
    size = {name: math.prod(t.dims) * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
            for name, t in inits.items()}
    conv = sum(size[n.input[1]] for n in skeleton.graph.node
               if n.op_type == "Conv" and n.domain in ("", "ai.onnx") and len(n.input) > 1
               and n.input[1] in inits and len(inits[n.input[1]].dims) == 4)
    return conv > 0 and 2 * conv >= sum(size.values())


def _unreorder_outputs(model: onnx.ModelProto, names: set[str]) -> dict[str, tuple[str, int]]:
    """In onnxruntime's optimized graph, make the NCHWc input of each ``ReorderOutput`` that feeds
    a graph output in ``names`` that output instead (the reorder goes when nothing else reads it).
    Returns name -> (its NCHWc source, its channel count)."""
    g = model.graph
    outputs = {o.name for o in g.output}
    readers: dict[str, int] = {}
    for node in g.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    sources: dict[str, tuple[str, int]] = {}
    keep = []
    for node in g.node:
        if (node.op_type == "ReorderOutput" and node.domain == NCHWC_DOMAIN and node.output[0] in outputs
                and node.output[0] in names):
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if not attrs.get("channels_last", 0) and attrs.get("channels"):
                sources[node.output[0]] = (node.input[0], int(attrs["channels"]))
                if not readers.get(node.output[0]):
                    continue
        keep.append(node)
    if not sources:
        return {}
    del g.node[:]
    g.node.extend(keep)
    kept_outputs = []
    listed = set()
    for o in g.output:
        name = sources[o.name][0] if o.name in sources else o.name
        if name not in listed:
            listed.add(name)
            kept_outputs.append(o if o.name not in sources else onnx.ValueInfoProto(name=name))
    del g.output[:]
    g.output.extend(kept_outputs)
    return sources


@functools.lru_cache(maxsize=1)
def nchwc_block() -> int:
    """The channel block of onnxruntime's NCHWc layout on this machine (0: the layout is not used).

    Read off a probe: a Conv with one output channel, whose NCHWc output is padded to one block.
    """
    rng = np.random.default_rng(0)
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["y"], ["r"])],
        "probe", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 32, 6, 6])],
        [helper.make_tensor_value_info("r", onnx.TensorProto.FLOAT, None)],
        [numpy_helper.from_array(rng.standard_normal((1, 32, 3, 3)).astype(np.float32), "w")]),
        opset_imports=[helper.make_opsetid("", 13)])

    def options(level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL, skeleton: bool = True):
        return _options(level, 1)

    try:
        found = _direct_session(model, {"r"}, options)
        if found is None:
            return 0
        session, sources = found  # the probe's output straight from its NCHWc source
        (out,) = session.run([sources["r"][0]], {"x": np.ones((1, 32, 6, 6), np.float32)})
        block = int(out.shape[1])
        return block if block > 1 and block & (block - 1) == 0 else 0
    except Exception as exc:
        logger.debug("collector: NCHWc probe failed (%s)", first_line(exc))
        return 0
