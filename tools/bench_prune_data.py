"""Inputs with known answers for tools/bench_prune.py, a small YOLO-style detector, and the
onnxsim driver that runs inside onnxsim's own virtual environment.

* ``shape_images``: blurred coloured rectangles/ellipses, ImageNet-normalised (random-init nets).
* ``text_lines``: rendered words, half of them rotated 180 degrees, label 0 / 1 (PP-OCR cls).
* ``text_pages``: pages with a few rendered lines and their box mask (PP-OCR det).
* ``yolo_detector``: a CSP/SPPF/PAN-style net (Concat, Split, MaxPool, Upsample heavy).
"""

from __future__ import annotations

import numpy as np

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
WORDS = ("invoice total amount paid order number customer address street city phone date 2024 receipt "
         "model quick brown fox jumps over lazy dog ONNX runtime channel pruning table 0123456789").split()
IMAGENET = (np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225]))


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.truetype(FONT, size)
    except OSError:
        return ImageFont.load_default(size=size)


def _normalize(img, mean, std) -> np.ndarray:
    a = np.asarray(img, np.float32).transpose(2, 0, 1) / 255.0
    return ((a - np.asarray(mean)[:, None, None]) / np.asarray(std)[:, None, None]).astype(np.float32)


def shape_images(n: int, size: int, seed: int) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    out = np.zeros((n, 3, size, size), np.float32)
    for i in range(n):
        img = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(3, 9))):
            x0, y0 = rng.integers(0, size, 2)
            w, h = rng.integers(size // 8, size // 2, 2)
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([int(x0), int(y0), int(x0 + w), int(y0 + h)], fill=fill)
        out[i] = _normalize(img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 2)))), *IMAGENET)
    return out


