"""Calibration methods and the streaming histogram against NumPy references on known distributions."""

from __future__ import annotations

import numpy as np
import pytest

from onnxslim.quantization.histogram import TensorStats
from onnxslim.quantization.methods import MethodSpec, entropy_threshold, kl_divergences, select_range

N = 400_000


def distributions():
    rng = np.random.default_rng(0)
    normal = rng.standard_normal(N).astype(np.float32)
    return {
        "normal": normal,
        "relu": np.maximum(normal, 0),
        "laplace": rng.laplace(size=N).astype(np.float32),
        "skewed": (rng.exponential(size=N) - 0.3).astype(np.float32),
    }


def stats_of(x, bins=2048, chunks=1):
    s = TensorStats(bins)
    for part in np.array_split(x, chunks):
        s.update(part)
    return s


def true_mse(x, lo, hi, levels=255):
    """Mean squared error of fake-quantizing x on a uniform grid of ``levels`` steps over [lo, hi]."""
    step = (hi - lo) / levels
    zero = np.round(-lo / step)
    q = np.clip(np.round(x / step) + zero, 0, levels)
    return float(np.mean(((q - zero) * step - x) ** 2))


# --------------------------------------------------------------------------------------------
# The histogram


def test_histogram_is_exact_for_any_chunking():
    x = distributions()["laplace"]
    whole = stats_of(x)
    for chunks in (3, 17, 1000):
        parts = stats_of(x, chunks=chunks)
        assert parts.exponent == whole.exponent and np.array_equal(parts.counts, whole.counts)
        assert (parts.minimum, parts.maximum, parts.count) == (whole.minimum, whole.maximum, whole.count)
    # Growing order: small values first forces the grid to coarsen several times.
    ordered = stats_of(np.sort(np.abs(x)), chunks=50)
    assert np.array_equal(ordered.counts, stats_of(np.abs(x)).counts)


def test_histogram_counts_match_numpy():
    x = distributions()["normal"]
    s = stats_of(x)
    edges, counts = s.signed()
    ref, _ = np.histogram(x, bins=edges)
    assert np.array_equal(counts, ref) and counts.sum() == N
    assert (s.minimum, s.maximum) == (float(x.min()), float(x.max()))
    assert len(s.magnitude()[1]) >= s.bins  # at least `bins` bins over [0, max|x|]


def test_merge_equals_single_pass():
    d = distributions()
    merged = stats_of(d["normal"] * 0.01).merge(stats_of(d["laplace"] * 30))
    whole = stats_of(np.concatenate([d["normal"] * 0.01, d["laplace"] * 30]))
    assert merged.exponent == whole.exponent and np.array_equal(merged.counts, whole.counts)


def test_nonfinite_values_are_counted_apart():
    s = stats_of(np.array([1.0, np.nan, -2.0, np.inf], np.float32))
    assert (s.minimum, s.maximum, s.count, s.nonfinite) == (-2.0, 1.0, 2, 2)


# --------------------------------------------------------------------------------------------
# Methods


@pytest.mark.parametrize("name", ["normal", "relu", "laplace", "skewed"])
def test_minmax_is_the_observed_range(name):
    x = distributions()[name]
    lo, hi = select_range(stats_of(x), MethodSpec("minmax"), symmetric=False)
    assert (lo, hi) == (min(float(x.min()), 0.0), max(float(x.max()), 0.0))
    t = select_range(stats_of(x), MethodSpec("minmax"), symmetric=True)[1]
    assert t == float(np.abs(x).max())


@pytest.mark.parametrize("name", ["normal", "laplace", "skewed", "relu"])
@pytest.mark.parametrize("p", [99.0, 99.99])
def test_percentile_matches_numpy(name, p):
    x = distributions()[name]
    s = stats_of(x)
    width = s.width
    lo, hi = select_range(s, MethodSpec("percentile", p), symmetric=False)
    assert abs(hi - max(np.percentile(x, p), 0)) <= 2 * width
    if x.min() < 0:
        assert abs(lo - min(np.percentile(x, 100 - p), 0)) <= 2 * width
    t = select_range(s, MethodSpec("percentile", p), symmetric=True)[1]
    assert abs(t - np.percentile(np.abs(x), p)) <= 2 * width


