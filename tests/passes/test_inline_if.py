"""inline_if: an If with a constant condition becomes the nodes of its taken branch.

Structural checks (op counts, counters, initializer names, topological order, names kept) and
numeric ones (onnxruntime before/after; the ONNX reference evaluator where onnxruntime itself is
wrong on the original model)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from onnxslim import cli
from onnxslim import pipeline as pl
from onnxslim.graph import export_model, import_model
from onnxslim.passes import inline_if
from onnxslim.pipeline import PassContext, Pipeline
from tests.helpers import apply_passes, assert_equivalent, init, make_model, op_counts, random_feeds, run_ort, vi

F = TensorProto.FLOAT
NONE = {"ifs_inlined": 0, "nodes_inlined": 0, "identities_added": 0, "tensors_renamed": 0}


def _counters(**changed: int) -> dict[str, int]:
    return {**NONE, **changed}


def _run(model: onnx.ModelProto, pipeline: str = "inline_if", ctx: PassContext | None = None, check: bool = True):
    out, records = apply_passes(model, pipeline, ctx, check=check)
    record = next(r for r in records if r.name == "inline_if")
    return out, record


def _branch(name: str, nodes, outputs, initializers=()) -> onnx.GraphProto:
    return helper.make_graph(list(nodes), name, [], list(outputs), list(initializers))


def _all_ops(graph: onnx.GraphProto) -> Counter:
    """Op counts over ``graph`` and every subgraph in it."""
    counts = Counter(n.op_type for n in graph.node)
    for node in graph.node:
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                counts += _all_ops(sub)
    return counts


def _all_initializers(graph: onnx.GraphProto) -> set[str]:
    names = {t.name for t in graph.initializer}
    for node in graph.node:
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                names |= _all_initializers(sub)
    return names


def _assert_sorted(graph: onnx.GraphProto, outer: frozenset = frozenset()) -> None:
    """Every node input is defined before the node: in this graph or an enclosing one."""
    defined = set(outer) | {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    for node in graph.node:
        missing = [name for name in node.input if name not in defined]
        assert not missing, f"{node.name or node.op_type} reads {missing} before they are defined"
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                _assert_sorted(sub, frozenset(defined))
        defined.update(node.output)


def _weighted_if(cond: np.ndarray) -> onnx.ModelProto:
    """``r = Relu(x); h = If(c){then: r + wt}{else: r * we}; y = Neg(h)``."""
    then = _branch("then", [helper.make_node("Add", ["r", "wt"], ["t"])], [vi("t", [2, 3])], [init("wt", np.full((3,), 2, np.float32))])
    els = _branch("else", [helper.make_node("Mul", ["r", "we"], ["e"])], [vi("e", [2, 3])], [init("we", np.arange(3, dtype=np.float32))])
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("If", ["c"], ["h"], name="the_if", then_branch=then, else_branch=els),
        helper.make_node("Neg", ["h"], ["y"]),
    ]
    return make_model(nodes, [vi("x", [2, 3])], [vi("y", [2, 3])], [init("c", cond)])


# --------------------------------------------------------------------------------------------
# The basic rewrite, both branches, every condition shape


@pytest.mark.parametrize("cond, kept, dropped", [(True, "wt", "we"), (False, "we", "wt")])
def test_takes_the_right_branch_and_drops_the_other(cond, kept, dropped):
    model = _weighted_if(np.array(cond))
    out, record = _run(model)
    assert record.changed
    assert record.counters == _counters(ifs_inlined=1, nodes_inlined=1)
    assert op_counts(out) == {"Relu": 1, "Add" if cond else "Mul": 1, "Neg": 1}
    assert _all_initializers(out.graph) == {kept}  # the condition and the dead branch's weight are gone
    assert dropped.encode() not in out.SerializeToString()
    _assert_sorted(out.graph)
    assert_equivalent(model, out)


def test_dead_branch_no_longer_reads_outer_tensors():
    """``r`` was read by both branches; afterwards only by live nodes (sole-reader rewrites see it)."""
    graph = import_model(_weighted_if(np.array(True)))
    r = graph.nodes[0].outputs[0]
    assert len(r.outputs) == 2
    Pipeline("inline_if").run(graph, PassContext())
    assert [n.op for n in r.outputs] == ["Add"] and r.outputs[0] is graph.nodes[1]


@pytest.mark.parametrize("shape", [(), (1,), (1, 1), (1, 1, 1)])
@pytest.mark.parametrize("as_node", [False, True], ids=["initializer", "constant_node"])
def test_condition_of_any_rank_with_one_element(shape, as_node):
    model = _weighted_if(np.full(shape, False))
    if as_node:  # the condition comes from a Constant node instead of an initializer
        value = model.graph.initializer.pop(0)
        model.graph.node.insert(0, helper.make_node("Constant", [], ["c"], value=value))
    out, record = _run(model)
    assert record.counters == _counters(ifs_inlined=1, nodes_inlined=1)
    assert op_counts(out) == {"Relu": 1, "Mul": 1, "Neg": 1}  # the Constant node is swept too
    assert_equivalent(model, out)


def test_condition_folded_in_the_same_fixed_point():
    """``c = Not(Constant)``: fold_constants makes it an initializer, then the If goes."""
    model = _weighted_if(np.array(True))
    model.graph.initializer.pop(0)
    model.graph.initializer.append(init("c0", np.array(False)))
    model.graph.node.insert(0, helper.make_node("Not", ["c0"], ["c"]))
    out, records = apply_passes(model, "[fold_constants,inline_if,eliminate_dead]")
    assert op_counts(out) == {"Relu": 1, "Add": 1, "Neg": 1}
    assert sum(r.counters.get("ifs_inlined", 0) for r in records) == 1
    assert_equivalent(model, out)


def test_non_constant_condition_is_left_alone():
    then = _branch("then", [helper.make_node("Neg", ["x"], ["t"])], [vi("t", [2])])
    els = _branch("else", [helper.make_node("Abs", ["x"], ["e"])], [vi("e", [2])])
    model = make_model(
        [helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=els)],
        [vi("x", [2]), vi("c", [], TensorProto.BOOL)],
        [vi("y", [2])],
    )
    ctx = PassContext()
    out, record = _run(model, ctx=ctx)
    assert not record.changed and record.counters == NONE
    assert op_counts(out) == {"If": 1}
    assert ctx.notes == []  # the ordinary case: nothing to report


@pytest.mark.parametrize(
    "cond, reason",
    [(np.array([True, False]), "2 elements"), (np.zeros((0,), bool), "0 elements"), (np.array(1, np.int64), "not bool")],
    ids=["two_elements", "empty", "int64"],
)
def test_unusable_constant_condition_is_declined(cond, reason):
    model = _weighted_if(np.array(True))
    model.graph.initializer[0].CopyFrom(init("c", cond))
    ctx = PassContext()
    out, record = _run(model, ctx=ctx, check=False)
    assert not record.changed and record.counters == NONE
    assert op_counts(out)["If"] == 1
    assert [n["where"] for n in ctx.notes] == ["the_if"] and reason in ctx.notes[0]["reason"]


# --------------------------------------------------------------------------------------------
# Branch outputs: produced inside, constants, outer tensors, returned twice


def test_if_outputs_that_are_graph_outputs_keep_their_names():
    """Two outputs, both graph outputs: the branch's producers write them directly."""
    then = _branch(
        "then",
        [helper.make_node("Sigmoid", ["x"], ["a"]), helper.make_node("Mul", ["a", "x"], ["b"])],
        [vi("b", [2, 3]), vi("a", [2, 3])],
    )
    els = _branch(
        "else", [helper.make_node("Neg", ["x"], ["n"]), helper.make_node("Abs", ["x"], ["m"])], [vi("n", [2, 3]), vi("m", [2, 3])]
    )
    model = make_model(
        [helper.make_node("If", ["c"], ["y", "z"], then_branch=then, else_branch=els)],
        [vi("x", [2, 3])],
        [vi("y", [2, 3]), vi("z", [2, 3])],
        [init("c", np.array([True]))],
    )
    out, record = _run(model)
    assert record.counters == _counters(ifs_inlined=1, nodes_inlined=2)
    assert [(n.op_type, list(n.input), list(n.output)) for n in out.graph.node] == [
        ("Sigmoid", ["x"], ["z"]),
        ("Mul", ["z", "x"], ["y"]),  # the branch's reader of "a" now reads the If output "z"
    ]
    assert [o.name for o in out.graph.output] == ["y", "z"]
    assert_equivalent(model, out)


