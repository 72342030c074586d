"""Shape and type inference: write what ONNX can infer onto the graph's tensors.

ONNX shape inference (with data propagation, so that ``Shape -> Gather -> Concat -> Reshape``
chains resolve to concrete shapes) runs on a *lightweight* copy of the graph: constants larger
than :data:`INLINE_LIMIT_BYTES` are declared as graph inputs of the same dtype and shape instead
of carrying their bytes. Shape inference never needs the values of large tensors (shape-like
tensors are small), so models whose weights exceed protobuf's 2 GB limit are inferred without
copying a single weight byte.

Merge rule, per tensor (graph Variables only, main graph only): an unknown dtype takes the
inferred one; a shape is merged dimension by dimension and a dimension only ever becomes more
specific (unknown -> symbol -> integer). Conflicting integers keep the existing value. Symbols
that inference invents (``unk__N``) are not written: they are fresh per run and would make
unrelated dimensions look equal. So a second run on an unchanged graph reports no change, and
fixed-point loops terminate.

``ctx.input_shapes`` (input name -> tuple of ints) is applied to graph inputs first; the CLI
validates names and ranks.

Preconditions: none. When inference raises, the graph is left as it is and the pass declines.
"""

from __future__ import annotations

import logging
from typing import Iterator, Sequence

import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter
from onnx_graphsurgeon.importers.onnx_importer import OnnxImporter

from onnxslim.graph import constant_nbytes, opset, proto_graphs
from onnxslim.pipeline import Pass, PassContext, PassResult

logger = logging.getLogger(__name__)

# Constants above this size travel to shape inference as typed graph inputs without data.
INLINE_LIMIT_BYTES = 1024

_INVENTED_SYMBOL_PREFIX = "unk__"


def _value_info(name: str, dtype, shape) -> onnx.ValueInfoProto:
    return OnnxExporter.export_value_info_proto(gs.Variable(name, dtype=dtype, shape=shape), do_type_check=False)


def _opset_imports(graph: gs.Graph) -> list[onnx.OperatorSetIdProto]:
    imports = [onnx.helper.make_opsetid(o.domain, o.version) for o in (graph.import_domains or [])]
    if not any(o.domain in ("", "ai.onnx") for o in imports):
        imports.append(onnx.helper.make_opsetid("", opset(graph)))
    known = {o.domain for o in imports}
    for node in graph.nodes:
        if node.domain and node.domain not in known:
            imports.append(onnx.helper.make_opsetid(node.domain, 1))
            known.add(node.domain)
    return imports


def ir_version_for(imports: Sequence[onnx.OperatorSetIdProto]) -> int:
    """The smallest IR version that supports ``imports`` (at least 7), or the library's own."""
    try:
        return max(7, onnx.helper.find_min_ir_version_for(list(imports), ignore_unknown=True))
    except Exception:  # an unknown opset version: let the consumer decide
        return onnx.IR_VERSION


