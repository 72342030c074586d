"""ONNX backend conformance of the default pipeline.

For every ONNX backend test case (suites ``node``, built in memory by onnx; ``simple``,
``pytorch-converted``, ``pytorch-operator`` from the data shipped with onnx) this runs the model
in onnxruntime (graph optimizations off) and compares with the case's reference outputs at the
case's rtol/atol, exactly as onnx's backend runner does. Then it runs ``onnxslim.optimize`` (default
pipeline, verification off) and, where plain onnxruntime passed, checks the optimized model still
passes. Counted per suite:

* ``total``; ``ort_passes``: plain onnxruntime matches the reference;
* ``still_pass``: the optimized model matches too; ``regressions``: ORT passed, optimized did not;
* ``rejected``: optimize refused the input with a clean InputModelError/UsageError (e.g. a model
  onnx's checker finds invalid); ``crashes``: any other exception (PassFailedError included),
  a worker that died, or a case over the time limit;
* ``quantize``: with a ``--quantize`` stage installed, ``int8`` is applied to the float cases
  that ORT passes and the result must load and run (outputs not compared: it is lossy).

    python tools/conformance.py [--suites node,simple] [--workers 2] [--json conformance/summary.json] [-k NAME]

Exit code 1 when there is any regression or crash.
"""

from __future__ import annotations

import argparse
import contextlib
import io as std_io
import json
import logging
import multiprocessing as mp
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Run from a checkout: put the repository first on the path (the editable install's finder can
# resolve ``onnxslim`` to a namespace package when started outside the repository root).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SUITES = ("node", "simple", "pytorch-converted", "pytorch-operator")
CASE_TIMEOUT_S = 120


@dataclass
class Case:
    suite: str
    name: str
    model: bytes
    data_sets: list[tuple[list[Any], list[Any]]]
    rtol: float
    atol: float


@dataclass
class Outcome:
    suite: str
    name: str
    ort: str  # "pass" | "fail: reason"
    optimized: str = ""  # "pass" | "fail: reason" | "rejected: reason" | "crash: reason" | ""
    quantize: str = ""  # "" (not tried) | "runs" | "fail: reason"
    seconds: float = 0.0


# --------------------------------------------------------------------------------------------
# Loading cases


def _data_dir() -> Path:
    import onnx.backend.test.loader as loader

    return Path(loader.DATA_DIR)


def load_cases(suite: str, name_filter: str | None = None) -> list[Case]:
    import onnx
    from onnx.backend.test.loader import load_model_tests

    cases = []
    if suite == "node":
        with warnings.catch_warnings(), contextlib.redirect_stdout(std_io.StringIO()):
            warnings.simplefilter("ignore")
            tests = load_model_tests(kind="node")
        for t in tests:
            if name_filter and name_filter not in t.name:
                continue
            data = [([_normalize(x) for x in ins], [_normalize(x) for x in outs]) for ins, outs in t.data_sets]
            cases.append(Case(suite, t.name, t.model.SerializeToString(), data, t.rtol, t.atol))
        return cases
    for t in load_model_tests(kind=suite):
        if (name_filter and name_filter not in t.name) or t.model_dir is None:
            continue
        model_dir = Path(t.model_dir)
        model = onnx.load_model(str(model_dir / "model.onnx"))
        cases.append(Case(suite, t.name, model.SerializeToString(), _read_data_sets(model, model_dir), t.rtol, t.atol))
    return cases


def _normalize(value: Any) -> Any:
    import onnx

    if isinstance(value, onnx.TensorProto):
        return onnx.numpy_helper.to_array(value)
    return np.asarray(value) if isinstance(value, np.generic) else value  # a few cases hold NumPy scalars


def _read_data_sets(model, model_dir: Path) -> list[tuple[list[Any], list[Any]]]:
    """``test_data_set_N/input_i.pb`` / ``output_i.pb``, typed by the graph's inputs and outputs."""
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    sets = []
    for folder in sorted(model_dir.glob("test_data_set_*")):
        ins = [_read_proto(folder / f"input_{i}.pb", v.type) for i, v in enumerate(inputs) if (folder / f"input_{i}.pb").exists()]
        outs = [_read_proto(folder / f"output_{i}.pb", v.type) for i, v in enumerate(model.graph.output)]
        sets.append((ins, outs))
    return sets


def _read_proto(path: Path, type_proto) -> Any:
    import onnx
    from onnx import numpy_helper

    content = path.read_bytes()
    if type_proto.HasField("sequence_type"):
        seq = onnx.SequenceProto()
        seq.ParseFromString(content)
        return numpy_helper.to_list(seq)
    if type_proto.HasField("optional_type"):
        opt = onnx.OptionalProto()
        opt.ParseFromString(content)
        return numpy_helper.to_optional(opt)
    tensor = onnx.TensorProto()
    tensor.ParseFromString(content)
    return numpy_helper.to_array(tensor)


# --------------------------------------------------------------------------------------------
# Running one case (in a worker process)


def _session(model_bytes: bytes):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 4
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


def _feeds(sess, inputs: list[Any]) -> dict[str, Any]:
    return {meta.name: value for meta, value in zip(sess.get_inputs(), inputs)}


def _check(model_bytes: bytes, case: Case, feeds_by_set: list[dict[str, Any]] | None, output_names: list[str]) -> str:
    """Run and compare with the references; 'pass' or 'fail: <first line>'."""
    from onnx.backend.test.runner import Runner

    try:
        sess = _session(model_bytes)
        have = {i.name for i in sess.get_inputs()}
        for k, (inputs, refs) in enumerate(case.data_sets):
            feeds = feeds_by_set[k] if feeds_by_set is not None else _feeds(sess, inputs)
            got = sess.run(output_names, {n: v for n, v in feeds.items() if n in have})
            Runner.assert_similar_outputs(refs, got, rtol=case.rtol, atol=case.atol)
    except Exception as exc:  # onnxruntime and numpy raise many unrelated types
        return "fail: " + _first_line(exc)
    return "pass"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200] if text else ''}"


