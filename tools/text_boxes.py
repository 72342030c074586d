"""Text-line boxes from a DB (differentiable binarization) probability map, and their scores.

PP-OCR's detector outputs a per-pixel text probability for shrunk text regions. Its usual
post-processing, kept here to what axis-aligned rendered lines need (no polygons, no OpenCV):
threshold at 0.3, take 8-connected components, drop specks, and grow each component's box by the
DB "unclip" distance ``area * ratio / perimeter``. Boxes are matched one-to-one by IoU (greedy,
best first), which gives ICDAR-style precision, recall and F1 against the rendered lines' boxes
(the right answer) or against the FP32 model's boxes (agreement).
"""

from __future__ import annotations

import numpy as np

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 (ends exclusive)


def components(mask: np.ndarray) -> list[tuple[int, int, int, int, int]]:
    """``(x0, y0, x1, y1, area)`` of each 8-connected component of a 2-D bool mask (union-find over row runs)."""
    parent: list[int] = []

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    runs: list[tuple[int, int, int, int]] = []  # row, start, end, run id
    prev: list[tuple[int, int, int]] = []
    for r in range(mask.shape[0]):
        edges = np.diff(np.concatenate(([0], mask[r].astype(np.int8), [0])))
        cur = []
        j = 0
        for s, e in zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()):
            i = len(parent)
            parent.append(i)
            while j < len(prev) and prev[j][1] < s:  # ends before column s - 1: cannot touch this or later runs
                j += 1
            k = j
            while k < len(prev) and prev[k][0] <= e:  # starts at or before column e: touches (diagonals too)
                a, b = find(i), find(prev[k][2])
                if a != b:
                    parent[max(a, b)] = min(a, b)
                k += 1
            cur.append((s, e, i))
            runs.append((r, s, e, i))
        prev = cur
    boxes: dict[int, list[int]] = {}
    for r, s, e, i in runs:
        b = boxes.setdefault(find(i), [s, r, e, r + 1, 0])
        b[0], b[2], b[3], b[4] = min(b[0], s), max(b[2], e), r + 1, b[4] + e - s
    return [tuple(b) for b in boxes.values()]


def detect(prob: np.ndarray, thresh: float = 0.3, min_area: int = 10, unclip: float = 1.5) -> list[Box]:
    """Boxes of the text regions in one ``[H, W]`` probability map."""
    out = []
    for x0, y0, x1, y1, area in components(prob > thresh):
        if area < min_area:
            continue
        w, h = x1 - x0, y1 - y0
        d = w * h * unclip / (2 * (w + h))
        out.append((x0 - d, y0 - d, x1 + d, y1 + d))
    return out


def mask_boxes(mask: np.ndarray) -> list[Box]:
    """The boxes of a mask of non-touching filled rectangles (e.g. rendered text lines)."""
    return [(x0, y0, x1, y1) for x0, y0, x1, y1, _ in components(mask)]


def iou(a: Box, b: Box) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def matches(pred: list[Box], truth: list[Box], min_iou: float = 0.5) -> int:
    """One-to-one matches with IoU >= ``min_iou``, greedy from the best pair."""
    pairs = sorted(((iou(p, t), i, j) for i, p in enumerate(pred) for j, t in enumerate(truth)), reverse=True)
    used_p, used_t, hits = set(), set(), 0
    for value, i, j in pairs:
        if value < min_iou:
            break
        if i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
            hits += 1
    return hits


def f1(preds: list[list[Box]], truths: list[list[Box]], min_iou: float = 0.5) -> dict[str, float]:
    """Precision, recall and F1 over images (``preds[k]`` against ``truths[k]``)."""
    hits = sum(matches(p, t, min_iou) for p, t in zip(preds, truths, strict=True))
    n_pred, n_truth = sum(map(len, preds)), sum(map(len, truths))
    precision = hits / n_pred if n_pred else 0.0
    recall = hits / n_truth if n_truth else 0.0
    return {"precision": precision, "recall": recall, "f1": 2 * precision * recall / (precision + recall) if hits else 0.0}
