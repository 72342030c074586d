"""Fold a zero constant Pad of the spatial dimensions into the following Conv or AveragePool.

Conv and AveragePool (``count_include_pad=1``) pad their input with zeros themselves, so::

    Conv(Pad(x, pads=p, value=0), pads=q)         ->  Conv(x, pads=q + p[spatial])
    AveragePool(Pad(x, p, 0), q, count_include_pad=1)  ->  AveragePool(x, q + p[spatial], ...)

where ``p`` is split per dimension into begins and ends (ONNX layout ``[b_0..b_{r-1}, e_0..e_{r-1}]``)
and only the spatial dimensions (2 and up) may be padded.

Preconditions: default domain; Pad mode ``constant`` with pad value absent or 0; pads constant
and non-negative (negative pads crop); batch and channel dimensions not padded. Pads are read
from the ``pads``/``paddings`` attributes (opset < 11) or the constant ``pads`` input, with the
optional constant ``axes`` input (opset 18) expanded to all dimensions. The consumer has
``auto_pad`` NOTSET (or VALID, which means no padding); an AveragePool must count the padding
(``count_include_pad=1``) and use ``ceil_mode=0`` (in ceil mode, windows starting in the padding are
dropped, which differs from windows over explicit padding) and its merged pads stay smaller than
the kernel (onnxruntime refuses larger pool pads). The Pad output has exactly one reader,
in this graph, and is not a graph output. MaxPool is never rewritten (its padding is -inf, not 0).
ConvTranspose is never rewritten (its pads crop the output).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxslim.graph import DEFAULT_DOMAINS, Reject, optional_constant, rank
from onnxslim.pipeline import Pass, PassContext, PassResult

_COUNTERS = {"Conv": "into_conv", "AveragePool": "into_average_pool"}


class FusePad(Pass):
    """Fold a zero constant Pad of spatial dimensions into the next Conv or AveragePool's pads."""

    name = "fuse_pad"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        local = {id(n) for n in graph.nodes}
        output_ids = {id(t) for t in graph.outputs}
        counters: dict[str, int] = {}
        for pad in list(graph.nodes):
            if pad.op != "Pad" or pad.domain not in DEFAULT_DOMAINS or len(pad.outputs) != 1 or not pad.inputs:
                continue
            y = pad.outputs[0]
            readers = {id(n): n for n in y.outputs}
            if id(y) in output_ids or len(readers) != 1:
                continue
            (node,) = readers.values()
            if node.op not in _COUNTERS or node.domain not in DEFAULT_DOMAINS or id(node) not in local:
                continue
            try:
                new_pads = _merged_pads(pad, node)
            except Reject as why:
                ctx.decline(self.name, where=pad.name, reason=f"Pad -> {node.op}: {why}")
                continue
            node.attrs["pads"] = new_pads
            node.attrs.pop("auto_pad", None)
            node.inputs[0] = pad.inputs[0]
            counters[_COUNTERS[node.op]] = counters.get(_COUNTERS[node.op], 0) + 1
        return PassResult(changed=bool(counters), counters=counters)


def _merged_pads(pad: gs.Node, node: gs.Node) -> list[int]:
    """The consumer's new ``pads`` attribute, or raise Reject."""
    if node.inputs[0] is not pad.outputs[0]:
        raise Reject("Pad output is not the data input")
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "VALID"):
        raise Reject(f"auto_pad={auto_pad}")
    if node.op == "Conv":
        weight = node.inputs[1] if len(node.inputs) > 1 else None
        data_rank = rank(weight) if weight is not None else None
        data_rank = data_rank or rank(pad.outputs[0]) or rank(pad.inputs[0])
    else:
        if not node.attrs.get("count_include_pad", 0):
            raise Reject("count_include_pad=0 (padding would not be averaged in)")
        if node.attrs.get("ceil_mode", 0):
            raise Reject("ceil_mode=1")
        data_rank = len(node.attrs["kernel_shape"]) + 2 if "kernel_shape" in node.attrs else None
    if data_rank is None or data_rank < 3:
        raise Reject("rank of the padded tensor unknown")
    begins, ends = _pad_amounts(pad, data_rank)
    if any(begins[:2]) or any(ends[:2]):
        raise Reject("batch or channel dimension padded")
    spatial = data_rank - 2
    old = [int(p) for p in node.attrs.get("pads", [0] * (2 * spatial))] if auto_pad == "NOTSET" else [0] * (2 * spatial)
    if len(old) != 2 * spatial:
        raise Reject(f"{node.op} pads has {len(old)} values for {spatial} spatial dims")
    merged = [old[i] + begins[2 + i] for i in range(spatial)] + [old[spatial + i] + ends[2 + i] for i in range(spatial)]
    if node.op == "AveragePool":
        kernel = [int(k) for k in node.attrs["kernel_shape"]] * 2
        if any(p >= k for p, k in zip(merged, kernel)):
            raise Reject("merged pads would not be smaller than the kernel (onnxruntime rejects that)")
    return merged


def _pad_amounts(pad: gs.Node, data_rank: int) -> tuple[list[int], list[int]]:
    """Per-dimension (begins, ends) of a zero constant Pad, or raise Reject."""
    mode = pad.attrs.get("mode", "constant")
    if isinstance(mode, bytes):
        mode = mode.decode()
    if mode != "constant":
        raise Reject(f"mode={mode}")
    axes = None
    if "pads" in pad.attrs or "paddings" in pad.attrs:  # opset < 11
        pads = np.asarray(pad.attrs.get("pads", pad.attrs.get("paddings")), dtype=np.int64)
        value = np.asarray(pad.attrs.get("value", 0.0))
    else:
        pads = optional_constant(pad, 1, "input 1 of Pad", dtype=None)
        if pads is None:
            raise Reject("pads is not constant")
        value = optional_constant(pad, 2, "input 2 of Pad", dtype=None)
        axes = optional_constant(pad, 3, "input 3 of Pad", dtype=None)
    if value is not None and np.any(value != 0):
        raise Reject("pad value is not 0")
    pads = pads.astype(np.int64).reshape(-1)
    if axes is None:
        axes = np.arange(data_rank)
    axes = [int(a) + data_rank if int(a) < 0 else int(a) for a in axes.reshape(-1)]
    if len(pads) != 2 * len(axes) or len(set(axes)) != len(axes) or any(not 0 <= a < data_rank for a in axes):
        raise Reject("pads do not match the padded tensor's rank")
    if np.any(pads < 0):
        raise Reject("negative pads (cropping)")
    begins, ends = [0] * data_rank, [0] * data_rank
    for i, axis in enumerate(axes):
        begins[axis], ends[axis] = int(pads[i]), int(pads[len(axes) + i])
    return begins, ends
