"""Streaming calibration: one onnxruntime pass over the samples, statistics for many tensors at once.

Memory is two batches of activations (one lane observes a batch while the other lane's
onnxruntime run computes the next) plus a fixed-size histogram per observed tensor (``4 * bins``
int64 counts), whatever the number of samples. Every statistic is an exact, order-free function
of the values seen (see :mod:`onnxslim.quantization.histogram`), so the same samples give
bit-identical ranges for any batch size or chunking, provided onnxruntime computes the same
activations per sample.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from onnxslim.calibration import ActivationCollector, CalibrationSet
from onnxslim.calibration.collect import Blocked
from onnxslim.calibration.data import batch_rows
from onnxslim.cpu import usable_cores
from onnxslim.errors import UsageError, first_line
from onnxslim.progress import ProgressBar
from onnxslim.quantization.histogram import TensorStats

logger = logging.getLogger(__name__)


def make_collector(model: onnx.ModelProto, tensors: list[str], threads: int | None = None,
                   spinning: bool = True, weights: Mapping[str, np.ndarray] | None = None) -> ActivationCollector:
    """One session for every observed tensor, with onnxruntime's graph optimizations on (observed
    tensors stay graph outputs; convolutional nets run several times faster than unoptimized), and
    NCHWc activations handed over without a reorder (``direct``: see :class:`ActivationCollector`)."""
    return ActivationCollector(model, tensors, threads, optimization_level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                               spinning=spinning, weights=weights, direct=True)


@dataclass
class Rider:
    """Another consumer of the calibration runs: ``observe(name, array)`` for each of ``tensors`` over
    the first ``samples`` samples (the last batch cut to fit), in sample order. Riders save a second
    session and second inference over the same samples (e.g. weight-rounding input moments)."""

    tensors: Sequence[str]
    observe: Callable[..., None]
    samples: int
    batch_axes: Mapping[str, int] = field(default_factory=dict)  # where a tensor's samples lie, when not on axis 0
    blocked_ok: bool = False  # observe(name, array, blocked) with arrays as the collector gives them (NCHWc or not)
    seen: int = 0  # samples handed over so far
    seconds: float = 0.0  # time spent in ``observe``

    def feed(self, values: dict[str, np.ndarray], rows: int, blocked: Mapping[str, Blocked] | None = None) -> None:
        """Hand over a batch (``values`` as the collector gives them, ``blocked`` their NCHWc layouts)."""
        take = min(rows, self.samples - self.seen)
        if take <= 0 or not self.tensors:
            return
        blocked = blocked or {}
        start = time.perf_counter()
        for name in self.tensors:
            value, layout = values[name], blocked.get(name)
            if layout is not None and not self.blocked_ok:
                value, layout = layout.to_nchw(value), None
            if take < rows:  # the last batch, cut to the samples asked for
                value = np.take(value, np.arange(take), axis=self.batch_axes.get(name, 0))
            if self.blocked_ok:
                self.observe(name, value, layout)
            else:
                self.observe(name, value)
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
    ``threads``: cores to use (default: up to 4).
    ``overlap``: two batches in flight on two lanes (:data:`LANES`), each running onnxruntime on
    half the cores and then updating the statistics, so that one lane's statistics overlap the
    other lane's inference. Two lanes beat one session on all the cores beside a statistics thread:
    an intra-op thread pool splits each operator evenly over its threads, and one of them preempted
    by the statistics thread holds up the whole operator. The statistics are still updated one batch
    at a time in sample order, so results are the same with or without overlap; two batches of
    activations are alive at a time instead of one.
    ``riders``: other observers fed from the same runs (see :class:`Rider`).
    ``weights``: initializer arrays the caller holds with ``model``'s values (see
    :class:`ActivationCollector`): the session then takes them without a copy of every weight.
    """
    if not tensors and not any(r.tensors and r.samples > 0 for r in riders):
        return {}, 0
    wants = (lambda name: histogram) if isinstance(histogram, bool) else (lambda name: name in histogram)
    stats = {name: TensorStats(bins, wants(name), sample_cap) for name in tensors}
    names = list(dict.fromkeys([*tensors, *(t for r in riders for t in r.tensors)]))
    lanes = LANES if overlap else 1
    cores = threads or usable_cores()
    # Spin-waiting intra-op threads would take the core the other lane needs.
    collector = make_collector(model, names, max(1, cores // lanes), spinning=lanes == 1, weights=weights)
    size = collector.fixed_batch or batch_size
    bar = ProgressBar("calibrating", total=None, unit="samples", enabled=None if progress else False)

    def observe_all(values: dict[str, np.ndarray], rows: int) -> None:
        for name, s in stats.items():
            s.update(values[name], rows, collector.blocked.get(name))
        for rider in riders:
            rider.feed(values, rows, collector.blocked)
        bar.update(rows)

    order = _Turns()
    failed = threading.Event()  # after a failure, lanes still in flight give their turns up unobserved

    def process(index: int, first: int, feeds) -> int:
        """Run batch ``index`` (samples from ``first``), then wait for its turn and observe it (the
        turn passes on, even on failure)."""
        rows = batch_rows(feeds)
        try:
            values = None if failed.is_set() else collector.run_raw(feeds)
        except BaseException as exc:
            failed.set()
            order.skip(index)
            if type(exc).__module__.startswith("onnxruntime"):  # the model cannot run on these samples
                raise UsageError(f"calibration: onnxruntime cannot run the model on samples {first}-{first + rows - 1} "
                                 f"(out-of-range values in the calibration data?): {ort_message(exc)}") from None
            raise
        with order.turn(index):
            if failed.is_set():
                return 0
            try:
                observe_all(values, rows)
            except BaseException:
                failed.set()
                raise
        return rows

    start = time.perf_counter()
    seen = first = left_out = 0
    with bar, ThreadPoolExecutor(lanes, "calibration") as pool:  # the bar is closed on errors too
        in_flight: deque[Future] = deque()
        try:
            for index, feeds in enumerate(data.batches(size)):
                if collector.fixed_batch and batch_rows(feeds) != collector.fixed_batch:
                    # A short batch (the last one, or one cut where the sample shape changes): the
                    # model cannot take it, and padding it with repeated samples would weigh them
                    # twice in the statistics.
                    left_out += batch_rows(feeds)
                    first += batch_rows(feeds)  # later samples keep their numbers in error messages
                    order.skip(index)
                    continue
                if len(in_flight) == lanes:  # memory stays at ``lanes`` batches of activations
                    seen += in_flight.popleft().result()
                in_flight.append(pool.submit(process, index, first, feeds))
                first += batch_rows(feeds)
            while in_flight:
                seen += in_flight.popleft().result()
        finally:
            for future in in_flight:
                future.cancel()
    if left_out and not seen:  # ranges from no data at all would be garbage
        raise UsageError(f"calibration: the model's batch is fixed at {collector.fixed_batch} and no {collector.fixed_batch} "
                         f"samples of the same shape could make a batch ({left_out} sample(s) left out)")
    if left_out:
        logger.warning("calibration: the model's batch is fixed at %d; %d sample(s) that do not fill a batch are left out",
                       collector.fixed_batch, left_out)
    logger.info("calibration: %d samples, %d tensors, %d lane(s), %.2fs", seen, len(names), lanes,
                time.perf_counter() - start)
    return stats, seen


LANES = 2  # batches in flight when statistics overlap inference


def ort_message(exc: BaseException) -> str:
    """onnxruntime's error without its ``[ONNXRuntimeError] : 2 : INVALID_ARGUMENT :`` prefix, first line."""
    text = first_line(exc, limit=10**6)
    if text.startswith("[ONNXRuntimeError]"):
        text = text.split(" : ", 3)[-1]
    return text[:300]


class _Turns:
    """Hands out turns 0, 1, 2, ... one at a time, in order (a lane waits for the one before it)."""

    def __init__(self):
        self._next = 0
        self._done: set[int] = set()
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def turn(self, index: int):
        with self._cond:
            self._cond.wait_for(lambda: self._next == index)
        try:
            yield
        finally:
            self.skip(index)

    def skip(self, index: int) -> None:
        """Turn ``index`` is over (taken or given up): the next one may go."""
        with self._cond:
            self._done.add(index)
            while self._next in self._done:
                self._done.discard(self._next)
                self._next += 1
            self._cond.notify_all()


def merged(stats: dict[str, TensorStats], names: Iterable[str]) -> TensorStats | None:
    """The statistics of several tensors pooled together (a shared-scale group)."""
    out: TensorStats | None = None
    for name in names:
        s = stats.get(name)
        if s is None or s.empty:
            continue
        out = s if out is None else out.merge(s)
    return out
