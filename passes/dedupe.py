"""Common subexpression elimination and duplicate-constant merging.

Math. A deterministic operator is a function of its inputs and attributes only, so two nodes
``y = f[attrs](x1, …, xk)`` and ``y' = f[attrs](x1, …, xk)`` with the same op, domain, attributes
and the *same* input tensors in the same order compute the same values: every reader of ``y'``
may read ``y`` instead. Likewise two initializers with the same dtype, shape and bytes are one
value and can be stored once.

How. First, initializers are bucketed by (dtype, shape, export dtype) without loading their
values; only buckets with two or more members are read, hashed (BLAKE2b) and compared byte for
byte on a hash hit. Then nodes are visited once in topological order and keyed by
``(op, attributes, input tensor identities, present outputs)``; a node whose key was seen
before is replaced by the earlier one. Because readers are rewired as we go, merges cascade in
the same run: once ``X'`` is replaced by ``X``, ``f(X')`` reads ``X`` and matches ``f(X)``. The
whole pass is O(nodes + edges) plus one hash per candidate constant.

Preconditions (otherwise the tensor or node is left alone):

* nodes are in the default domain and not non-deterministic (RandomNormal, RandomUniform,
  RandomNormalLike, RandomUniformLike, Multinomial, Bernoulli);
* nodes carry no subgraph attribute, and every attribute value is understood (numbers, strings,
  lists, arrays, tensors, protos);
* the node or constant being replaced is not read from inside a subgraph, and a constant is
  neither a graph input nor a graph output;
* when both the kept and the replaced outputs are graph outputs, nothing is merged (that would
  need an Identity to keep both names);
* constants whose bytes cannot be read without side effects (unloaded external data, sparse
  tensors) are not merged.
"""

from __future__ import annotations

import hashlib
import logging
import weakref
from collections import deque
from typing import Any, Callable, Hashable, Iterator

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues, SparseValues

from onnxslim.graph import constant_nbytes, detach, iter_subgraphs, replace_all_uses
from onnxslim.pipeline import Pass, PassContext, PassResult

logger = logging.getLogger(__name__)

NON_DETERMINISTIC_OPS = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
)

_Payload = tuple[str, bytes]  # (representation tag, bytes); equal payloads mean equal values


class _Unmergeable(Exception):
    """Raised while keying a node or constant that must never be merged."""


# --------------------------------------------------------------------------------------------
# Values as bytes


def _array_payload(array: np.ndarray) -> _Payload:
    array = np.asarray(array)
    if array.dtype.kind == "O":  # strings: tobytes() would give pointers
        parts = []
        for item in array.ravel():
            data = item.encode("utf-8") if isinstance(item, str) else bytes(item)
            parts.append(len(data).to_bytes(8, "little") + data)
        return ("strings", b"".join(parts))
    tag = "np" if array.dtype.isbuiltin else f"np:{array.dtype.name}"
    return (tag, np.ascontiguousarray(array).tobytes())


def _lazy_payload(lazy: LazyValues) -> _Payload:
    """Bytes of a lazily loaded tensor, without caching a (possibly type-changing) load."""
    proto = lazy.tensor
    if proto.data_location == onnx.TensorProto.EXTERNAL:
        raise _Unmergeable("external data not loaded")
    if proto.HasField("raw_data"):
        dtype = lazy.dtype
        if isinstance(dtype, np.dtype) and dtype.isbuiltin and dtype.kind in "biufc":
            return ("np", proto.raw_data)  # little-endian element bytes, as tobytes() gives
        return (f"raw:{proto.data_type}", proto.raw_data)
    return _array_payload(onnx.numpy_helper.to_array(proto))


def _constant_payload(constant: gs.Constant) -> _Payload:
    # gs offers no public way to read a lazy constant without replacing its values by the load.
    values = getattr(constant, "_values", None)
    if isinstance(values, SparseValues):
        raise _Unmergeable("sparse tensor")
    if isinstance(values, LazyValues):
        return _lazy_payload(values)
    return _array_payload(constant.values)


def _constant_meta(constant: gs.Constant) -> tuple:
    """What must match before bytes are compared; known without loading lazy values."""
    return (str(constant.dtype), tuple(constant.shape or ()), str(constant.export_dtype))