@pytest.mark.parametrize("name", ["normal", "laplace", "skewed"])
def test_two_sided_percentile_100_is_the_observed_range(name):
    """percentile:100 on a two-sided tensor gives exactly [min, max]: the interpolation inside the
    outermost bins used to reach the bin's far edge ([-1.0, 1.0] for data within +-0.99999)."""
    x = distributions()[name]
    x = (x / np.abs(x).max() * 0.9999933).astype(np.float32)
    lo, hi = select_range(stats_of(x), MethodSpec("percentile", 100.0), symmetric=False)
    assert (lo, hi) == (float(x.min()), float(x.max()))


def reference_kl(counts, i, levels, atoms=None):
    """TensorRT's loop, one candidate at a time (the reference the vectorised version must match).

    ``atoms``: mass held in place in both P and Q below ``i`` and clipped into P's last bin beyond.
    """
    atoms = np.zeros(len(counts)) if atoms is None else atoms
    sliced = counts[:i].astype(np.float64)
    p = sliced.copy()
    p[i - 1] += counts[i:].sum() + atoms[i:].sum()
    nonzero = sliced != 0
    merged = i // levels
    q = np.zeros(i)
    for g in range(levels):
        start, stop = g * merged, (g + 1) * merged if g < levels - 1 else i
        n = nonzero[start:stop].sum()
        if n:
            q[start:stop] = np.where(nonzero[start:stop], sliced[start:stop].sum() / n, 0)
    p, q = p + atoms[:i], q + atoms[:i]
    p, q = p / p.sum(), q / q.sum()
    live = p > 0
    if np.any(live & (q == 0)):
        return np.inf
    return float(np.sum(p[live] * np.log(p[live] / q[live])))


@pytest.mark.parametrize("name", ["normal", "laplace"])
def test_entropy_kl_matches_reference_loop(name):
    counts, edges = np.histogram(np.abs(distributions()[name]), bins=1024)
    candidates = np.array([128, 129, 300, 511, 777, 1024])
    ours = kl_divergences(counts, candidates, 128)
    ref = [reference_kl(counts, int(i), 128) for i in candidates]
    np.testing.assert_allclose(ours, ref, rtol=1e-9)


def lumpy_relu6(scale, atoms, share, seed=0):
    """ReLU6 outputs of a depthwise conv over flat image regions: a smooth part clipped at 6 (a
    pile-up there when ``scale`` is large) plus ``atoms`` repeated values holding ``share`` of the mass."""
    rng = np.random.default_rng(seed)
    smooth = np.clip(rng.standard_normal(N) * scale, 0, 6)
    repeated = rng.choice(rng.uniform(0.05, 1.5, atoms), int(N * share))
    return np.concatenate([smooth, repeated]).astype(np.float32)


def test_entropy_kl_with_atoms_matches_reference_loop():
    from onnxslim.quantization.methods import split_atoms

    counts, _ = np.histogram(lumpy_relu6(1.2, 20, 0.3), bins=1024)
    counts[0] = 0
    smooth, atoms = split_atoms(counts)
    assert atoms is not None and np.count_nonzero(atoms) >= 15
    assert np.allclose(smooth + atoms, counts)
    candidates = np.array([128, 200, 300, 511, 777, 1024])
    ours = kl_divergences(smooth, candidates, 128, atoms)
    ref = [reference_kl(smooth, int(i), 128, atoms) for i in candidates]
    np.testing.assert_allclose(ours, ref, rtol=1e-9)


@pytest.mark.parametrize("name", ["normal", "laplace", "relu", "skewed"])
def test_smooth_distributions_have_no_atoms(name):
    from onnxslim.quantization.methods import split_atoms

    counts, _ = np.histogram(np.abs(distributions()[name]), bins=2048)
    counts[0] = 0
    assert split_atoms(counts)[1] is None  # so the reference argmin below is the method's result