@pytest.mark.parametrize("graph_output", [True, False])
def test_branch_initializer_returned_as_output(graph_output):
    """The branch returns its own initializer: ``h = Identity(k)``, removable when internal."""
    k = np.array([1.5, -2.0], np.float32)
    then = _branch("then", [], [vi("k", [2])], [init("k", k)])
    els = _branch("else", [helper.make_node("Neg", ["x"], ["e"])], [vi("e", [2])])
    nodes = [helper.make_node("If", ["c"], ["h"], then_branch=then, else_branch=els)]
    if graph_output:
        outputs = [vi("h", [2])]
    else:
        nodes.append(helper.make_node("Add", ["h", "x"], ["y"]))
        outputs = [vi("y", [2])]
    model = make_model(nodes, [vi("x", [2])], outputs, [init("c", np.array(True))])
    out, record = _run(model, "inline_if,eliminate_identity")
    assert record.counters == _counters(ifs_inlined=1, identities_added=1)
    if graph_output:
        assert op_counts(out) == {"Identity": 1}  # a constant cannot take over a graph output's name
        assert [(list(n.input), list(n.output)) for n in out.graph.node] == [(["k"], ["h"])]
    else:
        assert op_counts(out) == {"Add": 1}
    assert _all_initializers(out.graph) == {"k"}
    assert_equivalent(model, out)


