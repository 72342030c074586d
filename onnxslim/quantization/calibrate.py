"""Streaming calibration: one onnxruntime pass over the samples, statistics for many tensors at once.

Memory is one batch of activations plus a fixed-size histogram per observed tensor (``4 * bins``
int64 counts), whatever the number of samples. Every statistic is an exact, order-free function
of the values seen (see :mod:`onnxslim.quantization.histogram`), so the same samples give
bit-identical ranges for any batch size or chunking, provided onnxruntime computes the same
activations per sample.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Iterable, Iterator, TextIO

import numpy as np
import onnx

from onnxslim.calibration import ActivationCollector, CalibrationSet
from onnxslim.calibration.data import Feeds
from onnxslim.quantization.histogram import TensorStats

logger = logging.getLogger(__name__)


class Progress:
    """A one-line progress counter on a TTY (stderr); silent elsewhere."""

    def __init__(self, label: str, total: int | None = None, stream: TextIO | None = None, enabled: bool = True):
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.label, self.total, self.done = label, total, 0
        self.start = time.perf_counter()
        self._last = 0.0

    def advance(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if self.enabled and (now - self._last > 0.1):
            self._last = now
            rate = self.done / max(now - self.start, 1e-9)
            of = f"/{self.total}" if self.total else ""
            self.stream.write(f"\r{self.label}: {self.done}{of} samples ({rate:.1f}/s)")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write(f"\r{self.label}: {self.done} samples in {time.perf_counter() - self.start:.1f}s\n")
            self.stream.flush()


def _counted(batches: Iterable[Feeds], progress: Progress, current: dict[str, int]) -> Iterator[Feeds]:
    for feeds in batches:
        current["rows"] = int(next(iter(feeds.values())).shape[0]) if feeds else 0
        yield feeds
        progress.advance(current["rows"])


def collect_stats(model: onnx.ModelProto, tensors: list[str], data: CalibrationSet, *, bins: int = 2048,
                  histogram: bool | set[str] = True, batch_size: int = 8, progress: bool = False,
                  threads: int | None = None, sample_cap: int = 0) -> tuple[dict[str, TensorStats], int]:
    """Statistics of ``tensors`` over every sample of ``data`` (one inference per batch), and the sample count.

    ``histogram``: True for all tensors, False for min/max only, or the set of tensors that need one.
    ``sample_cap``: histogram values taken per sample and tensor (0: all; min/max always see all).
    """
    if not tensors:
        return {}, 0
    wants = (lambda name: histogram) if isinstance(histogram, bool) else (lambda name: name in histogram)
    stats = {name: TensorStats(bins, wants(name), sample_cap) for name in tensors}
    collector = ActivationCollector(model, tensors, threads=threads)
    size = collector.fixed_batch or batch_size
    bar = Progress("calibrating", total=None, enabled=progress)

    current = {"rows": 0}

    def observe(name: str, value: np.ndarray) -> None:
        stats[name].update(value, current["rows"])

    start = time.perf_counter()
    seen = collector.collect(_counted(data.batches(size), bar, current), observe, batch_size=size)
    bar.close()
    logger.info("calibration: %d samples, %d tensors, %.2fs", seen, len(tensors), time.perf_counter() - start)
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
