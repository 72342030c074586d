"""Least-squares reconstruction of the layer after a pruned tensor (He et al. 2017, step 2).

A dense consumer (Conv with group 1, Gemm, MatMul with a constant weight) computes
``Y = X~ W~^T`` where ``X~`` are its input patches with a trailing 1 and ``W~ = [W, b]``. When
channels of ``X`` are removed, the new weights over the kept columns ``k`` minimise
``|| X~ W~^T - X~_k V^T ||^2`` on calibration data::

    V^T = (G_kk + lambda I)^-1  G_k,:  W~^T          with  G = X~^T X~

so only the Gram matrix ``G`` of the *original* input is needed: it is accumulated streaming,
one batch at a time, from the same ActivationCollector session that measures importance (conv
patches are sampled, at most ``positions`` per batch). Batches alternate between a fitting and
a validation Gram; the ridge ``lambda`` (relative to the mean diagonal) is chosen on the
validation Gram, where the error of any ``V`` is a closed form in ``G``, and the plain slice
``W~[:, k]`` competes too: a layer is only refit when that measurably lowers held-out error.
The bias column absorbs the mean contribution of the removed channels (bias correction).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from onnxslim.graph import (
    NameScope,
    Reject,
    constant_value,
    make_constant,
    make_node,
    optional_constant,
    set_input,
)

RIDGES = (1e-3, 1e-2, 1e-1)


@dataclass
class Layer:
    """A dense consumer: its original weights as a [out, features] matrix plus bias."""

    node: gs.Node
    weight: np.ndarray  # [out, D] (D = in * prod(kernel) for Conv)
    bias: np.ndarray  # [out]
    kernel: tuple[int, ...] = ()
    fit: np.ndarray | None = None  # Grams [D + 1, D + 1]
    val: np.ndarray | None = None
    batches: int = 0
    rows: int = 0
    result: dict = field(default_factory=dict)


def dense_consumer(node: gs.Node) -> Layer | None:
    """A Layer for Conv(group 1, 2-D) / Gemm / MatMul with constant weights, else None."""
    w = constant_value(node.inputs[1]) if len(node.inputs) > 1 else None
    if w is None or np.asarray(w).dtype.kind != "f":
        return None
    w = np.asarray(w, dtype=np.float64)
    try:
        b = optional_constant(node, 2, "bias")
    except Reject:  # a bias computed at run time
        return None
    if node.op == "Conv":
        if int(node.attrs.get("group", 1)) != 1 or w.ndim != 4:
            return None
        bias = np.zeros(w.shape[0]) if b is None else np.asarray(b, dtype=np.float64)
        return Layer(node, w.reshape(w.shape[0], -1), bias, tuple(w.shape[2:]))
    if node.op == "Gemm":
        if node.attrs.get("transA", 0):
            return None
        alpha, beta = float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("beta", 1.0))
        mat = (w if node.attrs.get("transB", 0) else w.T) * alpha
        bias = np.broadcast_to(np.asarray(b, dtype=np.float64) * beta, (mat.shape[0],)) if b is not None and np.ndim(b) <= 1 else None
        if b is not None and bias is None:
            return None
        return Layer(node, mat, np.zeros(mat.shape[0]) if bias is None else bias.copy())
    if node.op == "MatMul" and w.ndim == 2:
        return Layer(node, w.T.copy(), np.zeros(w.shape[1]))
    return None


def _conv_pads(node: gs.Node, x_shape: tuple[int, ...], kernel: tuple[int, ...]) -> tuple[list[int], list[int], list[int]] | None:
    strides = list(node.attrs.get("strides", [1, 1]))
    dilations = list(node.attrs.get("dilations", [1, 1]))
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("NOTSET", "VALID"):
        pads = list(node.attrs.get("pads", [0, 0, 0, 0])) if auto_pad == "NOTSET" else [0, 0, 0, 0]
        return pads, strides, dilations
    pads = [0, 0, 0, 0]
    for i in range(2):
        size, eff = x_shape[2 + i], (kernel[i] - 1) * dilations[i] + 1
        out = -(-size // strides[i])
        total = max(0, (out - 1) * strides[i] + eff - size)
        small, large = total // 2, total - total // 2
        pads[i], pads[i + 2] = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
    return pads, strides, dilations


def patches(layer: Layer, x: np.ndarray, positions: int, rng: np.random.Generator) -> np.ndarray | None:
    """Rows of the layer's input features, [n, D], at most ``positions`` rows (sampled)."""
    x = np.asarray(x, dtype=np.float32)
    if layer.node.op != "Conv":
        rows = x.reshape(-1, x.shape[-1])
    else:
        if x.ndim != 4:
            return None
        pads, strides, dil = _conv_pads(layer.node, x.shape, layer.kernel)
        kh, kw = layer.kernel
        if (kh, kw) == (1, 1) and not any(pads):
            rows = x[:, :, ::strides[0], ::strides[1]].transpose(0, 2, 3, 1).reshape(-1, x.shape[1])
        else:
            xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
            eh, ew = (kh - 1) * dil[0] + 1, (kw - 1) * dil[1] + 1
            win = np.lib.stride_tricks.sliding_window_view(xp, (eh, ew), axis=(2, 3))
            win = win[:, :, ::strides[0], ::strides[1], ::dil[0], ::dil[1]]  # [N, C, Ho, Wo, kh, kw]
            n, _, ho, wo = win.shape[:4]
            pick = np.arange(n * ho * wo)
            if pick.size > positions:
                pick = np.sort(rng.choice(pick.size, positions, replace=False))
            ns, hs, ws = np.unravel_index(pick, (n, ho, wo))
            return np.ascontiguousarray(win[ns, :, hs, ws]).reshape(pick.size, -1)
    if rows.shape[0] > positions:
        rows = rows[np.sort(rng.choice(rows.shape[0], positions, replace=False))]
    return rows