def test_returned_branch_initializers_with_the_same_name_are_renamed():
    """Two constant Ifs whose taken branches both return an initializer named ``k``."""

    def node(cond: str, out: str, value: float) -> onnx.NodeProto:
        then = _branch("then", [], [vi("k", [2])], [init("k", np.full(2, value, np.float32))])
        els = _branch("else", [helper.make_node("Neg", ["x"], ["e"])], [vi("e", [2])])
        return helper.make_node("If", [cond], [out], then_branch=then, else_branch=els)

    model = make_model(
        [node("c", "y1", 2.0), node("c", "y2", 3.0)], [vi("x", [2])], [vi("y1", [2]), vi("y2", [2])], [init("c", np.array(True))]
    )
    out, record = _run(model)
    assert record.counters == _counters(ifs_inlined=2, identities_added=2, tensors_renamed=1)
    assert sorted(t.name for t in out.graph.initializer) == ["k", "k__1"]
    assert_equivalent(model, out)


def test_outer_constant_and_outer_tensor_through_identity_in_the_branch():
    """A valid branch returns an outer value through its own Identity: that node writes ``h``."""
    then = _branch(
        "then", [helper.make_node("Identity", ["w"], ["t1"]), helper.make_node("Identity", ["x"], ["t2"])], [vi("t1", [2]), vi("t2", [2])]
    )
    els = _branch("else", [helper.make_node("Neg", ["x"], ["e1"]), helper.make_node("Abs", ["x"], ["e2"])], [vi("e1", [2]), vi("e2", [2])])
    model = make_model(
        [helper.make_node("If", ["c"], ["y", "z"], then_branch=then, else_branch=els)],
        [vi("x", [2])],
        [vi("y", [2]), vi("z", [2])],
        [init("c", np.array(True)), init("w", np.array([3.0, 4.0], np.float32))],
    )
    out, record = _run(model)
    assert record.counters == _counters(ifs_inlined=1, nodes_inlined=2)
    assert [(list(n.input), list(n.output)) for n in out.graph.node] == [(["w"], ["y"]), (["x"], ["z"])]
    assert_equivalent(model, out)


