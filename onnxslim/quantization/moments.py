"""Input moments of quantized weights: what data-aware rounding and bias correction need.

A weight ``W`` (one row per output channel) multiplies input vectors ``x``: a Conv's im2col patch
(``C/group * kh * kw`` values, in the weight's ``(c, i, j)`` order), or a row of a Gemm/MatMul
input (``K`` values). Rounding ``W`` to ``Q`` changes the layer's output by ``(Q - W) x``, whose
mean is ``(Q - W) mu`` and whose mean square is ``tr((Q - W) H (Q - W)^T)`` with

    mu = E[x]          (per group: ``groups x width``)
    H  = E[x x^T]      (per group: ``groups x width x width``; only for width <= ``max_width``)

Both are accumulated here over the float model's activations, fed from the calibration runs
(every tensor at once, the first ``samples`` calibration samples). A sample contributes at most
``rows_per_sample`` input vectors (fewer for narrow layers: ``16 * width / samples``, at least
128, is plenty for ``H``), taken at fixed, evenly spaced positions of that sample, so the result
does not depend on how the samples are batched. Conv inputs with ``auto_pad`` other
than NOTSET, ConvTranspose, and MatMuls whose constant is the first input get no layout (their
weights are rounded to nearest).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxslim.calibration.collect import Blocked
from onnxslim.graph import constant_value
from onnxslim.quantization.methods import rounded_grid
from onnxslim.quantization.plan import QuantPlan


@dataclass(frozen=True)
class InputLayout:
    """How the input vectors of one weight are cut from an activation tensor."""

    tensor: str
    groups: int
    width: int  # values per input vector, per group
    kernel: tuple[int, ...] = ()  # Conv only (2-D)
    strides: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()
    dilations: tuple[int, ...] = ()
    transposed: bool = False  # Gemm transA: the input is K x M

    def vectors(self, x: np.ndarray, per_sample: int) -> np.ndarray:
        """Input vectors of a batch, ``rows x groups x width`` (at most ``per_sample`` rows a sample)."""
        if self.kernel:
            return self._patches(x, per_sample)
        if self.transposed:
            x = x.T
        rows = x.reshape(x.shape[0], -1, self.width) if x.ndim >= 3 else x.reshape(-1, 1, self.width)
        rows = rows[:, _positions(rows.shape[1], per_sample)] if x.ndim >= 3 else rows
        return rows.reshape(-1, 1, self.width)

    def patch_sums(self, x: np.ndarray, blocked: Blocked | None = None) -> tuple[int, np.ndarray]:
        """(number of patches, sum of every patch, ``groups x width``) over all output positions.

        Kernel offset ``(i, j)`` reads input rows ``i*dh + sh*t - pad_top`` and columns
        ``j*dw + sw*u - pad_left`` (padding adds zeros): each row of each sample is summed over
        the columns that offset ``j`` reads (float32, in one pass over the tensor: see
        :func:`_strided_sums`), then those row sums over the rows offset ``i`` reads, in float64.
        No patch is built, and a sample's float32 row sums do not depend on the batch it is in.
        ``blocked``: ``x`` is in onnxruntime's NCHWc layout; its rows are summed as they lie.
        """
        n, c, h, w = x.shape
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.strides, self.dilations
        top, left, bottom, right = self.pads
        ho = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
        wo = (w + left + right - dw * (kw - 1) - 1) // sw + 1
        spans = [_taps(j * dw, sw, wo, left, w) for j in range(kw)]
        if blocked is None:
            by_column = _strided_sums(x, spans)  # kw x (n, c, h)
        else:  # (n, c // b, h, b) row sums, then channels in order (a small copy: 1/w of the tensor)
            c = blocked.channels
            by_column = [r.transpose(0, 1, 3, 2).reshape(n, -1, h)[:, :c] for r in _strided_sums(blocked.blocks(x), spans, axis=3)]
        sums = np.empty((c, kh, kw), np.float64)
        for j, rows in enumerate(by_column):
            plane = rows.sum(axis=0, dtype=np.float64)  # c, h
            for i in range(kh):
                sums[:, i, j] = plane[:, _taps(i * dh, sh, ho, top, h)].sum(axis=1)
        return n * ho * wo, sums.reshape(self.groups, self.width)

    def _patches(self, x: np.ndarray, per_sample: int) -> np.ndarray:
        n, c = x.shape[:2]
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.strides, self.dilations
        p = self.pads
        x = np.pad(x, ((0, 0), (0, 0), (p[0], p[2]), (p[1], p[3])))
        span = (dh * (kh - 1) + 1, dw * (kw - 1) + 1)
        view = np.lib.stride_tricks.sliding_window_view(x, span, axis=(2, 3))[:, :, ::sh, ::sw, ::dh, ::dw]
        ho, wo = view.shape[2:4]
        chosen = _positions(ho * wo, per_sample)
        if isinstance(chosen, slice):
            chosen = np.arange(ho * wo)
        picked = view[:, :, chosen // wo, chosen % wo]  # n, c, rows, kh, kw: only the chosen patches are copied
        return picked.transpose(0, 2, 1, 3, 4).reshape(-1, self.groups, self.width)


def _taps(offset: int, step: int, count: int, pad: int, size: int) -> slice:
    """The indices ``offset - pad + step * t`` (t < count) that fall inside ``[0, size)``, as a slice."""
    first = offset - pad
    lo = max(0, -(first // step))  # smallest t with first + step * t >= 0
    hi = min(count - 1, (size - 1 - first) // step)  # largest t with first + step * t < size
    if hi < lo:
        return slice(0, 0)
    return slice(first + step * lo, first + step * hi + 1, step)


def _row_sums(x: np.ndarray, axis: int) -> np.ndarray:
    """``x.sum(axis)`` in float32 through einsum, which reads contiguous rows several times faster
    than NumPy's pairwise sum (its sequential float32 sums err by ~1e-6 relative on these rows)."""
    dims = list(range(x.ndim))
    return np.einsum(x, dims, [d for d in dims if d != axis])


