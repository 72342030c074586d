"""Activation second moments for many layers from one onnxruntime session.

Every requested activation is streamed batch by batch through :class:`Moments` accumulators
(``sum x x^T``, ``sum x``, count): memory is one batch of activations plus K x K per distinct
(activation, layout), independent of the number of samples. Layers reading the same activation
the same way (e.g. the Q, K and V projections) share one accumulator.

An optional cache (a plain dict the caller keeps, ``ctx.data["svd_cache"]``) lets a sweep that
runs the pass many times on the same model and data reuse the statistics and decompositions.

:func:`fitting_batches` is shared with ``prune_channels``: batches a fixed-batch model cannot
take are left out, as the quantization calibration does (samples are checked against the
model's inputs up front: :func:`onnxslim.calibration.data.fit_to_model`). :func:`ort_failure`
turns an onnxruntime error while collecting into one line.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, Iterable, Iterator

import numpy as np
import onnx_graphsurgeon as gs

from onnxslim.calibration import ActivationCollector, CalibrationSet
from onnxslim.calibration.data import batch_rows, regroup
from onnxslim.errors import UsageError
from onnxslim.graph import export_model
from onnxslim.svd.linalg import Moments
from onnxslim.svd.sites import Layout, rows

logger = logging.getLogger(__name__)

StatsKey = tuple[str, Layout]
Feeds = dict[str, np.ndarray]


def fitting_batches(source: CalibrationSet | Iterable[Feeds], size: int, exact: bool,
                    who: str = "factorize_svd") -> Iterator[Feeds]:
    """Batches of ``size`` samples; with ``exact`` (fixed-batch models) short batches are dropped
    (as the quantization calibration does: padding would weigh repeated samples twice)."""
    stream = source.batches(size) if isinstance(source, CalibrationSet) else regroup(source, size)
    for feeds in stream:
        count = batch_rows(feeds)
        if exact and count != size:
            logger.info("%s: dropped a batch of %d samples (the model takes batches of %d)", who, count, size)
            continue
        yield feeds


def ort_failure(exc: BaseException, who: str) -> Exception:
    """An onnxruntime error while running calibration data: one line (a UsageError); others as they are."""
    if type(exc).__module__.startswith("onnxruntime"):
        from onnxslim.quantization.calibrate import ort_message

        return UsageError(f"{who}: onnxruntime cannot run the model on the calibration data: {ort_message(exc)}")
    return exc


def collect_moments(
    graph: gs.Graph,
    requests: dict[StatsKey, int],
    calibration: CalibrationSet,
    holdout: list[Feeds],
    batch_size: int,
) -> tuple[dict[StatsKey, Moments], dict[StatsKey, Moments]]:
    """Moments of every requested (activation name, layout) -> K, on calibration and held-out data."""
    names = sorted({name for name, _ in requests})
    by_name: dict[str, list[StatsKey]] = {}
    for key in requests:
        by_name.setdefault(key[0], []).append(key)
    collector = ActivationCollector(export_model(graph.copy()), names)
    size = collector.fixed_batch or batch_size
    exact = collector.fixed_batch is not None

    def into(store: dict[StatsKey, Moments]):
        def observe(name: str, value: np.ndarray) -> None:
            for key in by_name.get(name, ()):
                store[key].add(rows(key[1], value))

        return observe

    calib = {key: Moments(k) for key, k in requests.items()}
    held = {key: Moments(k) for key, k in requests.items()}
    try:
        seen = collector.collect(fitting_batches(calibration, size, exact), into(calib))
        held_seen = collector.collect(fitting_batches(holdout, size, exact), into(held)) if holdout else 0
    except Exception as exc:
        error = ort_failure(exc, "factorize_svd")
        if error is exc:
            raise
        raise error from None
    logger.info("factorize_svd: activation statistics of %d tensors from %d calibration and %d held-out samples",
                len(names), seen, held_seen)
    return calib, (held if held_seen else {})


class Cache:
    """View of the caller's cache dict for one calibration/held-out pair (kept alive by the cache)."""

    def __init__(self, store: dict | None, calibration: Any, holdout: Any):
        self.store = store
        if store is not None:
            refs = store.setdefault("_sources", [])
            for obj in (calibration, holdout):
                if obj is not None and not any(r is obj for r in refs):
                    refs.append(obj)
        self.token = (id(calibration), id(holdout))

    def get(self, key: tuple) -> Any:
        return None if self.store is None else self.store.get((self.token, key))

    def put(self, key: tuple, value: Any) -> None:
        if self.store is not None:
            self.store[(self.token, key)] = value


def weight_digest(weight: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(weight).tobytes(), digest_size=16).hexdigest()
