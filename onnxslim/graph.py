"""Small helpers on onnx-graphsurgeon's IR.

The IR *is* :class:`onnx_graphsurgeon.Graph`: nodes, ``Variable`` and ``Constant`` tensors with
edges kept in sync both ways (``tensor.inputs`` are producers, ``tensor.outputs`` consumers).
These helpers cover what every pass needs: converting to and from ``ModelProto`` without losing
model-level fields, reading constant values, rewiring uses, and making fresh names.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

logger = logging.getLogger(__name__)

# gs logs at WARNING for things we handle ourselves (e.g. duplicate names we report).
gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.ERROR

DEFAULT_DOMAINS = (None, "", "ai.onnx")  # the domain of a standard ONNX operator, however a model spells it


class Reject(Exception):
    """A rewrite's candidate does not match; the message says why (passes hand it to ``ctx.decline``)."""


# --------------------------------------------------------------------------------------------
# Model <-> Graph


def import_model(model: onnx.ModelProto) -> gs.Graph:
    """Import a ModelProto into a gs Graph. Initializers stay lazy (no copy of weight bytes)."""
    graph = gs.import_onnx(model)
    return graph


def export_parts(graph: gs.Graph, template: onnx.ModelProto | None = None) -> tuple[onnx.ModelProto, Iterator[onnx.TensorProto]]:
    """Export for streaming: a model without initializers, and the initializers made one at a time.

    Together they equal :func:`export_model`'s result, without ever holding a second copy of
    the weights (see :func:`onnxslim.io.write_streaming`).
    """
    from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter
    from onnx_graphsurgeon.ir.tensor import SparseValues

    tensor_map = graph.tensors()
    constants = [t for t in tensor_map.values() if isinstance(t, gs.Constant)]
    if any(isinstance(t._values, SparseValues) for t in constants):  # rare: use the plain path
        model = export_model(graph, template)
        inits = list(model.graph.initializer)
        del model.graph.initializer[:]
        return model, iter(inits)
    io_names = {t.name for t in graph.inputs + graph.outputs}
    nodes = [OnnxExporter.export_node(node) for node in graph.nodes]
    inputs = [OnnxExporter.export_value_info_proto(t, False) for t in graph.inputs]
    outputs = [OnnxExporter.export_value_info_proto(t, False) for t in graph.outputs]
    value_info = [
        OnnxExporter.export_value_info_proto(t, False)
        for name, t in tensor_map.items()
        if name not in io_names and isinstance(t, gs.Variable) and (t.dtype is not None or t.shape is not None)
    ]
    proto = onnx.helper.make_graph(nodes, graph.name, inputs, outputs, [], doc_string=graph.doc_string, value_info=value_info)
    shell = gs.Graph(opset=graph.opset, import_domains=graph.import_domains, producer_name=graph.producer_name,
                     producer_version=graph.producer_version, ir_version=graph.ir_version, functions=graph.functions)
    shell.nodes = []
    model = export_model(shell, template)
    model.graph.CopyFrom(proto)
    _hoist_outer_constants(model, template, {t.name for t in constants})  # into the header: the few only subgraphs read
    _declare_initializers(model, ((t.name, t.data_type, list(t.dims)) for t in model.graph.initializer))
    _declare_initializers(model, ((t.name, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype)), list(t.shape)) for t in constants))
    # export_model on an empty shell cannot see domains used by nodes: recompute from the real graph.
    used = {n.domain for n in graph.nodes if n.domain not in (None, "", "ai.onnx")}
    have = {o.domain for o in model.opset_import}
    for domain in sorted(used - have):
        model.opset_import.append(onnx.helper.make_opsetid(domain, 1))

    def initializers() -> Iterator[onnx.TensorProto]:
        from onnxslim.io import ArrayTensor

        for tensor in constants:
            if _plain_array(tensor):  # large NumPy values go to the writer as they are: no copy
                yield ArrayTensor(tensor.name, tensor.values)
            else:
                yield OnnxExporter.export_tensor_proto(tensor)

    return model, _Reiterable(initializers)


class _Reiterable:
    """An iterable that makes its items afresh on every pass (the writer sizes, then writes)."""

    def __init__(self, make: Callable[[], Iterator]):
        self._make = make

    def __iter__(self) -> Iterator:
        return self._make()


