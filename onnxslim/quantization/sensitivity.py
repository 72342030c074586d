"""Per-layer quantization sensitivity and fallback to float under an error budget.

1. The fully quantized model is measured on held-out samples (worst output's cosine and SQNR);
   if it meets the budget, nothing falls back.
2. Otherwise each int8 layer with weights is measured alone (only that layer quantized, everything else float):
   its sensitivity is the output error it causes by itself.
3. Layers fall back to float, most sensitive first: k = 1, 2, 4, ... until the budget holds, then
   a binary search finds the smallest such k. Each candidate is a real model run in onnxruntime.

``build(fallback)`` (given by the pass) returns the quantized model with the named layers left in
float, so this module knows nothing about graphs.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import onnx

from onnxslim.quantization.options import ErrorBudget
from onnxslim.verify import fidelity, run

logger = logging.getLogger(__name__)

Builder = Callable[[frozenset], onnx.ModelProto]


@dataclass
class Score:
    cosine: float
    sqnr_db: float

    def meets(self, budget: ErrorBudget) -> bool:
        return budget.met(self.cosine, self.sqnr_db)


class FidelityProbe:
    """Runs candidate models on held-out feeds and scores them against the float model's outputs."""

    def __init__(self, reference: onnx.ModelProto, feeds: Sequence[dict[str, np.ndarray]]):
        self.feeds = list(feeds)
        self.names, self.want = run(reference, self.feeds)
        self.evaluations = 0

    def score(self, model: onnx.ModelProto) -> Score:
        self.evaluations += 1
        names, got = run(model, self.feeds)
        fid = fidelity(self.names, self.want, names, got)
        cosine = min((f.cosine for f in fid), default=1.0)
        sqnr = min((f.sqnr_db for f in fid), default=math.inf)
        return Score(cosine, sqnr)


@dataclass
class FallbackResult:
    fallback: list[str]
    rows: list[dict]
    before: Score
    after: Score
    met: bool


def single_layer_exclusions(layers: dict[str, str]) -> list[tuple[str, frozenset[str]]]:
    """Each candidate layer with the layers to exclude to measure it quantized alone. Only layers
    with weights: an elementwise or data-movement op alone between float layers is not quantized
    at all (nothing int8 reads it), so measuring it "alone" would measure the float model."""
    candidates = [name for name, kind in layers.items() if kind == "compute"]
    return [(name, frozenset(candidates) - {name}) for name in candidates]


def find_fallback(build: Builder, layers: dict[str, str], probe: FidelityProbe, budget: ErrorBudget) -> FallbackResult:
    """The fewest most-sensitive layers to leave in float so that ``budget`` holds."""
    full = probe.score(build(frozenset()))
    if full.meets(budget):
        return FallbackResult([], [], full, full, True)
    alone = single_layer_exclusions(layers)
    candidates = [name for name, _ in alone]
    scores = {name: probe.score(build(others)) for name, others in alone}
    ranked = sorted(candidates, key=lambda n: (scores[n].sqnr_db, scores[n].cosine, n))
    cache: dict[int, Score] = {0: full}

    def with_top(k: int) -> Score:
        if k not in cache:
            cache[k] = probe.score(build(frozenset(ranked[:k])))
        return cache[k]

    k, good = 1, None
    while k <= len(ranked):
        if with_top(k).meets(budget):
            good = k
            break
        k *= 2
    if good is None:
        good = len(ranked)
        if not with_top(good).meets(budget):
            good = None
    if good is not None:
        lo = good // 2  # known to fail (or 0)
        while good - lo > 1:
            mid = (lo + good) // 2
            if with_top(mid).meets(budget):
                good = mid
            else:
                lo = mid
    chosen = ranked[:good] if good is not None else ranked
    final = cache.get(len(chosen)) or with_top(len(chosen))
    rows = []
    for rank, name in enumerate(ranked, start=1):
        s = scores[name]
        fell = name in chosen
        reason = f"rank {rank} by sensitivity; needed for {budget}" if fell else ""
        rows.append({"layer": name, "kind": layers[name], "rank": rank,
                     "alone_cosine": round(s.cosine, 6), "alone_sqnr_db": round(s.sqnr_db, 2),
                     "fallback": fell, "reason": reason})
    logger.info("fallback: %d of %d layers to float (%d evaluations); %s -> cosine %.5f, SQNR %.1f dB",
                len(chosen), len(ranked), probe.evaluations, budget, final.cosine, final.sqnr_db)
    return FallbackResult(list(chosen), rows, full, final, good is not None)
