"""Range-search speed: each calibration method's ``select_range`` over every observed tensor of a model.

    python tools/range_speed.py --zoo zoo --models ppocr_det,minilm_l6,ppocr_rec,mobilenetv2,resnet50 \\
        --methods entropy,mse [--calib 64] [--repeat 3]

Each model is calibrated once (``--quantize int8 --target ort --device x86``, as tools/calib_speed.py
does), its statistics kept; then every method picks a range for every tensor in both shapes (one
threshold on |x|, and two-sided), ``--repeat`` times. The table gives the best time in ms and a
fingerprint of all the ranges picked: a change that must not move any range keeps the fingerprint.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
import tempfile
import time
from pathlib import Path

import onnx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_quant  # noqa: E402  (tools/ is not a package)
import calib_speed  # noqa: E402


def model_stats(name: str, args, work: Path) -> dict:
    """The statistics of every tensor the pass observes, from one calibration (every tensor with a histogram)."""
    path = str(args.zoo / bench_quant.MODELS[name])
    model = onnx.load(path, load_external_data=False)
    calib, _, _ = bench_quant.model_data(name, args.zoo, model, args.calib, 32)
    folder = work / f"{name}-calib"
    bench_quant.save_folder(calib, folder)
    box: dict = {}
    with calib_speed.captured_collection(box, histogram=True):
        calib_speed.calibrate_once(path, folder, "mse", work / f"{name}.onnx", {})
    return box["result"][0]


def time_ranges(stats: dict, method: str, repeat: int) -> tuple[float, str]:
    from onnxslim.quantization.methods import MethodSpec, select_range

    spec = MethodSpec(method)
    best, picked = float("inf"), []
    for _ in range(repeat):
        picked = []
        start = time.perf_counter()
        for name in sorted(stats):
            for symmetric in (False, True):
                picked.append(select_range(stats[name], spec, symmetric))
        best = min(best, time.perf_counter() - start)
    return best, hashlib.sha256(repr(picked).encode()).hexdigest()[:16]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--zoo", type=Path, default=Path("zoo"))
    p.add_argument("--models", default="ppocr_det,minilm_l6,ppocr_rec,mobilenetv2,resnet50")
    p.add_argument("--methods", default="entropy,mse")
    p.add_argument("--calib", type=int, default=64)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    lines = ["| model | tensors | method | ms (best) | fingerprint |", "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for name in [m for m in args.models.split(",") if m]:
            stats = model_stats(name, args, Path(tmp))
            for method in [m for m in args.methods.split(",") if m]:
                seconds, fingerprint = time_ranges(stats, method, args.repeat)
                lines.append(f"| {name} | {len(stats)} | {method} | {seconds * 1e3:.1f} | {fingerprint} |")
                print(lines[-1], file=sys.stderr, flush=True)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