def _quantize_option() -> str | None:
    """The click parameter name of a ``--quantize`` stage option, if one is installed."""
    from onnxslim.stages import stages

    for stage in stages():
        for option in stage.click_options():
            if "--quantize" in option.opts:
                return option.name
    return None


def run_case(case: Case) -> Outcome:
    import onnx

    import onnxslim
    from onnxslim.errors import InputModelError, UsageError

    start = time.perf_counter()
    model = onnx.load_model_from_string(case.model)
    output_names = [o.name for o in model.graph.output]
    outcome = Outcome(case.suite, case.name, _check(case.model, case, None, output_names))
    feeds = None
    if outcome.ort == "pass":
        sess = _session(case.model)
        feeds = [_feeds(sess, inputs) for inputs, _ in case.data_sets]
    try:
        optimized, _ = onnxslim.optimize(model, verify=False)
    except (InputModelError, UsageError) as exc:
        outcome.optimized = "rejected: " + _first_line(exc)
    except Exception as exc:  # anything else is a crash of ours, PassFailedError included
        outcome.optimized = "crash: " + _first_line(exc)
    else:
        if outcome.ort == "pass":
            outcome.optimized = _check(optimized.SerializeToString(), case, feeds, output_names)
            outcome.quantize = _try_quantize(model, case, feeds, output_names)
    outcome.seconds = time.perf_counter() - start
    return outcome


def _try_quantize(model, case: Case, feeds, output_names: list[str]) -> str:
    import onnxslim
    from onnxslim.errors import OnnxSlimError

    option = _quantize_option()
    if option is None or not any(i.type.tensor_type.elem_type == 1 for i in model.graph.input):
        return ""
    try:
        quantized, _ = onnxslim.optimize(model, verify=False, stage_values={option: "int8"})
        sess = _session(quantized.SerializeToString())
        have = {i.name for i in sess.get_inputs()}
        for f in feeds:
            sess.run(output_names, {n: v for n, v in f.items() if n in have})
    except OnnxSlimError as exc:
        return "rejected: " + _first_line(exc)
    except Exception as exc:
        return "fail: " + _first_line(exc)
    return "runs"


def _worker_init() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)


