"""Loading and saving models: external data, models over 2 GB, atomic writes, clear errors.

Saving is atomic: the model (and its external-data file, if any) is written into a temporary
folder beside the destination and then renamed into place, so a crash, a full disk or Ctrl-C
never leaves a half-written output, and the input file is never opened for writing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from onnxslim.errors import InputModelError, OutputError

TWO_GB = 2**31
# Above this many bytes of tensor data we write weights as external data.
EXTERNAL_DATA_THRESHOLD = TWO_GB - 64 * 2**20


def check_input_file(path: str | os.PathLike) -> Path:
    """Cheap checks before any work: the input exists, is a file and is not empty."""
    path = Path(path)
    if not path.exists():
        raise InputModelError(f"{path}: no such file")
    if path.is_dir():
        raise InputModelError(f"{path}: is a directory, expected an .onnx file")
    return path


def load(path: str | os.PathLike, load_external_data: bool = True) -> onnx.ModelProto:
    """Read an ONNX model; raises :class:`InputModelError` with a one-line reason on any problem."""
    path = Path(path)
    if not path.exists():
        raise InputModelError(f"{path}: no such file")
    if path.is_dir():
        raise InputModelError(f"{path}: is a directory, expected an .onnx file")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InputModelError(f"{path}: cannot read: {exc.strerror}") from exc
    if size == 0:
        raise InputModelError(f"{path}: empty file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError as exc:
        raise InputModelError(f"{path}: cannot read: {exc.strerror}") from exc
    if head.lstrip().startswith((b"{", b"[", b"<", b"#")) or head.startswith(b"PK"):
        raise InputModelError(f"{path}: not an ONNX model (looks like text, JSON or an archive)")
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, UnicodeDecodeError) as exc:
        raise InputModelError(f"{path}: not a valid ONNX protobuf (truncated or corrupt file)") from exc
    except OSError as exc:
        raise InputModelError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if not model.HasField("graph") or (not model.opset_import and not model.graph.node and not model.graph.output):
        raise InputModelError(f"{path}: not an ONNX model (no graph)")
    if load_external_data:
        read_external_data(model, path)
    return model


def read_external_data(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Read the external data of ``model`` (saved at ``path``) into its tensors."""
    path = Path(path)
    _check_external_data(model, path.parent)
    try:
        onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
    except (OSError, ValueError) as exc:
        raise InputModelError(f"{path}: cannot load external data: {exc}") from exc


def map_external_data(model: onnx.ModelProto, path: str | os.PathLike) -> dict[str, np.ndarray] | None:
    """Memory-map the external data of the main graph's initializers instead of reading it.

    Returns initializer name -> read-only-on-disk array (copy-on-write ``np.memmap``): weights are
    paged in from the file when a pass reads them and never copied into the process otherwise.
    None when some external tensor cannot be mapped (a Constant attribute, a subgraph
    initializer, a packed or string dtype, a length that does not match): read it instead.
    """
    path = Path(path)
    _check_external_data(model, path.parent)
    helper = onnx.external_data_helper
    arrays: dict[str, np.ndarray] = {}
    for tensor in model.graph.initializer:
        if not helper.uses_external_data(tensor):
            continue
        info = helper.ExternalDataInfo(tensor)
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
        except (KeyError, TypeError, ValueError):
            return None
        shape = tuple(int(d) for d in tensor.dims)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if tensor.data_type == onnx.TensorProto.STRING or dtype.kind == "O" or (info.length and info.length != nbytes):
            return None
        if nbytes == 0:
            arrays[tensor.name] = np.zeros(shape, dtype)
            continue
        arrays[tensor.name] = np.memmap(path.parent / info.location, dtype=dtype, mode="c", offset=info.offset or 0, shape=shape)
    external = sum(1 for t in helper._get_all_tensors(model) if helper.uses_external_data(t))
    return arrays if external == len(arrays) else None


def _check_external_data(model: onnx.ModelProto, base: Path) -> None:
    """Fail early, with the tensor's name, when an external-data file is missing or short."""
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if not onnx.external_data_helper.uses_external_data(tensor):
            continue
        info = onnx.external_data_helper.ExternalDataInfo(tensor)
        location = (base / info.location).resolve()
        if not location.is_relative_to(base.resolve()):
            raise InputModelError(f"tensor {tensor.name!r}: external data path {info.location!r} escapes the model folder")
        if not location.is_file():
            raise InputModelError(f"tensor {tensor.name!r}: external data file {info.location!r} not found")
        needed = (info.offset or 0) + (info.length or 0)
        if info.length and location.stat().st_size < needed:
            raise InputModelError(
                f"tensor {tensor.name!r}: external data file {info.location!r} is truncated "
                f"({location.stat().st_size} bytes, needs {needed})"
            )


