"""Benchmark structured channel pruning (prune_channels) against onnxsim 0.8's structured pruning.

    python tools/zoo.py --out zoo --models resnet50,mobilenetv2,efficientnet_b0,ppocr_det,ppocr_cls --exporter legacy
    python tools/bench_prune.py --zoo zoo [--models resnet50,yolo,...] [--macs 0.3] [--json out.json]

For every model (cleaned first with the default onnxslim pipeline; that cleaned model is the
"input" every variant is compared with), at the same fraction of MACs removed:

* ``ours+recon``: --prune-macs F --prune-round-to 8 with --calib-data (activation importance,
  least-squares reconstruction), see TARGETS;
* ``ours``: the same without reconstruction (--no-prune-reconstruct);
* ``ours-l1``: no calibration data at all (L1 importance), the data-free setting;
* ``onnxsim-l2`` / ``onnxsim-wanda``: onnxsim.apply_structured_pruning / apply_structured_wanda_pruning
  (the Python API: onnxsim's CLI has no pruning flag), sparsity bisected to the same MACs, run
  in onnxsim's own virtual environment (``--onnxsim-python``).

Columns: MACs and parameters removed, ORT CPU latency relative to the input model (same run,
interleaved, median of N), relative L2 error and top-1 agreement on held-out inputs, and the
task metric where the answer is known: PP-OCR cls accuracy on rendered lines rotated 0/180,
PP-OCR det IoU of the text map with the rendered boxes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

import bench_prune_data as data  # noqa: E402

log = logging.getLogger("bench_prune")
MODELS = ("resnet50", "mobilenetv2", "efficientnet_b0", "yolo", "ppocr_cls", "ppocr_det")
# (fraction of MACs removed, --prune-round-to) per model; default (--macs, 8). Channel counts that
# are multiples of 8 keep ORT's blocked (NCHWc) convolutions fast: with round-to 1 the pruned
# MobileNetV2/EfficientNet-B0 ran *slower* than the input. ResNet-50 also at half its MACs; the
# small, already lean PP-OCR detector at 20 % with round-to 1 (its 8- and 16-channel layers
# would lose half their channels to a multiple of 8).
TARGETS = {"resnet50": ((0.3, 8), (0.5, 8)), "ppocr_det": ((0.2, 1),)}


def _session(path: str, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def _outputs(path: str, feeds: np.ndarray, threads: int) -> np.ndarray:
    sess = _session(path, threads)
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: feeds[i:i + 1]})[0] for i in range(len(feeds))])


def _stats(path: str) -> dict:
    from onnxslim.graph import import_model
    from onnxslim.pipeline import PassContext, get_pass
    from onnxslim.stats import compute

    graph = import_model(onnx.load(path))
    get_pass("infer_shapes")().run(graph, PassContext())
    s = compute(graph)
    return {"macs": s.macs, "params": s.parameters}


def _latency(paths: dict[str, str], x: np.ndarray, runs: int, threads: int) -> dict[str, float]:
    sessions = {k: _session(p, threads) for k, p in paths.items()}
    name = next(iter(sessions.values())).get_inputs()[0].name
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for s in sessions.values():
        s.run(None, {name: x})
    for _ in range(runs):  # interleaved, so load changes hit every variant alike
        for k, s in sessions.items():
            t = time.perf_counter()
            s.run(None, {name: x})
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def _inputs(name: str, calib_n: int, hold_n: int):
    """(calibration array, held-out array, task labels or masks, input size)."""
    if name == "ppocr_cls":
        calib, _ = data.text_lines(calib_n, 1)
        hold, labels = data.text_lines(hold_n, 2)
        return calib, hold, labels
    if name == "ppocr_det":
        calib, _ = data.text_pages(calib_n, 1)
        hold, masks = data.text_pages(hold_n, 2)
        return calib, hold, masks
    size = 320 if name == "yolo" else 224
    return data.shape_images(calib_n, size, 1), data.shape_images(hold_n, size, 2), None


def _task(name: str, out: np.ndarray, truth) -> float | None:
    if name == "ppocr_cls":
        return float(np.mean(out.argmax(1) == truth))
    if name == "ppocr_det":
        pred = out[:, 0] > 0.3
        return float(np.sum(pred & truth) / max(1, np.sum(pred | truth)))
    return None


def _prepare(name: str, zoo: Path, work: Path) -> Path:
    import onnxslim

    if name == "yolo":
        import torch

        src = work / "yolo.onnx"
        if not src.exists():
            torch.onnx.export(data.yolo_detector(), (torch.zeros(1, 3, 320, 320),), str(src), opset_version=17,
                              input_names=["images"], output_names=["preds"], dynamo=False)
    else:
        candidates = [zoo / f"{name}.legacy.onnx", zoo / f"{name}.onnx", zoo / f"{name}.dynamo.onnx"]
        src = next((p for p in candidates if p.exists()), None)
        if src is None:
            raise SystemExit(f"{name}: not in {zoo}; build it with: python tools/zoo.py --out {zoo} --models {name}")
    clean = work / f"{name}.input.onnx"
    if not clean.exists():
        shapes = {"x": [1, 3, 320, 320]} if name == "ppocr_det" else ({"x": [1, 3, 48, 192]} if name == "ppocr_cls" else None)
        model, _ = onnxslim.optimize(str(src), verify=False, input_shapes=shapes)
        onnx.save(model, clean)
    return clean


def _ours(src: Path, dst: Path, macs: float, calib: Path | None, recon: bool, round_to: int) -> dict:
    import onnxslim

    t = time.perf_counter()
    model, report = onnxslim.optimize(str(src), verify=False, calib_data=str(calib) if calib else None,
                                      stage_values={"prune_macs": str(macs), "prune_reconstruct": recon, "prune_round_to": round_to})
    onnx.save(model, dst)
    record = next(r for r in report.passes if r.name == "prune_channels")
    return {"seconds": round(time.perf_counter() - t, 1), "layers_refit": record.counters.get("layers_reconstructed", 0)}


def _onnxsim(python: str, src: Path, dst: Path, macs: float, mode: str, calib: Path) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(data.ONNXSIM_DRIVER)
    t = time.perf_counter()
    done = subprocess.run([python, f.name, str(src), str(dst), str(macs), mode, str(calib)], capture_output=True, text=True, timeout=3600)
    os.unlink(f.name)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1][:200]}
    info = json.loads(done.stdout.strip().splitlines()[-1])
    info["seconds"] = round(time.perf_counter() - t, 1)
    return info


def bench_model(name: str, macs: float, round_to: int, opts, work: Path) -> list[dict]:
    src = _prepare(name, Path(opts.zoo), work)
    calib, hold, truth = _inputs(name, opts.calib, opts.holdout)
    calib_path = work / f"{name}.calib.npz"
    input_name = onnx.load(src, load_external_data=False).graph.input[0].name
    np.savez(calib_path, **{input_name: calib})
    variants: dict[str, Path] = {"input": src}
    info: dict[str, dict] = {"input": {}}
    for label, calib_arg, recon in (("ours+recon", calib_path, True), ("ours", calib_path, False), ("ours-l1", None, False)):
        variants[label] = work / f"{name}.{label}.{macs}.onnx"
        info[label] = _ours(src, variants[label], macs, calib_arg, recon, round_to)
    if opts.onnxsim_python:
        for mode in ("l2", "wanda"):
            label = f"onnxsim-{mode}"
            dst = work / f"{name}.{label}.{macs}.onnx"
            info[label] = _onnxsim(opts.onnxsim_python, src, dst, macs, mode, calib_path)
            if "error" not in info[label]:
                variants[label] = dst
    base_out = _outputs(str(src), hold, opts.threads)
    base_stats = _stats(str(src))
    lat = _latency({k: str(v) for k, v in variants.items()}, hold[:1], opts.runs, opts.threads)
    rows = []
    for label, path in variants.items():
        out = _outputs(str(path), hold, opts.threads)
        st = _stats(str(path))
        onnx.checker.check_model(onnx.load(path))
        rel = float(np.linalg.norm(out - base_out) / np.linalg.norm(base_out))
        top1 = float(np.mean(out.argmax(1) == base_out.argmax(1))) if out.ndim == 2 else None
        rows.append({"model": name, "target_macs": macs, "round_to": round_to if label.startswith("ours") else None, "variant": label,
                     "macs_removed": 1 - st["macs"] / base_stats["macs"], "params_removed": 1 - st["params"] / base_stats["params"],
                     "speedup": lat["input"] / lat[label], "latency_ms": lat[label] * 1e3, "rel_l2": rel, "top1_agree": top1,
                     "task": _task(name, out, truth), **info[label]})
    for label, i in info.items():
        if "error" in i:
            rows.append({"model": name, "target_macs": macs, "round_to": round_to if label.startswith("ours") else None, "variant": label, "error": i["error"]})
    return rows


def _cell(v, fmt):
    return "-" if v is None else format(v, fmt)


def markdown(rows: list[dict]) -> str:
    head = "| model | MACs target | variant | MACs removed | params removed | speedup | rel L2 | top-1 agree | task | note |"
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        note = r.get("error") or (f"{r['layers_refit']} layers refit" if r.get("layers_refit") else "")
        if "max_removed" in r and r["max_removed"] < r["target_macs"]:
            note = f"reaches only {r['max_removed']:.0%} MACs"
        lines.append(f"| {r['model']} | {r['target_macs']:.0%} | {r['variant']} | {_cell(r.get('macs_removed'), '.1%')} | "
                     f"{_cell(r.get('params_removed'), '.1%')} | {_cell(r.get('speedup'), '.2f')}x | {_cell(r.get('rel_l2'), '.3f')} | "
                     f"{_cell(r.get('top1_agree'), '.2f')} | {_cell(r.get('task'), '.3f')} | {note} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--zoo", default="zoo")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--macs", type=float, default=0.3, help="fraction of MACs to remove (see TARGETS for exceptions)")
    p.add_argument("--calib", type=int, default=64)
    p.add_argument("--holdout", type=int, default=32)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--onnxsim-python", default=str(ROOT / ".venv-bench/onnxsim/bin/python"))
    p.add_argument("--work", default=str(ROOT / "bench-out/prune"))
    p.add_argument("--json")
    opts = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    if opts.onnxsim_python and not Path(opts.onnxsim_python).exists():
        log.warning("no onnxsim venv at %s (python -m venv .venv-bench/onnxsim && .venv-bench/onnxsim/bin/pip install "
                    "onnxsim==0.8.1 onnxruntime): onnxsim columns left out", opts.onnxsim_python)
        opts.onnxsim_python = None
    work = Path(opts.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in [m for m in opts.models.split(",") if m]:
        for macs, round_to in TARGETS.get(name, ((opts.macs, 8),)):
            rows.extend(bench_model(name, macs, round_to, opts, work))
            print(markdown([r for r in rows if r["model"] == name and r["target_macs"] == macs]), flush=True)
    print("\n" + markdown(rows))
    if opts.json:
        Path(opts.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