# --------------------------------------------------------------------------------------------
# Driver


@dataclass
class SuiteSummary:
    total: int = 0
    ort_passes: int = 0
    still_pass: int = 0
    regressions: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)
    quantize_runs: int = 0
    quantize_failures: list[str] = field(default_factory=list)

    def add(self, o: Outcome) -> None:
        self.total += 1
        kind = o.optimized.split(":", 1)[0]
        if kind == "rejected":
            self.rejected.append(f"{o.name}: {o.optimized[10:]}")
        elif kind == "crash":
            self.crashes.append(f"{o.name}: {o.optimized[7:]}")
        if o.ort == "pass":
            self.ort_passes += 1
            if o.optimized == "pass":
                self.still_pass += 1
            elif kind == "fail":
                self.regressions.append(f"{o.name}: {o.optimized[6:]}")
        if o.quantize == "runs":
            self.quantize_runs += 1
        elif o.quantize.startswith("fail"):
            self.quantize_failures.append(f"{o.name}: {o.quantize[6:]}")

    def counts(self) -> dict[str, int]:
        return {"total": self.total, "ort_passes": self.ort_passes, "still_pass": self.still_pass,
                "regressions": len(self.regressions), "rejected": len(self.rejected), "crashes": len(self.crashes),
                "quantize_runs": self.quantize_runs, "quantize_failures": len(self.quantize_failures)}


def run(suites: list[str], workers: int = 2, name_filter: str | None = None) -> dict[str, Any]:
    import onnx
    import onnxruntime

    summaries: dict[str, SuiteSummary] = {}
    start = time.perf_counter()
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    with ctx.Pool(workers, initializer=_worker_init, maxtasksperchild=200) as pool:
        for suite in suites:
            summary = summaries.setdefault(suite, SuiteSummary())
            cases = load_cases(suite, name_filter)
            pending = [(c, pool.apply_async(run_case, (c,))) for c in cases]
            for case, result in pending:
                try:
                    outcome = result.get(timeout=CASE_TIMEOUT_S)
                except mp.TimeoutError:
                    outcome = Outcome(suite, case.name, "pass", f"crash: no result within {CASE_TIMEOUT_S} s (worker hung or died)")
                summary.add(outcome)
    return {
        "schema": "onnxslim.conformance/1",
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "pipeline": "default",
        "seconds": round(time.perf_counter() - start, 1),
        "suites": {name: {**s.counts(), "regression_cases": s.regressions, "crash_cases": s.crashes,
                          "rejected_cases": s.rejected, "quantize_failure_cases": s.quantize_failures}
                   for name, s in summaries.items()},
    }


def format_table(result: dict[str, Any]) -> str:
    keys = ["total", "ort_passes", "still_pass", "regressions", "rejected", "crashes", "quantize_runs", "quantize_failures"]
    rows = [["suite", *keys]] + [[name, *(str(s[k]) for k in keys)] for name, s in result["suites"].items()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(keys) + 1)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suites", default=",".join(SUITES), help=f"comma-separated, from {', '.join(SUITES)}")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("-k", dest="name_filter", help="only cases whose name contains this")
    parser.add_argument("--json", dest="json_path", type=Path, help="write the summary here (e.g. conformance/summary.json)")
    args = parser.parse_args(argv)
    suites = [s.strip() for s in args.suites.split(",") if s.strip()]
    unknown = set(suites) - set(SUITES)
    if unknown:
        parser.error(f"unknown suites: {sorted(unknown)}")
    result = run(suites, args.workers, args.name_filter)
    print(format_table(result))
    for name, s in result["suites"].items():
        for label in ("regression_cases", "crash_cases"):
            for line in s[label]:
                print(f"{name}: {label[:-6]}: {line}")
    print(f"{result['seconds']} s, onnx {result['onnx']}, onnxruntime {result['onnxruntime']}")
    if args.json_path:
        args.json_path.parent.mkdir(parents=True, exist_ok=True)
        args.json_path.write_text(json.dumps(result, indent=1, sort_keys=False) + "\n")
    bad = any(s["regressions"] or s["crashes"] for s in result["suites"].values())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
