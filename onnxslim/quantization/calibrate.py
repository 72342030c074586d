"""Streaming calibration: one onnxruntime pass over the samples, statistics for many tensors at once.

Memory is two batches of activations (one being observed while onnxruntime computes the next)
plus a fixed-size histogram per observed tensor (``4 * bins`` int64 counts), whatever the number
of samples. Every statistic is an exact, order-free function of the values seen (see
:mod:`onnxslim.quantization.histogram`), so the same samples give bit-identical ranges for any
batch size or chunking, provided onnxruntime computes the same activations per sample.
"""

from __future__ import annotations

import contextlib
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from onnxslim.calibration import ActivationCollector, CalibrationSet
from onnxslim.calibration.data import batch_rows
from onnxslim.progress import ProgressBar
from onnxslim.quantization.histogram import TensorStats

logger = logging.getLogger(__name__)


def make_collector(model: onnx.ModelProto, tensors: list[str], threads: int | None = None,
                   spinning: bool = True, weights: Mapping[str, np.ndarray] | None = None) -> ActivationCollector:
    """One session for every observed tensor, with onnxruntime's graph optimizations on (observed
    tensors stay graph outputs; convolutional nets run several times faster than unoptimized)."""
    return ActivationCollector(model, tensors, threads, optimization_level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                               spinning=spinning, weights=weights)


@dataclass
class Rider:
    """Another consumer of the calibration runs: ``observe(name, array)`` for each of ``tensors`` over
    the first ``samples`` samples (the last batch cut to fit), in sample order. Riders save a second
    session and second inference over the same samples (e.g. weight-rounding input moments)."""

    tensors: Sequence[str]
    observe: Callable[[str, np.ndarray], None]
    samples: int
    seen: int = 0  # samples handed over so far
    seconds: float = 0.0  # time spent in ``observe``

    def feed(self, values: dict[str, np.ndarray], rows: int) -> None:
        take = min(rows, self.samples - self.seen)
        if take <= 0 or not self.tensors:
            return
        start = time.perf_counter()
        for name in self.tensors:
            self.observe(name, values[name] if take == rows else values[name][:take])
        self.seen += take
        self.seconds += time.perf_counter() - start


def collect_stats(model: onnx.ModelProto, tensors: list[str], data: CalibrationSet, *, bins: int = 2048,
                  histogram: bool | set[str] = True, batch_size: int = 8, progress: bool = False,
                  threads: int | None = None, sample_cap: int = 0, overlap: bool = True,
                  riders: Sequence[Rider] = (), weights: Mapping[str, np.ndarray] | None = None
                  ) -> tuple[dict[str, TensorStats], int]:
    """Statistics of ``tensors`` over every sample of ``data`` (one inference per batch), and the sample count.

    ``histogram``: True for all tensors, False for min/max only, or the set of tensors that need one.
    ``sample_cap``: histogram values taken per sample and tensor (0: all; min/max always see all).
    ``overlap``: update the statistics of one batch in a worker thread while onnxruntime runs the
    next (NumPy and onnxruntime both release the GIL); two batches of activations are then alive
    at a time instead of one. The updates still happen in sample order, so results are the same.
    ``riders``: other observers fed from the same runs (see :class:`Rider`).
    ``weights``: initializer arrays the caller holds with ``model``'s values (see
    :class:`ActivationCollector`): the session then takes them without a copy of every weight.
    """
    if not tensors and not any(r.tensors and r.samples > 0 for r in riders):
        return {}, 0
    wants = (lambda name: histogram) if isinstance(histogram, bool) else (lambda name: name in histogram)
    stats = {name: TensorStats(bins, wants(name), sample_cap) for name in tensors}
    names = list(dict.fromkeys([*tensors, *(t for r in riders for t in r.tensors)]))
    # Spin-waiting intra-op threads would take the core the statistics thread needs.
    collector = make_collector(model, names, threads, spinning=not overlap, weights=weights)
    size = collector.fixed_batch or batch_size
    bar = ProgressBar("calibrating", total=None, unit="samples", enabled=None if progress else False)

    def observe_all(values: dict[str, np.ndarray], rows: int) -> None:
        for name, s in stats.items():
            s.update(values[name], rows)
        for rider in riders:
            rider.feed(values, rows)
        bar.update(rows)

    start = time.perf_counter()
    seen = 0
    with contextlib.ExitStack() as stack:
        worker = stack.enter_context(ThreadPoolExecutor(1, "calibration")) if overlap else None
        pending: Future | None = None
        for feeds in data.batches(size):
            values = collector.run(feeds)
            rows = batch_rows(feeds)
            if pending is not None:
                pending.result()  # one batch in flight at most: memory stays two batches
            if worker is None:
                observe_all(values, rows)
            else:
                pending = worker.submit(observe_all, values, rows)
            del values
            seen += rows
        if pending is not None:
            pending.result()
    bar.close()
    logger.info("calibration: %d samples, %d tensors, %.2fs", seen, len(names), time.perf_counter() - start)
    return stats, seen


def merged(stats: dict[str, TensorStats], names: Iterable[str]) -> TensorStats | None:
    """The statistics of several tensors pooled together (a shared-scale group)."""
    out: TensorStats | None = None
    for name in names:
        s = stats.get(name)
        if s is None or s.empty:
            continue
        out = s if out is None else out.merge(s)
    return out
