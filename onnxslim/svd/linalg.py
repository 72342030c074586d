"""Low-rank factorization of one weight matrix, plain or whitened by activation statistics.

A layer computes ``Y = X W + b`` with ``X`` the activation rows (n x K) and ``W`` (K x N).

* Plain SVD: keeping r singular components of ``W`` minimises ``||W - W_r||_F``.
* Whitened (data-aware, as in ASVD/SVD-LLM): with ``C = X^T X / n + lambda I = L L^T``
  (``lambda = damp * mean(diag(X^T X / n))``), ``||X E||_F^2 ~ ||L^T E||_F^2``, so truncating the
  SVD of ``M = L^T W`` and mapping back, ``W_r = L^-T [M]_r``, minimises the error of the layer's
  *output* on the calibration activations.

The SVD of ``M`` comes from the eigendecomposition of its smaller Gram matrix (fast, and no
LAPACK SVD, which crawls on a busy machine): for ``N <= K``, ``M^T M = W^T C W = V S^2 V^T`` and
``W_r = W V_r V_r^T`` (no Cholesky needed); for ``N > K``, ``M M^T = U S^2 U^T`` and
``W_r = L^-T U_r U_r^T L^T W``. Either way ``W = sum_i a_i b_i^T`` with mutually orthogonal
``b_i``, truncated by dropping the last terms, and because the ``b_i`` are orthogonal the output
error on any activations with second moment ``G = sum x x^T`` is exactly
``||X (W - W_r)||^2 = sum_{i>r} ||b_i||^2 a_i^T G a_i``: one decomposition prices every rank on
both calibration and held-out statistics without running the model again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
        with np.errstate(over="ignore", invalid="ignore"):  # huge values: see finite()
            self.gram += rows.T @ rows
            self.total += rows.sum(axis=0, dtype=np.float64)
        self.count += rows.shape[0]

    def finite(self) -> bool:
        """False when the activations overflowed (huge calibration values): the moments are unusable."""
        return bool(np.isfinite(self.gram).all() and np.isfinite(self.total).all())


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
    """``W = left @ right = sum_i a_i b_i^T`` by descending ``s_i`` (see the module docstring)."""

    left: np.ndarray  # K x m, columns a_i
    right: np.ndarray  # m x N, rows b_i^T, mutually orthogonal
    s: np.ndarray  # m singular values of W (plain) or of L^T W (whitened), descending
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
        a, b = self.left[:, :rank], self.right[:rank]
        norm_a, norm_b = np.linalg.norm(a, axis=0), np.linalg.norm(b, axis=1)
        scale = np.ones(rank)
        ok = (norm_a > 0) & (norm_b > 0)
        scale[ok] = np.sqrt(norm_b[ok] / norm_a[ok])
        return a * scale, b / scale[:, None]


def damped_covariance(moments: Moments, damp: float) -> np.ndarray:
    """``X^T X / n + lambda I`` with ``lambda = damp * mean(diag(X^T X / n))`` (at least a tiny floor)."""
    cov = moments.gram / max(moments.count, 1)
    scale = float(np.mean(np.diag(cov)))
    lam = max(damp, 1e-8) * (scale if scale > 0 else 1.0)
    return cov + lam * np.eye(cov.shape[0])


def cholesky(cov: np.ndarray) -> np.ndarray:
    """Lower-triangular L with L L^T = cov, raising the diagonal until it is positive definite."""
    lam = 1e-10 * max(float(np.mean(np.diag(cov))), 1e-30)
    for _ in range(12):
        try:
            return np.linalg.cholesky(cov)
        except np.linalg.LinAlgError:
            cov = cov + lam * np.eye(cov.shape[0])
            lam *= 100.0
    raise np.linalg.LinAlgError("activation covariance is not positive definite even after damping")


def _descending_eigh(gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    values, vectors = np.linalg.eigh((gram + gram.T) / 2)
    return np.sqrt(np.clip(values[::-1], 0.0, None)), vectors[:, ::-1]


def profile(left: np.ndarray, right: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, moments: Moments) -> ErrorProfile:
    """Error of every truncation on activations with these moments (see the module docstring)."""
    g = np.einsum("ki,ki->i", moments.gram @ left, left)
    per = np.einsum("ij,ij->i", right, right) * np.maximum(g, 0.0)
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
    """Factor ``weight`` (K x N). ``whiten`` needs ``calib`` moments.

    Raises ``np.linalg.LinAlgError`` (one line) when the factors are not finite, e.g. statistics
    of huge activations; the caller falls back to plain SVD or leaves the layer alone.
    """
    w = np.asarray(weight, dtype=np.float64)
    k, n = w.shape
    if whiten and (calib is None or calib.count == 0):
        raise ValueError("whitened SVD needs calibration moments")
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        cov = damped_covariance(calib, damp) if whiten else None
        if whiten and not np.isfinite(cov).all():
            raise np.linalg.LinAlgError("activation statistics are not finite")
        if n <= k:  # right singular vectors of M from M^T M = W^T C W (N x N)
            s, v = _descending_eigh(w.T @ (cov @ w) if whiten else w.T @ w)
            left, right = w @ v, v.T
        else:  # left singular vectors of M = L^T W from M M^T (K x K)
            chol = cholesky(cov) if whiten else None
            m = chol.T @ w if whiten else w
            s, u = _descending_eigh(m @ m.T)
            left, right = (np.linalg.solve(chol.T, u) if whiten else u), u.T @ m
        if not (np.isfinite(left).all() and np.isfinite(right).all() and np.isfinite(s).all()):
            raise np.linalg.LinAlgError("the factors are not finite")
        dec = Decomposition(left, right, s, whiten)
        if calib is not None and calib.count:
            dec.calib = _finite_profile(profile(left, right, w, bias, calib))
        if holdout is not None and holdout.count:
            dec.holdout = _finite_profile(profile(left, right, w, bias, holdout))
    return dec


def _finite_profile(p: ErrorProfile) -> ErrorProfile | None:
    """None when overflow made the errors meaningless (they are then reported as not measured)."""
    return p if np.isfinite(p.tail).all() and np.isfinite(p.reference) else None


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