def test_branch_returning_outer_tensors_directly_gets_identities():
    """ONNX requires a branch output to be produced in the branch, but a gs graph built or rewritten
    in memory may return an outer tensor (graph input, intermediate, main-graph constant) directly,
    or, as gs imports it, a separate variable of the same name: each becomes ``Identity(outer)``."""
    x = gs.Variable("x", np.float32, [2])
    r = gs.Variable("r", np.float32, [2])
    w = gs.Constant("w", np.array([3.0, 4.0], np.float32))
    outs = [gs.Variable(n, np.float32, [2]) for n in ("o1", "o2", "o3", "o4")]
    then = gs.Graph(nodes=[], inputs=[], outputs=[x, r, w, gs.Variable("r", np.float32, [2])], name="then")
    e = [gs.Variable(f"e{i}", np.float32, [2]) for i in range(4)]
    els = gs.Graph(nodes=[gs.Node("Neg", inputs=[x], outputs=[t]) for t in e], outputs=e, name="else")
    graph = gs.Graph(
        nodes=[
            gs.Node("Relu", inputs=[x], outputs=[r]),
            gs.Node("If", name="the_if", inputs=[gs.Constant("c", np.array(True))], outputs=outs,
                    attrs={"then_branch": then, "else_branch": els}),
        ],
        inputs=[x],
        outputs=outs,
        opset=18,
    )
    records = Pipeline("inline_if").run(graph, PassContext())
    assert records[0].counters == _counters(ifs_inlined=1, identities_added=4)
    model = export_model(graph)
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    assert sorted((n.op_type, list(n.input), list(n.output)) for n in model.graph.node) == [
        ("Identity", ["r"], ["o2"]),
        ("Identity", ["r"], ["o4"]),
        ("Identity", ["w"], ["o3"]),
        ("Identity", ["x"], ["o1"]),
        ("Relu", ["x"], ["r"]),
    ]
    xv = np.array([-1.0, 2.0], np.float32)
    got = run_ort(model, {"x": xv})
    for name, want in zip(("o1", "o2", "o3", "o4"), (xv, np.maximum(xv, 0), [3.0, 4.0], np.maximum(xv, 0))):
        np.testing.assert_array_equal(got[name], want)


def test_same_tensor_returned_twice():
    """``then`` returns ``t`` twice: the producer writes the first output, ``Identity`` the second.

    onnxruntime 1.x returns garbage for the first of two identical subgraph outputs, so the
    original model is evaluated with the ONNX reference implementation."""
    then = _branch("then", [helper.make_node("Add", ["x", "x"], ["t"])], [vi("t", [2]), vi("t", [2])])
    els = _branch("else", [helper.make_node("Neg", ["x"], ["e"]), helper.make_node("Abs", ["x"], ["f"])], [vi("e", [2]), vi("f", [2])])
    model = make_model(
        [helper.make_node("If", ["c"], ["y", "z"], then_branch=then, else_branch=els)],
        [vi("x", [2])],
        [vi("y", [2]), vi("z", [2])],
        [init("c", np.array(True))],
    )
    out, record = _run(model)
    assert record.counters == _counters(ifs_inlined=1, nodes_inlined=1, identities_added=1)
    assert [(n.op_type, list(n.input), list(n.output)) for n in out.graph.node] == [
        ("Add", ["x", "x"], ["y"]),
        ("Identity", ["y"], ["z"]),
    ]
    feeds = random_feeds(model)
    want = ReferenceEvaluator(model).run(None, feeds)
    got = run_ort(out, feeds)
    np.testing.assert_array_equal(got["y"], want[0])
    np.testing.assert_array_equal(got["z"], want[1])


# --------------------------------------------------------------------------------------------
# Readers in nested scopes, nested subgraphs in the taken branch, Ifs inside subgraphs


def _loop_body(reads: list[str], name: str = "body", prefix: str = "l") -> onnx.GraphProto:
    """A Loop body carrying ``v``: ``v_out = v + sum(reads)``; every iteration reads ``reads``."""
    nodes, acc = [], f"{prefix}_v"
    for i, outer in enumerate(reads):
        nodes.append(helper.make_node("Add", [acc, outer], [f"{prefix}_acc{i}"]))
        acc = f"{prefix}_acc{i}"
    nodes.append(helper.make_node("Identity", [f"{prefix}_cond"], [f"{prefix}_cond_out"]))
    nodes.append(helper.make_node("Identity", [acc], [f"{prefix}_v_out"]))
    return helper.make_graph(
        nodes,
        name,
        [vi(f"{prefix}_i", [], TensorProto.INT64), vi(f"{prefix}_cond", [], TensorProto.BOOL), vi(f"{prefix}_v", [2])],
        [vi(f"{prefix}_cond_out", [], TensorProto.BOOL), vi(f"{prefix}_v_out", [2])],
    )