def tensor_bytes(model: onnx.ModelProto) -> int:
    """Bytes of raw tensor data held by the model (initializers and Constant nodes)."""
    total = 0
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if tensor.HasField("raw_data"):
            total += len(tensor.raw_data)
        else:
            total += tensor.ByteSize()
    return total


def check_output_path(output: str | os.PathLike, inputs: list[str | os.PathLike]) -> Path:
    """Validate the destination before any work is done; never the input, folder must exist."""
    out = Path(output)
    for inp in inputs:
        try:
            if out.resolve() == Path(inp).resolve():
                raise OutputError(f"{out}: output path is the input path; choose another -o")
        except OSError:
            pass
    if out.exists() and out.is_dir():
        raise OutputError(f"{out}: is a directory; give a file name")
    parent = out.resolve().parent
    if not parent.is_dir():
        raise OutputError(f"{out}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{out}: folder {parent} is not writable")
    return out


def check_not_input_data(output: str | os.PathLike, input_path: str | os.PathLike) -> None:
    """The output, or the ``<output>.data`` file saved beside it, must not replace a file the
    input model reads its weights from. Parses the input's header only when one of them exists."""
    out = Path(output).resolve()
    existing = [p for p in (out, out.with_name(out.name + ".data")) if p.exists()]
    if not existing:
        return
    try:
        header = onnx.load_model(str(input_path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError):
        return  # load() reports what is wrong with the input
    base = Path(input_path).resolve().parent
    used = {
        (base / onnx.external_data_helper.ExternalDataInfo(t).location).resolve()
        for t in onnx.external_data_helper._get_all_tensors(header)
        if onnx.external_data_helper.uses_external_data(t)
    }
    for path in existing:
        if path in used:
            raise OutputError(f"{output}: saving it would overwrite {path.name}, the input's external data; choose another output name")


def save(model: onnx.ModelProto, path: str | os.PathLike, external_data: bool | None = None) -> Path:
    """Atomically write ``model`` to ``path``.

    ``external_data``: True writes weights to ``<file name>.data`` beside the model; None decides
    automatically (external when tensor data would push the file near protobuf's 2 GB limit).
    """
    path = Path(path)
    with staged(path) as tmp_dir:
        written = write_into(model, tmp_dir / path.name, external_data)
        commit(tmp_dir, path, written)
    return path


@contextlib.contextmanager
def staged(path: Path, make_parents: bool = False, cannot: str | None = None) -> Iterator[Path]:
    """A temporary folder beside ``path``, removed on exit whatever happens.

    Its name is chosen before it is created, so that Ctrl-C landing just after the mkdir still
    removes it (with ``tempfile.mkdtemp`` it could arrive before the name was returned). With
    ``make_parents``, missing folders above ``path`` are created, and removed again on exit
    while still empty. ``cannot``: the start of the one-line error when it cannot be created.
    """
    dest = path.resolve()
    parent = dest.parent
    tmp_dir = parent / f".{dest.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    created: list[Path] = []
    try:
        try:
            missing = []
            while make_parents and not os.path.lexists(parent):
                missing.append(parent)
                parent = parent.parent
            for folder in reversed(missing):
                folder.mkdir()
                created.append(folder)
            tmp_dir.mkdir(mode=0o700)
        except OSError as exc:
            raise OutputError(f"{cannot or f'{path}: cannot write in {dest.parent}'}: {exc.strerror or exc}") from exc
        yield tmp_dir
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when still empty


def write_into(model: onnx.ModelProto, file: Path, external_data: bool | None) -> list[Path]:
    """Write ``model`` to ``file`` (inside a staging folder); return the files written."""
    if external_data is None:
        external_data = tensor_bytes(model) > EXTERNAL_DATA_THRESHOLD
    try:
        if external_data:
            data_name = file.name + ".data"
            onnx.save_model(
                model,
                str(file),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=data_name,
                size_threshold=1024,
            )
            files = [file, file.parent / data_name]
            return [f for f in files if f.exists()]
        with open(file, "wb") as fh:
            fh.write(model.SerializeToString())
        return [file]
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise OutputError(f"{file.name}: disk full while writing the output") from exc
        raise OutputError(f"{file.name}: cannot write: {exc.strerror or exc}") from exc
    except ValueError as exc:  # protobuf refuses messages over 2 GB
        if not external_data:
            return write_into(model, file, True)
        raise OutputError(f"{file.name}: cannot serialize: {exc}") from exc


def commit(tmp_dir: Path, dest: Path, written: list[Path]) -> None:
    """Move staged files into place: data file first, then the model (an atomic rename each).
    Ctrl-C waits until both are in place: a new ``.data`` beside the old model would be a pair
    that no longer matches. A ``<name>.data`` that an earlier save wrote beside ``dest`` and this
    one does not is removed with the model that read it (only then; callers have refused a
    ``dest`` whose ``.data`` is a file the input model reads: :func:`check_not_input_data`)."""
    stale = dest.parent / (dest.name + ".data")
    orphan = stale.name not in {f.name for f in written} and stale.name in _data_files_read_by(dest)
    with _interrupts_deferred():
        for f in sorted(written, key=lambda p: p == tmp_dir / dest.name):
            target = dest.parent / (dest.name if f.name == dest.name else f.name)
            try:
                os.replace(f, target)
            except OSError as exc:
                raise OutputError(f"{target}: cannot write: {exc.strerror or exc}") from exc
        if orphan and stale.is_file() and not stale.is_symlink():
            with contextlib.suppress(OSError):
                stale.unlink()


def _data_files_read_by(model_file: Path, probe_limit: int = 64 << 20) -> set[str]:
    """Locations of the external data an existing (small) model file reads; empty when there is
    no such file, it is too big to be a header, or it is not a model."""
    try:
        if not model_file.is_file() or model_file.stat().st_size > probe_limit:
            return set()
        header = onnx.load_model(str(model_file), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError):
        return set()
    return {onnx.external_data_helper.ExternalDataInfo(t).location for t in onnx.external_data_helper._get_all_tensors(header)
            if onnx.external_data_helper.uses_external_data(t)}


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """SIGINT arriving inside the block is raised as KeyboardInterrupt when it ends (main thread
    only: elsewhere Python delivers no signals anyway)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)
    if caught:
        raise KeyboardInterrupt


# --------------------------------------------------------------------------------------------
# Weight-free skeletons and streaming writes (memory ~ one copy of the weights, not three)


def skeleton(model: onnx.ModelProto, inline_limit: int = 1024) -> onnx.ModelProto:
    """A copy of ``model`` whose initializers above ``inline_limit`` bytes become typed graph
    inputs: same structure (nodes, names, opsets, functions), no weight bytes. For checks."""
    out = onnx.ModelProto()
    for field in ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(out, field, getattr(model, field))
    out.opset_import.extend(model.opset_import)
    out.functions.extend(model.functions)
    out.metadata_props.extend(model.metadata_props)
    src, g = model.graph, out.graph
    g.name, g.doc_string = src.name, src.doc_string
    g.node.extend(src.node)
    g.input.extend(src.input)
    g.output.extend(src.output)
    g.value_info.extend(src.value_info)
    g.sparse_initializer.extend(src.sparse_initializer)
    declared = {i.name for i in src.input}
    for t in src.initializer:
        if t.ByteSize() <= inline_limit and not onnx.external_data_helper.uses_external_data(t):
            g.initializer.append(t)
        elif t.name not in declared:
            g.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return out


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


_MODEL_GRAPH_TAG = bytes([(7 << 3) | 2])  # ModelProto.graph, length-delimited
_GRAPH_INITIALIZER_TAG = bytes([(5 << 3) | 2])  # GraphProto.initializer, length-delimited
_PAGE = 4096


class ArrayTensor:
    """An initializer that :func:`write_streaming` takes straight from its array: no TensorProto
    and no copy of the bytes (a memory-mapped weight goes from the page cache to the file)."""

    def __init__(self, name: str, array: np.ndarray):
        self.name, self.array = name, array
        self.data_type = onnx.helper.np_dtype_to_tensor_dtype(array.dtype)
        self.dims = array.shape

    def buffer(self) -> memoryview:
        return memoryview(np.ascontiguousarray(self.array)).cast("B")

    def proto(self) -> onnx.TensorProto:
        return onnx.numpy_helper.from_array(np.asarray(self.array), self.name)


def write_streaming(header: onnx.ModelProto, initializers, file: Path, external_data: bool, data_threshold: int = 1024) -> list[Path]:
    """Write ``header`` (a model without initializers) plus ``initializers`` one at a time.

    ``initializers`` is an iterable of TensorProto (or :class:`ArrayTensor`) made on demand, so
    only one tensor's bytes are serialized at any moment. Protobuf merges repeated occurrences of the ``graph`` field,
    so each initializer is appended as its own small ``graph`` chunk. With ``external_data``,
    tensors over ``data_threshold`` bytes go to ``<file name>.data`` (large ones page-aligned so
    onnxruntime can map them).
    """
    if not external_data and not isinstance(initializers, Iterator):
        return _write_single_file(header, initializers, file)
    data_name = file.name + ".data"
    files = [file]
    data_fh = None
    try:
        with open(file, "wb") as fh:
            fh.write(header.SerializeToString())
            offset = 0
            for tensor in initializers:
                if isinstance(tensor, ArrayTensor) and not (external_data and tensor.array.nbytes > data_threshold):
                    tensor = tensor.proto()
                if isinstance(tensor, ArrayTensor) or (
                        external_data and tensor.data_type != onnx.TensorProto.STRING and _tensor_data_size(tensor) > data_threshold):
                    if data_fh is None:
                        data_fh = open(file.parent / data_name, "wb")
                        files.append(file.parent / data_name)
                    raw = tensor.buffer() if isinstance(tensor, ArrayTensor) else _raw_bytes(tensor)
                    if len(raw) >= 2**20 and offset % _PAGE:
                        pad = _PAGE - offset % _PAGE
                        data_fh.write(b"\0" * pad)
                        offset += pad
                    data_fh.write(raw)
                    stub = onnx.TensorProto(name=tensor.name, data_type=tensor.data_type, dims=list(tensor.dims))
                    stub.data_location = onnx.TensorProto.EXTERNAL
                    for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(len(raw)))):
                        entry = stub.external_data.add()
                        entry.key, entry.value = key, value
                    offset += len(raw)
                    del raw
                    tensor = stub
                body = tensor.SerializeToString()
                chunk = _GRAPH_INITIALIZER_TAG + _varint(len(body)) + body
                fh.write(_MODEL_GRAPH_TAG + _varint(len(chunk)))
                fh.write(chunk)
                del body, chunk
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise OutputError(f"{file.name}: disk full while writing the output") from exc
        raise OutputError(f"{file.name}: cannot write: {exc.strerror or exc}") from exc
    finally:
        if data_fh is not None:
            data_fh.close()
    return files


_RAW_DATA_TAG = bytes([(9 << 3) | 2])  # TensorProto.raw_data, length-delimited


def _serialized_size(tensor) -> int:
    """Bytes of the TensorProto ``tensor`` serializes to (ArrayTensor: as from_array makes it)."""
    if isinstance(tensor, ArrayTensor):
        n = tensor.array.nbytes
        stub = onnx.TensorProto(name=tensor.name, data_type=tensor.data_type, dims=list(tensor.dims))
        return stub.ByteSize() + len(_RAW_DATA_TAG) + len(_varint(n)) + n
    return tensor.ByteSize()


def _write_single_file(header: onnx.ModelProto, initializers, file: Path) -> list[Path]:
    """Byte-for-byte the size protobuf itself would write: one ``graph`` field whose length is
    summed first (a pass over sizes, no bytes), then the initializers streamed into it."""
    graph_bytes = header.graph.SerializeToString()
    rest = onnx.ModelProto()
    rest.CopyFrom(header)
    rest.ClearField("graph")
    sizes = [_serialized_size(t) for t in initializers]
    total = len(graph_bytes) + sum(len(_GRAPH_INITIALIZER_TAG) + len(_varint(n)) + n for n in sizes)
    try:
        with open(file, "wb") as fh:
            fh.write(rest.SerializeToString())
            fh.write(_MODEL_GRAPH_TAG + _varint(total))
            fh.write(graph_bytes)
            for tensor, size in zip(initializers, sizes):
                fh.write(_GRAPH_INITIALIZER_TAG + _varint(size))
                if isinstance(tensor, ArrayTensor):
                    stub = onnx.TensorProto(name=tensor.name, data_type=tensor.data_type, dims=list(tensor.dims))
                    buffer = tensor.buffer()
                    fh.write(stub.SerializeToString() + _RAW_DATA_TAG + _varint(len(buffer)))
                    fh.write(buffer)
                else:
                    fh.write(tensor.SerializeToString())
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise OutputError(f"{file.name}: disk full while writing the output") from exc
        raise OutputError(f"{file.name}: cannot write: {exc.strerror or exc}") from exc
    return [file]


def _tensor_data_size(tensor: onnx.TensorProto) -> int:
    return tensor.ByteSize()  # len(tensor.raw_data) would copy the bytes just to count them


def _raw_bytes(tensor: onnx.TensorProto) -> bytes:
    if tensor.HasField("raw_data"):
        return tensor.raw_data
    from onnx import numpy_helper

    return numpy_helper.to_array(tensor).tobytes()