class _ValueKey:
    """Hashable stand-in for a value: hashed by digest, compared byte for byte on a hash hit."""

    __slots__ = ("meta", "digest", "_read")

    def __init__(self, meta: tuple, read: Callable[[], _Payload], known: tuple[tuple, bytes] | None = None):
        if known is None:
            tag, data = read()
            known = ((meta, tag, len(data)), hashlib.blake2b(data, digest_size=16).digest())
        self.meta, self.digest = known
        self._read = read

    def __hash__(self) -> int:
        return hash((self.meta, self.digest))

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, _ValueKey)
            and self.meta == other.meta
            and self.digest == other.digest
            and self._read() == other._read()
        )


def _constant_key(constant: gs.Constant) -> _ValueKey:
    return _ValueKey(_constant_meta(constant), lambda: _constant_payload(constant))


class _DigestCache:
    """Digests of constants across the rounds of one pipeline run (one pass instance).

    An entry is valid while the same constant object still holds the same values object
    (both tracked by weak references, so dropped weights are not kept alive).
    """

    def __init__(self) -> None:
        self._entries: dict[int, tuple[weakref.ref, weakref.ref | None, tuple, bytes]] = {}

    def key(self, constant: gs.Constant) -> _ValueKey:
        meta = _constant_meta(constant)
        read = lambda: _constant_payload(constant)
        values = getattr(constant, "_values", None)
        entry = self._entries.get(id(constant))
        if entry is not None:
            ref, values_ref, full_meta, digest = entry
            if ref() is constant and values_ref is not None and values_ref() is values and full_meta[0] == meta:
                return _ValueKey(meta, read, (full_meta, digest))
        key = _ValueKey(meta, read)
        try:
            values_ref = weakref.ref(values)
        except TypeError:
            values_ref = None
        self._entries[id(constant)] = (weakref.ref(constant), values_ref, key.meta, key.digest)
        return key


# --------------------------------------------------------------------------------------------
# Node keys


def _attr_key(value: Any) -> Hashable:
    """A hashable key equal for equal attribute values of the same kind."""
    if value is None or isinstance(value, (bool, int, str, bytes)):
        return (type(value).__name__, value)
    if isinstance(value, float):
        return ("float", value.hex())  # tells -0.0 from 0.0; NaN equals NaN
    if isinstance(value, (np.generic, np.ndarray)):
        array = np.asarray(value)
        return ("array", _ValueKey((str(array.dtype), array.shape), lambda: _array_payload(array)))
    if isinstance(value, gs.Constant):
        return ("tensor", _constant_key(value))
    if isinstance(value, (list, tuple)):
        return ("list", tuple(_attr_key(item) for item in value))
    if isinstance(value, gs.Graph):
        raise _Unmergeable("subgraph attribute")
    if hasattr(value, "SerializeToString"):  # e.g. TypeProto
        return ("proto", type(value).__name__, value.SerializeToString(deterministic=True))
    raise _Unmergeable(f"attribute of type {type(value).__name__}")


def _node_key(node: gs.Node) -> Hashable:
    attrs = tuple((name, _attr_key(node.attrs[name])) for name in sorted(node.attrs))
    # Empty optional inputs are distinct objects in gs; they all mean "absent".
    inputs = tuple(None if not t.name and not t.inputs else id(t) for t in node.inputs)
    outputs = tuple(bool(t.name) for t in node.outputs)
    return (node.op, attrs, inputs, outputs)


def _mergeable_op(node: gs.Node) -> bool:
    return node.domain in (None, "", "ai.onnx") and node.op not in NON_DETERMINISTIC_OPS and bool(node.outputs)


# --------------------------------------------------------------------------------------------
# Graph walks


def _topological_order(nodes: list[gs.Node]) -> list[gs.Node]:
    """Kahn's algorithm, stable with respect to ``nodes``; O(nodes + edges)."""
    index = {id(node): i for i, node in enumerate(nodes)}
    indegree = [0] * len(nodes)
    successors: list[list[int]] = [[] for _ in nodes]
    for i, node in enumerate(nodes):
        preds = {index[id(p)] for t in node.inputs for p in t.inputs if id(p) in index}
        indegree[i] = len(preds)
        for p in preds:
            successors[p].append(i)
    ready = deque(i for i, d in enumerate(indegree) if d == 0)
    order: list[int] = []
    while ready:
        i = ready.popleft()
        order.append(i)
        for s in successors[i]:
            indegree[s] -= 1
            if indegree[s] == 0:
                ready.append(s)
    if len(order) < len(nodes):  # a cycle: keep the rest in file order
        placed = set(order)
        order.extend(i for i in range(len(nodes)) if i not in placed)
    return [nodes[i] for i in order]