def test_if_output_read_inside_other_subgraphs():
    """``h`` (a graph output too) is read by a non-constant If's branches and by a Loop body."""
    then = _branch("then", [helper.make_node("Sigmoid", ["x"], ["t"])], [vi("t", [2])])
    els = _branch("else", [helper.make_node("Neg", ["x"], ["e"])], [vi("e", [2])])
    user_then = _branch("user_then", [helper.make_node("Add", ["h", "x"], ["ut"])], [vi("ut", [2])])
    user_else = _branch("user_else", [helper.make_node("Sub", ["h", "x"], ["ue"])], [vi("ue", [2])])
    model = make_model(
        [
            helper.make_node("If", ["c"], ["h"], then_branch=then, else_branch=els),
            helper.make_node("If", ["b"], ["u"], then_branch=user_then, else_branch=user_else),
            helper.make_node("Loop", ["n", "", "x"], ["v"], body=_loop_body(["h"])),
        ],
        [vi("x", [2]), vi("b", [], TensorProto.BOOL)],
        [vi("h", [2]), vi("u", [2]), vi("v", [2])],
        [init("c", np.array(True)), init("n", np.array(3, np.int64))],
    )
    out, record = _run(model)
    assert record.counters == _counters(ifs_inlined=1, nodes_inlined=1)
    assert op_counts(out) == {"Sigmoid": 1, "If": 1, "Loop": 1}
    assert out.graph.node[0].output[0] == "h"
    _assert_sorted(out.graph)
    for seed in range(4):  # b is random: both branches of the remaining If
        assert_equivalent(model, out, seeds=(seed,))


def test_nested_subgraphs_in_the_taken_branch_move_with_it():
    """The taken branch holds a local initializer, a constant If (inlined in the same run), a
    non-constant If and a Loop that read branch-local and outer tensors."""
    inner_const = _branch("ic_then", [helper.make_node("Mul", ["p", "k"], ["ict"])], [vi("ict", [2])])
    inner_const_else = _branch("ic_else", [helper.make_node("Neg", ["p"], ["ice"])], [vi("ice", [2])])
    inner_then = _branch("in_then", [helper.make_node("Add", ["p", "x"], ["it"])], [vi("it", [2])])
    inner_else = _branch("in_else", [helper.make_node("Sub", ["p", "k"], ["ie"])], [vi("ie", [2])])
    then = _branch(
        "then",
        [
            helper.make_node("Mul", ["x", "k"], ["p"]),
            helper.make_node("If", ["kc"], ["q"], then_branch=inner_const, else_branch=inner_const_else),
            helper.make_node("If", ["b"], ["s"], then_branch=inner_then, else_branch=inner_else),
            helper.make_node("Loop", ["n", "", "q"], ["lv"], body=_loop_body(["p", "k", "x"])),
            helper.make_node("Sum", ["s", "lv"], ["t"]),
        ],
        [vi("t", [2])],
        [init("k", np.array([2.0, -1.0], np.float32)), init("kc", np.array(True))],
    )
    els = _branch("else", [helper.make_node("Neg", ["x"], ["e"])], [vi("e", [2])], [init("unused", np.ones(2, np.float32))])
    model = make_model(
        [helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=els)],
        [vi("x", [2]), vi("b", [], TensorProto.BOOL)],
        [vi("y", [2])],
        [init("c", np.array(True)), init("n", np.array(2, np.int64))],
    )
    out, record = _run(model)
    assert record.counters == _counters(ifs_inlined=2, nodes_inlined=6)
    assert op_counts(out) == {"Mul": 2, "If": 1, "Loop": 1, "Sum": 1}
    assert {t.name for t in out.graph.initializer} == {"k", "n"}
    assert "unused" not in _all_initializers(out.graph)
    _assert_sorted(out.graph)
    for seed in range(4):
        assert_equivalent(model, out, seeds=(seed,))


def test_if_inside_a_loop_body_is_inlined_there():
    then = _branch("then", [helper.make_node("Add", ["l_v", "x"], ["t"])], [vi("t", [2])])
    els = _branch("else", [helper.make_node("Sub", ["l_v", "x"], ["e"])], [vi("e", [2])], [init("dead_w", np.ones(2, np.float32))])
    body = helper.make_graph(
        [
            helper.make_node("Constant", [], ["kc"], value=init("kc_value", np.array([False]))),
            helper.make_node("If", ["kc"], ["l_v_out"], then_branch=then, else_branch=els),
            helper.make_node("Identity", ["l_cond"], ["l_cond_out"]),
        ],
        "body",
        [vi("l_i", [], TensorProto.INT64), vi("l_cond", [], TensorProto.BOOL), vi("l_v", [2])],
        [vi("l_cond_out", [], TensorProto.BOOL), vi("l_v_out", [2])],
    )
    model = make_model(
        [helper.make_node("Loop", ["n", "", "x"], ["y"], body=body)], [vi("x", [2])], [vi("y", [2])], [init("n", np.array(3, np.int64))]
    )
    out, record = _run(model)
    assert record.counters == _counters(ifs_inlined=1, nodes_inlined=1)
    assert _all_ops(out.graph) == {"Loop": 1, "Sub": 1, "Identity": 1}  # If and its Constant gone
    assert "dead_w" not in _all_initializers(out.graph)
    _assert_sorted(out.graph)
    assert_equivalent(model, out)