def _strided_sums(x: np.ndarray, spans: list[slice], axis: int = -1) -> list[np.ndarray]:
    """``x[..., span, ...].sum(axis)`` (float32; ``span`` on ``axis``) for each span, reading ``x``
    about once in all.

    A span with step ``s`` covers a run of one residue class mod ``s``. The class's total over the
    whole axis is computed once and shared (the last class of a step as the whole axis's total
    less the others); a span that covers most of its class is that total less the few indices
    left out at either end (padding cuts a kernel offset's columns short).
    """
    axis %= x.ndim
    size = x.shape[axis]
    totals: dict[tuple[int, int], np.ndarray] = {}

    def cut(span: slice) -> np.ndarray:
        return x[(slice(None),) * axis + (span,)]

    def total(residue: int, step: int) -> np.ndarray:
        if (residue, step) not in totals:
            if step == 1:
                totals[(0, 1)] = _row_sums(x, axis)
            elif residue == step - 1 and step <= size:
                others = [total(q, step) for q in range(step - 1)]
                totals[(residue, step)] = total(0, 1) - np.sum(others, axis=0)
            else:
                totals[(residue, step)] = _row_sums(cut(slice(residue, None, step)), axis)
        return totals[(residue, step)]

    out = []
    for span in spans:
        start, stop, step = span.indices(size)
        if stop <= start:
            out.append(np.zeros(x.shape[:axis] + x.shape[axis + 1:], np.float32))
            continue
        residue = start % step
        inside = len(range(start, stop, step))
        before = (start - residue) // step
        after = len(range(residue, size, step)) - before - inside
        if 2 * (before + after) >= inside:  # mostly outside the class's run: sum the span itself
            out.append(_row_sums(cut(span), axis))
            continue
        part = total(residue, step)
        if before:
            part = part - _row_sums(cut(slice(residue, start, step)), axis)
        if after:
            part = part - _row_sums(cut(slice(start + step * inside, None, step)), axis)
        out.append(part)
    return out


def _positions(total: int, cap: int) -> np.ndarray | slice:
    if cap <= 0 or total <= cap:
        return slice(None)
    return rounded_grid(0, total - 1, cap)


def input_layout(node: gs.Node, slot: int) -> InputLayout | None:
    """The layout of the activation that weight ``node.inputs[slot]`` multiplies; None if unsupported."""
    w = constant_value(node.inputs[slot])
    if w is None or w.ndim < 2:
        return None
    if node.op == "Conv" and slot == 1 and w.ndim == 4:
        a = node.attrs
        if a.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
            return None
        groups = int(a.get("group", 1))
        kernel = tuple(int(k) for k in w.shape[2:])
        return InputLayout(node.inputs[0].name, groups, int(np.prod(w.shape[1:])), kernel,
                           tuple(a.get("strides", (1, 1))), tuple(a.get("pads", (0, 0, 0, 0))),
                           tuple(a.get("dilations", (1, 1))))
    if node.op == "Gemm" and slot == 1 and w.ndim == 2:
        k = w.shape[1] if node.attrs.get("transB", 0) else w.shape[0]
        return InputLayout(node.inputs[0].name, 1, int(k), transposed=bool(node.attrs.get("transA", 0)))
    if node.op == "MatMul" and slot == 1 and w.ndim == 2:
        return InputLayout(node.inputs[0].name, 1, int(w.shape[0]))
    return None