def _names_seen_by_subgraphs(graph: gs.Graph) -> set[str]:
    """Names of every tensor a nested subgraph reads or outputs (a superset of outer reads)."""
    names: set[str] = set()

    def visit(sub: gs.Graph) -> None:
        names.update(t.name for t in sub.outputs)
        for node in sub.nodes:
            names.update(t.name for t in node.inputs)
            for inner in iter_subgraphs(node):
                visit(inner)

    for node in graph.nodes:
        for sub in iter_subgraphs(node):
            visit(sub)
    return names


def _top_level_constants(graph: gs.Graph) -> Iterator[gs.Constant]:
    seen: set[int] = set()
    for node in graph.nodes:
        for t in node.inputs:
            if isinstance(t, gs.Constant) and id(t) not in seen:
                seen.add(id(t))
                yield t


# --------------------------------------------------------------------------------------------
# The pass


class Dedupe(Pass):
    """Merge duplicate initializers and identical nodes (common subexpression elimination)."""

    name = "dedupe"

    def __init__(self) -> None:
        self._digests = _DigestCache()

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        boundary = {id(t) for t in graph.inputs} | {id(t) for t in graph.outputs}
        outputs = {id(t) for t in graph.outputs}
        in_subgraphs = _names_seen_by_subgraphs(graph)
        merged_constants, bytes_saved = self._merge_constants(graph, boundary, in_subgraphs)
        merged_nodes = self._merge_nodes(graph, ctx, outputs, in_subgraphs)
        counters = {"initializers_merged": merged_constants, "nodes_merged": merged_nodes, "bytes_saved": bytes_saved}
        return PassResult(changed=bool(merged_constants or merged_nodes), counters=counters)

    def _merge_constants(self, graph: gs.Graph, boundary: set[int], in_subgraphs: set[str]) -> tuple[int, int]:
        buckets: dict[tuple, list[gs.Constant]] = {}
        for constant in _top_level_constants(graph):
            if id(constant) not in boundary:
                buckets.setdefault(_constant_meta(constant), []).append(constant)
        merged = saved = 0
        for members in buckets.values():
            if len(members) < 2:
                continue
            kept: dict[_ValueKey, gs.Constant] = {}
            for constant in members:
                try:
                    key = self._digests.key(constant)
                except _Unmergeable as why:
                    logger.debug("dedupe: not merging %s: %s", constant.name, why)
                    continue
                original = kept.setdefault(key, constant)
                if original is constant or constant.name in in_subgraphs:
                    continue
                replace_all_uses(graph, constant, original)
                merged += 1
                saved += constant_nbytes(constant)
        return merged, saved

    def _merge_nodes(self, graph: gs.Graph, ctx: PassContext, outputs: set[int], in_subgraphs: set[str]) -> int:
        kept: dict[Hashable, gs.Node] = {}
        merged = 0
        for node in _topological_order(list(graph.nodes)):
            if not _mergeable_op(node):
                continue
            try:
                key = _node_key(node)
            except _Unmergeable as why:
                logger.debug("dedupe: not merging %s: %s", node.name, why)
                continue
            original = kept.setdefault(key, node)
            if original is node or not self._can_replace(node, original, ctx, outputs, in_subgraphs):
                continue
            for old, new in zip(node.outputs, original.outputs):
                if old.name:
                    replace_all_uses(graph, old, new)
                    if id(old) in outputs:  # ``new`` took over the output's place and name
                        outputs.discard(id(old))
                        outputs.add(id(new))
            detach(node)
            merged += 1
        return merged

    def _can_replace(self, node: gs.Node, original: gs.Node, ctx: PassContext, outputs: set[int], in_subgraphs: set[str]) -> bool:
        for old, new in zip(node.outputs, original.outputs):
            if id(old) in outputs and id(new) in outputs:
                ctx.decline(self.name, where=node.name, reason=f"{old.name} and {new.name} are both graph outputs")
                return False
            if old.name and old.name in in_subgraphs:
                ctx.decline(self.name, where=node.name, reason=f"{old.name} is read inside a subgraph")
                return False
        return True