@pytest.mark.parametrize("scale,atoms,share", [(1.2, 20, 0.3), (1.2, 60, 0.5), (1.2, 10, 0.1), (2.0, 60, 0.5), (3.0, 20, 0.3)])
def test_entropy_keeps_the_tail_of_lumpy_relu6(scale, atoms, share):
    # Repeated values (spikes) used to dominate KL(P || Q): the search shrank the range to split
    # them finer and clipped the tail (2.0-3.5 here for values up to 6, as on MobileNetV2).
    x = lumpy_relu6(scale, atoms, share)
    stats = stats_of(x)
    hi = select_range(stats, MethodSpec("entropy"), symmetric=False)[1]
    assert hi >= np.percentile(x, 99.9) - 2 * stats.width
    if scale >= 2.0:  # a pile-up at 6 (0.1% and 2% of the values): clipping it costs its whole mass
        assert hi >= 6.0 - 2 * stats.width


@pytest.mark.parametrize("name", ["normal", "laplace", "relu"])
def test_entropy_threshold_is_the_reference_argmin(name):
    x = np.abs(distributions()[name])
    counts, edges = np.histogram(x, bins=512)
    counts[0] = 0  # the method ignores the bin of exact zeros
    ref = [reference_kl(counts, i, 128) for i in range(128, 513)]
    best = edges[128 + int(np.argmin(ref))]
    ours = entropy_threshold(edges, counts, levels=128, coarse=512)  # stride 1: exhaustive
    assert ours == best
    coarse = entropy_threshold(edges, counts, levels=128)  # strided then refined
    assert reference_kl(counts, int(np.searchsorted(edges, coarse)), 128) <= min(ref) * 1.05


@pytest.mark.parametrize("name", ["normal", "laplace", "relu", "skewed"])
def test_mse_is_near_the_true_optimum(name):
    x = distributions()[name]
    lo, hi = select_range(stats_of(x), MethodSpec("mse"), symmetric=False)
    ours = true_mse(x, lo, hi)
    grid = [true_mse(x, s * min(x.min(), 0), s * max(x.max(), 0)) for s in np.linspace(0.05, 1.0, 96)]
    assert ours <= min(grid) * 1.10
    assert ours < true_mse(x, min(x.min(), 0), max(x.max(), 0))  # better than no clipping


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy", "mse"])
def test_ranges_contain_zero_and_are_symmetric_when_asked(method):
    for x in distributions().values():
        lo, hi = select_range(stats_of(x), MethodSpec(method), symmetric=False)
        assert lo <= 0 <= hi and hi > lo
        lo, hi = select_range(stats_of(x), MethodSpec(method), symmetric=True)
        assert lo == -hi and hi > 0


def test_one_sided_tensors_keep_a_zero_floor():
    x = distributions()["relu"]
    for method in ("percentile", "entropy", "mse"):
        lo, hi = select_range(stats_of(x), MethodSpec(method), symmetric=False)
        assert lo == 0.0 and 0 < hi <= x.max()


def test_empty_stats_give_a_zero_range():
    assert select_range(TensorStats(), MethodSpec("entropy"), symmetric=False) == (0.0, 0.0)


