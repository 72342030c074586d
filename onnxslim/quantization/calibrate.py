"""Streaming calibration: one onnxruntime pass over the samples, statistics for many tensors at once.

Memory is one batch of activations plus a fixed-size histogram per observed tensor (``4 * bins``
int64 counts), whatever the number of samples. Every statistic is an exact, order-free function
of the values seen (see :mod:`onnxslim.quantization.histogram`), so the same samples give
bit-identical ranges for any batch size or chunking, provided onnxruntime computes the same
activations per sample.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Iterable, Iterator

import numpy as np
import onnx
import onnxruntime as ort

from onnxslim.calibration import ActivationCollector, CalibrationSet
from onnxslim.calibration.collect import _tensor_types
from onnxslim.calibration.data import Feeds
from onnxslim.io import TWO_GB
from onnxslim.progress import ProgressBar
from onnxslim.quantization.histogram import TensorStats

logger = logging.getLogger(__name__)


class OptimizedCollector(ActivationCollector):
    """ActivationCollector whose session runs with onnxruntime's graph optimizations on.

    The shared collector disables them; requested tensors stay graph outputs either way (onnxruntime
    never fuses away a graph output), and the optimized session is several times faster on convs.
    Models over 2 GB use the shared collector.
    """

    def __init__(self, model: onnx.ModelProto, tensor_names: list[str], threads: int | None = None,
                 level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        self.names = list(dict.fromkeys(tensor_names))
        types = _tensor_types(model)
        # The requested tensors are added to ``model`` itself for the time it takes to serialize it,
        # then removed: no second copy of the weights.
        kept = len(model.graph.output)
        existing = {o.name for o in model.graph.output}
        for name in self.names:
            if name not in existing:
                model.graph.output.append(onnx.helper.make_tensor_value_info(name, types.get(name, onnx.TensorProto.FLOAT), None))
        opts = ort.SessionOptions()
        opts.graph_optimization_level = level
        opts.log_severity_level = 3
        opts.intra_op_num_threads = threads or min(4, os.cpu_count() or 1)
        try:
            self.session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        finally:
            del model.graph.output[kept:]
        self.input_names = {i.name for i in self.session.get_inputs()}
        fixed = {i.shape[0] for i in self.session.get_inputs() if i.shape and isinstance(i.shape[0], int)}
        self.fixed_batch = fixed.pop() if len(fixed) == 1 else None


def make_collector(model: onnx.ModelProto, tensors: list[str], threads: int | None = None) -> ActivationCollector:
    if model.ByteSize() < TWO_GB // 2:
        return OptimizedCollector(model, tensors, threads)
    return ActivationCollector(model, tensors, threads=threads)


def _counted(batches: Iterable[Feeds], bar: ProgressBar, current: dict[str, int]) -> Iterator[Feeds]:
    for feeds in batches:
        current["rows"] = int(next(iter(feeds.values())).shape[0]) if feeds else 0
        yield feeds
        bar.update(current["rows"])


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
    collector = make_collector(model, tensors, threads)
    size = collector.fixed_batch or batch_size
    bar = ProgressBar("calibrating", total=None, unit="samples", enabled=None if progress else False)

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
