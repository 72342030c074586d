"""Data-aware int8 weight rounding and bias correction, from the input moments of each layer.

Round-to-nearest makes each weight as close as it can be, but a layer's output error is
``e = (Q - W) x``, and what the next layer sees is its mean and mean square over real inputs
(:mod:`onnxslim.quantization.moments`: ``mu = E[x]``, ``H = E[x x^T]``):

* **Bias correction.** ``E[e] = (Q - W) mu`` is the same shift for every input; subtracting it
  from the layer's bias removes it: ``b' = b - (Q - W) mu``. The error left is
  ``(Q - W)(x - mu)``, whose mean square is ``tr((Q - W) S (Q - W)^T)`` with the covariance
  ``S = H - mu mu^T``.
* **GPTQ rounding** (optimal brain quantization, Frantar et al. 2022) minimises that mean square
  one row at a time: columns are quantized in order of decreasing ``S_jj``, and each column's
  rounding error is spread over the columns not yet quantized by the exact least-squares update
  ``w_F -= (w_j - q_j) / U_jj * U_j,F`` where ``U`` is the upper Cholesky factor of ``S^-1``
  (with ``damp`` times the mean diagonal added to ``S``). Layers without a bias to correct use
  ``H`` instead of ``S``, so the mean error is minimised too.

The per-channel scales stay those of round-to-nearest (``max |W_c| / 127``); values that the
updates push past the grid are clamped to +-127. Weights: Conv (groups: one ``S`` per group),
Gemm, and MatMul with a constant 2-D second input.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxslim.graph import constant_value, optional_input
from onnxslim.quantization.moments import InputMoments

logger = logging.getLogger(__name__)

QMAX = 127
BLOCK = 128  # columns per lazy-update block
MIN_ROWS_PER_COLUMN = 4  # gptq needs this many input vectors per weight column, else nearest


@dataclass
class RoundedWeight:
    q: np.ndarray  # int8, the weight's layout
    scale: np.ndarray  # float32, per channel (or scalar)
    bias_shift: np.ndarray | None  # subtract from the bias (float32, one per output channel)
    gptq: bool  # codes from GPTQ (else nearest)


def gptq(w: np.ndarray, second: np.ndarray, scale: np.ndarray, damp: float = 0.01) -> np.ndarray:
    """Integer codes of ``w`` (``groups x rows x width``) minimising ``tr((Q - W) M (Q - W)^T)`` per group.

    ``second``: ``groups x width x width`` (positive semi-definite); ``scale``: ``groups x rows``.
    """
    g, r, d = w.shape
    w = w.astype(np.float64).copy()
    m = second.astype(np.float64).copy()
    diag = np.einsum("gii->gi", m).copy()
    dead = diag <= 0
    live_mean = np.where(dead, 0.0, diag).sum(axis=1) / np.maximum((~dead).sum(axis=1), 1)
    idx = np.arange(d)
    m[:, idx, idx] += damp * np.maximum(live_mean, 1e-12)[:, None] + dead  # dead inputs: no coupling, nearest
    order = np.argsort(-diag, axis=1, kind="stable")
    m = np.take_along_axis(np.take_along_axis(m, order[:, :, None], axis=1), order[:, None, :], axis=2)
    w = np.take_along_axis(w, order[:, None, :], axis=2)
    u = _upper_inverse_cholesky(m)
    s = scale.astype(np.float64)
    q = np.empty_like(w)
    for start in range(0, d, BLOCK):
        stop = min(start + BLOCK, d)
        block = w[:, :, start:stop].copy()
        err = np.empty_like(block)
        ub = u[:, start:stop, start:stop]
        for i in range(stop - start):
            col = block[:, :, i]
            code = np.clip(np.round(col / s), -QMAX, QMAX)
            q[:, :, start + i] = code
            e = (col - code * s) / ub[:, i, i][:, None]
            block[:, :, i:] -= e[:, :, None] * ub[:, None, i, i:]
            err[:, :, i] = e
        if stop < d:
            w[:, :, stop:] -= np.matmul(err, u[:, start:stop, stop:])
    out = np.empty_like(q)
    np.put_along_axis(out, np.broadcast_to(order[:, None, :], q.shape), q, axis=2)
    return out.astype(np.int8)


def _upper_inverse_cholesky(m: np.ndarray) -> np.ndarray:
    """``U`` upper triangular with ``U^T U = m^-1`` (batched); more damping until ``m`` is definite."""
    eye = np.eye(m.shape[-1])
    extra = 0.0
    for _ in range(8):
        try:
            lower = np.linalg.cholesky(m + extra * eye)
            inv_lower = np.linalg.solve(lower, np.broadcast_to(eye, m.shape))
            inverse = np.matmul(inv_lower.transpose(0, 2, 1), inv_lower)
            return np.linalg.cholesky(inverse).transpose(0, 2, 1)
        except np.linalg.LinAlgError:
            extra = max(extra * 10, 1e-6 * float(np.abs(np.einsum("gii->gi", m)).mean() or 1.0))
    raise np.linalg.LinAlgError("input second moment is not positive definite even with damping")


# --------------------------------------------------------------------------------------------
# Per layer


def bias_site(node: gs.Node, channels: int) -> tuple[gs.Node, int] | None:
    """Where a float constant bias of ``node``'s output lives, one value per output channel, or None.

    Conv/Gemm: their third input. MatMul: the constant input of the Add that alone reads its output
    (a linear layer as exported: ``MatMul -> Add(bias)``).
    """
    if node.op in ("Conv", "Gemm"):
        if optional_input(node, 2) is None:
            return None
        if node.op == "Gemm" and (node.attrs.get("alpha", 1.0) != 1.0 or node.attrs.get("beta", 1.0) != 1.0):
            return None
        site = (node, 2)
    elif node.op == "MatMul":
        out = node.outputs[0]
        readers = out.outputs
        if len(readers) != 1 or readers[0].op != "Add" or (readers[0].domain or "ai.onnx") != "ai.onnx":
            return None
        add = readers[0]
        if len(add.inputs) != 2:
            return None
        slot = 1 if add.inputs[0] is out else 0
        if add.inputs[1 - slot] is not out:
            return None
        site = (add, slot)
    else:
        return None
    b = constant_value(site[0].inputs[site[1]])
    # One value per channel along the last axis, broadcasting nothing wider than the output (a 1-D bias).
    if b is None or b.dtype != np.float32 or b.shape != (channels,):
        return None
    return site


def _as_rows(node: gs.Node, w: np.ndarray, groups: int) -> tuple[np.ndarray, callable]:
    """``groups x rows x width`` view of the weight, and the inverse mapping for integer codes."""
    if node.op == "Conv":
        shape = w.shape
        return w.reshape(groups, shape[0] // groups, -1), lambda q: q.reshape(shape)
    if node.op == "Gemm" and node.attrs.get("transB", 0):
        return w[None], lambda q: q[0]
    return w.T[None], lambda q: np.ascontiguousarray(q[0].T)  # Gemm (no transB), MatMul: K x N


def round_weight(node: gs.Node, w: np.ndarray, scale: np.ndarray, axis: int | None, moments: InputMoments | None,
                 use_gptq: bool, bias_correction: bool, damp: float = 0.01) -> RoundedWeight | None:
    """GPTQ codes and/or a bias shift for one weight; None when neither applies (round to nearest)."""
    if moments is None or moments.count == 0:
        return None
    if not np.isfinite(moments.mean).all() or (moments.second is not None and not np.isfinite(moments.second).all()):
        # inputs that overflowed to inf/NaN on some sample: no data-aware rounding beats nearest then
        logger.warning("insert_qdq: %s: its calibration inputs hold inf/NaN; weights rounded to nearest, bias not corrected",
                       node.name)
        return None
    groups = moments.layout.groups
    rows, back = _as_rows(node, np.asarray(w, np.float32), groups)
    g, r, d = rows.shape
    if d != moments.layout.width or g != groups:
        return None
    per_row = np.broadcast_to(np.asarray(scale, np.float64).reshape(-1) if axis is not None else np.asarray(scale, np.float64),
                              (g * r,)).reshape(g, r)
    mean = moments.mean  # g, d
    correct = bias_correction and bias_site(node, g * r) is not None
    second = moments.second
    # Fewer input vectors than a few per column (e.g. squeeze-excite convs: one a sample) fit noise.
    by_gptq = use_gptq and second is not None and moments.count >= MIN_ROWS_PER_COLUMN * d
    if by_gptq:
        if correct:
            second = second - mean[:, :, None] * mean[:, None, :]
        codes = gptq(rows, second, per_row, damp)
    elif correct:
        codes = np.clip(np.round(rows / per_row[:, :, None]), -QMAX, QMAX).astype(np.int8)
    else:
        return None
    shift = None
    if correct:
        delta = codes.astype(np.float64) * per_row[:, :, None] - rows.astype(np.float64)
        shift = np.einsum("grd,gd->gr", delta, mean).reshape(-1).astype(np.float32)
    return RoundedWeight(back(codes), np.asarray(scale, np.float32), shift, by_gptq)


class WeightRounder:
    """Rounds planned weights for the emitter; results cached by layer (plans built for fallback reuse them)."""

    def __init__(self, moments: dict[tuple[str, int], InputMoments], use_gptq: bool, bias_correction: bool,
                 damp: float = 0.01):
        self.moments = moments
        self.use_gptq = use_gptq
        self.bias_correction = bias_correction
        self.damp = damp
        self.seconds = 0.0  # spent rounding (GPTQ solves)
        self._cache: dict[tuple[str, int, int | None], RoundedWeight | None] = {}

    def __call__(self, node: gs.Node, slot: int, w: np.ndarray, scale: np.ndarray, axis: int | None) -> RoundedWeight | None:
        key = (node.name, slot, axis)
        if key not in self._cache:
            start = time.perf_counter()
            self._cache[key] = round_weight(node, w, scale, axis, self.moments.get((node.name, slot)),
                                            self.use_gptq, self.bias_correction, self.damp)
            self.seconds += time.perf_counter() - start
        return self._cache[key]