def test_entropy_two_sided_searches_each_side():
    # Mostly positive with a thin negative tail (a bias-shifted activation): the folded |x|
    # threshold would clip the positive side to the negative side's scale.
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.exponential(0.1, N), -rng.exponential(0.01, N // 10)]).astype(np.float32)
    lo, hi = select_range(stats_of(x), MethodSpec("entropy"), symmetric=False)
    assert hi >= np.percentile(x, 99.0) and lo <= np.percentile(x, 1.0)


def test_entropy_on_few_values_uses_mse():
    from onnxslim.quantization.methods import effective_method

    few = stats_of(np.abs(distributions()["normal"][:3000]))
    assert effective_method(few, MethodSpec("entropy")).name == "mse"
    assert select_range(few, MethodSpec("entropy"), False) == select_range(few, MethodSpec("mse"), False)
    assert effective_method(stats_of(distributions()["normal"]), MethodSpec("entropy")).name == "entropy"


def _mse_one(edges, counts, lo, hi, steps):
    """Reference for _mse_many: one candidate grid, element by element."""
    total = 0.0
    step = (hi - lo) / steps
    for k in range(len(counts)):
        c = 0.5 * (edges[k] + edges[k + 1])
        if step <= 0:
            e = c * c
        elif c > hi:
            e = (c - hi) ** 2
        elif c < lo:
            e = (c - lo) ** 2
        elif abs(c) < step / 2:
            e = c * c
        else:
            e = step * step / 12.0
        total += counts[k] * e
    return total


@pytest.mark.parametrize("rows", [1, 5, 31, 32, 33, 70])
def test_mse_many_matches_a_candidate_by_candidate_loop(rows):
    from onnxslim.quantization.methods import _mse_many

    rng = np.random.default_rng(rows)
    edges = np.linspace(-3.0, 5.0, 202)
    counts = rng.integers(0, 50, 201).astype(np.float64)
    scale = np.linspace(0.0, 1.2, rows)  # includes a zero-width grid and grids wider than the data
    los, his = -2.5 * scale, 4.0 * scale
    got = _mse_many(edges, counts, los, his, 255)
    want = [_mse_one(edges, counts, lo, hi, 255) for lo, hi in zip(los, his)]
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


def test_mse_many_on_a_heavy_tailed_histogram_picks_the_loops_threshold():
    from onnxslim.quantization.methods import _candidate_edges, _mse_many

    rng = np.random.default_rng(7)
    x = np.abs(rng.laplace(0.0, 0.3, 1_000_000))
    counts, edges = np.histogram(x, bins=4096, range=(0.0, float(x.max()) * 1.0001))
    counts = counts.astype(np.float64)
    cand = _candidate_edges(len(counts), 255)
    got = _mse_many(edges, counts, np.zeros(len(cand)), edges[cand], 255)
    want = np.array([_mse_one(edges, counts, 0.0, float(edges[i]), 255) for i in cand])
    np.testing.assert_allclose(got, want, rtol=1e-9)
    assert int(np.argmin(got)) == int(np.argmin(want))


@pytest.mark.parametrize("seed", range(6))
def test_kl_on_sparse_histograms_with_atoms_matches_the_reference_loop(seed):
    # Empty bins everywhere (including the last bin below a non-empty tail: KL = inf), atoms
    # on empty and non-empty bins, group widths from 1 to several bins.
    rng = np.random.default_rng(seed)
    n, levels = int(rng.integers(40, 300)), int(rng.integers(8, 40))
    counts = rng.integers(0, 30, n).astype(np.float64) * (rng.random(n) < 0.5)
    atoms = np.where(rng.random(n) < 0.05, rng.integers(1, 500, n), 0).astype(np.float64)
    candidates = np.arange(levels, n + 1)
    for a in (None, atoms):
        ours = kl_divergences(counts, candidates, levels, a)
        ref = np.array([reference_kl(counts, int(i), levels, a) for i in candidates])
        assert np.array_equal(np.isinf(ours), np.isinf(ref))
        finite = ~np.isinf(ref)
        np.testing.assert_allclose(ours[finite], ref[finite], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kl_table_on_whole_counts_equals_its_extended_precision_self(seed):
    """Whole counts (every histogram's) take float64 prefix sums: exact, so the divergences are the
    extended-precision ones bit for bit, atoms included; fractional counts stay extended."""
    from onnxslim.quantization.methods import KLTable, split_atoms

    rng = np.random.default_rng(seed)
    counts = np.floor(rng.exponential(2000.0, 3000) * np.exp(-np.arange(3000) / 700.0))
    counts[::97] += 50000  # atoms
    smooth, atoms = split_atoms(counts)
    candidates = np.arange(128, 3001, 7)
    fast, slow = KLTable(smooth, atoms), KLTable(smooth, atoms, extended=True)
    assert fast.mass.dtype == np.float64 and slow.mass.dtype == np.longdouble
    np.testing.assert_array_equal(fast.divergences(candidates, 128), slow.divergences(candidates, 128))
    assert KLTable(counts + 0.25).mass.dtype == np.longdouble


@pytest.mark.parametrize("first,last,count", [(1, 4096, 256), (0, 99, 256), (5, 5, 1), (1, 300, 256), (0, 12543, 256), (3, 10, 0)])
def test_rounded_grid_is_the_unique_rounded_linspace(first, last, count):
    from onnxslim.quantization.methods import rounded_grid

    want = np.unique(np.linspace(first, last, count).round().astype(np.int64))
    np.testing.assert_array_equal(rounded_grid(first, last, count), want)


@pytest.mark.parametrize("seed", range(6))
def test_split_atoms_equals_the_rolling_median_everywhere(seed):
    """The window-minimum shortcut finds exactly the atoms (and bases) a median at every bin finds."""
    from onnxslim.quantization.methods import ATOM_FACTOR, ATOM_FLOOR, ATOM_WINDOW, split_atoms

    rng = np.random.default_rng(seed)
    n = int(rng.integers(40, 5000))
    counts = np.floor(rng.exponential(50.0 * (seed + 1), n) * np.exp(-np.arange(n) / (n / 4)))
    counts[rng.integers(0, n, 12)] += rng.integers(1, 5000, 12)  # spikes of every size, some not atoms
    counts[: n // 10] = 0 if seed % 2 else counts[: n // 10]  # an empty stretch: every spike next to it is a candidate
    half = ATOM_WINDOW // 2
    windows = np.lib.stride_tricks.sliding_window_view(np.pad(counts, half, mode="edge"), ATOM_WINDOW)
    base = np.median(windows, axis=1)
    atom = counts > ATOM_FACTOR * base + ATOM_FLOOR
    smooth, atoms = split_atoms(counts)
    if not atom.any():
        assert atoms is None and np.array_equal(smooth, counts)
        return
    np.testing.assert_array_equal(smooth, np.where(atom, base, counts))
    np.testing.assert_array_equal(atoms, np.where(atom, counts - base, 0.0))


@pytest.mark.parametrize("n", [1, 5, 33, 34, 100, 4129])
def test_window_min_is_the_sliding_window_minimum(n):
    from onnxslim.quantization.methods import _window_min

    x = np.random.default_rng(n).random(n)
    for k in (1, 2, 3, 4, 7, 8, 16, 33):
        if k <= n:
            np.testing.assert_array_equal(_window_min(x, k), np.lib.stride_tricks.sliding_window_view(x, k).min(axis=1))


@pytest.mark.parametrize("atoms", [False, True])
def test_kl_divergences_do_not_depend_on_which_candidates_come_along(atoms):
    """Groups are priced once per width and shared by the candidates of that width: each candidate's
    divergence is bit for bit what it gets alone, in any order and with repeats."""
    from onnxslim.quantization.methods import KLTable, split_atoms

    rng = np.random.default_rng(3)
    counts = np.floor(5000.0 * np.exp(-np.arange(2500) / 600.0)) + rng.integers(0, 3, 2500)
    if atoms:
        counts[::131] += 20000
    smooth, extra = split_atoms(counts)
    assert (extra is not None) == atoms
    table = KLTable(smooth, extra)
    candidates = np.arange(128, 2501, 17)
    together = table.divergences(candidates, 128)
    alone = np.array([table.divergences(np.array([i]), 128)[0] for i in candidates])
    np.testing.assert_array_equal(together, alone)
    shuffled = rng.permutation(np.concatenate([candidates, candidates[::5]]))
    np.testing.assert_array_equal(table.divergences(shuffled, 128), np.array([alone[(i - 128) // 17] for i in shuffled]))
