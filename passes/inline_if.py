"""Inline ``If`` nodes whose condition is a compile-time constant.

``y1..yk = If(c)`` with a constant ``c`` always runs the same branch: the node is replaced by that
branch's nodes, spliced where the ``If`` stood (so the graph stays topologically sorted), and the
other branch is dropped with everything it holds (its weights leave the file). Typical after
shape folding in exported scripted/TF models (``if x.shape[0] > 1``).

* The condition is a ``gs.Constant`` or a ``Constant`` node's output holding one bool element,
  any rank (``[]``, ``[1]``, ``[1, 1]``, ...). A non-constant condition is left alone silently.
* The ``If``'s output tensors are kept (names, dtype/shape, readers in this graph and in nested
  subgraphs, graph-output positions): a branch output produced inside the branch is rewired so
  that its producer writes ``yi`` (the branch's readers of it read ``yi``); a branch output that is
  a constant (branch initializer or outer constant), an outer-scope tensor or graph input, or a
  tensor already returned at an earlier position becomes ``yi = Identity(...)`` (eliminate_identity
  removes it later where it can). ``yi`` takes the branch output's dtype/shape only where its own
  are unknown.
* Branch-local tensors (node outputs, branch initializers) become tensors of the enclosing graph.
  One whose name another tensor of the model already uses (sibling subgraphs may reuse names; the
  enclosing scope may not) gets a fresh name; its readers in the branch's nested subgraphs share
  the tensor (a separate by-name copy that gs may hold there is replaced by it). Nested subgraphs
  (an ``If`` or ``Loop`` in the branch) move with their nodes; a constant ``If`` among the spliced
  nodes is inlined in the same run.
* ``If`` nodes inside subgraphs (Loop/Scan bodies, other branches) are inlined into their own
  graph the same way. The dead branch's nodes are disconnected from outer tensors.

Declined with a note: a constant condition that is not a single bool element, a branch that is
missing or has inputs, an output count that differs from the ``If``'s, a branch output or input
that is neither produced in the branch, a constant, nor a tensor of an enclosing graph, and an
output read by ``Range`` (start/limit/delta) that is not known to be rank 0: the If hides its
shape from shape inference, which rejects a ``[1]`` there once it folds to a constant while
onnxruntime's kernel runs it (ONNX's own AffineGrid function body does this).

Preconditions: default-domain ``If`` nodes only. Shapes are read only for the ``Range`` check
(run ``infer_shapes`` first, or such an If is declined); run it after to refine the spliced
tensors. The pass manager removes the dead nodes and re-sorts the main graph; in subgraphs the
splice keeps the order and the condition's ``Constant`` node is removed when nothing else reads it.
"""

from __future__ import annotations

import logging
from typing import Iterator

import numpy as np
import onnx_graphsurgeon as gs

from onnxslim.graph import DEFAULT_DOMAINS, constant_value, graphs_under, iter_subgraphs, producer
from onnxslim.pipeline import Pass, PassContext, PassResult

logger = logging.getLogger(__name__)


# Inputs that ONNX shape inference requires to be rank 0 once they are constants (and onnxruntime
# checks at load time), while the kernels accept any one-element tensor.
_SCALAR_INPUTS = {"Range": (0, 1, 2)}


def _graphs_except(graph: gs.Graph, skip: gs.Node) -> Iterator[gs.Graph]:
    """Like :func:`onnxslim.graph.graphs_under`, without the subgraphs of ``skip``."""
    yield graph
    for node in graph.nodes:
        if node is skip:
            continue
        for sub in iter_subgraphs(node):
            yield from _graphs_except(sub, skip)


def _disconnect(graph: gs.Graph) -> None:
    """Detach every node of ``graph`` and its subgraphs from its tensors, so that outer tensors no
    longer list the dropped branch's nodes among their readers."""
    for g in list(graphs_under(graph)):
        for node in g.nodes:
            node.inputs.clear()
            node.outputs.clear()


def _rebind_by_name(graphs: list[gs.Graph], name: str, real: gs.Tensor, also: gs.Tensor | None = None) -> None:
    """Make the tensors named ``name`` in ``graphs`` (subgraphs nested in a branch, where no tensor
    may shadow a branch name) be ``real``: gs keeps a subgraph output that names an outer tensor
    as a separate object; ``also`` is replaced too (the object ``real`` stands in for)."""
    for g in graphs:
        for node in g.nodes:
            for i, t in enumerate(node.inputs):
                if t is not real and (t is also or t.name == name):
                    node.inputs[i] = real
        if any(t is not real and (t is also or t.name == name) for t in g.outputs):
            g.outputs = [real if t is not real and (t is also or t.name == name) else t for t in g.outputs]


