"""PyTorch -> ONNX with the settings that work, checked against torch before it is kept.

    from onnxslim.frontends.torch import export

    result = export(model, (torch.randn(1, 3, 224, 224),), "model.onnx", input_names=["images"],
                    dynamic_axes={"images": {0: "batch"}})
    print(result)  # model.onnx: dynamo exporter, opset 18, max |ORT - torch| 2.4e-07 on 1 output(s)

``torch.onnx.export`` has two exporters and each fails on some models: with torch 2.13 the dynamo
exporter asked for opset 17 writes opset 18 (or, through the version converter, an invalid
Split), while the legacy TorchScript exporter (``dynamo=False``) handles opset 17. So, with
``exporter="auto"``, :func:`export` tries the dynamo exporter at opset 18 first and falls back
to the legacy one at opset 17; an attempt counts only when the file passes the ONNX checker,
declares the opset asked for, and its onnxruntime outputs match torch's on the example inputs
(``max|ort - torch| <= tolerance * max(1, max|torch|)``). The file is written atomically.
"""

from __future__ import annotations

import contextlib
import io as _io
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from onnxslim.errors import OnnxSlimError, UsageError

logger = logging.getLogger(__name__)

DYNAMO_OPSET = 18
LEGACY_OPSET = 17
EXPORTERS = ("auto", "dynamo", "legacy")
_EXTERNAL_DATA_BYTES = 1_800_000_000  # parameters above this go to <name>.data (protobuf's 2 GB limit)


class ExportError(OnnxSlimError):
    """No exporter produced a model that checks and matches torch's outputs."""


@dataclass
class ExportResult:
    """What :func:`export` wrote and how it was checked."""

    path: Path
    exporter: str  # "dynamo" or "legacy"
    opset: int
    max_abs_error: float  # max |onnxruntime - torch| over every output on the example inputs
    outputs: int
    attempts: list[dict[str, Any]] = field(default_factory=list)  # {"exporter", "opset", "ok", "reason"} in order

    def __str__(self) -> str:
        fell_back = [a for a in self.attempts if not a["ok"]]
        note = f" (after {fell_back[0]['exporter']} failed: {fell_back[0]['reason']})" if fell_back else ""
        return (f"{self.path}: {self.exporter} exporter, opset {self.opset}, max |ORT - torch| "
                f"{self.max_abs_error:.3g} on {self.outputs} output(s){note}")


def export(
    module: Any,
    example_inputs: Any,
    path: str | os.PathLike,
    *,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
    opset: int | None = None,
    exporter: str = "auto",
    tolerance: float = 1e-4,
    external_data: bool | None = None,
) -> ExportResult:
    """Export ``module`` to ``path`` and check it with onnxruntime against torch.

    ``example_inputs``: a tensor or a tuple of tensors (positional arguments of ``forward``).
    ``opset``: the opset to ask for (default: 18 for dynamo, 17 for legacy). ``exporter``:
    "auto" (dynamo, then legacy), "dynamo" or "legacy". Raises :class:`ExportError` when every
    attempt fails, with each attempt's reason.
    """
    import torch

    from onnxslim import io

    if exporter not in EXPORTERS:
        raise UsageError(f"exporter must be one of {', '.join(EXPORTERS)}, not {exporter!r}")
    inputs = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    module.eval()
    with torch.no_grad():
        expected = _flatten(module(*inputs))
    if external_data is None:
        external_data = sum(p.numel() * p.element_size() for p in module.parameters()) > _EXTERNAL_DATA_BYTES
    plan = {"auto": [("dynamo", opset or DYNAMO_OPSET), ("legacy", opset or LEGACY_OPSET)],
            "dynamo": [("dynamo", opset or DYNAMO_OPSET)], "legacy": [("legacy", opset or LEGACY_OPSET)]}[exporter]
    path = Path(path)
    io.check_output_path(path, [])
    attempts: list[dict[str, Any]] = []
    for name, version in plan:
        with io.staged(path) as tmp:
            staged_file = tmp / path.name
            try:
                _run_exporter(torch, module, inputs, staged_file, name, version, input_names, output_names, dynamic_axes, external_data)
                error = _check(staged_file, version, [np.asarray(t.detach().cpu().numpy()) for t in inputs], expected, tolerance)
            except Exception as exc:  # exporters raise anything; the reason goes into the next attempt's note
                attempts.append({"exporter": name, "opset": version, "ok": False, "reason": _first_line(exc)})
                logger.info("torch export with the %s exporter (opset %d) failed: %s", name, version, attempts[-1]["reason"])
                continue
            io.commit(tmp, path, sorted(tmp.iterdir()))
        attempts.append({"exporter": name, "opset": version, "ok": True, "reason": ""})
        return ExportResult(path, name, version, error, len(expected), attempts)
    tried = "; ".join(f"{a['exporter']} (opset {a['opset']}): {a['reason']}" for a in attempts)
    raise ExportError(f"could not export {type(module).__name__} to ONNX: {tried}")


