"""A model over 2 GB (weights in external data) and the memory/time of optimizing it.

``generate`` writes an MLP of large MatMul weights (``--layers`` x ``--width``^2 float32; the
default 9 x 8192^2 is 2.25 GiB) straight to ``<name>.onnx.data`` one layer at a time, so the
generator itself never holds more than one weight. Around the weights sits the clutter exporters
leave: Identity and Dropout nodes, Constant nodes, MatMul + Add bias (-> Gemm), a per-column
scale after one MatMul (folded into its weight), Reshape round trips, a duplicated Relu pair and
dead branches.

``measure`` runs a command in a child process and reports wall time and the child's peak RSS
(``ru_maxrss`` from ``os.wait4``: no sampling, nothing missed).

    python tools/bigmodel.py generate big/mlp.onnx [--layers 9 --width 8192]
    python tools/bigmodel.py bench big/mlp.onnx [--onnxsim .venv-bench/onnxsim/bin/onnxsim]
                                    [--peer .venv-bench/onnxslim-peer/bin/onnxslim] [--json out.json]

``bench`` optimizes the model with ``onnxslim optimize`` (verification on) and with the peers
whose commands are given; it prints a Markdown table (model bytes, wall time, peak RSS and its
ratio to the model's bytes, nodes after, max error against the original under onnxruntime) and
checks each output's external data by running it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

PAGE = 4096


def _external(name: str, shape: tuple[int, ...], location: str, offset: int, length: int) -> onnx.TensorProto:
    tensor = onnx.TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(shape))
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def generate(path: Path, layers: int = 9, width: int = 8192, seed: int = 0) -> int:
    """Write the model and its ``.data`` file; returns the bytes of weights written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data_name = path.name + ".data"
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    scale = np.float32(1.0 / np.sqrt(width))
    offset = 0
    x = "input"
    with open(path.parent / data_name, "wb") as data:
        for i in range(layers):
            weight = rng.standard_normal((width, width), dtype=np.float32)
            weight *= scale
            raw = weight.tobytes()
            inits.append(_external(f"layer{i}.weight", weight.shape, data_name, offset, len(raw)))
            data.write(raw)
            offset += len(raw)
            del weight, raw
            bias = rng.uniform(-0.1, 0.1, width).astype(np.float32)
            nodes.append(helper.make_node("Identity", [x], [f"l{i}.in"], name=f"l{i}.Identity"))
            nodes.append(helper.make_node("MatMul", [f"l{i}.in", f"layer{i}.weight"], [f"l{i}.mm"], name=f"l{i}.MatMul"))
            y = f"l{i}.mm"
            if i == 1:  # a per-column scale fuse_conv_affine folds into this layer's weight
                inits.append(numpy_helper.from_array(rng.uniform(0.5, 1.5, width).astype(np.float32), f"layer{i}.scale"))
                nodes.append(helper.make_node("Mul", [y, f"layer{i}.scale"], [f"l{i}.scaled"], name=f"l{i}.Mul"))
                y = f"l{i}.scaled"
            nodes.append(helper.make_node("Constant", [], [f"layer{i}.bias"], name=f"l{i}.bias", value=numpy_helper.from_array(bias)))
            nodes.append(helper.make_node("Add", [y, f"layer{i}.bias"], [f"l{i}.add"], name=f"l{i}.Add"))
            nodes.append(helper.make_node("Relu", [f"l{i}.add"], [f"l{i}.relu"], name=f"l{i}.Relu"))
            nodes.append(helper.make_node("Relu", [f"l{i}.add"], [f"l{i}.relu_dup"], name=f"l{i}.ReluDup"))
            nodes.append(helper.make_node("Max", [f"l{i}.relu", f"l{i}.relu_dup"], [f"l{i}.act"], name=f"l{i}.Max"))
            nodes.append(helper.make_node("Dropout", [f"l{i}.act"], [f"l{i}.drop"], name=f"l{i}.Dropout"))
            nodes.append(helper.make_node("Sigmoid", [f"l{i}.drop"], [f"l{i}.dead"], name=f"l{i}.Dead"))
            flat = numpy_helper.from_array(np.array([1, width], np.int64))
            nodes.append(helper.make_node("Constant", [], [f"l{i}.shape"], name=f"l{i}.Shape", value=flat))
            nodes.append(helper.make_node("Reshape", [f"l{i}.drop", f"l{i}.shape"], [f"l{i}.out"], name=f"l{i}.Reshape"))
            x = f"l{i}.out"
            pad = -offset % PAGE
            data.write(b"\0" * pad)
            offset += pad
    nodes.append(helper.make_node("Identity", [x], ["output"], name="output.Identity"))
    graph = helper.make_graph(nodes, "big_mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, width])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, width])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="onnxslim-bigmodel")
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return layers * width * width * 4


def model_bytes(path: Path) -> int:
    """The model file plus its external-data file(s)."""
    header = onnx.load_model(str(path), load_external_data=False)
    files = {path}
    for tensor in onnx.external_data_helper._get_all_tensors(header):
        if onnx.external_data_helper.uses_external_data(tensor):
            files.add(path.parent / onnx.external_data_helper.ExternalDataInfo(tensor).location)
    return sum(f.stat().st_size for f in files)


def measure(cmd: list[str], env: dict | None = None, timeout: float = 3600, cwd: Path | None = None) -> dict:
    """Wall time and peak RSS (MiB) of ``cmd`` run as a child process."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=cwd)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return {"command": [str(c) for c in cmd], "returncode": proc.returncode, "wall_s": round(time.perf_counter() - start, 2),
                "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "stdout": out.read().decode(errors="replace")[-3000:],
                "stderr": err.read().decode(errors="replace")[-3000:]}


def check_output(original: Path, optimized: Path) -> dict:
    """The optimized model's external data is complete and it computes what the original does."""
    import onnxruntime as ort

    header = onnx.load_model(str(optimized), load_external_data=False)
    external = [t for t in header.graph.initializer if onnx.external_data_helper.uses_external_data(t)]
    feeds = {"input": np.random.default_rng(1).standard_normal((1, header.graph.input[0].type.tensor_type.shape.dim[1].dim_value)).astype(np.float32)}
    outs = []
    for path in (original, optimized):
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        outs.append(ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]).run(None, feeds)[0])
        del opts
    err = float(np.max(np.abs(outs[0] - outs[1])))
    return {"external_tensors": len(external), "bytes": model_bytes(optimized), "nodes": len(header.graph.node),
            "max_abs_error": err, "max_abs_output": float(np.max(np.abs(outs[0])))}