class GramCollector:
    """An ActivationCollector observer accumulating fit/validation Grams per consumer."""

    def __init__(self, layers: dict[str, list[Layer]], positions: int = 2048, seed: int = 0):
        self.layers = layers  # input tensor name -> consumers
        self.positions = positions
        self.rng = np.random.default_rng(seed)

    def observe(self, name: str, value: np.ndarray) -> None:
        for layer in self.layers.get(name, ()):
            rows = patches(layer, value, self.positions, self.rng)
            if rows is None or rows.shape[1] != layer.weight.shape[1]:
                continue
            rows = np.concatenate([rows, np.ones((rows.shape[0], 1), np.float32)], axis=1)
            with np.errstate(over="ignore", invalid="ignore"):  # huge activations: refit() skips the layer
                gram = (rows.T @ rows).astype(np.float64)
            target = "fit" if layer.batches % 2 == 0 else "val"
            current = getattr(layer, target)
            setattr(layer, target, gram if current is None else current + gram)
            layer.batches += 1
            layer.rows += rows.shape[0]


class _LeastSquares:
    """Ridge solutions on the fitting Gram, their error on the validation Gram, in closed form.

    With ``Vt = V^T`` ([kept + 1, out]): ``error = a - 2 <Vt, G_k,: W~^T> + <G_kk Vt, Vt>``.
    """

    def __init__(self, fit: np.ndarray, val: np.ndarray, full: np.ndarray, cols: np.ndarray):
        self.fit_kk, self.fit_rhs = fit[np.ix_(cols, cols)], fit[cols] @ full.T
        self.val_kk, self.val_rhs = val[np.ix_(cols, cols)], val[cols] @ full.T
        self.val_ref = max(float(np.sum((full @ val) * full)), 1e-30)

    @staticmethod
    def solve(gkk: np.ndarray, rhs: np.ndarray, ridge: float) -> np.ndarray | None:
        """``(G_kk + ridge * mean(diag) I)^-1 rhs``; None when it cannot be solved (or is not finite)."""
        scale = float(np.mean(np.diag(gkk))) or 1.0
        # Divided by the scale (the solution is the same), so that single precision cannot overflow.
        a = (gkk / scale).astype(np.float32)  # single precision halves the cost; the ridge keeps it well conditioned
        a[np.diag_indices_from(a)] += np.float32(ridge)
        try:
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                lower = np.linalg.cholesky(a)
                y = np.linalg.solve(lower, (rhs / scale).astype(np.float32))
                out = np.linalg.solve(lower.T, y).astype(np.float64)
        except np.linalg.LinAlgError:
            return None
        return out if np.isfinite(out).all() else None

    def val_error(self, vt: np.ndarray) -> float:
        """Held-out error relative to the held-out energy of the original output."""
        err = self.val_ref - 2 * np.sum(vt * self.val_rhs) + np.sum((self.val_kk @ vt) * vt)
        return float(err) / self.val_ref


