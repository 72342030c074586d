"""INT8 fidelity only (no timing): onnxslim ``--quantize int8`` vs ORT ``quantize_static``, same samples.

    python tools/quant_fidelity.py --models mobilenetv2 --holdout 256
    python tools/quant_fidelity.py --models mobilenetv2 --methods mse --opt bias_correction=false --no-ort
    python tools/quant_fidelity.py --models resnet50 --variant before:bias_correction=false --variant default: \
        --variant gptq:rounding=gptq --json bench-out/fidelity-resnet50.json

Data recipes are tools/bench_quant.py's (calibration seed 1, held-out seed 2). Per model and method:
mean/min cosine vs FP32 on the held-out set, top-1 agreement (classifiers), and the task metric
(MiniLM nearest-neighbour agreement, PP-OCR character accuracy). ORT results are cached under
``--cache`` (its quantizer is slow and does not change). ``--opt KEY=VALUE`` passes an
``insert_qdq`` option (repeatable); ``--variant LABEL:KEY=VALUE,...`` adds a row set with its own
options (repeatable; the FP32 outputs are computed once); ``--exclude`` keeps nodes in float.
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


def outputs(sess: ort.InferenceSession, arrays: dict, batch: int) -> list[np.ndarray]:
    """First output per sample, run in batches where the model takes them."""
    n = len(next(iter(arrays.values())))
    out = []
    for i in range(0, n, batch):
        y = sess.run(None, {k: v[i:i + batch] for k, v in arrays.items()})[0]
        out += [y[j:j + 1] for j in range(len(y))]
    return out


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


def ours(path: str, folder: Path, method: str, extra: dict, exclude: list[str]) -> onnx.ModelProto:
    from onnxslim.api import optimize

    stage = {"quantize": "int8", "calib_method": method}
    if exclude:
        stage["quant_exclude"] = tuple(exclude)
    model, _ = optimize(path, stage_values=stage, calib_data=str(folder), holdout=0, verify=False,
                        target="ort", device="x86", options={"insert_qdq": dict(extra, progress=False)})
    return model


def ort_model(path: str, folder: Path, method: str, cache: Path, key: str) -> str:
    out = cache / f"{key}-ort-{method}.onnx"
    if out.exists():
        return str(out)
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    files = sorted(folder.glob("*.npz"))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = (dict(s) for f in files for s in bq.feeds_of(dict(np.load(f))))

        def get_next(self):
            return next(self.it, None)

    tmp = out.with_suffix(".tmp.onnx")
    quantize_static(path, str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=getattr(CalibrationMethod, bq.ORT_METHODS[method]))
    tmp.rename(out)
    return str(out)


def score(want, got, task, name) -> dict:
    row = bq.fidelity(want, got)
    row.update(bq.task_metric(name, task, want, got))
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--zoo", type=Path, default=HERE.parent / "zoo")
    p.add_argument("--models", default="mobilenetv2")
    p.add_argument("--methods", default="minmax,percentile,entropy,mse")
    p.add_argument("--calib", type=int, default=64)
    p.add_argument("--holdout", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
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
        holdout = min(args.holdout, 32) if name in ("minilm_l6", "bert_base") else args.holdout
        calib, held, task = bq.model_data(name, args.zoo, model, args.calib, holdout)
        key = hashlib.sha1(f"{name}-{args.calib}-{holdout}".encode()).hexdigest()[:10]
        folder = args.cache / f"{key}-calib"
        if not folder.exists():
            bq.save_folder(calib, folder)
        batch = 1 if name == "ppocr_rec" else args.batch
        want = outputs(session(path, args.threads), held, batch)
        for label, options in variants.items():
            for method in args.methods.split(","):
                t = time.perf_counter()
                q = ours(path, folder, method, options, args.exclude)
                secs = time.perf_counter() - t
                if args.save:
                    args.save.mkdir(parents=True, exist_ok=True)
                    onnx.save(q, str(args.save / f"{name}-{method}{'-' + label if label else ''}.onnx"))
                rows.append({"model": name, "tool": "onnxslim" + (f" {label}" if label else ""), "method": method,
                             "seconds": secs, **score(want, outputs(session(q, args.threads), held, batch), task, name)})
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
                         **score(want, outputs(session(q, args.threads), held, batch), task, name)})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(f"| model | tool | method | cosine (mean) | cosine (min) | top-1 | task |  (held-out {args.holdout}; "
          f"{' '.join(args.opt + args.variant + ['exclude=' + e for e in args.exclude])})")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | {r['tool']} | {r['method']} | error: {r['error']} | | | |")
            continue
        task = (f"char acc {r['char_acc']:.3f} (fp32 {r['char_acc_fp32']:.3f})" if "char_acc" in r
                else f"NN agree {r['nn_agreement']:.3f}" if "nn_agreement" in r else "")
        top1 = f"{r['top1']:.4f}" if "top1" in r else ""
        print(f"| {r['model']} | {r['tool']} | {r['method']} | {r['cosine']:.5f} | {r['cosine_min']:.4f} | {top1} | {task} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
