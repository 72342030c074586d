"""Constant folding: compute at compile time what depends only on constants.

Two rewrites, both exact (the values come from onnxruntime itself, in their own dtypes):

(a) A ``Constant`` node (``value``, ``value_float(s)``, ``value_int(s)``) becomes an initializer
    of the same name, dtype and shape. Kept as a node when its output is a graph output or is read
    inside a subgraph (the output then keeps its name and remains a graph value).

(b) A node is *foldable* when it is in the default domain, deterministic, has no subgraph
    attribute, produces plain tensors and all its inputs are constant (initializers, ``Constant``
    outputs, or outputs of foldable nodes). The maximal foldable region is evaluated with one
    onnxruntime session whose outputs are the region's *boundary* tensors (read by a node outside
    the region, inside a subgraph, or graph outputs); each boundary tensor is then replaced by an
    initializer holding its value (a ``Constant`` node where it must stay a graph value).

Never folded: random ops, ``DequantizeLinear`` (quantized weights stay quantized for the
targets), non-default domains, nodes with subgraphs, sequence/optional values.

Size guard: a tensor is only materialized when its byte size is at most
``max(64 KiB, 2 x bytes of the constants it depends on)``. A node whose output would exceed it
(``Expand``/``Tile``/``ConstantOfShape``/``Range`` blow-ups) keeps computing; its own constant
inputs may still fold. Outputs with a known static shape are checked before evaluation.

If the one session cannot be built or run, the region is evaluated node by node; nodes that
fail are skipped and declined.
"""

from __future__ import annotations

import logging
from typing import Iterable, Sequence

import numpy as np
import onnx
import onnx.numpy_helper
import onnx_graphsurgeon as gs
import onnxruntime as ort
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter

from onnxslim.errors import OnnxSlimError
from onnxslim.graph import NameScope, constant_nbytes, constant_value, has_subgraph, is_constant, opset, producer, static_shape
from onnxslim.passes.infer_shapes import INLINE_LIMIT_BYTES, ir_version_for
from onnxslim.pipeline import Pass, PassContext, PassResult

logger = logging.getLogger(__name__)

MIN_MATERIALIZE_BYTES = 64 * 1024

NON_DETERMINISTIC_OPS = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
)
NON_TENSOR_OPS = frozenset(
    {"SequenceConstruct", "SequenceEmpty", "SequenceInsert", "SequenceErase", "SplitToSequence", "Optional", "OptionalGetElement"}
)
KEPT_OPS = {"DequantizeLinear": "kept so that quantized weights stay quantized"}
_NUMERIC_KINDS = "biufc"


def _numeric(dtype) -> bool:
    return isinstance(dtype, np.dtype) and dtype.kind in _NUMERIC_KINDS


def replace_with_constant(graph: gs.Graph, scope: NameScope, tensor: gs.Variable, value: np.ndarray, graph_nodes: set[int]) -> None:
    """Make every reader of ``tensor`` read the constant ``value``; ``graph_nodes``: ids of main-graph nodes.

    A graph output, or a tensor read inside a subgraph, stays a graph value of the same name,
    produced by a new ``Constant`` node. Otherwise an initializer takes the tensor's name.
    """
    value = np.asarray(value, order="C")  # not ascontiguousarray: that turns 0-d into 1-d
    if any(t is tensor for t in graph.outputs) or any(id(n) not in graph_nodes for n in tensor.outputs):
        for node in list(tensor.inputs):
            node.outputs = [gs.Variable(scope.fresh(t.name + "__folded"), t.dtype, t.shape) if t is tensor else t for t in node.outputs]
        const = gs.Constant(scope.fresh(tensor.name + "__value"), value)
        node = gs.Node("Constant", name=scope.fresh(tensor.name + "__constant"), attrs={"value": const}, outputs=[tensor])
        graph.nodes.append(node)
        tensor.dtype, tensor.shape = value.dtype, list(value.shape)
        return
    name = tensor.name
    tensor.name = scope.fresh(name + "__folded")
    const = gs.Constant(name, value)
    for node in list(tensor.outputs):
        for i, t in enumerate(node.inputs):
            if t is tensor:
                node.inputs[i] = const