def _run_tool(tool: str, cmd: list[str], model: Path, out: Path, size: int, cwd: Path) -> dict:
    cmd = [str(Path(cmd[0]).resolve()) if "/" in cmd[0] else cmd[0], *cmd[1:]]  # the peers run in the model's folder
    run = measure(cmd, env={**os.environ, "PYTHONPATH": ""}, cwd=cwd)
    row = {"tool": tool, "model_bytes": size, **{k: run[k] for k in ("returncode", "wall_s", "peak_rss_mib")}}
    row["rss_ratio"] = round(run["peak_rss_mib"] * 2**20 / size, 2)
    if run["returncode"] == 0 and out.exists():
        row.update(check_output(model, out))
    else:
        lines = (run["stderr"] or run["stdout"]).strip().splitlines()
        row["error"] = lines[-1][:200] if lines else f"exit {run['returncode']}"
    for f in out.parent.glob(out.name + "*"):
        f.unlink()
    return row


def bench(model: Path, onnxsim: str | None = None, peer: str | None = None) -> list[dict]:
    """Optimize ``model`` with onnxslim (ours, verification on) and the peers whose CLIs are given."""
    size, work = model_bytes(model), model.resolve().parent
    out = work / "onnxslim.opt.onnx"
    report_path = work / "onnxslim.report.json"
    cmd = [sys.executable, "-m", "onnxslim.cli", "optimize", str(model), "-o", str(out), "--report", str(report_path), "-q"]
    rows = [_run_tool("onnxslim (ours)", cmd, model, out, size, Path(__file__).resolve().parents[1])]
    if report_path.exists():
        report = json.loads(report_path.read_text())
        rows[0]["verification"] = (report.get("verification") or {}).get("status")
        rows[0]["seconds"] = {k: round(v, 1) for k, v in report.get("seconds", {}).items()}
        report_path.unlink()
    if onnxsim:
        out = work / "onnxsim.opt.onnx"
        rows.append(_run_tool("onnxsim", [onnxsim, str(model), str(out), "--save-as-external-data"], model, out, size, work))
    if peer:
        out = work / "peer.opt.onnx"
        rows.append(_run_tool("OnnxSlim (PyPI peer)", [peer, str(model), str(out)], model, out, size, work))
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| tool | model bytes | wall s | peak RSS MiB | RSS / model bytes | nodes after | max abs error |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['tool']} | {r['model_bytes']:,} | {r['wall_s']} | {r['peak_rss_mib']:,.0f} | {r['rss_ratio']} | "
                     f"{r.get('nodes', '-')} | {r.get('max_abs_error', r.get('error', '-'))} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="write the model")
    gen.add_argument("path", type=Path)
    gen.add_argument("--layers", type=int, default=9)
    gen.add_argument("--width", type=int, default=8192)
    b = sub.add_parser("bench", help="optimize it and measure")
    b.add_argument("path", type=Path)
    b.add_argument("--onnxsim", help="the onnxsim command (e.g. .venv-bench/onnxsim/bin/onnxsim)")
    b.add_argument("--peer", help="the PyPI OnnxSlim command (e.g. .venv-bench/onnxslim-peer/bin/onnxslim)")
    b.add_argument("--json", dest="json_path", type=Path)
    args = parser.parse_args(argv)
    if args.command == "generate":
        need = args.layers * args.width**2 * 4
        if shutil.disk_usage(args.path.resolve().parent if args.path.parent.exists() else Path.cwd()).free < 3 * need:
            parser.error(f"need about {3 * need / 2**30:.1f} GiB free (model, optimized copy, headroom)")
        written = generate(args.path, args.layers, args.width)
        print(f"wrote {args.path} (+ {args.path.name}.data, {written / 2**30:.2f} GiB of weights)")
        return 0
    rows = bench(args.path, args.onnxsim, args.peer)
    print(table(rows))
    if args.json_path:
        args.json_path.write_text(json.dumps(rows, indent=1) + "\n")
    return 0 if all(r["returncode"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
