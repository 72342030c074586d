"""Targets bench: what `--emit` buys on this CPU, side by side in one run.

    python tools/bench_targets.py --zoo zoo --models resnet50,minilm_l6 --trials 64 --json bench-out/targets.json

Per model (inputs: ResNet-50 1x3x224x224, MiniLM/BERT 1x128 tokens):

* ORT: latency on onnxruntime CPU of the ``--target ort --device x86`` emitted model.onnx (from
  ``onnxslim optimize`` without --input-shape: ORT needs no static shapes) vs the input (zoo)
  model, same session settings (ORT_ENABLE_ALL, --threads intra-op threads, no spin-waiting so
  that the idle session does not steal cores), median of interleaved runs.
* TVM x86 (from ``onnxslim optimize --input-shape ...``: tuning needs static shapes): latency of
  the compiled model.so in relax.VirtualMachine (TVM_NUM_THREADS=--threads),
  untuned and tuned with meta-schedule for --trials measured trials (tuning wall time reported;
  the database is kept under --work and reused by a later run with the same --trials), each as a
  multiple of the emitted model's ORT latency. Both TVM builds were checked against onnxruntime
  at fp32 tolerance by the emitter (the ``checks`` column).

Each emit runs in its own process (as ``onnxslim optimize --emit`` does): meta-schedule leaves
state behind that slows later builds in the same process. Prints a Markdown table; --json writes
every number.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

MODELS = {
    "resnet50": ("resnet50.legacy.onnx", {"input": [1, 3, 224, 224]}),
    "mobilenetv2": ("mobilenetv2.legacy.onnx", {"input": [1, 3, 224, 224]}),
    "minilm_l6": ("minilm_l6.legacy.onnx", {"input_ids": [1, 128], "attention_mask": [1, 128], "token_type_ids": [1, 128]}),
    "bert_base": ("bert_base.legacy.onnx", {"input_ids": [1, 128], "attention_mask": [1, 128], "token_type_ids": [1, 128]}),
}


def feeds_for(shapes: dict[str, list[int]], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, shape in shapes.items():
        if name == "input_ids":
            feeds[name] = rng.integers(1000, 30000, shape).astype(np.int64)
        elif name == "attention_mask":
            feeds[name] = np.ones(shape, np.int64)
        elif name == "token_type_ids":
            feeds[name] = np.zeros(shape, np.int64)
        else:
            feeds[name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    # Sessions measured round robin in one process: idle sessions' spinning threads would steal the cores.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def timed(fn, runs: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def interleaved(fns: dict[str, callable], runs: int) -> dict[str, float]:
    """Median ms of each function, measured round robin (drift hits all alike)."""
    for fn in fns.values():
        fn()
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(runs):
        for key, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[key].append((time.perf_counter() - t) * 1000)
    return {k: statistics.median(v) for k, v in times.items()}


def tvm_latency(library: Path, shapes: dict, feeds: dict, runs: int) -> float:
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.runtime.load_module(str(library)), tvm.cpu())
    args = [tvm.runtime.tensor(feeds[name]) for name in shapes]
    return statistics.median(timed(lambda: vm["main"](*args), runs, warmup=1))


def emit_isolated(target: str, device: str, model: Path, out: Path, options: dict) -> dict:
    """onnxslim.targets.emit in a fresh process; returns the result dict."""
    code = ("import json, sys; from onnxslim.targets import emit; a = json.loads(sys.argv[1]); "
            "print(json.dumps(emit(a[0], a[1], a[2], a[3], a[4]).to_dict()))")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps([target, device, str(model), str(out), options])],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"emit {target}/{device} failed: {proc.stderr.strip()[-1500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def checks(result: dict) -> str:
    return ", ".join(f"{c['status']}" for c in result["checks"]) or "-"


def bench_model(name: str, zoo: Path, work: Path, args) -> dict:
    from onnxslim.api import optimize_file

    filename, shapes = MODELS[name]
    source = zoo / filename
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    optimized, static = folder / "opt.onnx", folder / "opt_static.onnx"
    t = time.perf_counter()
    optimize_file(source, optimized)
    optimize_file(source, static, input_shapes=shapes)
    row: dict = {"model": name, "optimize_s": round(time.perf_counter() - t, 1), "shapes": shapes, "threads": args.threads}
    feeds = feeds_for(shapes)
    ort_out = emit_isolated("ort", "x86", optimized, folder / "ort", {})
    row["ort_checks"] = checks(ort_out)
    sess_in, sess_out = ort_session(source, args.threads), ort_session(folder / "ort" / "model.onnx", args.threads)
    lat = interleaved({"in": lambda: sess_in.run(None, feeds), "out": lambda: sess_out.run(None, feeds)}, args.runs)
    row.update(ort_input_ms=round(lat["in"], 2), ort_emitted_ms=round(lat["out"], 2), ort_ratio=round(lat["out"] / lat["in"], 3))
    print(f"[{name}] ORT input {lat['in']:.1f} ms, emitted {lat['out']:.1f} ms", file=sys.stderr)
    t = time.perf_counter()
    untuned = emit_isolated("tvm", "x86", static, folder / "tvm", {"input_shapes": shapes})
    row["tvm_build_s"] = round(time.perf_counter() - t, 1)
    row["tvm_checks"] = checks(untuned)
    row["tvm_untuned_ms"] = round(tvm_latency(folder / "tvm" / "model.so", shapes, feeds, args.tvm_runs), 1)
    row["tvm_untuned_x_ort"] = round(row["tvm_untuned_ms"] / lat["out"], 1)
    print(f"[{name}] TVM untuned {row['tvm_untuned_ms']:.1f} ms", file=sys.stderr)
    if args.trials:
        db = work / "tuning" / f"{name}-{args.trials}"
        reuse = (db / "database_tuning_record.json").is_file()
        options = {"input_shapes": shapes, "tuning_db": str(db), "tune_trials": 0 if reuse else args.trials}
        t = time.perf_counter()
        tuned = emit_isolated("tvm", "x86", static, folder / "tvm_tuned", options)
        row["tune_s"] = round(time.perf_counter() - t, 1)
        row["tune_reused_db"] = reuse
        row["trials"] = args.trials
        row["tvm_tuned_checks"] = checks(tuned)
        meta = json.loads((folder / "tvm_tuned" / "tvm_meta.json").read_text())
        row["tuning_records"] = meta["tuning"]["records"]
        row["tvm_tuned_ms"] = round(tvm_latency(folder / "tvm_tuned" / "model.so", shapes, feeds, args.tvm_runs), 1)
        row["tvm_tuned_x_ort"] = round(row["tvm_tuned_ms"] / lat["out"], 1)
        print(f"[{name}] TVM tuned ({args.trials} trials) {row['tvm_tuned_ms']:.1f} ms", file=sys.stderr)
    return row


def table(rows: list[dict]) -> str:
    head = ["model", "ORT input ms", "ORT emitted ms", "emitted/input", "TVM untuned ms", "x ORT",
            "TVM tuned ms (trials)", "x ORT", "tune s", "checks (ort; tvm; tuned)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        tuned = f"{r['tvm_tuned_ms']} ({r['trials']})" if "tvm_tuned_ms" in r else "-"
        lines.append("| " + " | ".join(str(v) for v in [
            r["model"], r["ort_input_ms"], r["ort_emitted_ms"], r["ort_ratio"], r["tvm_untuned_ms"], r["tvm_untuned_x_ort"],
            tuned, r.get("tvm_tuned_x_ort", "-"), r.get("tune_s", "-"),
            f"{r['ort_checks']}; {r['tvm_checks']}; {r.get('tvm_tuned_checks', '-')}"]) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", default="zoo", type=Path)
    parser.add_argument("--models", default="resnet50,minilm_l6")
    parser.add_argument("--trials", type=int, default=64, help="meta-schedule trials for the tuned TVM build (0: skip)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20, help="timed ORT runs per model (interleaved)")
    parser.add_argument("--tvm-runs", type=int, default=5)
    parser.add_argument("--work", type=Path, default=Path("bench-out/targets"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    rows = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        if name not in MODELS:
            parser.error(f"unknown model {name!r} (known: {', '.join(MODELS)})")
        if not (args.zoo / MODELS[name][0]).is_file():
            parser.error(f"{args.zoo / MODELS[name][0]} is missing: build it with python tools/zoo.py")
        rows.append(bench_model(name, args.zoo, args.work, args))
    print(f"CPU: {os.cpu_count()} cores, {args.threads} threads; ORT median of {args.runs}, TVM median of {args.tvm_runs}")
    print(table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows, "args": {k: str(v) for k, v in vars(args).items()}}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