def _subgraph_pairs(graph: gs.Graph, proto: onnx.GraphProto) -> Iterator[tuple[gs.Graph, onnx.GraphProto]]:
    """Each subgraph of ``graph`` (any depth) with its counterpart in the exported, inferred
    ``proto``: nodes matched by their first output's name (unique in a scope) and op type,
    subgraphs by attribute name and position."""
    by_output = {n.output[0]: n for n in proto.node if n.output}
    for node in graph.nodes:
        pnode = by_output.get(node.outputs[0].name) if node.outputs else None
        if pnode is None or pnode.op_type != node.op:
            continue
        attrs = {a.name: a for a in pnode.attribute}
        for name, value in node.attrs.items():
            attr = attrs.get(name)
            subs = [value] if isinstance(value, gs.Graph) else [v for v in value if isinstance(v, gs.Graph)] \
                if isinstance(value, (list, tuple)) else []
            if attr is None or not subs:
                continue
            for sub, proto_sub in zip(subs, [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                yield sub, proto_sub
                yield from _subgraph_pairs(sub, proto_sub)


def lightweight_model(graph: gs.Graph, inline_limit: int = INLINE_LIMIT_BYTES) -> onnx.ModelProto:
    """A ModelProto of ``graph`` for analysis: constants over ``inline_limit`` bytes carry no data.

    Large initializers and the outputs of large ``Constant`` nodes become graph inputs of the same
    dtype and shape. Value infos are kept for outputs of non-default-domain nodes only (ONNX cannot
    infer those; everything else it infers afresh, so stale annotations cannot mislead it).
    """
    nodes: list[onnx.NodeProto] = []
    inputs = [OnnxExporter.export_value_info_proto(t, do_type_check=False) for t in graph.inputs]
    initializers: list[onnx.TensorProto] = []
    value_infos: list[onnx.ValueInfoProto] = []
    seen: set[str] = {t.name for t in graph.inputs}

    for node in graph.nodes:
        value = node.attrs.get("value") if node.op == "Constant" and not node.domain else None
        if isinstance(value, gs.Constant) and len(node.outputs) == 1 and constant_nbytes(value) > inline_limit:
            out = node.outputs[0]
            if out.name not in seen:
                seen.add(out.name)
                inputs.append(_value_info(out.name, value.dtype, value.shape))
            continue
        for tensor in node.inputs:
            if isinstance(tensor, gs.Constant) and tensor.name not in seen:
                seen.add(tensor.name)
                if constant_nbytes(tensor) > inline_limit:
                    inputs.append(_value_info(tensor.name, tensor.dtype, tensor.shape))
                else:
                    initializers.append(OnnxExporter.export_tensor_proto(tensor))
        nodes.append(OnnxExporter.export_node(node))
        if node.domain not in (None, "", "ai.onnx"):
            value_infos.extend(
                OnnxExporter.export_value_info_proto(t, do_type_check=False) for t in node.outputs if t.name and t.dtype is not None
            )

    outputs = [OnnxExporter.export_value_info_proto(t, do_type_check=False) for t in graph.outputs]
    proto = onnx.helper.make_graph(nodes, graph.name or "graph", inputs, outputs, initializers, value_info=value_infos)
    imports = _opset_imports(graph)
    model = onnx.helper.make_model(proto, opset_imports=imports)
    model.ir_version = ir_version_for(imports)
    model.functions.extend(OnnxExporter.export_function(f) for f in (graph.functions or []))
    return model


def _symbols(tensors: dict[str, gs.Tensor]) -> set[str]:
    """Dimension symbols already present in the graph (a user may name a dim ``unk__0``)."""
    return {d for t in tensors.values() if t.shape is not None for d in t.shape if isinstance(d, str)}


def _merge_dim(old, new, invented: set[str]):
    if isinstance(new, str) and new in invented:
        new = None
    if isinstance(old, int) and old >= 0:
        return old
    if isinstance(new, int) and new >= 0:
        return new
    if isinstance(old, str) and old:
        return old
    return new if isinstance(new, str) and new else old


def merge_shape(old, new, invented: set[str] = frozenset()):
    """The more specific of two shapes, dimension by dimension; ``old`` on a rank conflict."""
    if new is None:
        return old
    if old is None:
        return [_merge_dim(None, d, invented) for d in new]
    if len(old) != len(new):
        return old
    return [_merge_dim(o, n, invented) for o, n in zip(old, new)]


class InferShapes(Pass):
    """Infer dtypes and shapes with ONNX shape inference (data propagation; large weights never copied).

    Also applies ``ctx.input_shapes`` to graph inputs. Counters: ``inputs_fixed`` (inputs whose
    shape the context changed) and ``tensors_updated`` (tensors that got a new or more specific
    dtype or shape).
    """

    name = "infer_shapes"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        inputs_fixed = self._apply_input_shapes(graph, ctx)
        try:
            model = lightweight_model(graph)
            inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
        except Exception as exc:  # inference is best effort: never fail the pipeline for it
            logger.debug("shape inference raised", exc_info=True)
            ctx.decline(self.name, where="graph", reason=f"ONNX shape inference failed: {type(exc).__name__}: {exc}")
            return PassResult(changed=inputs_fixed > 0, counters={"inputs_fixed": inputs_fixed, "tensors_updated": 0})

        tensors = graph.tensors()
        annotated = [vi for g in proto_graphs(inferred.graph) for vi in list(g.value_info) + list(g.output)]
        invented = {
            d.dim_param
            for vi in annotated
            for d in vi.type.tensor_type.shape.dim
            if d.dim_param.startswith(_INVENTED_SYMBOL_PREFIX)
        } - _symbols(tensors)
        # Inputs too: large Constant-node outputs travel as inputs and may lack an annotation.
        found = list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input)
        updated = sum(self._update(tensors.get(vi.name), vi, invented) for vi in found)
        for sub, inferred_sub in _subgraph_pairs(graph, inferred.graph):  # If branches, Loop/Scan bodies
            sub_tensors = sub.tensors()
            updated += sum(self._update(sub_tensors.get(vi.name), vi, invented)
                           for vi in list(inferred_sub.value_info) + list(inferred_sub.output))
        return PassResult(
            changed=inputs_fixed > 0 or updated > 0,
            counters={"inputs_fixed": inputs_fixed, "tensors_updated": updated},
        )

    @staticmethod
    def _apply_input_shapes(graph: gs.Graph, ctx: PassContext) -> int:
        fixed = 0
        for tensor in graph.inputs:
            wanted = ctx.input_shapes.get(tensor.name)
            if wanted is not None and list(tensor.shape or []) != [int(d) for d in wanted]:
                tensor.shape = [int(d) for d in wanted]
                fixed += 1
        return fixed

    @staticmethod
    def _update(tensor: gs.Tensor | None, vi: onnx.ValueInfoProto, invented: set[str]) -> bool:
        """Write ``vi`` onto ``tensor`` where it is more specific; True when something changed."""
        if not isinstance(tensor, gs.Variable) or not vi.type.HasField("tensor_type"):
            return False
        if tensor.type != "tensor_type":
            return False
        new = OnnxImporter.import_tensor(vi)
        changed = False
        if tensor.dtype is None and vi.type.tensor_type.elem_type != onnx.TensorProto.UNDEFINED:
            tensor.dtype = new.dtype
            changed = True
        shape = merge_shape(tensor.shape, new.shape, invented)
        if shape is not None and (tensor.shape is None or list(tensor.shape) != list(shape)):
            tensor.shape = shape
            changed = True
        return changed
