"""Helpers every emitter shares: the model's input signature, seeded inputs, output comparison."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx

from onnxslim.verify import compare_outputs, synthesize_inputs

QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


@dataclass(frozen=True)
class InputSpec:
    """One graph input: dims are ints (fixed) or strings (symbolic; "?" when unnamed)."""

    name: str
    dims: tuple[int | str, ...]
    dtype: np.dtype

    @property
    def dynamic(self) -> bool:
        return any(not isinstance(d, int) for d in self.dims)


def input_specs(model: onnx.ModelProto, input_shapes: dict[str, Sequence[int]] | None = None) -> list[InputSpec]:
    """Graph inputs that are not initializers, with ``input_shapes`` applied over symbolic dims."""
    inits = {t.name for t in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in inits:
            continue
        tt = value.type.tensor_type
        dims: list[int | str] = []
        for d in tt.shape.dim:
            dims.append(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?"))
        if input_shapes and value.name in input_shapes:
            dims = [int(x) for x in input_shapes[value.name]]
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)) if tt.elem_type else np.dtype(np.float32)
        specs.append(InputSpec(value.name, tuple(dims), dtype))
    return specs


def header(path: str | Path) -> onnx.ModelProto:
    """The model without weight bytes (graph structure, inputs, outputs)."""
    return onnx.load(str(path), load_external_data=False)


def sample_feeds(model: onnx.ModelProto, input_shapes=None, seed: int = 0, samples: int = 1) -> list[dict[str, np.ndarray]]:
    """Seeded inputs (symbolic dims: 1 on the first axis, 8 elsewhere, unless ``input_shapes``)."""
    return synthesize_inputs(model, input_shapes, seed=seed, samples=samples)


def compare(names: list[str], want: list[list[np.ndarray]], got: list[list[np.ndarray]], tolerance: float | None = None) -> tuple[bool, str]:
    """(all outputs within tolerance, one-line detail) comparing per output name."""
    results = compare_outputs(names, want, names, got, tolerance)
    worst = max((c.max_rel for c in results), default=0.0)
    bad = [f"{c.name}: {c.problem}" for c in results if not c.ok]
    if bad:
        return False, "; ".join(bad)[:300]
    return True, f"{len(results)} output(s), max error {worst:.2g} relative to max |output|"


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    denom = float(np.linalg.norm(a64) * np.linalg.norm(b64))
    return 1.0 if denom == 0 else float(a64 @ b64) / denom


def is_quantized(model: onnx.ModelProto) -> bool:
    return any(n.op_type in QDQ_OPS for n in model.graph.node)


def copy_model(src: Path, dest: Path) -> list[Path]:
    """Copy a model file and the external-data files it names (kept beside it)."""
    written = []
    if src.resolve() != dest.resolve():
        shutil.copyfile(src, dest)
    written.append(dest)
    for name in sorted(_external_locations(header(src))):
        source = src.parent / name
        if source.is_file():
            target = dest.parent / name
            if source.resolve() != target.resolve():
                shutil.copyfile(source, target)
            written.append(target)
    return written


def _external_locations(model: onnx.ModelProto) -> set[str]:
    names = set()
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            names.update(e.value for e in tensor.external_data if e.key == "location")
    return names


def op_types(model: onnx.ModelProto) -> dict[str, int]:
    """op_type -> count over the graph and every subgraph (default-domain ops only keep their name)."""
    counts: dict[str, int] = {}

    def walk(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
            counts[key] = counts.get(key, 0) + 1
            for attr in node.attribute:
                for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs):
                    walk(sub)

    walk(model.graph)
    return counts