# --------------------------------------------------------------------------------------------
# Names: sibling subgraphs may reuse a name; the enclosing graph may not


def test_name_reused_by_a_sibling_subgraph_is_renamed():
    """Three Ifs whose branches all define ``t`` and an initializer ``k``: two constant, one not.
    The inlined copies get fresh names; the remaining If keeps its own."""

    def branches(scale: float):
        then = _branch("then", [helper.make_node("Mul", ["x", "k"], ["t"]), helper.make_node("Neg", ["t"], ["o"])], [vi("o", [2])],
                       [init("k", np.full(2, scale, np.float32))])
        els = _branch("else", [helper.make_node("Add", ["x", "k"], ["t"]), helper.make_node("Abs", ["t"], ["o2"])], [vi("o2", [2])],
                      [init("k", np.full(2, -scale, np.float32))])
        return {"then_branch": then, "else_branch": els}

    model = make_model(
        [
            helper.make_node("If", ["c1"], ["y1"], **branches(2.0)),
            helper.make_node("If", ["b"], ["y2"], **branches(3.0)),
            helper.make_node("If", ["c2"], ["y3"], **branches(5.0)),
        ],
        [vi("x", [2]), vi("b", [], TensorProto.BOOL)],
        [vi("y1", [2]), vi("y2", [2]), vi("y3", [2])],
        [init("c1", np.array(True)), init("c2", np.array(False))],
    )
    out, record = _run(model)
    assert record.counters == _counters(ifs_inlined=2, nodes_inlined=4, tensors_renamed=4)
    assert op_counts(out) == {"Mul": 1, "Neg": 1, "If": 1, "Add": 1, "Abs": 1}
    main_names = {o for n in out.graph.node for o in n.output} | {t.name for t in out.graph.initializer}
    assert "t" not in main_names and "k" not in main_names  # the remaining If's branches define them
    assert {t.name for t in out.graph.initializer} == {"k__1", "k__2"}
    onnx.checker.check_model(out, full_check=True)  # SSA: no subgraph shadows a main-graph name
    for seed in range(4):
        assert_equivalent(model, out, seeds=(seed,))


def test_renaming_follows_by_name_references_in_nested_subgraphs():
    """In a gs graph a nested subgraph may name a branch tensor without sharing the object (gs
    imports a subgraph output naming an outer value apart): such references follow the rename."""
    x = gs.Variable("x", np.float32, [2])
    t = gs.Variable("t", np.float32, [2])
    t_ref = gs.Variable("t", np.float32, [2])  # the same name, another object, in the inner branch
    u, y, z, clash = (gs.Variable(n, np.float32, [2]) for n in ("u", "y", "z", "t"))
    inner_then = gs.Graph(nodes=[gs.Node("Identity", inputs=[t_ref], outputs=[gs.Variable("it", np.float32, [2])])], name="it")
    inner_then.outputs = [inner_then.nodes[0].outputs[0]]
    inner_else = gs.Graph(nodes=[gs.Node("Neg", inputs=[t], outputs=[gs.Variable("ie", np.float32, [2])])], name="ie")
    inner_else.outputs = [inner_else.nodes[0].outputs[0]]
    then = gs.Graph(
        nodes=[
            gs.Node("Relu", inputs=[x], outputs=[t]),
            gs.Node("If", inputs=[gs.Variable("b", np.bool_, [])], outputs=[u],
                    attrs={"then_branch": inner_then, "else_branch": inner_else}),
        ],
        outputs=[u],
        name="then",
    )
    els = gs.Graph(nodes=[gs.Node("Neg", inputs=[x], outputs=[gs.Variable("e", np.float32, [2])])], name="else")
    els.outputs = [els.nodes[0].outputs[0]]
    b = then.nodes[1].inputs[0]
    graph = gs.Graph(
        nodes=[
            gs.Node("Abs", inputs=[x], outputs=[clash]),  # main already has a tensor named "t"
            gs.Node("If", inputs=[gs.Constant("c", np.array(True))], outputs=[y], attrs={"then_branch": then, "else_branch": els}),
            gs.Node("Add", inputs=[y, clash], outputs=[z]),
        ],
        inputs=[x, b],
        outputs=[z],
        opset=18,
    )
    records = Pipeline("inline_if").run(graph, PassContext())
    assert records[0].counters == _counters(ifs_inlined=1, nodes_inlined=2, tensors_renamed=1)
    assert t.name == "t__1" and clash.name == "t"
    assert inner_then.nodes[0].inputs[0] is t  # now the tensor itself: the main graph sorts by it
    model = export_model(graph)
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    xv = np.array([-1.0, 2.0], np.float32)
    for bv in (True, False):
        got = run_ort(model, {"x": xv, "b": np.array(bv)})["z"]
        relu = np.maximum(xv, 0)
        np.testing.assert_allclose(got, (relu if bv else -relu) + np.abs(xv))


