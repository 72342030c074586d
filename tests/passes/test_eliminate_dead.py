"""eliminate_dead: dead nodes, the initializers only they read, and unused graph inputs go; inputs
read inside subgraphs, graph outputs and passthrough inputs stay."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxslim import stats
from onnxslim.graph import import_model
from onnxslim.passes.eliminate_dead import EliminateDead
from onnxslim.pipeline import PassContext
from tests.helpers import apply_passes, assert_equivalent, init, make_model, op_counts, vi


def _run(model: onnx.ModelProto):
    out, records = apply_passes(model, "eliminate_dead")
    return out, records[-1]


def _with_dead_branch() -> onnx.ModelProto:
    """y = Relu(x); a dead Mul(x, W) -> Neg branch reads its own initializer W."""
    nodes = [
        helper.make_node("Relu", ["x"], ["y"]),
        helper.make_node("Mul", ["x", "W"], ["m"]),
        helper.make_node("Neg", ["m"], ["n"]),
    ]
    return make_model(nodes, [vi("x", [2, 3])], [vi("y", [2, 3])], [init("W", np.ones((2, 3), np.float32))])


def test_dead_nodes_and_their_initializers_are_removed():
    model = _with_dead_branch()
    out, record = _run(model)
    assert op_counts(model) == {"Relu": 1, "Mul": 1, "Neg": 1}
    assert op_counts(out) == {"Relu": 1}
    assert record.counters == {"nodes_removed": 2, "initializers_removed": 1, "inputs_removed": 0}
    assert not out.graph.initializer
    assert_equivalent(model, out)


def test_unused_graph_input_is_removed():
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    model = make_model(nodes, [vi("x", [2]), vi("unused", [3])], [vi("y", [2])])
    out, record = _run(model)
    assert [i.name for i in out.graph.input] == ["x"]
    assert record.counters["inputs_removed"] == 1
    assert_equivalent(model, out)


def test_input_only_feeding_dead_nodes_is_removed_with_them():
    nodes = [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Neg", ["z"], ["dead"])]
    model = make_model(nodes, [vi("x", [2]), vi("z", [2])], [vi("y", [2])])
    out, record = _run(model)
    assert op_counts(out) == {"Relu": 1} and [i.name for i in out.graph.input] == ["x"]
    assert record.counters["nodes_removed"] == 1 and record.counters["inputs_removed"] == 1


def test_input_read_inside_a_subgraph_is_kept():
    then_graph = helper.make_graph([helper.make_node("Identity", ["side"], ["t_out"])], "then", [], [vi("t_out", [2])])
    else_graph = helper.make_graph([helper.make_node("Neg", ["side"], ["e_out"])], "else", [], [vi("e_out", [2])])
    nodes = [helper.make_node("If", ["cond"], ["y"], then_branch=then_graph, else_branch=else_graph)]
    model = make_model(nodes, [vi("cond", [], TensorProto.BOOL), vi("side", [2])], [vi("y", [2])])
    out, record = _run(model)
    assert not record.changed
    assert [i.name for i in out.graph.input] == ["cond", "side"]
    assert_equivalent(model, out, seeds=(0, 1, 2, 3))


def test_node_feeding_a_subgraph_is_kept():
    then_graph = helper.make_graph([helper.make_node("Identity", ["r"], ["t_out"])], "then", [], [vi("t_out", [2])])
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("If", ["cond"], ["y"], then_branch=then_graph, else_branch=then_graph),
    ]
    model = make_model(nodes, [vi("cond", [], TensorProto.BOOL), vi("x", [2])], [vi("y", [2])])
    out, record = _run(model)
    assert not record.changed and op_counts(out) == {"Relu": 1, "If": 1}


def test_passthrough_input_that_is_an_output_is_kept():
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    model = make_model(nodes, [vi("x", [2]), vi("p", [2])], [vi("y", [2]), vi("p", [2])], check=False)
    graph = import_model(model)
    result = EliminateDead().run(graph, PassContext())
    assert not result.changed and [t.name for t in graph.inputs] == ["x", "p"]


def test_live_graph_is_unchanged():
    nodes = [helper.make_node("Mul", ["x", "W"], ["m"]), helper.make_node("Relu", ["m"], ["y"])]
    model = make_model(nodes, [vi("x", [2])], [vi("y", [2])], [init("W", np.ones(2, np.float32))])
    out, record = _run(model)
    assert not record.changed
    assert record.counters == {"nodes_removed": 0, "initializers_removed": 0, "inputs_removed": 0}
    assert op_counts(out) == op_counts(model) and len(out.graph.initializer) == 1


def _branch(name: str, nodes: list, out: str) -> onnx.GraphProto:
    return helper.make_graph(nodes, name, [], [vi(out, [2])])


def test_dead_nodes_inside_if_branches_go_and_so_does_the_outer_node_only_they_read():
    """The then-branch computes a Mul of an outer Exp that nothing else reads and returns something
    else: the Mul, the Exp it alone read, and the else-branch's dead Neg go; outputs are unchanged."""
    then_graph = _branch("then", [helper.make_node("Mul", ["e", "x"], ["t_dead"]),
                                  helper.make_node("Relu", ["x"], ["t_out"])], "t_out")
    else_graph = _branch("else", [helper.make_node("Neg", ["x"], ["e_dead"]),
                                  helper.make_node("Abs", ["x"], ["e_out"])], "e_out")
    nodes = [helper.make_node("Exp", ["x"], ["e"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=then_graph, else_branch=else_graph)]
    model = make_model(nodes, [vi("cond", [], TensorProto.BOOL), vi("x", [2])], [vi("y", [2])])
    out, record = _run(model)
    assert record.counters["nodes_removed"] == 3
    assert (record.nodes_before, record.nodes_after) == (6, 3)  # the pass table counts subgraph nodes too
    assert op_counts(out) == {"If": 1}
    before, after = stats.compute(import_model(model)), stats.compute(import_model(out))
    assert (before.nodes, after.nodes) == (6, 3)
    assert before.ops == {"Abs": 1, "Exp": 1, "If": 1, "Mul": 1, "Neg": 1, "Relu": 1}
    assert after.ops == {"Abs": 1, "If": 1, "Relu": 1}
    (if_node,) = out.graph.node
    branches = {a.name: [n.op_type for n in a.g.node] for a in if_node.attribute}
    assert branches == {"then_branch": ["Relu"], "else_branch": ["Abs"]}
    assert_equivalent(model, out, seeds=(0, 1, 2, 3))


def test_dead_node_in_a_loop_body_goes_and_its_inputs_and_carried_values_stay():
    """A Loop body whose Sin reads the loop-carried value but feeds nothing: it goes; the body keeps
    its three inputs (iteration, condition, carried) and the Loop still gives the same result."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Sin", ["acc_in"], ["dead"]),
         helper.make_node("Add", ["acc_in", "x"], ["acc_out"])],
        "body",
        [vi("i", [], TensorProto.INT64), vi("cond_in", [], TensorProto.BOOL), vi("acc_in", [2])],
        [vi("cond_out", [], TensorProto.BOOL), vi("acc_out", [2])])
    nodes = [helper.make_node("Loop", ["trip", "", "x"], ["y"], body=body)]
    model = make_model(nodes, [vi("x", [2])], [vi("y", [2])], [init("trip", np.array(3, np.int64))])
    out, record = _run(model)
    assert record.counters["nodes_removed"] == 1
    (loop,) = out.graph.node
    assert [n.op_type for n in loop.attribute[0].g.node] == ["Identity", "Add"]
    assert [i.name for i in loop.attribute[0].g.input] == ["i", "cond_in", "acc_in"]
    assert_equivalent(model, out)


def test_initializer_read_only_by_a_dead_node_in_a_subgraph_goes():
    then_graph = _branch("then", [helper.make_node("Mul", ["x", "W"], ["t_dead"]),
                                  helper.make_node("Relu", ["x"], ["t_out"])], "t_out")
    else_graph = _branch("else", [helper.make_node("Abs", ["x"], ["e_out"])], "e_out")
    nodes = [helper.make_node("If", ["cond"], ["y"], then_branch=then_graph, else_branch=else_graph)]
    model = make_model(nodes, [vi("cond", [], TensorProto.BOOL), vi("x", [2])], [vi("y", [2])],
                       [init("W", np.full(2, 3.0, np.float32))])
    out, record = _run(model)
    assert record.counters == {"nodes_removed": 1, "initializers_removed": 1, "inputs_removed": 0}
    assert not out.graph.initializer
    assert_equivalent(model, out, seeds=(0, 1, 2, 3))
