"""Model statistics: nodes, op histogram, parameters, MACs, bytes.

MACs are counted for Conv, ConvTranspose, Gemm and MatMul (and their quantized forms) from
shapes on the graph (run ``infer_shapes`` first). Unknown dimensions count as 1 and make the
figure approximate (``macs_exact`` is False then).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from onnxslim.graph import constant_nbytes, graphs_under, iter_subgraphs, op_histogram


@dataclass
class ModelStats:
    nodes: int
    ops: dict[str, int]
    parameters: int
    constant_bytes: int
    macs: int
    macs_exact: bool
    macs_by_op: dict[str, int] = field(default_factory=dict)
    largest_tensors: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _dims(shape) -> tuple[list[int], bool]:
    if shape is None:
        return [], False
    exact = True
    out = []
    for d in shape:
        if isinstance(d, (int, np.integer)) and d >= 0:
            out.append(int(d))
        else:
            out.append(1)
            exact = False
    return out, exact


def _prod(values) -> int:
    result = 1
    for v in values:
        result *= int(v)
    return result


MAC_OPS = frozenset({"Conv", "ConvInteger", "QLinearConv", "ConvTranspose", "Gemm", "MatMul", "MatMulInteger", "QLinearMatMul"})
"""The ops :func:`node_macs` counts; every other op costs 0 MACs."""


def node_macs(node: gs.Node) -> tuple[int, bool]:
    """Multiply-accumulates of one node and whether the count is exact."""
    op = node.op
    if op in ("Conv", "ConvInteger", "QLinearConv"):
        w_idx = 3 if op == "QLinearConv" else 1
        if len(node.inputs) <= w_idx or not node.outputs:
            return 0, False
        w, ew = _dims(node.inputs[w_idx].shape)
        out, eo = _dims(node.outputs[0].shape)
        if len(w) < 2 or not out:
            return 0, False
        return _prod(out) * _prod(w[1:]), ew and eo
    if op == "ConvTranspose":
        if len(node.inputs) < 2:
            return 0, False
        x, ex = _dims(node.inputs[0].shape)
        w, ew = _dims(node.inputs[1].shape)
        if len(w) < 2 or not x:
            return 0, False
        return _prod(x) * _prod(w[1:]), ex and ew
    if op in ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul"):
        a_idx, b_idx = (0, 3) if op == "QLinearMatMul" else (0, 1)
        if len(node.inputs) <= b_idx or not node.outputs:
            return 0, False
        a, ea = _dims(node.inputs[a_idx].shape)
        out, eo = _dims(node.outputs[0].shape)
        if not a or not out:
            return 0, False
        k = a[-1]
        if op == "Gemm" and node.attrs.get("transA", 0):
            k = a[0]
        return _prod(out) * k, ea and eo
    return 0, True


def compute(graph: gs.Graph, top: int = 5) -> ModelStats:
    """Statistics of the model: nodes and ops of the main graph and of every If branch and Loop/Scan
    body in it (each node once, as written); MACs of its nodes and of its subgraphs (an If: its costlier branch; a Loop or
    Scan body: one iteration, and the figure is then marked approximate); parameters and weight
    bytes of every constant, those read only inside a subgraph included, each counted once."""
    macs_by_op: dict[str, int] = {}
    macs_total, exact = _graph_macs(graph, macs_by_op)
    params = nbytes = 0
    sizes = []
    seen: set[int] = set()
    constants = [t for t in graph.tensors().values() if isinstance(t, gs.Constant)]
    graphs = list(graphs_under(graph))
    for g in graphs:  # weights read only inside an If/Loop body are the model's too
        if g is not graph:
            constants.extend(t for t in g.tensors().values() if isinstance(t, gs.Constant))
        for node in g.nodes:  # Constant nodes hold parameters too
            constants.extend(v for v in node.attrs.values() if isinstance(v, gs.Constant))
    for t in constants:
        if id(t) in seen:
            continue
        seen.add(id(t))
        count = _prod(t.shape) if t.shape else 1
        size = constant_nbytes(t)
        nbytes += size
        # Weights in any numeric type count (float, or int8/uint8/int32 once quantized); shape
        # and index tensors are int64 and tiny, and are left out.
        if _is_numpy_dtype(t.dtype) and (np.dtype(t.dtype).kind in "fc" or np.dtype(t.dtype) in _QUANTIZED_DTYPES):
            params += count
        sizes.append((size, t.name, list(t.shape or []), str(t.dtype)))
    sizes.sort(key=lambda s: (-s[0], s[1]))
    largest = [{"name": n, "shape": s, "dtype": d, "bytes": b} for b, n, s, d in sizes[:top]]
    return ModelStats(
        nodes=sum(len(g.nodes) for g in graphs),
        ops=op_histogram(node for g in graphs for node in g.nodes),
        parameters=params,
        constant_bytes=nbytes,
        macs=macs_total,
        macs_exact=exact,
        macs_by_op=dict(sorted(macs_by_op.items())),
        largest_tensors=largest,
    )


def _graph_macs(graph: gs.Graph, by_op: dict[str, int]) -> tuple[int, bool]:
    """MACs of ``graph``'s nodes and their subgraphs, added into ``by_op``; whether exact."""
    total, exact = 0, True
    for node in graph.nodes:
        macs, ok = node_macs(node)
        if macs:
            by_op[node.op] = by_op.get(node.op, 0) + macs
        total, exact = total + macs, exact and ok
        bodies = []
        for sub in iter_subgraphs(node):
            ops: dict[str, int] = {}
            sub_macs, sub_ok = _graph_macs(sub, ops)
            bodies.append((sub_macs, ops))
            exact = exact and sub_ok
        if node.op == "If" and bodies:
            bodies = [max(bodies, key=lambda b: b[0])]  # the costlier branch
        elif any(m for m, _ in bodies):
            exact = False  # a loop body runs an unknown number of times: one iteration counted
        for sub_macs, ops in bodies:
            total += sub_macs
            for op, value in ops.items():
                by_op[op] = by_op.get(op, 0) + value
    return total, exact


_QUANTIZED_DTYPES = {np.dtype(np.int8), np.dtype(np.uint8), np.dtype(np.int32), np.dtype(np.int16), np.dtype(np.uint16)}


def _is_numpy_dtype(dtype) -> bool:
    try:
        np.dtype(dtype)
        return True
    except TypeError:
        return False


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23M'."""
    for factor, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= factor:
            return f"{n / factor:.3g}{suffix}{unit}"
    return f"{n:g}{unit}"


def human_bytes(n: float) -> str:
    for factor, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(n) >= factor:
            return f"{n / factor:.3g} {suffix}"
    return f"{int(n)} B"
