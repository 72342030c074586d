"""Low-rank factorization of one weight matrix, plain or whitened by activation statistics.

A layer computes ``Y = X W + b`` with ``X`` the activation rows (n x K) and ``W`` (K x N).

* Plain SVD: ``W = U S V^T``; keeping r components minimises ``||W - W_r||_F``.
* Whitened (data-aware, as in ASVD/SVD-LLM): with ``C = X^T X / n + lambda I = L L^T`` (Cholesky,
  ``lambda = damp * mean(diag(X^T X / n))``), ``||X E||_F = ||L^T E||_F`` up to the damping, so the
  SVD of ``L^T W = U S V^T`` truncated to r gives ``W_r = L^-T U_r S_r V_r^T``, which minimises
  the error of the layer's *output* on the calibration activations.

Both are stored as ``W = sum_i s_i a_i v_i^T`` with ``a_i = u_i`` (plain) or ``L^-T u_i``
(whitened) and orthonormal ``v_i``. Because the ``v_i`` are orthonormal, the output error of the
rank-r truncation on any activations with second moment ``G = sum x x^T`` is exactly
``||X (W - W_r)||^2 = sum_{i>r} s_i^2 a_i^T G a_i``, so one decomposition prices every rank on
both the calibration and the held-out statistics without running the model again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)


class Moments:
    """Streaming statistics of activation rows (length K): ``sum x x^T``, ``sum x`` and the count."""

    def __init__(self, k: int):
        self.gram = np.zeros((k, k), dtype=np.float64)
        self.total = np.zeros(k, dtype=np.float64)
        self.count = 0

    def add(self, rows: np.ndarray) -> None:
        """Accumulate a block of rows (n x K); products in float32 (float64 for float64 data)."""
        work = np.float64 if rows.dtype == np.float64 else np.float32
        rows = np.ascontiguousarray(rows, dtype=work)
        self.gram += rows.T @ rows
        self.total += rows.sum(axis=0, dtype=np.float64)
        self.count += rows.shape[0]


@dataclass
class ErrorProfile:
    """Squared output error of every truncation, against the squared output norm."""

    tail: np.ndarray  # tail[r] = ||X (W - W_r)||^2, r = 0..m (tail[m] = 0)
    reference: float  # ||X W + b||^2

    def relative(self, rank: int) -> float:
        if self.reference <= 0:
            return 0.0 if self.tail[rank] <= 0 else float("inf")
        return float(np.sqrt(max(self.tail[rank], 0.0) / self.reference))

    def smallest_rank_within(self, budget: float) -> int:
        """The smallest rank >= 1 whose relative error is at most ``budget``."""
        limit = (budget**2) * self.reference
        ok = np.nonzero(self.tail[1:] <= limit)[0]
        return int(ok[0]) + 1 if ok.size else len(self.tail) - 1


@dataclass
class Decomposition:
    """``W = sum_i s_i a_i v_i^T`` (see the module docstring) with error profiles."""

    left: np.ndarray  # K x m, columns a_i
    s: np.ndarray  # m, descending
    right: np.ndarray  # m x N, rows v_i^T (orthonormal)
    whitened: bool
    calib: ErrorProfile | None = None
    holdout: ErrorProfile | None = None

    @property
    def full_rank(self) -> int:
        return int(self.s.size)

    def energy(self) -> np.ndarray:
        """energy()[r-1] = fraction of sum s_i^2 held by the first r components."""
        sq = self.s.astype(np.float64) ** 2
        total = float(sq.sum())
        if total <= 0:
            return np.ones_like(sq)
        return np.cumsum(sq) / total

    def weight_profile(self) -> ErrorProfile:
        """Error profile in weight space (isotropic inputs); used when there is no data."""
        sq = self.s.astype(np.float64) ** 2
        tail = np.concatenate([np.cumsum(sq[::-1])[::-1], [0.0]])
        return ErrorProfile(tail, float(tail[0]))

    def factors(self, rank: int) -> tuple[np.ndarray, np.ndarray]:
        """``(A, B)`` with ``A @ B = W_r``: A is K x r, B is r x N, each component balanced so
        that column i of A and row i of B have the same norm (friendlier to later quantization)."""
        left, right, s = self.left[:, :rank], self.right[:rank], self.s[:rank]
        norms = np.linalg.norm(left, axis=0)
        norms[norms == 0] = 1.0
        return left * np.sqrt(s / norms), right * np.sqrt(s * norms)[:, None]


def whitening(gram: np.ndarray, count: int, damp: float) -> np.ndarray:
    """Lower-triangular L with ``L L^T = gram / count + lambda I`` (damping raised until it is positive definite)."""
    k = gram.shape[0]
    cov = gram / max(count, 1)
    scale = float(np.mean(np.diag(cov)))
    scale = scale if scale > 0 else 1.0
    lam = max(damp, 1e-8) * scale
    for _ in range(8):
        try:
            return np.linalg.cholesky(cov + lam * np.eye(k))
        except np.linalg.LinAlgError:
            lam *= 10.0
    # Fall back to an eigendecomposition, clipping eigenvalues from below.
    w, q = np.linalg.eigh(cov)
    w = np.maximum(w, 0.0) + lam
    _, r = np.linalg.qr((q * np.sqrt(w)).T)  # cov + lam I = R^T R
    logger.debug("whitening: Cholesky failed, used an eigendecomposition (lambda=%g)", lam)
    return r.T * np.sign(np.diag(r))[None, :]


def profile(dec_left: np.ndarray, s: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, moments: Moments) -> ErrorProfile:
    """Error of every truncation on activations with these moments (see the module docstring)."""
    g = np.einsum("ki,ki->i", moments.gram @ dec_left, dec_left)
    per = (s.astype(np.float64) ** 2) * np.maximum(g, 0.0)
    tail = np.concatenate([np.cumsum(per[::-1])[::-1], [0.0]])
    reference = float(tail[0])
    if bias is not None:
        bias = bias.astype(np.float64)
        reference += 2.0 * float(bias @ (weight.T @ moments.total)) + moments.count * float(bias @ bias)
    return ErrorProfile(tail, max(reference, 0.0))


def decompose(
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    calib: Moments | None = None,
    holdout: Moments | None = None,
    whiten: bool = False,
    damp: float = 0.01,
) -> Decomposition:
    """Factor ``weight`` (K x N). ``whiten`` needs ``calib`` moments."""
    w = np.asarray(weight, dtype=np.float64)
    if whiten:
        if calib is None or calib.count == 0:
            raise ValueError("whitened SVD needs calibration moments")
        chol = whitening(calib.gram, calib.count, damp)
        u, s, vt = np.linalg.svd(chol.T @ w, full_matrices=False)
        left = np.linalg.solve(chol.T, u)  # L^-T u_i
    else:
        u, s, vt = np.linalg.svd(w, full_matrices=False)
        left = u
    dec = Decomposition(left, s, vt, whiten)
    if calib is not None and calib.count:
        dec.calib = profile(left, s, w, bias, calib)
    if holdout is not None and holdout.count:
        dec.holdout = profile(left, s, w, bias, holdout)
    return dec


def choose_rank(rule: str, value: float, dec: Decomposition, k: int, n: int) -> int:
    """The rank a rule asks for, in 1..full rank."""
    m = dec.full_rank
    if rule == "energy":
        wanted = int(np.searchsorted(dec.energy(), value - 1e-12, side="left")) + 1
    elif rule == "rank":
        wanted = int(value)
    elif rule == "ratio":
        wanted = int(np.floor(value * k * n / (k + n)))
    elif rule == "error":
        wanted = (dec.calib or dec.weight_profile()).smallest_rank_within(value)
    else:
        raise ValueError(f"unknown rank rule {rule!r}")
    return max(1, min(wanted, m))
