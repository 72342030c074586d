"""TensorStats against a direct reference: every value's bin is floor(x / 2**e), however it arrives."""

from __future__ import annotations

import math

import numpy as np
import pytest

from onnxslim.calibration.collect import Blocked
from onnxslim.quantization.histogram import TensorStats


def reference_counts(values: np.ndarray, stats: TensorStats) -> np.ndarray:
    """Counts of ``values`` on ``stats``'s final grid, one value at a time in float64."""
    k = np.floor(values.astype(np.float64) / math.ldexp(1.0, stats.exponent)).astype(np.int64)
    return np.bincount(k + stats.half, minlength=2 * stats.half)


def mixed(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    parts = [rng.standard_normal(n), rng.laplace(size=n) * 1e-3, np.abs(rng.standard_normal(n)) * 40,
             -rng.exponential(size=n) * 1e-30, np.zeros(n // 10)]
    return np.concatenate(parts).astype(np.float32)


@pytest.mark.parametrize("bins", [128, 2048, 65536])
def test_counts_equal_the_reference_at_any_magnitude(bins):
    x = mixed(20_000)
    for scale in (1.0, 1e-20, 1e30):
        s = TensorStats(bins)
        values = (x * np.float32(scale)).astype(np.float32)
        for part in np.array_split(values, 7):  # growing grids coarsen the counts on the way
            s.update(part)
        assert np.array_equal(s.counts, reference_counts(values, s))
        assert (s.minimum, s.maximum, s.count) == (float(values.min()), float(values.max()), values.size)


def test_values_exactly_on_bin_edges_and_at_the_top():
    s = TensorStats(128)
    s.update(np.array([1.5], np.float32))  # grid width 2**-7: 256 bins of each sign cover |x| < 2
    w, top = s.width, s.half * s.width
    edges = (np.arange(1 - s.half, s.half) * w).astype(np.float32)  # bins' lower edges (-2 would need a wider grid)
    below = np.nextafter(edges, np.float32(-np.inf))  # just under each edge: the bin before
    highest = np.nextafter(np.float32(top), np.float32(0))  # the largest value this grid holds
    values = np.concatenate([[1.5], edges, below, [highest, -0.0]]).astype(np.float32)
    s.update(values[1:])
    assert s.exponent == -7 and np.array_equal(s.counts, reference_counts(values, s))
    # Bin -256, [-2, -2 + w): the value just under -2 + w; bin 255, [2 - w, 2): 2 - w and the top value.
    assert s.counts[0] == 1 and s.counts[-1] == 2


def test_other_dtypes_are_counted_as_float32():
    x64 = mixed(5_000).astype(np.float64) * 1.000001
    a, b = TensorStats(), TensorStats()
    a.update(x64)
    b.update(x64.astype(np.float32))
    assert a.exponent == b.exponent and np.array_equal(a.counts, b.counts) and a.maximum == b.maximum
    ints = TensorStats()
    ints.update(np.arange(-50, 50, dtype=np.int64))
    assert (ints.minimum, ints.maximum, ints.count) == (-50.0, 49.0, 100)


def test_sampling_is_per_sample_and_batch_free():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((12, 7, 33, 5)).astype(np.float32)  # 1155 values per sample
    whole, rows = TensorStats(256, sample_cap=100), TensorStats(256, sample_cap=100)
    whole.update(x, rows=12)
    for i in range(0, 12, 5):
        rows.update(x[i:i + 5], rows=len(x[i:i + 5]))
    assert whole.exponent == rows.exponent and np.array_equal(whole.counts, rows.counts)
    step = math.ceil(1155 / 100)  # a 4-D tensor: every 12th of the 165 pixels, all 7 channels
    assert whole.counts.sum() == 12 * 7 * len(range(0, 165, step))
    picked = x.reshape(12, 7, -1)[:, :, ::step].reshape(-1)
    assert np.array_equal(whole.counts, reference_counts(picked, whole))
    assert (whole.minimum, whole.maximum, whole.count) == (float(x.min()), float(x.max()), x.size)
    flat = TensorStats(256, sample_cap=100)  # other ranks: every 12th value of the flattened sample
    flat.update(x.reshape(12, -1), rows=12)
    assert np.array_equal(flat.counts, reference_counts(x.reshape(12, -1)[:, ::step].reshape(-1), flat))


def nchwc(x: np.ndarray, block: int) -> np.ndarray:
    """``x`` (N, C, H, W) in onnxruntime's NCHWc memory order, padding channels full of 1e6."""
    n, c, h, w = x.shape
    padded = -(-c // block) * block
    full = np.full((n, padded, h, w), 1e6, np.float32)  # padding that must never be counted
    full[:, :c] = x
    return np.ascontiguousarray(full.reshape(n, padded // block, block, h, w).transpose(0, 1, 3, 4, 2)).reshape(n, padded, h, w)


@pytest.mark.parametrize("channels,block,cap", [(24, 16, 100), (32, 16, 0), (12, 8, 50), (40, 8, 0)])
def test_blocked_activations_give_the_nchw_statistics(channels, block, cap):
    """The same statistics from onnxruntime's NCHWc layout (padding left out, the same values sampled)."""
    x = np.random.default_rng(channels).standard_normal((3, channels, 9, 7)).astype(np.float32)
    layout = Blocked(channels, block)
    np.testing.assert_array_equal(layout.to_nchw(nchwc(x, block)), x)
    plain, blocked = TensorStats(512, sample_cap=cap), TensorStats(512, sample_cap=cap)
    plain.update(x, rows=3)
    blocked.update(nchwc(x, block), rows=3, blocked=layout)
    assert (blocked.minimum, blocked.maximum, blocked.count) == (plain.minimum, plain.maximum, plain.count) == (
        float(x.min()), float(x.max()), x.size)
    assert blocked.exponent == plain.exponent and np.array_equal(blocked.counts, plain.counts)
    assert plain.counts.sum() == (x.size if not cap else 3 * channels * len(range(0, 63, -(-channels * 63 // cap))))


def test_sampling_with_nonfinite_values():
    x = np.random.default_rng(2).standard_normal((4, 1000)).astype(np.float32)
    x[1, ::7] = np.nan
    x[3, 5] = -np.inf
    s = TensorStats(256, sample_cap=50)
    s.update(x, rows=4)
    finite = np.isfinite(x)
    picked = x[:, ::20].reshape(-1)
    assert s.nonfinite == x.size - finite.sum() and s.count == finite.sum()
    assert np.array_equal(s.counts, reference_counts(picked[np.isfinite(picked)], s))
    assert (s.minimum, s.maximum) == (float(x[finite].min()), float(x[finite].max()))


@pytest.mark.parametrize("size", [7, "block", "block+1", "3 blocks+1"])
@pytest.mark.parametrize("bad", [None, np.nan, np.inf, -np.inf])
def test_blockwise_min_max_equals_numpy(size, bad):
    from onnxslim.quantization.histogram import MIN_MAX_BLOCK, _min_max

    size = {"block": MIN_MAX_BLOCK, "block+1": MIN_MAX_BLOCK + 1, "3 blocks+1": 3 * MIN_MAX_BLOCK + 1}.get(size, size)
    x = np.random.default_rng(size).standard_normal(size).astype(np.float32)
    if bad is not None:
        x[size * 2 // 3] = bad
    got, want = _min_max([x]), (float(x.min()), float(x.max()))
    assert np.array_equal(np.array(got), np.array(want), equal_nan=True)
    got = _min_max([x[:size // 2], x[size // 2:]])  # several parts: one min/max over all of them
    assert np.array_equal(np.array(got), np.array(want), equal_nan=True)


@pytest.mark.parametrize("cap", [0, 60])
def test_blocked_activations_with_nonfinite_values(cap):
    """NaN and inf in a padded NCHWc tensor: counted apart, left out of min/max and the histogram, as in NCHW."""
    x = np.random.default_rng(4).standard_normal((2, 24, 5, 6)).astype(np.float32)
    x[0, 3, 1, 2], x[1, 20, 4, 5], x[1, 0, 0, 0] = np.nan, np.inf, -np.inf
    plain, blocked = TensorStats(256, sample_cap=cap), TensorStats(256, sample_cap=cap)
    plain.update(x, rows=2)
    blocked.update(nchwc(x, 16), rows=2, blocked=Blocked(24, 16))
    assert blocked.nonfinite == plain.nonfinite == 3
    assert (blocked.minimum, blocked.maximum, blocked.count) == (plain.minimum, plain.maximum, plain.count)
    assert blocked.count == x.size - 3 and np.isfinite([blocked.minimum, blocked.maximum]).all()
    assert np.array_equal(blocked.counts, plain.counts)


@pytest.mark.parametrize("bins,size", [(128, 10), (128, 5000), (2048, 100), (2048, 100_000), ((1 << 20) + 8, 30_000)])
def test_each_way_of_counting_equals_the_reference(bins, size):
    """Few values (np.add.at), many values (bincount) and grids too wide for the float32 index trick
    (float-to-int conversion) count the same."""
    x = mixed(size, seed=size)
    s = TensorStats(bins)
    s.update(x)
    assert len(s.counts) == 4 * bins and np.array_equal(s.counts, reference_counts(x, s))