class _Names:
    """Fresh names, unique over every graph of the model."""

    def __init__(self, graph: gs.Graph):
        self.used: set[str] = set()
        for g in graphs_under(graph):
            self.used.update(g.tensors().keys())
            self.used.update(n.name for n in g.nodes if n.name)

    def fresh(self, base: str) -> str:
        base, counter = base or "inline_if", 0
        name = base
        while name in self.used:
            counter += 1
            name = f"{base}__{counter}"
        self.used.add(name)
        return name


class InlineIf(Pass):
    """Replace an If with a constant condition by the nodes of the branch it takes.

    Counters: ``ifs_inlined`` (in the main graph and in subgraphs), ``nodes_inlined`` (branch
    nodes moved into the enclosing graph), ``identities_added`` (Identity nodes writing an If output
    the branch did not produce itself), ``tensors_renamed`` (branch-local tensors renamed to avoid a
    name another tensor of the model uses).
    """

    name = "inline_if"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        self._root = graph
        self._names: _Names | None = None  # built on the first constant If
        self._counters = {"ifs_inlined": 0, "nodes_inlined": 0, "identities_added": 0, "tensors_renamed": 0}
        self._visit(graph, [graph], ctx)
        return PassResult(changed=self._counters["ifs_inlined"] > 0, counters=dict(self._counters))

    # ----------------------------------------------------------------------------------------

    def _visit(self, graph: gs.Graph, chain: list[gs.Graph], ctx: PassContext) -> None:
        """Inline the constant Ifs of ``graph`` (``chain``: the enclosing graphs, ``graph`` last),
        spliced nodes included, then recurse into the subgraphs that remain."""
        index = 0
        while index < len(graph.nodes):
            node = graph.nodes[index]
            if node.op == "If" and node.domain in DEFAULT_DOMAINS and self._inline(graph, index, node, chain, ctx):
                continue  # the spliced nodes start at ``index``: scan them too
            index += 1
        for node in graph.nodes:
            for sub in iter_subgraphs(node):
                self._visit(sub, chain + [sub], ctx)

    def _inline(self, graph: gs.Graph, index: int, node: gs.Node, chain: list[gs.Graph], ctx: PassContext) -> bool:
        cond = node.inputs[0] if node.inputs else None
        value = constant_value(cond)
        if value is None:
            return False
        where = node.name or (node.outputs[0].name if node.outputs else "If")
        if value.size != 1:
            ctx.decline(self.name, where=where, reason=f"constant condition has {value.size} elements, not 1")
            return False
        if value.dtype != np.bool_:
            ctx.decline(self.name, where=where, reason=f"constant condition has dtype {value.dtype}, not bool")
            return False
        taken = "then_branch" if bool(value.reshape(-1)[0]) else "else_branch"
        branch = node.attrs.get(taken)
        if not isinstance(branch, gs.Graph):
            ctx.decline(self.name, where=where, reason=f"{taken} is missing")
            return False
        if branch.inputs:
            ctx.decline(self.name, where=where, reason=f"{taken} declares inputs")
            return False
        if len(branch.outputs) != len(node.outputs):
            ctx.decline(self.name, where=where, reason=f"{taken} has {len(branch.outputs)} outputs, the If {len(node.outputs)}")
            return False

        hidden = self._hidden_shape_problem(node, branch)
        if hidden is not None:
            ctx.decline(self.name, where=where, reason=hidden)
            return False

        # Tensors the enclosing graphs define (inner ones win): what a by-name reference resolves to.
        visible: dict[str, gs.Tensor] = {}
        for g in chain:
            visible.update(g.tensors())
        produced = {id(t) for n in branch.nodes for t in n.outputs if t.name}

        def resolve(t: gs.Tensor) -> gs.Tensor | None:
            """The tensor ``t`` stands for: itself when local, constant or visible; else the
            enclosing graph's tensor of its name (gs imports a subgraph output naming an outer
            tensor as a separate variable); None when nothing defines it."""
            if id(t) in produced or isinstance(t, gs.Constant) or visible.get(t.name) is t:
                return t
            return visible.get(t.name)

        rebind: list[tuple[gs.Node, int, gs.Tensor]] = []
        for n in branch.nodes:
            for i, t in enumerate(n.inputs):
                if not t.name:
                    continue
                target = resolve(t)
                if target is None:
                    ctx.decline(self.name, where=where, reason=f"{taken} reads {t.name!r}, which no enclosing graph defines")
                    return False
                if target is not t:
                    rebind.append((n, i, target))
        sources = [resolve(o) for o in branch.outputs]
        for o, s in zip(branch.outputs, sources):
            if s is None:
                ctx.decline(self.name, where=where, reason=f"{taken} returns {o.name!r}, which no enclosing graph defines")
                return False

        # ---- From here on the rewrite cannot fail.
        if self._names is None:
            self._names = _Names(self._root)
        for n, i, target in rebind:
            n.inputs[i] = target
        nested = [g for n in branch.nodes for sub in iter_subgraphs(n) for g in graphs_under(sub)]
        taken_over = {id(s) for s in sources if id(s) in produced}  # these become the If's outputs
        constants = [s for s in sources if isinstance(s, gs.Constant)]
        self._rename_clashes(branch, node, nested, taken_over, constants)

        outputs = list(node.outputs)
        node.inputs.clear()
        node.outputs.clear()
        spliced: list[gs.Node] = list(branch.nodes)
        moved = len(spliced)
        written: dict[int, gs.Tensor] = {}  # id(branch tensor) -> the If output its producer now writes
        for y, o, src in zip(outputs, branch.outputs, sources):
            if y.dtype is None:
                y.dtype = o.dtype if o.dtype is not None else src.dtype
            if y.shape is None:
                y.shape = o.shape if o.shape is not None else src.shape
            if id(src) in produced and id(src) not in written:
                self._take_over(src, y, nested)
                written[id(src)] = y
                continue
            source = written.get(id(src), src)
            identity = gs.Node("Identity", name=self._names.fresh(f"{y.name}__inline_if"), inputs=[source], outputs=[y])
            spliced.append(identity)
            self._counters["identities_added"] += 1

        other = node.attrs.get("else_branch" if taken == "then_branch" else "then_branch")
        if isinstance(other, gs.Graph):
            _disconnect(other)
        branch.nodes = []
        branch.outputs = []
        node.attrs.clear()
        graph.nodes[index:index + 1] = spliced
        self._drop_dead_constant(graph, cond, chain)
        self._counters["ifs_inlined"] += 1
        self._counters["nodes_inlined"] += moved
        logger.debug("%s: inlined %s (%s, %d nodes)", self.name, where, taken, len(spliced))
        return True

    @staticmethod
    def _hidden_shape_problem(node: gs.Node, branch: gs.Graph) -> str | None:
        """Why exposing the branch's output shapes to the If's readers could make the model fail
        to load, or None. An If hides them from shape inference: ``Range`` must get scalar
        start/limit/delta once they are constants (ONNX's inference rejects ``[1]``, which
        onnxruntime's kernel takes), as in ONNX's own AffineGrid function body."""
        for y, o in zip(node.outputs, branch.outputs):
            for reader in y.outputs:
                if reader.op not in _SCALAR_INPUTS or reader.domain not in DEFAULT_DOMAINS:
                    continue
                slots = [i for i, t in enumerate(reader.inputs) if t is y and i in _SCALAR_INPUTS[reader.op]]
                shape = o.shape if o.shape is not None else y.shape
                if slots and (shape is None or len(shape) != 0):
                    shown = "unknown" if shape is None else f"rank {len(shape)}"
                    return f"{reader.op} reads output {y.name!r} as a scalar, its shape is {shown}"
        return None

    def _rename_clashes(
        self, branch: gs.Graph, node: gs.Node, nested: list[gs.Graph], taken_over: set[int], constants: list[gs.Constant]
    ) -> None:
        """Give a fresh name to each branch-local tensor whose name another tensor of the model
        (outside this If) has; rename the by-name references in the branch's nested subgraphs too."""
        outside: dict[str, set[int]] = {}
        for g in _graphs_except(self._root, node):
            for name, t in g.tensors().items():
                outside.setdefault(name, set()).add(id(t))
        local: dict[int, gs.Tensor] = {}
        candidates = [t for n in branch.nodes for t in list(n.outputs) + [t for t in n.inputs if isinstance(t, gs.Constant)]]
        for t in candidates + constants:
            if t.name and id(t) not in taken_over:
                local.setdefault(id(t), t)
        for t in local.values():
            if not (outside.get(t.name, set()) - {id(t)}):
                continue
            _rebind_by_name(nested, t.name, t)
            t.name = self._names.fresh(t.name)
            self._counters["tensors_renamed"] += 1

    @staticmethod
    def _take_over(src: gs.Tensor, y: gs.Tensor, nested: list[gs.Graph]) -> None:
        """Make ``src``'s producer write ``y`` and its readers read ``y``."""
        prod = producer(src)
        prod.outputs[[i for i, t in enumerate(prod.outputs) if t is src][0]] = y
        for reader in list(src.outputs):
            for i, t in enumerate(reader.inputs):
                if t is src:
                    reader.inputs[i] = y
        _rebind_by_name(nested, src.name, y, src)

    @staticmethod
    def _drop_dead_constant(graph: gs.Graph, cond: gs.Tensor, chain: list[gs.Graph]) -> None:
        """In a subgraph (the pass manager cleans only the main graph), remove the Constant node
        that produced the condition once nothing reads it."""
        if len(chain) == 1 or isinstance(cond, gs.Constant):
            return
        node = producer(cond)
        if node is None or node.op != "Constant" or cond.outputs or any(t is cond for t in graph.outputs):
            return
        position = next((i for i, n in enumerate(graph.nodes) if n is node), None)
        if position is not None:
            del graph.nodes[position]
            node.outputs.clear()
