"""PyTorch module -> checked ONNX export -> cleanup -> INT8 quantization (-> target files), judged on labels.

    python examples/pytorch_to_int8.py --out build/example

1. Trains a small CNN for a few seconds on a task whose answer is known (which quadrant of a
   noisy 24x24 image holds a bright square), so accuracy means something.
2. Exports it with ``onnxslim.frontends.torch.export``: the dynamo exporter at opset 18, else the
   legacy one; onnxruntime's outputs are compared with torch's before the file is kept.
3. Runs ``onnxslim optimize`` (the command line, as a CI step would) with ``--quantize int8`` on
   real calibration images, writing report.json (and report.html with ``onnxslim[report]``), and
   ``--emit`` when this onnxslim has the target stage that writes deployable files.
4. Scores the float and the INT8 model with onnxruntime on held-out images and writes
   summary.json.

Needs torch (``pip install torch==2.13.0``, CPU); about 15 s on two cores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from onnxslim.frontends.torch import export

SIZE, CLASSES = 24, 4


def make_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy images with one bright 6x6 square; the label is the quadrant it sits in."""
    rng = np.random.default_rng(seed)
    images = rng.normal(0.0, 0.6, (n, 3, SIZE, SIZE)).astype(np.float32)
    labels = rng.integers(0, CLASSES, n)
    for image, label in zip(images, labels):
        top = rng.integers(0, SIZE // 2 - 6) + (SIZE // 2 if label >= 2 else 0)
        left = rng.integers(0, SIZE // 2 - 6) + (SIZE // 2 if label % 2 else 0)
        image[:, top:top + 6, left:left + 6] += 1.5
    return images, labels.astype(np.int64)


class QuadrantNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
        )
        self.classifier = torch.nn.Linear(16 * 4, CLASSES)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def train(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, steps: int = 60) -> None:
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    model.train()
    for step in range(steps):
        batch = torch.randint(0, len(x), (32,), generator=torch.Generator().manual_seed(step))
        loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def accuracy(path: Path, images: np.ndarray, labels: np.ndarray) -> float:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    logits = np.concatenate([session.run(None, {name: images[i:i + 50]})[0] for i in range(0, len(images), 50)])
    return float(np.mean(logits.argmax(1) == labels))


def has_option(flag: str) -> tuple[bool, bool]:
    """(present, is a flag) for an option of ``onnxslim optimize``."""
    from onnxslim.cli import optimize

    for param in optimize.params:
        if flag in getattr(param, "opts", ()):
            return True, bool(getattr(param, "is_flag", False))
    return False, False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("build/pytorch_to_int8"))
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)

    torch.set_num_threads(1)  # a model this small trains fastest on one thread
    train_x, train_y = make_images(2000, seed=0)
    test_x, test_y = make_images(500, seed=1)
    model = QuadrantNet()
    train(model, train_x, train_y)

    exported = export(model, (torch.from_numpy(test_x[:2]),), out / "model.onnx", input_names=["images"],
                      output_names=["logits"], dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
    print(f"exported: {exported}")

    np.savez(out / "calib.npz", images=train_x[:256])  # real images, not random noise
    command = [sys.executable, "-m", "onnxslim.cli", "optimize", str(out / "model.onnx"), "-o", str(out / "model.int8.onnx"),
               "--quantize", "int8", "--calib-data", str(out / "calib.npz"), "--report", str(out / "report.json"),
               "--fail-if", "bytes-increased"]
    try:
        import matplotlib  # noqa: F401

        command += ["--html", str(out / "report.html")]
    except ImportError:
        print("no matplotlib: skipping report.html (pip install 'onnxslim[report]')")
    emit, emit_is_flag = has_option("--emit")
    if emit:
        command += ["--emit"] if emit_is_flag else ["--emit", str(out / "deploy")]
    else:
        print("this onnxslim has no --emit option yet: skipping the target files")
    print("running:", " ".join(command[2:]).replace("onnxslim.cli", "onnxslim", 1))
    done = subprocess.run(command, capture_output=True, text=True)
    sys.stdout.write(done.stdout)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        return done.returncode

    summary = {
        "exporter": exported.exporter,
        "opset": exported.opset,
        "float_accuracy": accuracy(out / "model.onnx", test_x, test_y),
        "int8_accuracy": accuracy(out / "model.int8.onnx", test_x, test_y),
        "float_bytes": (out / "model.onnx").stat().st_size,
        "int8_bytes": (out / "model.int8.onnx").stat().st_size,
        "emitted": emit,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"accuracy on {len(test_y)} held-out images: float {summary['float_accuracy']:.3f}, int8 {summary['int8_accuracy']:.3f}; "
          f"size {summary['float_bytes']} -> {summary['int8_bytes']} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
