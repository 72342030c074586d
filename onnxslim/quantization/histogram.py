"""Streaming tensor statistics on a canonical grid: exact min/max plus a mergeable histogram.

Batch invariance without a second pass over the data
----------------------------------------------------
A value ``x`` falls in the signed bin ``k = floor(x / w)`` of a grid whose width ``w = 2**e`` is a
power of two; the grid keeps ``2 * H`` bins, ``k`` in ``[-H, H)``. Because ``w`` is a power of two,
``x / w`` is exact in floating point, and the bin of ``x`` on the grid twice as wide is
``floor(k / 2)`` (an arithmetic shift). When a batch arrives with a larger magnitude than the grid
covers, the grid is coarsened by shifting the existing counts, which gives exactly the counts the
coarse grid would have had from the start. The final histogram therefore depends only on the
multiset of values seen, never on how they were batched or chunked, and one pass is enough.

``H = 2 * bins``: the smallest grid that holds ``max |x|`` covers it with at least ``bins`` bins on
its side, so a method asking for 2048 bins gets between 2048 and 4096 bins over ``[0, max |x|]``.
Non-finite values are left out of the histogram and counted apart.

Sampling: with ``sample_cap`` set and the batch size given, the histogram sees about
``sample_cap`` values of each sample (``k = ceil(values per sample / sample_cap)``): in a 4-D
``(N, C, H, W)`` tensor, every k-th pixel with all its channels (the same values whether the
tensor is in NCHW or onnxruntime's NCHWc layout, where a pixel's channels lie together), in other
tensors every k-th value of the flattened sample. The pattern is fixed per sample and so still
independent of batching; min and max always see every value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from onnxslim.calibration.collect import Blocked

MIN_EXPONENT = -120  # grids finer than 2**-120 are never needed (values that small are zeros)
_TWO_TO_23_BITS = 0x4B000000  # float32 2**23 as int32 bits
MIN_MAX_BLOCK = 1 << 18  # values per block of _min_max: 1 MB, read from memory once and from cache once


def _min_max(parts: list[np.ndarray]) -> tuple[float, float]:
    """(min, max) over flat arrays, block by block: one pass over memory instead of two (same values)."""
    lo, hi = math.inf, -math.inf
    for x in parts:
        for start in range(0, x.size, MIN_MAX_BLOCK):
            block = x[start : start + MIN_MAX_BLOCK]
            low, high = float(block.min()), float(block.max())
            if math.isnan(low) or math.isnan(high):  # NumPy's min/max propagate NaN; so does this
                return math.nan, math.nan
            lo, hi = min(lo, low), max(hi, high)
    return lo, hi


@dataclass
class TensorStats:
    """Exact min/max and a canonical-grid histogram of every value observed for a tensor."""

    bins: int = 2048
    histogram: bool = True
    sample_cap: int = 0  # histogram values per sample (0: all)
    minimum: float = math.inf
    maximum: float = -math.inf
    count: int = 0
    nonfinite: int = 0
    exponent: int | None = None  # bin width is 2**exponent
    counts: np.ndarray | None = field(default=None, repr=False)  # int64, 4*bins, index k + 2*bins

    @property
    def half(self) -> int:
        return 2 * self.bins

    @property
    def width(self) -> float:
        return math.ldexp(1.0, self.exponent) if self.exponent is not None else 0.0

    @property
    def empty(self) -> bool:
        return self.count == 0

    # ---------------------------------------------------------------------------------------
    # Updating

    def update(self, values: np.ndarray, rows: int | None = None, blocked: "Blocked | None" = None) -> None:
        """Add ``values`` (taken as float32); ``rows``: how many samples they hold along axis 0 (enables sampling).

        ``blocked``: ``values`` is in onnxruntime's NCHWc layout (:class:`~onnxslim.calibration.collect.Blocked`):
        its padding channels are left out, and the histogram samples the same values as in NCHW.
        """
        x = np.asarray(values)
        if x.dtype != np.float32:
            x = x.astype(np.float32)
        if x.size == 0:
            return
        parts = [x.reshape(-1)] if blocked is None else blocked.parts(x)  # every value, flat
        sampled = self._sample(x, rows, blocked) if self.histogram and self.sample_cap else None
        lo, hi = _min_max(parts)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            x = parts[0] if len(parts) == 1 else np.concatenate(parts)
            finite = np.isfinite(x)
            self.nonfinite += int(x.size - np.count_nonzero(finite))
            x = x[finite]
            if x.size == 0:
                return
            parts = [x]
            lo, hi = float(x.min()), float(x.max())
            if sampled is not None:
                sampled = [p[np.isfinite(p)] for p in sampled]
        self.minimum = min(self.minimum, lo)
        self.maximum = max(self.maximum, hi)
        self.count += sum(int(p.size) for p in parts)
        if not self.histogram:
            return
        self._grow_to(max(abs(lo), abs(hi)))
        for part in parts if sampled is None else sampled:
            self._add(part)

    def _sample(self, x: np.ndarray, rows: int | None, blocked: "Blocked | None") -> list[np.ndarray] | None:
        """The values the histogram sees when a sample holds more than ``sample_cap`` (None: all).

        The pattern is fixed per sample (batch-invariant) and does not depend on the memory layout:
        in a 4-D tensor ``(N, C, H, W)``, every ``k``-th pixel of each sample, all channels; in
        others, every ``k``-th value of each flattened sample.
        """
        if not rows or not x.ndim or x.shape[0] != rows:
            return None
        channels = x.shape[1] if blocked is None else blocked.channels
        per = channels * (x.size // (rows * x.shape[1])) if x.ndim > 1 else x.size // rows
        if per <= self.sample_cap:
            return None
        step = -(-per // self.sample_cap)
        if blocked is not None:
            return blocked.pixel_sample(x, step)
        if x.ndim == 4:
            return [x.reshape(rows, channels, -1)[:, :, ::step]]  # strided views, no copy
        return [x.reshape(rows, per)[:, ::step]]

    def _required_exponent(self, magnitude: float) -> int:
        # Smallest e with magnitude < H * 2**e.
        _, e = math.frexp(magnitude / self.half) if magnitude > 0 else (0.0, MIN_EXPONENT)
        return max(e, MIN_EXPONENT)

    def _grow_to(self, magnitude: float) -> None:
        need = self._required_exponent(magnitude)
        if self.exponent is None:
            self.exponent = need
            self.counts = np.zeros(2 * self.half, dtype=np.int64)
        elif need > self.exponent:
            self._coarsen(need - self.exponent)

    def _coarsen(self, shift: int) -> None:
        """Re-express counts on a grid 2**shift times wider (exact)."""
        assert self.counts is not None and self.exponent is not None
        k = np.arange(-self.half, self.half, dtype=np.int64) >> min(shift, 62)
        merged = np.zeros_like(self.counts)
        np.add.at(merged, k + self.half, self.counts)
        self.counts = merged
        self.exponent += shift

    def _add(self, x: np.ndarray) -> None:
        """Count finite float32 values ``x`` (any shape, may be a strided view) on the current grid.

        ``x * 2**-e`` is exact and lies in ``(-H, H)`` (the grid was grown to hold every value), so
        its floor plus ``H`` is the counter index, an exact small integer in float32.
        """
        assert self.counts is not None and self.exponent is not None
        # 2**-e is a normal float32 for every grid a float32 value needs (e from MIN_EXPONENT to 120).
        scaled = np.multiply(x, np.float32(math.ldexp(1.0, -self.exponent)), dtype=np.float32).reshape(-1)
        np.floor(scaled, out=scaled)
        if len(self.counts) > 1 << 22:  # (a grid wider than any --calib-bins allows)
            scaled += self.half
            np.add.at(self.counts, scaled.astype(np.intp), 1)
            return
        # The index k + H is a whole number below 2**22: plus 2**23 it is exact in float32, and the
        # float's low 23 bits are the index (cheaper than a float-to-int conversion).
        scaled += np.float32(self.half + (1 << 23))
        index = scaled.view(np.int32)
        index -= _TWO_TO_23_BITS
        if index.size >= len(self.counts):
            self.counts += np.bincount(index, minlength=len(self.counts))
        else:  # few values: no pass over every counter
            np.add.at(self.counts, index, 1)

    # ---------------------------------------------------------------------------------------
    # Combining

    def merge(self, other: "TensorStats") -> "TensorStats":
        """A new TensorStats holding the values of both (exact)."""
        if other.bins != self.bins:
            raise ValueError("cannot merge histograms with different bin counts")
        out = TensorStats(self.bins, self.histogram and other.histogram, self.sample_cap)
        out.minimum = min(self.minimum, other.minimum)
        out.maximum = max(self.maximum, other.maximum)
        out.count = self.count + other.count
        out.nonfinite = self.nonfinite + other.nonfinite
        if out.histogram:
            for part in (self, other):
                if part.exponent is None:
                    continue
                if out.exponent is None:
                    out.exponent, out.counts = part.exponent, part.counts.copy()
                    continue
                if part.exponent > out.exponent:
                    out._coarsen(part.exponent - out.exponent)
                counts = part.counts
                if part.exponent < out.exponent:
                    shifted = TensorStats(part.bins, True, exponent=part.exponent, counts=part.counts.copy())
                    shifted._coarsen(out.exponent - part.exponent)
                    counts = shifted.counts
                out.counts = out.counts + counts
        return out

    # ---------------------------------------------------------------------------------------
    # Views used by the range methods

    def signed(self) -> tuple[np.ndarray, np.ndarray]:
        """(edges, counts) of the non-empty span of the signed histogram."""
        assert self.counts is not None and self.exponent is not None
        nz = np.flatnonzero(self.counts)
        first, last = int(nz[0]), int(nz[-1]) + 1
        edges = (np.arange(first, last + 1, dtype=np.float64) - self.half) * self.width
        return edges, self.counts[first:last].astype(np.float64)

    def magnitude(self, side: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(edges, counts) of |x| over [0, top]: bin j holds |x| in [j*w, (j+1)*w).

        ``side``: 0 for all values, +1 for the values >= 0 only, -1 for the values < 0 only.
        """
        assert self.counts is not None and self.exponent is not None
        pos = self.counts[self.half :] if side >= 0 else np.zeros(self.half, np.int64)
        neg = self.counts[: self.half][::-1] if side <= 0 else np.zeros(self.half, np.int64)  # bin -1: |x| in (0, w]
        folded = (pos + neg).astype(np.float64)
        nz = np.flatnonzero(folded)
        last = int(nz[-1]) + 1 if nz.size else 1
        edges = np.arange(last + 1, dtype=np.float64) * self.width
        return edges, folded[:last]