class _Evaluator:
    """Evaluates tensors of a constant region with onnxruntime; caches values by tensor id."""

    def __init__(self, graph: gs.Graph, region: Sequence[gs.Node], ctx: PassContext, pass_name: str):
        self.imports = [onnx.helper.make_opsetid("", opset(graph))]
        self.region = region
        self.order = {id(n): i for i, n in enumerate(region)}
        self.ctx, self.pass_name = ctx, pass_name
        self.values: dict[int, np.ndarray] = {}
        self.failed: set[int] = set()

    def _run(self, nodes: Sequence[gs.Node], targets: Sequence[gs.Tensor]) -> list[np.ndarray]:
        produced = {id(t) for n in nodes for t in n.outputs}
        leaves: dict[str, gs.Tensor] = {}
        for node in nodes:
            for t in node.inputs:
                if t.name and id(t) not in produced:
                    leaves.setdefault(t.name, t)
        # Small constants are initializers (some kernels want constant shape-like inputs); large ones
        # are fed at run time, so the temporary model stays small whatever the weights weigh.
        values = {name: self.value(t) for name, t in leaves.items()}
        small = {name: v for name, v in values.items() if v.nbytes <= INLINE_LIMIT_BYTES}
        feeds = {name: v for name, v in values.items() if name not in small}
        inputs = [
            onnx.helper.make_tensor_value_info(name, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for name, v in feeds.items()
        ]
        initializers = [onnx.numpy_helper.from_array(v, name) for name, v in small.items()]
        outputs = [onnx.helper.make_empty_tensor_value_info(t.name) for t in targets]
        proto = onnx.helper.make_graph([OnnxExporter.export_node(n) for n in nodes], "fold", inputs, outputs, initializers)
        model = onnx.helper.make_model(proto, opset_imports=self.imports)
        model.ir_version = ir_version_for(self.imports)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 3
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return session.run([t.name for t in targets], feeds)

    def value(self, tensor: gs.Tensor) -> np.ndarray | None:
        """A leaf's value, or an evaluated tensor's value (None when its evaluation failed)."""
        if id(tensor) in self.values:
            return self.values[id(tensor)]
        if producer(tensor) is None or producer(tensor).op == "Constant":
            value = np.asarray(constant_value(tensor))
            self.values[id(tensor)] = value
            return value
        self.evaluate_node_by_node([tensor])
        return self.values.get(id(tensor))

    def ancestors(self, targets: Iterable[gs.Tensor]) -> list[gs.Node]:
        """Region nodes that ``targets`` depend on, in region order."""
        found: dict[int, gs.Node] = {}
        stack = [producer(t) for t in targets]
        while stack:
            node = stack.pop()
            if node is None or id(node) in found or id(node) not in self.order:
                continue
            found[id(node)] = node
            stack.extend(producer(t) for t in node.inputs if t.name)
        return sorted(found.values(), key=lambda n: self.order[id(n)])

    def evaluate_all(self, targets: Sequence[gs.Tensor]) -> None:
        """One session for the whole region; node by node when that fails."""
        try:
            results = self._run(self.ancestors(targets), targets)
        except OnnxSlimError:
            raise
        except Exception as exc:
            logger.debug("%s: one-session evaluation failed, going node by node: %s", self.pass_name, exc)
            self.evaluate_node_by_node(targets)
            return
        for t, v in zip(targets, results):
            self.values[id(t)] = np.asarray(v)

    def evaluate_node_by_node(self, targets: Sequence[gs.Tensor]) -> None:
        for node in self.ancestors(targets):
            if id(node) in self.failed or all(id(t) in self.values for t in node.outputs if t.name):
                continue
            if any(id(producer(t)) in self.failed for t in node.inputs if t.name and producer(t) is not None):
                self.failed.add(id(node))
                continue
            outputs = [t for t in node.outputs if t.name]
            try:
                results = self._run([node], outputs)
            except Exception as exc:
                self.failed.add(id(node))
                self.ctx.decline(self.pass_name, where=node.name, reason=f"onnxruntime could not evaluate it: {exc}".splitlines()[0])
                continue
            for t, v in zip(outputs, results):
                self.values[id(t)] = np.asarray(v)


class FoldConstants(Pass):
    """Fold Constant nodes into initializers and evaluate constant subgraphs with onnxruntime.

    Counters: ``constants_converted`` (Constant nodes turned into initializers), ``nodes_folded``
    (nodes whose results are now initializers), ``bytes_materialized`` (bytes of new constants).
    """

    name = "fold_constants"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        scope = NameScope(graph)
        graph_nodes = {id(n) for n in graph.nodes}
        output_ids = {id(t) for t in graph.outputs}
        converted = self._convert_constant_nodes(graph, graph_nodes, output_ids, ctx)
        materialized, folded, nbytes = self._fold_regions(graph, scope, graph_nodes, output_ids, ctx)
        return PassResult(
            changed=converted > 0 or materialized > 0,
            counters={"constants_converted": converted, "nodes_folded": folded, "bytes_materialized": nbytes},
        )

    # ---------------------------------------------------------------------------------------- (a)

    def _convert_constant_nodes(self, graph: gs.Graph, graph_nodes: set[int], output_ids: set[int], ctx: PassContext) -> int:
        converted = 0
        for node in graph.nodes:
            if node.op != "Constant" or node.domain not in (None, "", "ai.onnx") or len(node.outputs) != 1:
                continue
            out = node.outputs[0]
            if id(out) in output_ids or any(id(n) not in graph_nodes for n in out.outputs):
                continue  # stays a graph value: this is how folded graph outputs are represented
            attr = node.attrs.get("value")
            if isinstance(attr, gs.Constant):
                const = gs.Constant(out.name, attr._values)  # keeps lazy data and exotic dtypes as they are
            else:
                value = constant_value(out)
                if value is None:
                    ctx.decline(self.name, where=node.name or out.name, reason="string or sparse Constant is kept as a node")
                    continue
                const = gs.Constant(out.name, np.asarray(value, order="C"))
            readers = list(out.outputs)
            node.outputs.clear()
            for reader in readers:
                for i, t in enumerate(reader.inputs):
                    if t is out:
                        reader.inputs[i] = const
            converted += 1
        return converted

    # ---------------------------------------------------------------------------------------- (b)

    @staticmethod
    def _excluded(node: gs.Node) -> str | None:
        """Why ``node`` must never be folded (by design, so not declined), or None."""
        if node.op in NON_DETERMINISTIC_OPS:
            return "non-deterministic op"
        if node.op in KEPT_OPS:
            return KEPT_OPS[node.op]
        if has_subgraph(node):
            return "has a subgraph attribute"
        if node.op in NON_TENSOR_OPS or any(t.type != "tensor_type" for t in node.outputs):
            return "produces a sequence or optional value"
        return None

    @staticmethod
    def _unsupported(node: gs.Node, inputs: Sequence[gs.Tensor], region_tensors: set[int]) -> str | None:
        """Why ``node`` cannot be folded here (a limitation, so declined), or None."""
        if any(t.dtype is not None and not _numeric(t.dtype) for t in node.outputs):
            return "an output dtype has no numpy equivalent"
        if any(id(t) not in region_tensors and not _numeric(FoldConstants._leaf_dtype(t)) for t in inputs):
            return "a constant input has a dtype that cannot be evaluated here (not numeric or no numpy equivalent)"
        return None

    def _plan(self, graph: gs.Graph, ctx: PassContext) -> tuple[list[gs.Node], dict[int, int]]:
        """The foldable region in topological order, and each region node's size limit in bytes."""
        region: list[gs.Node] = []
        limits: dict[int, int] = {}
        depends: dict[int, int] = {}  # node id -> bytes of the constants it depends on (upper bound)
        region_tensors: set[int] = set()
        for node in graph.nodes:
            if node.op == "Constant" or node.domain not in (None, "", "ai.onnx") or not node.inputs:
                continue
            inputs = [t for t in node.inputs if t.name]
            if not all(id(t) in region_tensors or is_constant(t) for t in inputs):
                continue
            excluded = self._excluded(node)
            if excluded is not None:
                logger.debug("%s: not folding %s: %s", self.name, node.name, excluded)
                continue
            reason = self._unsupported(node, inputs, region_tensors)
            if reason is not None:
                ctx.decline(self.name, where=node.name, reason=reason)
                continue
            dep = sum(depends[id(producer(t))] if id(t) in region_tensors else self._leaf_nbytes(t) for t in inputs)
            limit = max(MIN_MATERIALIZE_BYTES, 2 * dep)
            predicted = max((self._predicted_nbytes(t) for t in node.outputs), default=0)
            if predicted > limit:
                ctx.decline(self.name, where=node.name, reason=f"output would take {predicted} bytes (limit {limit})")
                continue
            region.append(node)
            limits[id(node)] = limit
            depends[id(node)] = dep
            region_tensors.update(id(t) for t in node.outputs)
        return region, limits

    @staticmethod
    def _leaf_dtype(tensor: gs.Tensor):
        return tensor.dtype if isinstance(tensor, gs.Constant) else np.asarray(constant_value(tensor)).dtype

    @staticmethod
    def _leaf_nbytes(tensor: gs.Tensor) -> int:
        return constant_nbytes(tensor) if isinstance(tensor, gs.Constant) else int(np.asarray(constant_value(tensor)).nbytes)

    @staticmethod
    def _predicted_nbytes(tensor: gs.Tensor) -> int:
        shape = static_shape(tensor)
        if shape is None or not _numeric(tensor.dtype):
            return 0
        return int(np.prod(shape, dtype=np.int64)) * tensor.dtype.itemsize

    def _fold_regions(
        self, graph: gs.Graph, scope: NameScope, graph_nodes: set[int], output_ids: set[int], ctx: PassContext
    ) -> tuple[int, int, int]:
        """Fold the constant region; returns (tensors materialized, nodes folded, bytes)."""
        graph.toposort(recurse_subgraphs=False, recurse_functions=False)
        region, limits = self._plan(graph, ctx)
        if not region:
            return 0, 0, 0
        in_region = {id(n) for n in region}
        region_tensors = {id(t) for n in region for t in n.outputs}
        boundary = [
            t
            for n in region
            for t in n.outputs
            if t.name and (id(t) in output_ids or any(id(c) not in in_region for c in t.outputs))
        ]
        if not boundary:
            return 0, 0, 0
        evaluator = _Evaluator(graph, region, ctx, self.name)
        evaluator.evaluate_all(boundary)

        accepted: list[tuple[gs.Tensor, np.ndarray]] = []
        queue, queued = list(boundary), {id(t) for t in boundary}
        while queue:
            tensor = queue.pop()
            node = producer(tensor)
            value = evaluator.value(tensor)
            problem = self._check(tensor, value, limits[id(node)])
            if problem is None:
                accepted.append((tensor, value))
                continue
            if value is not None:
                ctx.decline(self.name, where=node.name, reason=problem)
            for t in node.inputs:  # the node keeps computing; its constant inputs may still fold
                if id(t) in region_tensors and id(t) not in queued:
                    queued.add(id(t))
                    queue.append(t)

        for tensor, value in accepted:
            replace_with_constant(graph, scope, tensor, value, graph_nodes)
        folded = self._count_dead(region, in_region, output_ids)
        return len(accepted), folded, sum(int(v.nbytes) for _, v in accepted)

    @staticmethod
    def _check(tensor: gs.Tensor, value: np.ndarray | None, limit: int) -> str | None:
        if value is None:
            return "not evaluated"
        if not _numeric(value.dtype):
            return f"value dtype {value.dtype} cannot be stored as an initializer"
        if isinstance(tensor.dtype, np.dtype) and tensor.dtype != value.dtype:
            return f"evaluated dtype {value.dtype} differs from the annotated {tensor.dtype}"
        if value.nbytes > limit:
            return f"output takes {value.nbytes} bytes (limit {limit})"
        return None

    @staticmethod
    def _count_dead(region: list[gs.Node], in_region: set[int], output_ids: set[int]) -> int:
        """Region nodes that nothing reads any more (the pass manager's cleanup removes them)."""
        alive: set[int] = set()
        for node in reversed(region):
            for t in node.outputs:
                if id(t) in output_ids or any(id(c) not in in_region or id(c) in alive for c in t.outputs):
                    alive.add(id(node))
                    break
        return len(region) - len(alive)
