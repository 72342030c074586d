"""INT8 fidelity only (no timing): onnxslim ``--quantize int8`` vs ORT ``quantize_static``, same samples.

    python tools/quant_fidelity.py --models resnet50,mobilenetv2,minilm_l6,ppocr_rec --json bench-out/fidelity.json
    python tools/quant_fidelity.py --models mobilenetv2 --holdout 256
    python tools/quant_fidelity.py --models mobilenetv2 --methods mse --opt bias_correction=false --no-ort
    python tools/quant_fidelity.py --models resnet50 --variant before:bias_correction=false --variant default: \
        --variant gptq:rounding=gptq --json bench-out/fidelity-resnet50.json
    python tools/quant_fidelity.py --models ppocr_rec --calib-seed 7 --skip fuse_input_affine --no-ort

Data recipes, held-out sizes (per model by default, see bench_quant.HOLDOUT) and scores are
tools/bench_quant.py's (calibration seed 1, held-out seed 2; model_data(), outputs(), fidelity()).
Per model and method: mean/min cosine vs FP32 on the held-out set, top-1 agreement with its
standard error (classifiers), and the task metric (MiniLM nearest-neighbour agreement, PP-OCR
character accuracy); then per model the best of ours vs the best of ORT's on each score, the
top-1 difference with its paired standard error (same samples). ORT models and the
held-out scenes (a memory map) are cached under ``--cache``, keyed by the calibration data (ORT's
quantizer is slow and does not change). ``--opt KEY=VALUE`` passes an
``insert_qdq`` option (repeatable); ``--variant LABEL:KEY=VALUE,...`` adds a row set with its own
options (repeatable; the FP32 outputs are computed once); ``--exclude`` keeps nodes in float.
``--calib-seed`` picks another calibration draw (bench_quant.model_data(); the held-out set stays):
how much one draw of 64 samples moves fidelity is worth knowing before a difference between two
settings is believed. ``--skip`` leaves cleanup passes out of the pipeline that runs before
quantization.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_quant as bq  # noqa: E402  (the lead's data recipes)


def session(model, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def parse_value(text: str):
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def ours(path: str, folder: Path, method: str, extra: dict, exclude: list[str], skip: list[str] = ()) -> onnx.ModelProto:
    from onnxslim.api import optimize

    stage = {"quantize": "int8", "calib_method": method}
    if exclude:
        stage["quant_exclude"] = tuple(exclude)
    # auto scores each method on held-out samples: as on the command line, a fifth (up to 8) of the data
    model, _ = optimize(path, stage_values=stage, calib_data=str(folder), holdout=8 if method == "auto" else 0,
                        verify=False, skip=list(skip),
                        target="ort", device="x86", options={"insert_qdq": dict(extra, progress=False)})
    return model


def ort_model(path: str, folder: Path, method: str, cache: Path, key: str) -> str:
    out = cache / f"{key}-ort-{method}.onnx"
    if out.exists():
        return str(out)
    tmp = out.with_suffix(".tmp.onnx")
    bq.ort_quantize(path, str(tmp), folder, method)
    tmp.rename(out)
    return str(out)


def task_text(r: dict) -> str:
    return (f"char acc {r['char_acc']:.3f} (fp32 {r['char_acc_fp32']:.3f})" if "char_acc" in r
            else f"NN agree {r['nn_agreement']:.3f}" if "nn_agreement" in r else "")


def top1_text(r: dict) -> str:
    return f"{r['top1']:.4f} ± {r['top1_se']:.4f}" if "top1" in r else ""


def best(rows: list[dict], key: str) -> dict | None:
    scored = [r for r in rows if key in r]
    return max(scored, key=lambda r: r[key]) if scored else None


def table(rows: list[dict], options: str) -> str:
    """Every row, then per model ours best vs ORT best on each score (top-1 with its standard error)."""
    lines = [f"| model | tool | method | held out | cosine (mean) | cosine (min) | top-1 ± s.e. | task |  ({options})",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['tool']} | {r['method']} | error: {r['error']} | | | | |")
            continue
        lines.append(f"| {r['model']} | {r['tool']} | {r['method']} | {r['held_out']} | {r['cosine']:.5f} | {r['cosine_min']:.4f} "
                     f"| {top1_text(r)} | {task_text(r)} |")
    lines += ["", "| model | held out | score | ours best | ORT best | ours - ORT |", "|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == name and r["tool"].startswith("onnxslim") and "error" not in r]
        theirs = [r for r in rows if r["model"] == name and r["tool"] == "ort" and "error" not in r]
        for key in ("cosine", "cosine_min", "top1", "char_acc", "nn_agreement"):
            a, b = best(mine, key), best(theirs, key)
            if a is None or b is None:
                continue
            se = f" (paired s.e. {bq.paired_top1_se(a, b):.4f})" if key == "top1" else ""
            lines.append(f"| {name} | {a['held_out']} | {key} | {a[key]:.5f} ({a['method']}) | {b[key]:.5f} ({b['method']}) "
                         f"| {a[key] - b[key]:+.5f}{se} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--zoo", type=Path, default=HERE.parent / "zoo")
    p.add_argument("--models", default="mobilenetv2")
    p.add_argument("--methods", default="minmax,percentile,entropy,mse")
    p.add_argument("--calib", type=int, default=64)
    p.add_argument("--calib-seed", type=int, default=1, help="which calibration draw (1: the benches'; 2 is the held-out draw)")
    p.add_argument("--skip", action="append", default=[], help="a cleanup pass to leave out (repeatable)")
    p.add_argument("--holdout", type=int, default=None, help="held-out samples (default: per model, bench_quant.HOLDOUT)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=bq.FIDELITY_BATCH)
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--variant", action="append", default=[], metavar="LABEL:KEY=VALUE,...")
    p.add_argument("--exclude", action="append", default=[])
    p.add_argument("--no-ort", action="store_true")
    p.add_argument("--ort-methods", default="minmax,percentile,entropy")
    p.add_argument("--cache", type=Path, default=Path("/tmp/quant_fidelity_cache"))
    p.add_argument("--save", type=Path, help="folder to write our quantized models into")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    extra = {k: parse_value(v) for k, v in (o.split("=", 1) for o in args.opt)}
    variants = {"": extra} if not args.variant else {}
    for text in args.variant:
        label, _, opts = text.partition(":")
        variants[label] = {**extra, **{k: parse_value(v) for k, v in (o.split("=", 1) for o in opts.split(",") if o)}}
    args.cache.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.models.split(","):
        path = str(args.zoo / bq.MODELS[name])
        model = onnx.load(path, load_external_data=False)
        calib, held, task = bq.model_data(name, args.zoo, model, args.calib, args.holdout, cache=args.cache,
                                           calib_seed=args.calib_seed)
        digest = hashlib.sha1(name.encode())
        for k in sorted(calib):
            digest.update(k.encode() + np.ascontiguousarray(calib[k]).tobytes())
        key = digest.hexdigest()[:10]
        folder = args.cache / f"{key}-calib"
        if not folder.exists():
            bq.save_folder(calib, folder)
        want = list(bq.outputs(session(path, args.threads), held, args.batch))
        for label, options in variants.items():
            for method in args.methods.split(","):
                t = time.perf_counter()
                q = ours(path, folder, method, options, args.exclude, args.skip)
                secs = time.perf_counter() - t
                if args.save:
                    args.save.mkdir(parents=True, exist_ok=True)
                    onnx.save(q, str(args.save / f"{name}-{method}{'-' + label if label else ''}.onnx"))
                rows.append({"model": name, "tool": "onnxslim" + (f" {label}" if label else ""), "method": method,
                             "seconds": secs, **bq.fidelity(want, bq.outputs(session(q, args.threads), held, args.batch), task)})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        if args.no_ort:
            continue
        for method in args.ort_methods.split(","):
            try:
                q = ort_model(path, folder, method, args.cache, key)
            except Exception as exc:  # ORT's histogram calibrators fail on some models
                rows.append({"model": name, "tool": "ort", "method": method, "error": str(exc)[:120]})
                continue
            rows.append({"model": name, "tool": "ort", "method": method,
                         **bq.fidelity(want, bq.outputs(session(q, args.threads), held, args.batch), task)})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    notes = args.opt + args.variant + ["exclude=" + e for e in args.exclude] + ["skip=" + e for e in args.skip]
    notes += [f"calib-seed={args.calib_seed}"] if args.calib_seed != 1 else []
    print(table(rows, " ".join(notes)))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