class InputMoments:
    """Running count, sum and (when the width allows) sum of outer products of input vectors."""

    def __init__(self, layout: InputLayout, outer: bool):
        g, d = layout.groups, layout.width
        self.layout = layout
        self.count = 0
        self.total = np.zeros((g, d), np.float64)
        self.outer = np.zeros((g, d, d), np.float64) if outer else None

    def update(self, x: np.ndarray, per_sample: int, blocked: Blocked | None = None) -> None:
        """Add a batch of the layer's input (``blocked``: in onnxruntime's NCHWc layout)."""
        with np.errstate(over="ignore", invalid="ignore"):  # inf/NaN inputs: round_weight then skips the layer
            self._update(np.asarray(x, dtype=np.float32), per_sample, blocked)

    @property
    def reads_blocked(self) -> bool:
        """The mean alone of a Conv input: summed over every position as the tensor lies, NCHWc or
        not (patches and rows need the model's layout)."""
        return self.outer is None and bool(self.layout.kernel)

    def _update(self, x: np.ndarray, per_sample: int, blocked: Blocked | None = None) -> None:
        if self.reads_blocked:  # the mean alone: every position, no patches built
            count, total = self.layout.patch_sums(x, blocked)
            self.count += count
            self.total += total
            return
        if blocked is not None:
            x = blocked.to_nchw(x)
        v = self.layout.vectors(x, per_sample)  # rows, g, d
        if not len(v):
            return
        self.count += len(v)
        self.total += v.sum(axis=0, dtype=np.float64)
        if self.outer is not None:
            if v.shape[1] == 1:  # one group: a plain BLAS product
                rows = v[:, 0, :]
                self.outer[0] += rows.T @ rows
            else:
                t = np.ascontiguousarray(v.transpose(1, 2, 0))  # g, d, rows
                self.outer += np.matmul(t, np.ascontiguousarray(t.transpose(0, 2, 1)))

    @property
    def mean(self) -> np.ndarray:
        return self.total / max(self.count, 1)

    @property
    def second(self) -> np.ndarray | None:
        return None if self.outer is None else self.outer / max(self.count, 1)


def plan_layouts(graph: gs.Graph, plan: QuantPlan) -> dict[tuple[str, int], InputLayout]:
    """The input layout of every planned weight that has one."""
    nodes = {n.name: n for n in graph.nodes}
    out = {}
    for spec in plan.weights:
        layout = input_layout(nodes[spec.node], spec.slot)
        if layout is not None:
            out[(spec.node, spec.slot)] = layout
    return out


class MomentObserver:
    """Accumulators for a set of layouts, fed tensor by tensor (``observe(name, array)``).

    Layouts that cut the same tensor the same way share one accumulator. insert_qdq feeds it from
    the calibration runs (a :class:`~onnxslim.quantization.calibrate.Rider`).
    """

    def __init__(self, layouts: dict[tuple[str, int], InputLayout], max_width: int, rows_per_sample: int = 256,
                 samples: int = 0):
        self.layouts = layouts
        self.rows_per_sample = rows_per_sample
        self.samples = samples
        self.shared: dict[InputLayout, InputMoments] = {}
        for layout in layouts.values():
            if layout not in self.shared:
                self.shared[layout] = InputMoments(layout, outer=layout.width <= max_width)
        self.by_tensor: dict[str, list[InputMoments]] = {}
        for acc in self.shared.values():
            self.by_tensor.setdefault(acc.layout.tensor, []).append(acc)

    @property
    def tensors(self) -> list[str]:
        return list(self.by_tensor)

    @property
    def batch_axes(self) -> dict[str, int]:
        """Tensors whose samples lie on axis 1: a Gemm(transA=1) input is K x M, its rows are columns."""
        return {name: 1 for name, accs in self.by_tensor.items() if any(a.layout.transposed for a in accs)}

    def observe(self, name: str, value: np.ndarray, blocked: Blocked | None = None) -> None:
        """A batch of ``name`` (``blocked``: in onnxruntime's NCHWc layout)."""
        accs = self.by_tensor.get(name, ())
        if blocked is not None and not all(a.reads_blocked for a in accs):
            value, blocked = blocked.to_nchw(value), None  # patches need the model's layout: unblock once
        for acc in accs:
            acc.update(value, self._rows(acc.layout.width), blocked)

    def _rows(self, width: int) -> int:
        if self.samples <= 0:
            return self.rows_per_sample
        return min(self.rows_per_sample, max(128, -(-16 * width // self.samples)))

    def moments(self) -> dict[tuple[str, int], InputMoments]:
        return {key: self.shared[layout] for key, layout in self.layouts.items()}
