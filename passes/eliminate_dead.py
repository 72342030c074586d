"""Dead-code elimination: drop what no graph output depends on.

A node is live when one of its outputs is a graph output or is read by a live node (a node with
a subgraph also reads the outer tensors that its subgraph uses). Dead nodes are removed, and with
them the initializers only they read. A graph input that no node reads, no subgraph reads and that
is not itself a graph output is removed from the graph's signature.

Inside If branches and Loop/Scan bodies, nodes that none of the subgraph's outputs depends on go
too (subgraphs first, so an outer node read only by such a node goes with it); a subgraph's own
inputs are its node's signature and stay.

Preconditions: none. Graph outputs are never touched.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxslim.graph import graphs_under, outer_scope_names, sweep
from onnxslim.pipeline import Pass, PassContext, PassResult


def _initializer_names(graph: gs.Graph) -> set[str]:
    """Names of the initializers that the nodes and outputs of the graph and its subgraphs read."""
    names: set[str] = set()
    for g in graphs_under(graph):
        names.update(t.name for node in g.nodes for t in node.inputs if isinstance(t, gs.Constant))
        names.update(t.name for t in g.outputs if isinstance(t, gs.Constant))
    return names


class EliminateDead(Pass):
    """Remove nodes, initializers and graph inputs that no graph output depends on.

    Counters: ``nodes_removed``, ``initializers_removed``, ``inputs_removed``.
    """

    name = "eliminate_dead"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        initializers_before = _initializer_names(graph)
        nodes_removed = sweep(graph, subgraphs=True)
        initializers_removed = len(initializers_before - _initializer_names(graph))

        read = {t.name for node in graph.nodes for t in node.inputs if t.name}
        read |= outer_scope_names(graph)
        read |= {t.name for t in graph.outputs}
        kept = [t for t in graph.inputs if t.name in read]
        inputs_removed = len(graph.inputs) - len(kept)
        if inputs_removed:
            graph.inputs = kept
        counters = {
            "nodes_removed": nodes_removed,
            "initializers_removed": initializers_removed,
            "inputs_removed": inputs_removed,
        }
        return PassResult(changed=any(counters.values()), counters=counters)