def _run_exporter(torch, module, inputs, file: Path, exporter: str, opset: int, input_names, output_names,
                  dynamic_axes, external_data: bool) -> None:
    kwargs: dict[str, Any] = {"input_names": list(input_names) if input_names else None,
                              "output_names": list(output_names) if output_names else None,
                              "opset_version": opset, "dynamic_axes": dict(dynamic_axes) if dynamic_axes else None}
    if exporter == "dynamo":
        kwargs.update(dynamo=True, external_data=external_data)
    else:
        kwargs.update(dynamo=False, do_constant_folding=True)
    chatter = _io.StringIO()  # the exporters print progress and converter tracebacks: keep them for -vv
    with warnings.catch_warnings(), contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
        warnings.simplefilter("ignore")
        torch.onnx.export(module, inputs, str(file), **kwargs)
    if chatter.getvalue().strip():
        logger.debug("torch.onnx.export said:\n%s", chatter.getvalue().strip())
    if not file.is_file():
        raise ExportError("the exporter wrote no file")


def _check(file: Path, opset: int, inputs: list[np.ndarray], expected: list[np.ndarray], tolerance: float) -> float:
    """Checker, declared opset and onnxruntime outputs vs torch's; returns the max abs error."""
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(str(file))
    header = onnx.load(str(file), load_external_data=False)
    declared = {(o.domain or "ai.onnx"): o.version for o in header.opset_import}.get("ai.onnx")
    if declared != opset:
        raise ExportError(f"asked for opset {opset}, the file declares opset {declared}")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    if len(names) != len(inputs):
        raise ExportError(f"the model has {len(names)} input(s) for {len(inputs)} example input(s)")
    got = session.run(None, dict(zip(names, inputs)))
    if len(got) != len(expected):
        raise ExportError(f"the model has {len(got)} output(s), torch returned {len(expected)}")
    worst = 0.0
    for i, (g, w) in enumerate(zip(got, expected)):
        if g.shape != w.shape:
            raise ExportError(f"output {i}: shape {list(g.shape)} differs from torch's {list(w.shape)}")
        if w.size == 0:
            continue
        if w.dtype.kind in "fc":
            err = float(np.max(np.abs(g.astype(np.float64) - w.astype(np.float64))))
            bound = tolerance * max(1.0, float(np.max(np.abs(w))))
            if not err <= bound:
                raise ExportError(f"output {i}: max |ORT - torch| {err:.3g} exceeds {bound:.3g}")
            worst = max(worst, err)
        elif not np.array_equal(g, w):
            raise ExportError(f"output {i}: integer outputs differ from torch's")
    return worst


def _flatten(outputs: Any) -> list[np.ndarray]:
    """Tensors of a (nested) tuple/list/dict output, in order, as NumPy arrays."""
    import torch

    if isinstance(outputs, torch.Tensor):
        return [outputs.detach().cpu().numpy()]
    if isinstance(outputs, Mapping):
        return [a for v in outputs.values() for a in _flatten(v)]
    if isinstance(outputs, (tuple, list)):
        return [a for v in outputs for a in _flatten(v)]
    raise ExportError(f"the module returned a {type(outputs).__name__}; only tensors (or tuples/lists/dicts of them) export")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0][:300] if text else type(exc).__name__)
