"""Property: the default pipeline never changes what a model computes.

Random valid graphs (tests/reliability/graphgen.py) go through ``onnxslim.optimize`` with
verification off; onnxruntime then runs the original and the optimized model on the same seeded
inputs and every output must match (max error <= 1e-4 x max(1, max |reference|), NaNs at the
same places). The normal suite runs a small, derandomized budget; the big run is separate:

    ONNXSLIM_FUZZ_EXAMPLES=2000 python -m pytest -m slow tests/reliability/test_fuzz.py

Every failure found becomes a regression test in tests/reliability/test_fuzz_regressions.py.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, note, settings

import onnxslim
from tests.reliability.graphgen import FEED_SHAPE_KEY, graphs

TOLERANCE = 1e-4
COMMON = dict(deadline=None, database=None, print_blob=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
settings.register_profile("onnxslim-ci", max_examples=40, derandomize=True, **COMMON)
settings.register_profile("onnxslim-many", max_examples=int(os.environ.get("ONNXSLIM_FUZZ_EXAMPLES", "2000")), **COMMON)


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {k: v for k, v in feeds.items() if k in {i.name for i in sess.get_inputs()}})))


def feeds_for(model: onnx.ModelProto, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = [int(d) for d in {p.key: p.value for p in model.metadata_props}[FEED_SHAPE_KEY].split(",")]
    return {i.name: rng.standard_normal(shape).astype(np.float32) for i in model.graph.input}


def assert_same_outputs(original: onnx.ModelProto, optimized: onnx.ModelProto, seeds=(0, 1)) -> None:
    assert [o.name for o in optimized.graph.output] == [o.name for o in original.graph.output]
    for seed in seeds:
        feeds = feeds_for(original, seed)
        want, got = run(original, feeds), run(optimized, feeds)
        for name, w in want.items():
            g = got[name]
            assert g.shape == w.shape and g.dtype == w.dtype, f"{name}: {g.dtype}{g.shape} vs {w.dtype}{w.shape}"
            assert np.array_equal(np.isnan(w), np.isnan(g)), f"{name}: NaN positions differ"
            finite = ~np.isnan(w)
            err = float(np.max(np.abs(w[finite] - g[finite]), initial=0.0))
            scale = max(1.0, float(np.max(np.abs(w[finite]), initial=0.0)))
            assert err <= TOLERANCE * scale, f"{name}: max error {err:.3g} (scale {scale:.3g})"


def check(model: onnx.ModelProto) -> None:
    note(onnx.helper.printable_graph(model.graph))
    onnx.checker.check_model(model, full_check=True)  # the generator only makes valid graphs
    optimized, _ = onnxslim.optimize(model, verify=False)
    note(onnx.helper.printable_graph(optimized.graph))
    onnx.checker.check_model(optimized)
    assert_same_outputs(model, optimized)


@settings(settings.get_profile("onnxslim-ci"))
@given(graphs())
def test_default_pipeline_preserves_outputs(model):
    check(model)


@pytest.mark.slow
@settings(settings.get_profile("onnxslim-many"))
@given(graphs(max_steps=14))
def test_default_pipeline_preserves_outputs_many(model):
    check(model)