def refit(layer: Layer, in_keep: np.ndarray, out_keep: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """New (weight [out_kept, D_kept], bias) when reconstruction beats plain slicing on held-out data."""
    if layer.fit is None or layer.val is None:
        layer.result = {"reconstruction": "skipped: fewer than two calibration batches"}
        return None
    if not (np.isfinite(layer.fit).all() and np.isfinite(layer.val).all()):
        layer.result = {"reconstruction": "skipped: calibration activations overflow (non-finite statistics)"}
        return None
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            return _refit(layer, in_keep, out_keep)
    except np.linalg.LinAlgError as exc:
        first = (str(exc).strip().splitlines() or ["LinAlgError"])[0]
        layer.result = {"reconstruction": f"skipped: least squares failed ({first})"}
        return None


def _refit(layer: Layer, in_keep: np.ndarray, out_keep: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    per = layer.weight.shape[1] // in_keep.size
    feat = (np.flatnonzero(in_keep)[:, None] * per + np.arange(per)[None, :]).ravel()
    cols = np.concatenate([feat, [layer.weight.shape[1]]])
    full = np.concatenate([layer.weight, layer.bias[:, None]], axis=1)[out_keep]
    ls = _LeastSquares(layer.fit, layer.val, full, cols)
    base = ls.val_error(full[:, cols].T)
    best, best_err = None, base
    if not np.isfinite(base):
        layer.result = {"reconstruction": "skipped: calibration activations overflow (non-finite statistics)"}
        return None
    for ridge in RIDGES:
        vt = ls.solve(ls.fit_kk, ls.fit_rhs, ridge)
        err = ls.val_error(vt) if vt is not None else float("inf")
        if np.isfinite(err) and err < best_err:
            best, best_err = ridge, err
    layer.result = {"recon_err_before": round(base, 6), "recon_err_after": round(best_err, 6), "ridge": best, "rows": layer.rows}
    if best is None:
        return None
    vt = ls.solve(ls.fit_kk + ls.val_kk, ls.fit_rhs + ls.val_rhs, best)
    if vt is None:
        return None
    return vt[:-1].T, vt[-1]


def write_back(graph: gs.Graph, layer: Layer, weight: np.ndarray, bias: np.ndarray, scope: NameScope) -> None:
    """Store refit weights (already restricted to kept inputs/outputs) into the pruned node."""
    node = layer.node
    old_w = np.asarray(constant_value(node.inputs[1]))
    dtype = old_w.dtype
    if node.op == "Conv":
        w = weight.reshape(old_w.shape)
        node.inputs[1] = make_constant(scope, f"{node.name}_refit_w", w.astype(dtype))
        set_input(node, 2, make_constant(scope, f"{node.name}_refit_b", bias.astype(dtype)))
        return
    if node.op == "Gemm":
        alpha = float(node.attrs.get("alpha", 1.0))
        mat = weight / alpha
        node.inputs[1] = make_constant(scope, f"{node.name}_refit_w", (mat if node.attrs.get("transB", 0) else mat.T).astype(dtype))
        node.attrs["beta"] = 1.0
        set_input(node, 2, make_constant(scope, f"{node.name}_refit_c", bias.astype(dtype)))
        return
    node.inputs[1] = make_constant(scope, f"{node.name}_refit_w", weight.T.astype(dtype))
    if not np.any(bias):
        return
    y = node.outputs[0]
    readers = list(y.outputs)
    if len(readers) == 1 and readers[0].op == "Add" and any(
            np.ndim(constant_value(t)) == 1 and np.size(constant_value(t)) == bias.size for t in readers[0].inputs if t is not y):
        add = readers[0]
        i = next(i for i, t in enumerate(add.inputs) if t is not y)
        add.inputs[i] = make_constant(scope, f"{add.name}_refit_b", (np.asarray(constant_value(add.inputs[i])) + bias).astype(dtype))
        return
    out = gs.Variable(scope.fresh(f"{y.name}_refit"), dtype=y.dtype, shape=y.shape)
    node.outputs[0] = out
    make_node(graph, scope, "Add", [out, make_constant(scope, f"{node.name}_refit_b", bias.astype(dtype))],
              name=f"{node.name}_refit_bias", outputs=[y])