# --------------------------------------------------------------------------------------------
# Types and shapes of the If outputs


def test_if_output_keeps_its_type_when_the_branch_output_has_none():
    then = helper.make_graph([helper.make_node("Neg", ["x"], ["t"])], "then", [], [helper.make_empty_tensor_value_info("t")])
    els = helper.make_graph([helper.make_node("Abs", ["x"], ["e"])], "else", [], [helper.make_empty_tensor_value_info("e")])
    model = make_model(
        [helper.make_node("If", ["c"], ["h"], then_branch=then, else_branch=els), helper.make_node("Relu", ["h"], ["y"])],
        [vi("x", [2, 3])],
        [vi("y", [2, 3])],
        [init("c", np.array(True))],
        check=False,
    )
    model.graph.value_info.append(vi("h", [2, 3]))
    out, record = _run(model)
    assert record.counters == _counters(ifs_inlined=1, nodes_inlined=1)
    (info,) = [v for v in out.graph.value_info if v.name == "h"]
    assert info.type.tensor_type.elem_type == F
    assert [d.dim_value for d in info.type.tensor_type.shape.dim] == [2, 3]
    assert_equivalent(model, out)


def test_if_output_takes_the_branch_type_when_it_has_none():
    model = _weighted_if(np.array(True))
    graph = import_model(model)
    h = graph.nodes[1].outputs[0]
    h.dtype, h.shape = None, None
    Pipeline("inline_if").run(graph, PassContext())
    assert h.dtype == np.float32 and list(h.shape) == [2, 3]
    assert graph.nodes[1].outputs[0] is h and graph.nodes[1].op == "Add"


# --------------------------------------------------------------------------------------------
# Declines, idempotence, registration, the default pipeline and the CLI


def _range_model(scalar: bool) -> onnx.ModelProto:
    """``n = If(True){one_1d}{Split(size)[0]}``, ``y = Range(0, n, 1)``: ``n`` has shape [1] (as in
    ONNX's AffineGrid function body), or [] with ``scalar`` (then Squeeze(one_1d))."""
    then_node = helper.make_node("Squeeze" if scalar else "Identity", ["one_1d"], ["t"])
    then = _branch("then", [then_node], [vi("t", [] if scalar else [1], TensorProto.INT64)])
    else_nodes = [helper.make_node("Split", ["size"], ["a", "b"], num_outputs=2)]
    if scalar:
        else_nodes.append(helper.make_node("Squeeze", ["a"], ["a_s"]))
    els = _branch("else", else_nodes, [vi("a_s" if scalar else "a", [] if scalar else [1], TensorProto.INT64)])
    nodes = [
        helper.make_node("If", ["c"], ["n"], name="the_if", then_branch=then, else_branch=els),
        helper.make_node("Range", ["zero", "n", "one"], ["y"]),
    ]
    inits = [init("c", np.array(True)), init("zero", np.array(0, np.int64)), init("one", np.array(1, np.int64)),
             init("one_1d", np.array([3], np.int64))]
    return make_model(nodes, [vi("size", [2], TensorProto.INT64)], [vi("y", [None], TensorProto.INT64)], inits, check=False)