def text_lines(n: int, seed: int, height: int = 48, width: int = 192) -> tuple[np.ndarray, np.ndarray]:
    """(images [n, 3, 48, 192] normalised like PP-OCR cls, labels: 1 = rotated 180)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    images, labels = np.zeros((n, 3, height, width), np.float32), np.zeros(n, np.int64)
    for i in range(n):
        text = " ".join(rng.choice(WORDS, int(rng.integers(1, 4))))
        font = _font(int(rng.integers(22, 34)))
        ink = int(rng.integers(0, 80))
        img = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(190, 256, 3)))
        ImageDraw.Draw(img).text((int(rng.integers(0, 16)), int(rng.integers(2, 10))), text, fill=(ink, ink, ink), font=font)
        labels[i] = i % 2
        if labels[i]:
            img = img.rotate(180)
        images[i] = _normalize(img, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    return images, labels


def text_pages(n: int, seed: int, size: int = 320) -> tuple[np.ndarray, np.ndarray]:
    """(pages [n, 3, size, size] normalised like PP-OCR det, box masks [n, size, size])."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    pages, masks = np.zeros((n, 3, size, size), np.float32), np.zeros((n, size, size), bool)
    for i in range(n):
        img = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(200, 256, 3)))
        draw = ImageDraw.Draw(img)
        y = int(rng.integers(8, 30))
        while y < size - 40:
            font = _font(int(rng.integers(18, 30)))
            text = " ".join(rng.choice(WORDS, int(rng.integers(1, 4))))
            x = int(rng.integers(5, size // 3))
            draw.text((x, y), text, fill=(0, 0, 0), font=font)
            x0, y0, x1, y1 = draw.textbbox((x, y), text, font=font)
            masks[i, y0:y1, x0:min(x1, size)] = True
            y = y1 + int(rng.integers(12, 40))
        pages[i] = _normalize(img, IMAGENET[0], IMAGENET[1])
    return pages, masks


def yolo_detector():
    """A small YOLOv8-style detector (random init, BN statistics calibrated on shape images)."""
    import torch
    from torch import nn

    def cbs(c1, c2, k=1, s=1):
        return nn.Sequential(nn.Conv2d(c1, c2, k, s, k // 2, bias=False), nn.BatchNorm2d(c2), nn.SiLU())

    class C2f(nn.Module):
        def __init__(self, c1, c2, n=1):
            super().__init__()
            self.c = c2 // 2
            self.cv1, self.cv2 = cbs(c1, 2 * self.c), cbs((2 + n) * self.c, c2)
            self.m = nn.ModuleList(nn.Sequential(cbs(self.c, self.c, 3), cbs(self.c, self.c, 3)) for _ in range(n))

        def forward(self, x):
            y = list(self.cv1(x).chunk(2, 1))
            for m in self.m:
                y.append(y[-1] + m(y[-1]))
            return self.cv2(torch.cat(y, 1))

    class SPPF(nn.Module):
        def __init__(self, c1, c2):
            super().__init__()
            self.cv1, self.cv2, self.m = cbs(c1, c1 // 2), cbs(c1 * 2, c2), nn.MaxPool2d(5, 1, 2)

        def forward(self, x):
            x = self.cv1(x)
            y1 = self.m(x)
            y2 = self.m(y1)
            return self.cv2(torch.cat([x, y1, y2, self.m(y2)], 1))

    class Detector(nn.Module):
        def __init__(self, nc=16):
            super().__init__()
            self.b1 = nn.Sequential(cbs(3, 16, 3, 2), cbs(16, 32, 3, 2), C2f(32, 32), cbs(32, 64, 3, 2), C2f(64, 64))
            self.b2 = nn.Sequential(cbs(64, 128, 3, 2), C2f(128, 128))
            self.b3 = nn.Sequential(cbs(128, 256, 3, 2), C2f(256, 256), SPPF(256, 256))
            self.up = nn.Upsample(scale_factor=2, mode="nearest")
            self.n1, self.n2 = C2f(384, 128), C2f(192, 64)
            self.d1, self.n3 = cbs(64, 64, 3, 2), C2f(192, 128)
            self.heads = nn.ModuleList(nn.Sequential(cbs(c, 64, 3), nn.Conv2d(64, 4 + nc, 1)) for c in (64, 128, 256))

        def forward(self, x):
            p3 = self.b1(x)
            p4 = self.b2(p3)
            p5 = self.b3(p4)
            t4 = self.n1(torch.cat([self.up(p5), p4], 1))
            t3 = self.n2(torch.cat([self.up(t4), p3], 1))
            t4 = self.n3(torch.cat([self.d1(t3), t4], 1))
            outs = [h(t).flatten(2) for h, t in zip(self.heads, (t3, t4, p5))]
            return torch.cat(outs, 2)

    torch.manual_seed(0)
    net = Detector()
    net.train()
    with torch.no_grad():  # calibrate BN statistics so activations are not degenerate
        for seed in range(4):
            net(torch.from_numpy(shape_images(8, 320, 100 + seed)))
    return net.eval()


ONNXSIM_DRIVER = r'''
import sys, json, numpy as np, onnx
from onnx import shape_inference
import onnxsim

def macs(model):
    m = shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value or 1 for d in v.type.tensor_type.shape.dim] for v in [*m.graph.value_info, *m.graph.output, *m.graph.input]}
    inits = {i.name: list(i.dims) for i in m.graph.initializer}
    total = 0
    for n in m.graph.node:
        if n.op_type in ("Conv", "Gemm", "MatMul") and n.input[1] in inits and n.output[0] in shapes:
            w, out = inits[n.input[1]], shapes[n.output[0]]
            k = int(np.prod(w[1:])) if n.op_type == "Conv" else (w[0] if n.op_type == "MatMul" or not any(a.name == "transB" and a.i for a in n.attribute) else w[1])
            total += int(np.prod(out)) * k
    return total

src, dst, target, mode, calib = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4], sys.argv[5]
model = onnx.load(src)
base = macs(model)
data = None
if mode == "wanda":
    arrays = np.load(calib)
    data = [{k: arrays[k][i:i + 1] for k in arrays.files} for i in range(min(16, len(arrays[arrays.files[0]])))]

def prune(s):
    if mode == "wanda":
        return onnxsim.apply_structured_wanda_pruning(model, calibration_data=data, sparsity=s)
    return onnxsim.apply_structured_pruning(model, sparsity=s, importance_norm="l2")

lo, hi, best = 0.0, 0.95, None
top = prune(hi)
got_top = 1 - macs(top) / base
if got_top < target:
    best, s = (top, hi)
else:
    for _ in range(10):
        mid = (lo + hi) / 2
        pm = prune(mid)
        if 1 - macs(pm) / base >= target:
            hi, best = mid, pm
        else:
            lo = mid
    s = hi
onnx.save(best, dst)
print(json.dumps({"sparsity": s, "macs_removed": 1 - macs(best) / base, "max_removed": got_top}))
'''