def _plain_array(tensor: gs.Constant, min_bytes: int = 2**20) -> bool:
    """Loaded values of a builtin numeric dtype, exported as that dtype, with no data location."""
    values = tensor._values
    return (
        isinstance(values, np.ndarray)
        and values.nbytes >= min_bytes
        and values.dtype.isbuiltin == 1
        and values.dtype.kind in "biuf"
        and values.dtype.byteorder in ("=", "<", "|")
        and _same_dtype(tensor.export_dtype, values.dtype)
        and tensor.data_location is None
    )


def _same_dtype(export_dtype, dtype: np.dtype) -> bool:
    if export_dtype is None:
        return True
    try:  # an ONNX data type number (bfloat16, float8, ...) is not a NumPy dtype
        return not isinstance(export_dtype, int) and np.dtype(export_dtype) == dtype
    except TypeError:
        return False


def _copy_opset(opset_id: onnx.OperatorSetIdProto) -> onnx.OperatorSetIdProto:
    copy = onnx.OperatorSetIdProto()
    copy.CopyFrom(opset_id)
    return copy


def export_model(graph: gs.Graph, template: onnx.ModelProto | None = None) -> onnx.ModelProto:
    """Export a gs Graph to a ModelProto, keeping the model-level fields of ``template``.

    Kept from the template: IR version, opset imports (unless the graph raised the default
    domain's version), producer, model version, doc string, domain, metadata, training info.
    """
    opset_imports = None
    if template is not None:
        opset_imports = [_copy_opset(o) for o in template.opset_import]  # field presence kept: no bytes added
        # Add domains that passes introduced (e.g. com.microsoft) and honour opset raises.
        known = {o.domain for o in opset_imports}
        for domain, version in (graph.import_domains and {o.domain: o.version for o in graph.import_domains} or {}).items():
            if domain not in known:
                opset_imports.append(onnx.helper.make_opsetid(domain, version))
        for node in graph.nodes:
            if node.domain and node.domain not in known and node.domain not in {o.domain for o in opset_imports}:
                opset_imports.append(onnx.helper.make_opsetid(node.domain, 1))
        for o in opset_imports:
            if o.domain in ("", "ai.onnx") and graph.opset and graph.opset > o.version:
                o.version = graph.opset
    kwargs = {"opset_imports": opset_imports} if opset_imports is not None else {}
    model = gs.export_onnx(graph, do_type_check=False, **kwargs)
    if template is not None:
        for field in ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string"):
            # Copy presence too: a field set to its default still costs bytes in the file.
            if template.HasField(field):
                setattr(model, field, getattr(template, field))
            else:
                model.ClearField(field)
        del model.metadata_props[:]
        model.metadata_props.extend(template.metadata_props)
        if template.training_info:
            model.training_info.extend(template.training_info)
    _hoist_outer_constants(model, template)
    if template is not None:
        _declare_initializers(model, ((t.name, t.data_type, list(t.dims)) for t in model.graph.initializer))
    return model


def proto_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every subgraph nested in it (If/Loop/Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs):
                yield from proto_graphs(sub)


def _hoist_outer_constants(model: onnx.ModelProto, template: onnx.ModelProto | None, streamed: set[str] = frozenset()) -> None:
    """onnx-graphsurgeon exports a constant that subgraphs read from the main graph as an
    initializer of every subgraph that reads it: two If branches sharing a weight would store it
    twice. Put such constants back in the main graph, once: those that were main-graph
    initializers of ``template``, and those that several subgraphs hold with the same bytes. A
    subgraph's copy of a constant the main graph holds too (or ``streamed``: main-graph
    initializers written apart, by name: one tensor in the graph) is dropped."""
    subgraphs = list(proto_graphs(model.graph))[1:]
    if not subgraphs:
        return
    copies: dict[str, list[tuple[onnx.GraphProto, onnx.TensorProto]]] = {}
    for sub in subgraphs:
        for tensor in sub.initializer:
            copies.setdefault(tensor.name, []).append((sub, tensor))
    outer = {t.name for t in template.graph.initializer} if template is not None else set()
    main = model.graph
    in_main = {t.name: t for t in main.initializer}
    produced = {i.name for i in main.input} | {o for n in main.node for o in n.output}
    for name, found in copies.items():
        if name in produced:
            continue
        first = found[0][1].SerializeToString()
        if any(t.SerializeToString() != first for _, t in found[1:]):
            continue  # same name, other values: each subgraph keeps its own
        if name in in_main:
            if in_main[name].SerializeToString() != first:
                continue
        elif name not in streamed:
            if name not in outer and len(found) < 2:
                continue  # a subgraph's own constant stays where it is
            main.initializer.append(found[0][1])  # a copy (protobuf), before the originals are removed
        for sub, _ in found:
            kept = [t for t in sub.initializer if t.name != name]
            del sub.initializer[:]
            sub.initializer.extend(kept)