def test_range_reading_a_one_element_tensor_keeps_the_if(monkeypatch):
    """Inlined, ``n`` is the int64[1] constant and onnxruntime refuses Range(0, n, 1) at load
    time (ONNX's inference wants scalars once all three are constants); behind the If it runs.
    The If is kept, with a note."""
    model = _range_model(scalar=False)
    ctx = PassContext()
    out, records = apply_passes(model, pl.DEFAULT_PIPELINE, ctx, check=False)
    assert op_counts(out)["If"] == 1
    assert not any(r.counters.get("ifs_inlined") for r in records)
    assert any(n["pass"] == "inline_if" and "Range" in n["reason"] for n in ctx.notes)
    np.testing.assert_array_equal(run_ort(out, random_feeds(model))["y"], [0, 1, 2])
    monkeypatch.setattr(inline_if, "_SCALAR_INPUTS", {})  # what inlining would give
    forced, _ = apply_passes(model, pl.DEFAULT_PIPELINE, check=False)
    assert "If" not in op_counts(forced)
    with pytest.raises(Exception, match="Range"):
        run_ort(forced, random_feeds(model))


def test_range_reading_a_scalar_output_is_inlined():
    model = _range_model(scalar=True)
    out, records = apply_passes(model, pl.DEFAULT_PIPELINE, check=False)
    assert "If" not in op_counts(out)
    assert sum(r.counters.get("ifs_inlined", 0) for r in records) == 1
    assert_equivalent(model, out)


def test_output_count_mismatch_is_declined():
    x, y = gs.Variable("x", np.float32, [2]), gs.Variable("y", np.float32, [2])
    then = gs.Graph(nodes=[], outputs=[], name="then")
    els = gs.Graph(nodes=[], outputs=[], name="else")
    graph = gs.Graph(
        nodes=[gs.Node("If", name="bad_if", inputs=[gs.Constant("c", np.array(True))], outputs=[y],
                       attrs={"then_branch": then, "else_branch": els})],
        inputs=[x],
        outputs=[y],
        opset=18,
    )
    ctx = PassContext()
    records = Pipeline("inline_if").run(graph, ctx)
    assert not records[0].changed
    assert ctx.notes == [{"pass": "inline_if", "where": "bad_if", "reason": "then_branch has 0 outputs, the If 1"}]


def test_second_run_reports_no_change():
    _, records = apply_passes(_weighted_if(np.array(True)), "inline_if,inline_if")
    assert records[0].changed and not records[1].changed


def test_inline_if_is_a_cleanup_pass_after_shape_folding():
    names = list(pl.CLEANUP_PASSES)
    assert names.index("fold_shapes") < names.index("inline_if") < names.index("eliminate_identity")
    assert pl.registry()["inline_if"].lossy is False


def _shape_condition_model() -> onnx.ModelProto:
    """``if x.shape[0] > 1: y = relu(x) @ wt else: y = x @ we``: constant only after shape folding."""
    rng = np.random.default_rng(0)
    then = _branch("then", [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("MatMul", ["r", "wt"], ["t"])], [vi("t", [3, 8])],
                   [init("wt", rng.standard_normal((4, 8)).astype(np.float32))])
    els = _branch("else", [helper.make_node("MatMul", ["x", "we"], ["e"])], [vi("e", [3, 8])],
                  [init("we", rng.standard_normal((4, 8)).astype(np.float32))])
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
        helper.make_node("Greater", ["batch", "one"], ["cond"]),
        helper.make_node("If", ["cond"], ["h"], then_branch=then, else_branch=els),
        helper.make_node("Identity", ["h"], ["y"]),
    ]
    inits = [init("zero", np.array(0, np.int64)), init("one", np.array(1, np.int64))]
    return make_model(nodes, [vi("x", [3, 4])], [vi("y", [3, 8])], inits)


def test_default_pipeline_inlines_a_shape_condition():
    model = _shape_condition_model()
    out, records = apply_passes(model, pl.DEFAULT_PIPELINE)
    assert op_counts(out) == {"Relu": 1, "MatMul": 1}
    assert {t.name for t in out.graph.initializer} == {"wt"}
    assert sum(r.counters.get("ifs_inlined", 0) for r in records) == 1
    assert_equivalent(model, out)


def test_cli_optimize_removes_the_if_and_verifies(tmp_path):
    path = tmp_path / "cond.onnx"
    model = _shape_condition_model()
    onnx.save_model(model, path)
    result = CliRunner().invoke(cli.main, ["optimize", str(path), "-o", str(tmp_path / "out.onnx")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "verification passed" in result.output
    out = onnx.load(tmp_path / "out.onnx")
    assert "If" not in _all_ops(out.graph)
    assert op_counts(out) == {"Relu": 1, "MatMul": 1}
    assert_equivalent(model, out)
