"""Measure one model with onnxruntime for the bench, in a process of its own.

    python tools/bench_eval.py baseline IN.onnx --work W [--spec JSON]
    python tools/bench_eval.py check OUT.onnx --work W
    python tools/bench_eval.py time IN.onnx OUT1.onnx ... --work W [--runs N] [--threads T]

``baseline`` synthesizes seeded inputs (shapes from ``--spec``, the zoo manifest's entry) and
saves them and the input model's outputs under W; ``check`` runs a tool's output on the very
same inputs and compares; ``time`` measures all the given models in one process, round-robin.
Each prints one JSON object on its last stdout line.

Latency: onnxruntime CPU, default graph optimizations, ``intra_op_num_threads=T``, sequential
execution; after 2 warm-up runs each, rounds of one run per model (at least N, more for fast
models: about ``--min-time`` seconds each); the median and the minimum per model. Round-robin
timing spreads load from other processes evenly over the models compared; on a loaded machine
the median reflects the CPU share the runs got, the minimum the model's own speed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from zoo_feeds import synthesize_feeds

WARMUP_RUNS = 2
MAX_ROUNDS = 500
RTOL, ATOL = 1e-3, 1e-4  # fp32 outputs of an exact rewrite, after reassociation by the tools


def model_size(path: Path, model: onnx.ModelProto) -> int:
    """Bytes on disk, external data files included."""
    files = {path}
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                files.add(path.parent / entry.value)
    return sum(f.stat().st_size for f in files if f.is_file())


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def compare(reference: dict[str, np.ndarray], names: list[str], outputs: list[np.ndarray]) -> dict:
    """Max abs difference over all outputs (by name, else by position) and whether all are close."""
    ref_names = list(reference)
    if len(outputs) != len(ref_names):
        return {"max_abs_diff": None, "match": False, "note": f"{len(outputs)} outputs, expected {len(ref_names)}"}
    pairs = [(reference[n], o) for n, o in zip(names, outputs)] if set(names) == set(ref_names) else list(zip(reference.values(), outputs))
    worst, match = 0.0, True
    for expected, got in pairs:
        got = np.asarray(got)
        if expected.shape != got.shape:
            return {"max_abs_diff": None, "match": False, "note": f"shape {got.shape}, expected {expected.shape}"}
        a, b = expected.astype(np.float64), got.astype(np.float64)
        same_nonfinite = (~np.isfinite(a) & (a == b)) | (np.isnan(a) & np.isnan(b))
        diff = np.where(same_nonfinite, 0.0, np.abs(a - b))
        diff = np.nan_to_num(diff, nan=np.inf)
        worst = max(worst, float(diff.max()) if diff.size else 0.0)
        match &= bool(np.all(diff <= ATOL + RTOL * np.abs(np.nan_to_num(a))))
    return {"max_abs_diff": worst, "match": match}


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Named arrays to ``path`` (.npz, positional, so that any tensor name is safe) + a names file."""
    np.savez(path, *arrays.values())
    path.with_suffix(".names.json").write_text(json.dumps(list(arrays)))


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    names = json.loads(path.with_suffix(".names.json").read_text())
    with np.load(path) as stored:
        return {name: stored[f"arr_{i}"] for i, name in enumerate(names)}


def baseline(path: Path, work: Path, spec: dict) -> dict:
    """Save seeded inputs and the input model's outputs on them under ``work``."""
    model = onnx.load(str(path), load_external_data=False)
    result = {"nodes": len(model.graph.node), "bytes": model_size(path, model)}
    feeds = synthesize_feeds(
        model, spec.get("shapes"), spec.get("dims"), spec.get("ranges"), seed=spec.get("seed", 0), text_image=spec.get("text_image")
    )
    del model
    sess = session(path, 1)
    save_arrays(work / "feeds.npz", feeds)
    save_arrays(work / "reference.npz", dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds))))
    return result


def check(path: Path, work: Path) -> dict:
    """Run a tool's output on the saved inputs and compare with the saved reference outputs."""
    model = onnx.load(str(path), load_external_data=False)
    result = {"nodes": len(model.graph.node), "bytes": model_size(path, model)}
    del model
    sess = session(path, 1)
    outputs = sess.run(None, load_arrays(work / "feeds.npz"))
    result.update(compare(load_arrays(work / "reference.npz"), [o.name for o in sess.get_outputs()], outputs))
    return result


def latencies(paths: list[Path], work: Path, runs: int, threads: int, min_time: float) -> dict:
    """Median latency (ms) of each model, timed round-robin so that load from elsewhere hits all alike.

    At least ``runs`` rounds, and more (up to MAX_ROUNDS) until each model has run about
    ``min_time`` seconds, so that fast models get enough samples for a stable median.
    """
    feeds = load_arrays(work / "feeds.npz")
    sessions = [session(path, threads) for path in paths]
    slowest = 0.0
    for sess in sessions:
        for _ in range(WARMUP_RUNS):
            start = time.perf_counter()
            sess.run(None, feeds)
            slowest = max(slowest, time.perf_counter() - start)
    rounds = min(MAX_ROUNDS, max(runs, math.ceil(min_time / max(slowest, 1e-6))))
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(rounds):
        for sess, record in zip(sessions, times):
            start = time.perf_counter()
            sess.run(None, feeds)
            record.append((time.perf_counter() - start) * 1e3)
    return {
        "rounds": rounds,
        "latency_ms": {str(path): statistics.median(record) for path, record in zip(paths, times)},
        "latency_min_ms": {str(path): min(record) for path, record in zip(paths, times)},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("baseline", "check", "time"))
    parser.add_argument("models", type=Path, nargs="+", help="one model; for time, all to time together")
    parser.add_argument("--work", type=Path, required=True, help="folder for the shared inputs and reference outputs")
    parser.add_argument("--spec", default="{}", help="JSON: shapes, dims, ranges, text_image, seed (baseline only)")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds of timed runs per model, at least")
    args = parser.parse_args()
    try:
        if args.mode == "baseline":
            result = baseline(args.models[0], args.work, json.loads(args.spec))
        elif args.mode == "check":
            result = check(args.models[0], args.work)
        else:
            result = latencies(args.models, args.work, args.runs, args.threads, args.min_time)
    except Exception as error:  # reported as data: the bench records it and goes on
        result = {"error": f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300] if str(error).strip() else ''}"}
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown of large sessions


if __name__ == "__main__":
    main()
