"""Calibration methods: choose the real range ``[lo, hi]`` that a tensor's 8-bit grid will cover.

All methods read a :class:`~onnxslim.quantization.histogram.TensorStats` (exact min/max and a
histogram); none keeps samples. Three shapes of range, picked by the caller's quantizer:

* ``symmetric`` (int8, zero point 0): ``[-t, t]`` with 127 steps on each side; ``t`` is found on
  the histogram of ``|x|``.
* one-sided (asymmetric grid, all values >= 0, e.g. after ReLU): ``[0, t]`` with 255 steps.
* two-sided asymmetric (uint8/int8 with a zero point, values of both signs): ``[lo, hi]``.

Methods:

``minmax``      the observed range.
``percentile``  ``t`` (or ``lo``/``hi``) at the given percentile of the values (e.g. 99.99);
                linear interpolation inside a histogram bin.
``entropy``     TensorRT's KL-divergence search: for each candidate threshold (a bin edge), the
                reference distribution P (bins up to the threshold, outliers folded into the last
                bin) is merged into as many bins as the grid has levels and expanded back (Q);
                ``t`` minimises KL(P || Q). Candidates are scanned on a stride, then refined around
                the best one bin at a time. The bin holding exact zeros is left out (a ReLU's
                zeros would otherwise pull the threshold down). Other spikes (a bin holding far
                more than its neighbours: a value repeated, as a constant image region gives
                after a depthwise conv, or ReLU6's 6) are atoms: inside the range a grid maps an
                atom to one level, so Q keeps it where P has it instead of spreading it over its
                group; beyond the range it is clipped like any tail. Without this, spikes make up
                most of KL(P || Q), and the search shrinks the range to split them finer, clipping
                the tail (MobileNetV2's ReLU6 outputs were cut at 2.5). Two-sided tensors search each
                side apart, with the share of the 256 levels that the side's span takes. With
                fewer than 16 values per histogram bin the KL estimate is noise, and mse is used.
``mse``         minimises the expected squared quantization error over the histogram: values
                beyond the range cost their clipping error, values inside cost ``step**2 / 12``
                (``x**2`` when they round to zero).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from onnxslim.quantization.histogram import TensorStats

METHODS = ("minmax", "percentile", "entropy", "mse")
AUTO = "auto"  # --calib-method auto: each of METHODS tried on held-out samples, the best kept (insert_qdq)


@dataclass(frozen=True)
class MethodSpec:
    """A method and its parameter: ``percentile`` (e.g. 99.99) for the percentile method."""

    name: str = "mse"
    percentile: float = 99.99

    def __str__(self) -> str:
        return f"percentile:{self.percentile:g}" if self.name == "percentile" else self.name


# The KL search needs data: below this many histogram values per bin it falls back to mse.
ENTROPY_MIN_VALUES_PER_BIN = 16
# An atom: a bin holding more than ATOM_FACTOR times the median of the ATOM_WINDOW bins around
# it, plus ATOM_FLOOR values (so that a few values in a sparse tail are not atoms).
ATOM_WINDOW, ATOM_FACTOR, ATOM_FLOOR = 33, 4.0, 16.0


def effective_method(stats: TensorStats, method: MethodSpec) -> MethodSpec:
    """``method``, or mse for entropy on too few values (e.g. squeeze-excite vectors)."""
    if method.name == "entropy" and stats.counts is not None:
        if float(stats.counts.sum()) < ENTROPY_MIN_VALUES_PER_BIN * stats.bins:
            return MethodSpec("mse", method.percentile)
    return method


def select_range(stats: TensorStats, method: MethodSpec, symmetric: bool) -> tuple[float, float]:
    """The range ``[lo, hi]`` (lo <= 0 <= hi) for ``stats`` under ``method``."""
    if stats.empty:
        return 0.0, 0.0
    method = effective_method(stats, method)
    lo, hi = min(stats.minimum, 0.0), max(stats.maximum, 0.0)
    if method.name == "minmax" or stats.counts is None or lo == hi:
        if symmetric:
            t = max(-lo, hi)
            return -t, t
        return lo, hi
    if symmetric or lo == 0.0 or hi == 0.0:
        # One threshold on |x|: symmetric grids, and one-sided tensors (mirrored when all <= 0).
        edges, counts = stats.magnitude()
        steps = 127 if symmetric else 255
        t = min(_threshold(edges, counts, method, steps), max(-lo, hi))
        if symmetric:
            return -t, t
        return (0.0, t) if lo == 0.0 else (-t, 0.0)
    return _two_sided(stats, method, lo, hi)


# --------------------------------------------------------------------------------------------
# One threshold over a histogram of magnitudes


def _threshold(edges: np.ndarray, counts: np.ndarray, method: MethodSpec, steps: int) -> float:
    if method.name == "percentile":
        return _quantile(edges, counts, method.percentile / 100.0)
    if method.name == "entropy":
        return entropy_threshold(edges, counts, levels=steps + 1 if steps == 255 else 128)
    if method.name == "mse":
        candidates = _candidate_edges(len(counts), steps)
        errors = _mse_many(edges, counts, np.zeros(len(candidates)), edges[candidates], steps)
        return float(edges[candidates[int(np.argmin(errors))]])
    raise ValueError(f"unknown calibration method {method.name!r}")


def _candidate_edges(n: int, steps: int) -> np.ndarray:
    """Edge indices worth trying as thresholds: a geometric-ish sweep from n/64 to n."""
    low = max(1, n // 64)
    return rounded_grid(low, n, min(n - low + 1, 256))


def rounded_grid(first: float, last: float, count: int) -> np.ndarray:
    """The distinct integers nearest to ``count`` evenly spaced points from ``first`` to ``last``,
    ascending. (Not ``np.unique``: its first call imports ``numpy.ma``, ~30 ms inside calibration.)"""
    return _distinct(np.linspace(first, last, num=count).round().astype(np.int64))[0]


def _quantile(edges: np.ndarray, counts: np.ndarray, q: float) -> float:
    total = counts.sum()
    if total <= 0:
        return float(edges[-1])
    cum = np.cumsum(counts)
    target = q * total
    j = int(np.searchsorted(cum, target, side="left"))
    j = min(j, len(counts) - 1)
    before = cum[j - 1] if j else 0.0
    frac = 0.0 if counts[j] == 0 else (target - before) / counts[j]
    return float(edges[j] + min(max(frac, 0.0), 1.0) * (edges[j + 1] - edges[j]))


def _mse_many(edges: np.ndarray, counts: np.ndarray, los: np.ndarray, his: np.ndarray, steps: int) -> np.ndarray:
    """Expected squared error of uniform ``steps``-step grids on ``[los[k], his[k]]`` over the
    histogram (ascending ``edges``), one per k: bins inside a grid cost ``step**2 / 12`` (bins within
    half a step of 0 round to 0 and cost their square), bins outside it their squared distance to
    the grid's end. Each region is a run of bins, so prefix sums of ``n``, ``n c`` and ``n c**2``
    (bin centres ``c``) give every candidate in O(log bins), whatever the number of bins."""
    centers = 0.5 * (edges[:-1] + edges[1:])
    n = np.asarray(counts, np.float64)
    s0, s1, s2 = (_prefix(v, np.float64) for v in (n, n * centers, n * centers**2))
    los, his = np.asarray(los, np.float64), np.asarray(his, np.float64)
    step = (his - los) / steps

    def run(i: np.ndarray, j: np.ndarray, ref: np.ndarray | float = 0.0) -> np.ndarray:
        """sum of n * (c - ref)**2 over bins [i, j)."""
        return (s2[j] - s2[i]) - 2.0 * ref * (s1[j] - s1[i]) + ref * ref * (s0[j] - s0[i])

    last = len(n)
    below = np.searchsorted(centers, los, side="left")  # bins [0, below) lie under lo
    above = np.searchsorted(centers, his, side="right")  # bins [above, last) lie over hi
    zl = np.clip(np.searchsorted(centers, -step / 2, side="right"), below, above)  # |c| < step/2, inside
    zr = np.clip(np.searchsorted(centers, step / 2, side="left"), zl, above)
    inside = (s0[above] - s0[below]) - (s0[zr] - s0[zl])
    err = run(0, below, los) + run(above, last, his) + run(zl, zr) + step * step / 12.0 * inside
    err = np.maximum(err, 0.0)  # (rounding in the differences of sums)
    return np.where(step > 0, err, s2[-1])  # a zero-width grid rounds everything to 0


def entropy_threshold(edges: np.ndarray, counts: np.ndarray, levels: int = 128, coarse: int = 128) -> float:
    """KL-divergence threshold (TensorRT's method) over a histogram of magnitudes."""
    n = len(counts)
    if n <= levels:
        return float(edges[-1])
    counts = np.array(counts, dtype=np.float64)
    counts[0] = 0.0  # the bin holding exact zeros (ReLU outputs, padding) is a spike no grid needs to resolve
    counts, atoms = split_atoms(counts)
    stride = max(1, (n - levels) // coarse)
    first = np.arange(levels, n + 1, stride)
    table = KLTable(counts, atoms)
    best = int(first[np.argmin(table.divergences(first, levels))])
    near = np.arange(max(levels, best - stride + 1), min(n, best + stride - 1) + 1)
    best = int(near[np.argmin(table.divergences(near, levels))])
    return float(edges[best])


def split_atoms(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(smooth counts, atom counts or None): each atom bin keeps its neighbours' median as its
    smooth part, and the excess is its atom (see the module docstring).

    The median of a window is at least its minimum, so a bin at or below ``ATOM_FACTOR`` times its
    window's minimum plus ``ATOM_FLOOR`` is no atom: the median (a partial sort of the window) is
    only taken for the other bins, a few in most histograms.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if len(counts) < ATOM_WINDOW:
        return counts, None
    half = ATOM_WINDOW // 2
    padded = np.pad(counts, half, mode="edge")
    maybe = np.flatnonzero(counts > ATOM_FACTOR * _window_min(padded, ATOM_WINDOW) + ATOM_FLOOR)
    if not maybe.size:
        return counts, None
    windows = np.lib.stride_tricks.sliding_window_view(padded, ATOM_WINDOW)
    base = np.partition(windows[maybe], half, axis=1)[:, half]  # the median (the window's length is odd)
    atom = counts[maybe] > ATOM_FACTOR * base + ATOM_FLOOR
    if not atom.any():
        return counts, None
    where, base = maybe[atom], base[atom]
    smooth, atoms = counts.copy(), np.zeros_like(counts)
    smooth[where] = base
    atoms[where] = counts[where] - base
    return smooth, atoms


def _window_min(x: np.ndarray, k: int) -> np.ndarray:
    """``min(x[i : i + k])`` for each ``i`` in ``0 .. len(x) - k``, by doubling spans (log2(k)
    passes over ``x`` instead of ``k``)."""
    out, span = x, 1
    while 2 * span <= k:
        out, span = np.minimum(out[:-span], out[span:]), 2 * span  # out[i]: min of x[i : i + 2 * span]
    count = len(x) - k + 1
    return out[:count] if span == k else np.minimum(out[:count], out[k - span : k - span + count])


def kl_divergences(counts: np.ndarray, candidates: np.ndarray, levels: int, atoms: np.ndarray | None = None) -> np.ndarray:
    """KL(P || Q) for each candidate bin count ``i`` (all at once; see :class:`KLTable`).

    P: ``counts[:i]`` with the tail ``counts[i:]`` added to its last bin. Q: ``counts[:i]``
    merged into ``levels`` groups of ``i // levels`` bins (the remainder joins the last group),
    each group's mass spread evenly over its non-empty bins. ``atoms`` (split_atoms()): extra
    mass per bin that P and Q both hold in place below ``i`` and that joins the tail from ``i``.
    """
    return KLTable(counts, atoms).divergences(candidates, levels)


class KLTable:
    """Prefix sums of one histogram, from which :func:`kl_divergences` takes any candidates.

    With ``p``, ``q`` unnormalised (sums ``T`` and ``Q``), KL = (sum p log p - sum p log q) / T
    - log T + log Q. Below the last bin, ``p log p`` is a prefix sum, and a bin without an atom
    has ``q`` = its group's mean, so its ``p log q`` is the group's (non-atom) mass times the
    log of that mean: O(levels + atoms) per candidate instead of O(i). Prefix sums are kept in
    extended precision, since the two sums nearly cancel.
    """

    def __init__(self, counts: np.ndarray, atoms: np.ndarray | None = None, extended: bool | None = None):
        self.h = h = np.asarray(counts, dtype=np.float64)
        self.a = a = np.zeros_like(h) if atoms is None else np.asarray(atoms, dtype=np.float64)
        self.total = total = h + a
        # Sums of whole counts (what histograms hold) are exact in float64 below 2**53, and float64
        # gathers run faster than extended ones; other counts keep extended precision throughout
        # (``extended``: force one or the other; the x log x sums are always extended).
        if extended is None:
            extended = not (np.all(np.floor(total) == total) and np.all(h >= 0) and np.all(a >= 0) and total.sum() < 2.0**53)
        counts_dtype = np.longdouble if extended else np.float64
        self.mass, self.nonempty = _prefix(h, counts_dtype), _prefix(h > 0, counts_dtype)
        if atoms is None:  # (the same sums as below, without summing zeros)
            self.atom_mass, self.plain = np.zeros(len(h) + 1, counts_dtype), self.mass
        else:
            self.atom_mass = _prefix(a, counts_dtype)
            self.plain = _prefix(np.where(a > 0, 0.0, h), counts_dtype)  # mass of the bins without an atom
        self.xlogx = _prefix(_xlogx(total))
        self.tails = np.concatenate([np.cumsum(total[::-1], dtype=counts_dtype)[::-1], np.zeros(1, counts_dtype)])
        self.atoms_at = np.flatnonzero(a > 0)

    def divergences(self, candidates: np.ndarray, levels: int) -> np.ndarray:
        h, a, total = self.h, self.a, self.total
        cand = np.asarray(candidates, dtype=np.int64)
        big_t = self.tails[0]
        if big_t <= 0:
            return np.zeros(len(cand))
        width = cand // levels  # >= 1: candidates start at ``levels``
        # Every group but the last depends on the width alone, which many candidates share: those
        # groups are priced once per width (rows of ``per_width``), the last once per candidate.
        widths, row = _distinct(width)
        g = np.arange(levels)
        mean, log_mean = self._group_means(widths[:, None] * g, widths[:, None] * (g + 1))
        # Bins below the last one: a group other than the last ends at or before the last bin.
        per_width = (self.plain[widths[:, None] * (g + 1)] - self.plain[widths[:, None] * g]).astype(np.float64) * log_mean
        last = cand - 1
        first_of_last = width * (levels - 1)
        mean_last, log_mean_last = self._group_means(first_of_last, cand)
        terms = per_width[row]
        terms[:, -1] = (self.plain[last] - self.plain[np.minimum(first_of_last, last)]).astype(np.float64) * log_mean_last
        cross = terms.sum(axis=1)
        where = self.atoms_at
        if where.size:  # bins with an atom, below the last bin: q = (group mean if h > 0) + atom
            means = mean[row]
            means[:, -1] = mean_last
            below = where[None, :] < last[:, None]
            group = np.minimum(where[None, :] // width[:, None], levels - 1)
            q = np.where(h[where] > 0, means[np.arange(len(cand))[:, None], group], 0.0) + a[where]
            cross += np.where(below, total[where] * np.log(q), 0.0).sum(axis=1)
        p_last = (total[last] + self.tails[cand]).astype(np.float64)
        q_last = np.where(h[last] > 0, mean_last, 0.0) + a[last]
        cross += np.where((p_last > 0) & (q_last > 0), p_last * np.log(np.where(q_last > 0, q_last, 1.0)), 0.0)
        own = self.xlogx[last] + _xlogx(p_last)
        big_q = (self.mass[cand] + self.atom_mass[cand]).astype(np.float64)
        kl = ((own - cross) / big_t).astype(np.float64) - math.log(big_t) + np.log(np.where(big_q > 0, big_q, 1.0))
        kl = np.maximum(kl, 0.0)  # (rounding near a perfect fit)
        kl[(p_last > 0) & (q_last <= 0)] = np.inf
        return kl

    def _group_means(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean of the non-empty bins, its log; 0 and 0 for an empty group) of bins ``[lo, hi)``."""
        gsum = (self.mass[hi] - self.mass[lo]).astype(np.float64)
        gnnz = (self.nonempty[hi] - self.nonempty[lo]).astype(np.float64)
        mean = np.where(gnnz > 0, gsum / np.maximum(gnnz, 1.0), 0.0)
        return mean, np.log(np.where(mean > 0, mean, 1.0))


def _distinct(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct values, index of each value among them), without ``np.unique``'s sort when
    ``values`` is already sorted (candidate lists are)."""
    if values.size and np.all(values[1:] >= values[:-1]):
        new = np.concatenate([[True], values[1:] != values[:-1]])
        return values[new], np.cumsum(new) - 1
    distinct = np.array(sorted(set(values.tolist())), dtype=values.dtype)
    return distinct, np.searchsorted(distinct, values)


def _prefix(values: np.ndarray, dtype=np.longdouble) -> np.ndarray:
    """``out[i] = sum(values[:i])`` for i in 0..len(values)."""
    return np.concatenate([np.zeros(1, dtype), np.cumsum(values, dtype=dtype)])


def _xlogx(v: np.ndarray) -> np.ndarray:
    return np.where(v > 0, v * np.log(np.where(v > 0, v, 1.0)), 0.0)


# --------------------------------------------------------------------------------------------
# Two-sided asymmetric ranges


def _two_sided(stats: TensorStats, method: MethodSpec, lo: float, hi: float) -> tuple[float, float]:
    if method.name == "percentile":
        edges, counts = stats.signed()
        p = method.percentile / 100.0
        # Interpolating inside the outermost bins can land past the data; never wider than min/max.
        return max(min(_quantile(edges, counts, 1.0 - p), 0.0), lo), min(max(_quantile(edges, counts, p), 0.0), hi)
    if method.name == "entropy":
        # Each side gets its own KL search, with the share of the 256 levels its span takes.
        top = {}
        for side, span in ((1, hi), (-1, -lo)):
            edges, counts = stats.magnitude(side)
            levels = int(min(255, max(16, round(256 * span / (hi - lo)))))
            top[side] = min(entropy_threshold(edges, counts, levels=levels), span)
        return -top[-1], top[1]
    if method.name == "mse":
        edges, counts = stats.signed()
        scales = np.linspace(1.0 / 64, 1.0, 256)
        errors = _mse_many(edges, counts, scales * lo, scales * hi, 255)
        s = float(scales[int(np.argmin(errors))])
        return s * lo, s * hi
    raise ValueError(f"unknown calibration method {method.name!r}")


def describe(lo: float, hi: float) -> str:
    return f"[{lo:.6g}, {hi:.6g}]" if math.isfinite(lo) and math.isfinite(hi) else "[?, ?]"
