"""sha256 of the bench models quantized by this tree: a change that must not move any quantized
model (a refactor, a speed-up, a reliability fix) is checked by running this before and after.

    python tools/zoo.py --out zoo --models resnet50,mobilenetv2,minilm_l6,ppocr_rec,ppocr_det --exporter legacy
    python tools/quant_digests.py --zoo zoo [--models ...] [--methods mse,entropy] [--calib 64] > after.txt
    PYTHONPATH=/path/to/old/tree python tools/quant_digests.py --zoo zoo > before.txt   # or a checkout of main
    diff before.txt after.txt

Calibration data comes from tools/bench_quant.py's recipes (the same samples as the bench), saved
once per model under ``--work``; quantization runs through ``onnxslim.api.optimize_file`` with the
bench's settings (``--target ort --device x86``, no verification, no holdout).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_quant  # noqa: E402

DEFAULT_MODELS = ("resnet50", "mobilenetv2", "ppocr_rec", "minilm_l6", "ppocr_det")


def digests(zoo: Path, work: Path, models, methods, calib: int):
    """(model, method, sha256) for every model and method."""
    from onnxslim.api import optimize_file

    for name in models:
        path = zoo / bench_quant.MODELS[name]
        calib_dir = work / "calib" / f"{name}-{calib}"
        if not calib_dir.exists():
            arrays, _, _ = bench_quant.model_data(name, zoo, onnx.load(path, load_external_data=False), calib, 8)
            bench_quant.save_folder(arrays, calib_dir)
        for method in methods:
            out = work / f"{name}-{method}.onnx"
            optimize_file(str(path), str(out), stage_values={"quantize": "int8", "calib_method": method},
                          calib_data=str(calib_dir), holdout=0, verify=False, target="ort", device="x86")
            yield name, method, hashlib.sha256(out.read_bytes()).hexdigest()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--zoo", type=Path, default=Path("zoo"))
    p.add_argument("--models", default=",".join(DEFAULT_MODELS))
    p.add_argument("--methods", default="mse,entropy")
    p.add_argument("--calib", type=int, default=64)
    p.add_argument("--work", type=Path, default=None, help="where calibration data and outputs go (default: a temp folder)")
    args = p.parse_args(argv)
    import onnxslim

    print(f"# tree: {Path(onnxslim.__file__).parent}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for name, method, digest in digests(args.zoo, work, args.models.split(","), args.methods.split(","), args.calib):
            print(f"{name} {method} {digest}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