def _declare_initializers(model: onnx.ModelProto, initializers: Iterable[tuple[str, int, list[int]]]) -> None:
    """Before IR version 4 every initializer must also be a graph input: declare the missing ones
    (name, element type, dims), so that an old model stays valid after a rewrite."""
    if not 0 < model.ir_version < 4:
        return
    declared = {i.name for i in model.graph.input}
    model.graph.input.extend(onnx.helper.make_tensor_value_info(name, elem, dims)
                             for name, elem, dims in initializers if name not in declared)


# --------------------------------------------------------------------------------------------
# Reading the graph


def producer(tensor: gs.Tensor) -> gs.Node | None:
    """The node that produces ``tensor``, or None for graph inputs and constants."""
    return tensor.inputs[0] if tensor.inputs else None


def consumers(tensor: gs.Tensor) -> list[gs.Node]:
    """Nodes that read ``tensor`` (a node reading it twice appears once)."""
    seen: dict[int, gs.Node] = {}
    for node in tensor.outputs:
        seen.setdefault(id(node), node)
    return list(seen.values())


def is_graph_output(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    return any(t is tensor for t in graph.outputs)


def is_graph_input(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    return any(t is tensor for t in graph.inputs)


def constant_value(tensor: gs.Tensor | None) -> np.ndarray | None:
    """The value of ``tensor`` if it is known at compile time, else None.

    Covers initializers (``gs.Constant``) and outputs of ``Constant`` nodes with a ``value``
    attribute. Empty optional inputs (name "") return None.
    """
    if tensor is None:
        return None
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    node = producer(tensor)
    if node is not None and node.op == "Constant" and not node.domain:
        value = node.attrs.get("value")
        if isinstance(value, gs.Constant):
            return np.asarray(value.values)
        for key, dtype in (("value_float", np.float32), ("value_int", np.int64)):
            if key in node.attrs:
                return np.asarray(node.attrs[key], dtype=dtype)
        for key, dtype in (("value_floats", np.float32), ("value_ints", np.int64)):
            if key in node.attrs:
                return np.asarray(list(node.attrs[key]), dtype=dtype)
    return None


def is_constant(tensor: gs.Tensor | None) -> bool:
    if tensor is None:
        return False
    if isinstance(tensor, gs.Constant):
        return True
    node = producer(tensor)
    return node is not None and node.op == "Constant" and not node.domain and constant_value(tensor) is not None


def constant_nbytes(tensor: gs.Constant) -> int:
    """Byte size of a constant without loading lazy values."""
    shape = tensor.shape or ()
    count = int(np.prod(shape, dtype=np.int64)) if len(shape) else 1
    try:
        itemsize = np.dtype(tensor.dtype).itemsize
    except TypeError:  # dtypes numpy does not know (e.g. bfloat16 via ml_dtypes names)
        itemsize = 1
    return count * itemsize


def static_shape(tensor: gs.Tensor) -> tuple[int, ...] | None:
    """The shape of ``tensor`` when every dimension is a known integer, else None."""
    shape = tensor.shape
    if shape is None:
        return None
    if all(isinstance(d, (int, np.integer)) and d >= 0 for d in shape):
        return tuple(int(d) for d in shape)
    return None


def rank(tensor: gs.Tensor) -> int | None:
    return None if tensor.shape is None else len(tensor.shape)


def opset(graph: gs.Graph) -> int:
    """The default-domain opset version of the graph."""
    return int(graph.opset or 1)


def iter_subgraphs(node: gs.Node) -> Iterator[gs.Graph]:
    for value in node.attrs.values():
        if isinstance(value, gs.Graph):
            yield value
        elif isinstance(value, (list, tuple)):
            for item in value:
                if isinstance(item, gs.Graph):
                    yield item


def graphs_under(graph: gs.Graph) -> Iterator[gs.Graph]:
    """``graph`` and every subgraph nested in it (If branches, Loop/Scan bodies), depth first."""
    yield graph
    for node in graph.nodes:
        for sub in iter_subgraphs(node):
            yield from graphs_under(sub)


def node_count(graph: gs.Graph) -> int:
    """Nodes of ``graph`` and of every subgraph nested in it."""
    return sum(len(g.nodes) for g in graphs_under(graph))


def has_subgraph(node: gs.Node) -> bool:
    return any(True for _ in iter_subgraphs(node))


def outer_scope_names(graph: gs.Graph) -> set[str]:
    """Names of tensors that nested subgraphs read from the enclosing graph(s)."""
    names: set[str] = set()

    def visit(g: gs.Graph) -> None:
        local = {t.name for node in g.nodes for t in node.outputs}
        local |= {t.name for t in g.inputs}
        for node in g.nodes:
            for t in node.inputs:
                if t.name and t.name not in local and not isinstance(t, gs.Constant):
                    names.add(t.name)
            for sub in iter_subgraphs(node):
                visit(sub)

    for node in graph.nodes:
        for sub in iter_subgraphs(node):
            visit(sub)
    return names


# --------------------------------------------------------------------------------------------
# Rewiring


class NameScope:
    """Fresh, unique tensor and node names for one pass over one graph."""

    def __init__(self, graph: gs.Graph):
        self._used: set[str] = set(graph.tensors().keys())
        self._used.update(n.name for n in graph.nodes if n.name)
        self._counter = 0

    def fresh(self, base: str) -> str:
        base = base or "onnxslim"
        name = base
        while name in self._used:
            self._counter += 1
            name = f"{base}__{self._counter}"
        self._used.add(name)
        return name


def replace_all_uses(graph: gs.Graph, old: gs.Tensor, new: gs.Tensor) -> None:
    """Make every reader of ``old`` read ``new`` instead; keep graph output names stable.

    If ``old`` is a graph output, the output keeps its name: ``new`` takes over that name when it
    is an internal variable produced by a node, otherwise an Identity node is inserted.
    """
    if old is new:
        return
    for node in list(old.outputs):
        for i, t in enumerate(node.inputs):
            if t is old:
                node.inputs[i] = new
    if not is_graph_output(graph, old):
        return
    can_rename = (
        isinstance(new, gs.Variable)
        and new.inputs
        and not is_graph_output(graph, new)
        and not is_graph_input(graph, new)
    )
    name, dtype, shape = old.name, old.dtype, old.shape
    if can_rename:
        old.name = name + "__replaced"
        new.name = name
        if new.dtype is None:
            new.dtype = dtype
        if new.shape is None:
            new.shape = shape
        graph.outputs = [new if t is old else t for t in graph.outputs]
        return
    # Keep ``old`` as the output, produced by Identity(new). Detach old from its producer first.
    for node in list(old.inputs):
        node.outputs = [gs.Variable(NameScope(graph).fresh(name + "__dead"), dtype=t.dtype) if t is old else t for t in node.outputs]
    identity = gs.Node("Identity", name=NameScope(graph).fresh(name + "__identity"), inputs=[new], outputs=[old])
    graph.nodes.append(identity)


def detach(node: gs.Node) -> None:
    """Disconnect ``node`` from all tensors; the pipeline's cleanup removes it."""
    node.inputs.clear()
    node.outputs.clear()


def sweep(graph: gs.Graph, subgraphs: bool = False) -> int:
    """Remove nodes and initializers that do not contribute to a graph output.

    Returns the number of nodes removed. Graph inputs are kept (``eliminate_dead`` decides on
    those). ``subgraphs``: also sweep If branches and Loop/Scan bodies, innermost first, against
    their own outputs (a subgraph's inputs stay: they are its node's signature), so that an outer
    node read only by a dead node inside a subgraph goes too. Else nodes inside subgraphs are left alone.
    """
    before = node_count(graph) if subgraphs else len(graph.nodes)
    graph.cleanup(remove_unused_graph_inputs=False, recurse_subgraphs=subgraphs, recurse_functions=False)
    return before - (node_count(graph) if subgraphs else len(graph.nodes))


def op_histogram(nodes: Iterable[gs.Node]) -> dict[str, int]:
    hist: dict[str, int] = {}
    for node in nodes:
        key = node.op if not node.domain or node.domain == "ai.onnx" else f"{node.domain}::{node.op}"
        hist[key] = hist.get(key, 0) + 1
    return dict(sorted(hist.items()))


def sole_reader(tensor: gs.Tensor, local_nodes: set[int], graph_outputs: set[int]) -> gs.Node | None:
    """The one node reading ``tensor`` when that node is in this graph (``id`` in ``local_nodes``)
    and ``tensor`` is not a graph output (``id`` in ``graph_outputs``); else None. A reader inside
    a subgraph is not local, so a tensor an If/Loop body reads is never anyone's sole input."""
    if id(tensor) in graph_outputs:
        return None
    readers = {id(n): n for n in tensor.outputs}
    if len(readers) != 1:
        return None
    (node,) = readers.values()
    return node if id(node) in local_nodes else None


def single_consumer(tensor: gs.Tensor) -> gs.Node | None:
    """The only consumer of ``tensor`` (counting a node that reads it twice once), else None."""
    readers = consumers(tensor)
    return readers[0] if len(readers) == 1 else None


def channel_vector(k: np.ndarray, out_rank: int, axis: int, channels: int) -> np.ndarray | None:
    """``k`` as a float64 vector over ``channels`` if broadcasting it against an output of rank
    ``out_rank`` neither grows the output nor varies along any axis but ``axis``; else None."""
    if out_rank < 1 or k.ndim > out_rank:
        return None
    shape = (1,) * (out_rank - k.ndim) + tuple(k.shape)
    if any(d != 1 for i, d in enumerate(shape) if i != axis) or shape[axis] not in (1, channels):
        return None
    return np.broadcast_to(k.astype(np.float64).reshape(-1), (channels,)).copy()


def optional_input(node: gs.Node, index: int) -> gs.Tensor | None:
    """Input ``index`` of ``node``; None when the node leaves that optional input out (missing or named '')."""
    if len(node.inputs) <= index or not node.inputs[index].name:
        return None
    return node.inputs[index]


def optional_constant(node: gs.Node, index: int, what: str, dtype: type | None = np.float64) -> np.ndarray | None:
    """The value of optional input ``index`` (a bias, Gemm's C, Pad's pads) as ``dtype`` (None: as
    stored); None when the node leaves it out. Raises :class:`Reject` ("``what`` is not constant")
    when it is computed at run time."""
    tensor = optional_input(node, index)
    if tensor is None:
        return None
    value = constant_value(tensor)
    if value is None:
        raise Reject(f"{what} is not constant")
    return value if dtype is None else value.astype(dtype)


def set_input(node: gs.Node, index: int, tensor: gs.Tensor) -> None:
    """Make ``tensor`` the node's input ``index``: replaced when present, appended when it is next."""
    if len(node.inputs) > index:
        node.inputs[index] = tensor
    else:
        node.inputs.append(tensor)


def all_inputs_constant(node: gs.Node) -> bool:
    return all(is_constant(t) for t in node.inputs if t.name)


def make_constant(scope: NameScope, base: str, value: np.ndarray) -> gs.Constant:
    return gs.Constant(scope.fresh(base), np.asarray(value, order="C"))


def make_node(
    graph: gs.Graph,
    scope: NameScope,
    op: str,
    inputs: Sequence[gs.Tensor],
    *,
    name: str,
    attrs: dict | None = None,
    outputs: Sequence[gs.Tensor] | None = None,
    num_outputs: int = 1,
    domain: str | None = None,
) -> gs.Node:
    """Append a new node with a fresh name; creates fresh output variables unless given."""
    if outputs is None:
        outputs = [gs.Variable(scope.fresh(f"{name}_out{i}" if i else f"{name}_out")) for i in range(num_outputs)]
    node = gs.Node(op, name=scope.fresh(name), attrs=dict(attrs or {}), inputs=list(inputs), outputs=list(outputs), domain=domain)
    graph.nodes.append(node)
    return node
