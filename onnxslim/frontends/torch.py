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
(``max|ort - torch| <= tolerance * max(1, max|torch|)``), and again with every dynamic input axis
of up to 64 at twice its example size, where torch itself takes those inputs (an exporter that
wrote an example size into the graph passes on the example and fails there: the legacy
exporter does so for ``nn.TransformerEncoder``'s sequence axis). The file is written atomically.
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

from onnxslim.errors import OnnxSlimError, UsageError, first_line

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

    The module runs in eval mode (dropout off, batch norm on its running statistics) and is put
    back in the train/eval mode of each submodule it had, also on errors and Ctrl-C. Forward runs
    on copies of ``example_inputs``: a forward that changes its inputs in place leaves the caller's
    tensors alone. Bad arguments (not a module, inputs that are not tensors, a forward that fails
    on them, ``dynamic_axes`` naming something not in ``input_names``/``output_names``, which
    torch would silently ignore) raise :class:`~onnxslim.errors.UsageError`; a missing folder or
    a directory as ``path`` raises :class:`~onnxslim.errors.OutputError` before any work.
    An existing file at ``path`` is replaced, atomically and only once an attempt has passed the
    checks (a failed export leaves it as it was); with external data, ``<name>.data`` beside it too.
    """
    import torch

    from onnxslim import io

    if exporter not in EXPORTERS:
        raise UsageError(f"exporter must be one of {', '.join(EXPORTERS)}, not {exporter!r}")
    if not isinstance(module, torch.nn.Module):
        raise UsageError(f"module must be a torch.nn.Module, not {type(module).__name__}")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance >= 0:
        raise UsageError(f"tolerance must be a number >= 0, not {tolerance!r}")
    inputs = _example_inputs(torch, example_inputs)
    _check_names(input_names, output_names, dynamic_axes, inputs)
    path = Path(path)
    io.check_output_path(path, [])  # before running anything: a missing folder or a directory fails at once
    feeds = [t.cpu().numpy().copy() for t in inputs]
    modes = {m: m.training for m in module.modules()}  # restored on the way out, whatever happens
    try:
        module.eval()
        with torch.no_grad():
            try:
                outputs = module(*_fresh(inputs))
            except Exception as exc:
                raise UsageError(f"{type(module).__name__}.forward failed on the example inputs: "
                                 f"{type(exc).__name__}: {first_line(exc)}") from None
        expected = _flatten(outputs)
        if output_names and len(output_names) > len(expected):
            raise UsageError(f"{len(output_names)} output name(s) for the {len(expected)} output(s) the module returns")
        second = _second_sizes(torch, module, inputs, input_names, dynamic_axes)
        if external_data is None:
            external_data = sum(t.numel() * t.element_size()
                                for t in (*module.parameters(), *module.buffers())) > _EXTERNAL_DATA_BYTES
        plan = {"auto": [("dynamo", opset or DYNAMO_OPSET), ("legacy", opset or LEGACY_OPSET)],
                "dynamo": [("dynamo", opset or DYNAMO_OPSET)], "legacy": [("legacy", opset or LEGACY_OPSET)]}[exporter]
        attempts: list[dict[str, Any]] = []
        for name, version in plan:
            with io.staged(path) as tmp:
                staged_file = tmp / path.name
                try:
                    # fresh copies each time: a forward that changes its inputs in place must not
                    # change the caller's tensors, the next attempt's, or the feeds checked below
                    _run_exporter(torch, module, _fresh(inputs), staged_file, name, version, input_names, output_names,
                                  dynamic_axes, external_data)
                    module.eval()  # an exporter may leave the module in another mode
                    error = _check(staged_file, version, feeds, expected, tolerance)
                    if second is not None:
                        what, second_feeds, second_expected = second
                        try:
                            error = max(error, _check(staged_file, version, second_feeds, second_expected, tolerance))
                        except Exception as exc:
                            raise ExportError(f"with {what}: {first_line(exc)} (a dynamic axis the export fixed?)") from None
                except Exception as exc:  # exporters raise anything; the reason goes into the next attempt's note
                    attempts.append({"exporter": name, "opset": version, "ok": False, "reason": first_line(exc)})
                    logger.info("torch export with the %s exporter (opset %d) failed: %s", name, version, attempts[-1]["reason"])
                    continue
                io.commit(tmp, path, sorted(tmp.iterdir()))
            attempts.append({"exporter": name, "opset": version, "ok": True, "reason": ""})
            return ExportResult(path, name, version, error, len(expected), attempts)
    finally:
        for m, mode in modes.items():
            m.training = mode
    tried = "; ".join(f"{a['exporter']} (opset {a['opset']}): {a['reason']}" for a in attempts)
    raise ExportError(f"could not export {type(module).__name__} to ONNX: {tried}")


def _example_inputs(torch, example_inputs: Any) -> tuple:
    """The example inputs as a tuple of detached copies (the caller's tensors are never used)."""
    if isinstance(example_inputs, Mapping):
        raise UsageError("example_inputs must be a tensor or a tuple of tensors (positional arguments of forward), "
                         "not a dict; wrap the module to take keyword inputs positionally")
    inputs = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    if not inputs:
        raise UsageError("example_inputs is empty; give one tensor per positional argument of forward")
    for i, t in enumerate(inputs):
        if not isinstance(t, torch.Tensor):
            raise UsageError(f"example input {i} is a {type(t).__name__}; give torch tensors (torch.from_numpy for arrays)")
        if t.dtype in (torch.bfloat16,) or t.is_complex() or t.dtype.is_floating_point and t.dtype.itemsize == 1:
            raise UsageError(f"example input {i} has dtype {t.dtype}, which onnxruntime cannot be fed from NumPy")
    return tuple(t.detach().clone() for t in inputs)


SECOND_SIZE_LIMIT = 64  # dynamic axes up to this size are checked again at twice it


def _second_sizes(torch, module, inputs: tuple, input_names, dynamic_axes) -> tuple[str, list[np.ndarray], list[np.ndarray]] | None:
    """The example inputs with every dynamic input axis of size <= SECOND_SIZE_LIMIT doubled (each
    input repeated along it; axes sharing a name change together), and torch's outputs on them:
    an export that baked an example size into the graph (a traced ``x.size(0)``) passes on the
    example and fails here. None when no axis qualifies or the module itself cannot take them."""
    if not dynamic_axes or not input_names:
        return None
    doubled: dict[str, int] = {}  # dim name -> example size
    plan: list[list[int]] = []
    for name, t in zip(input_names, inputs):
        axes = dynamic_axes.get(name) or {}
        named = axes.items() if isinstance(axes, Mapping) else ((a, f"{name}_dim{a}") for a in axes)
        chosen = []
        for axis, dim in named:
            size = int(t.shape[axis])
            if 0 < size <= SECOND_SIZE_LIMIT and doubled.setdefault(str(dim), size) == size:
                chosen.append(axis)
        plan.append(chosen)
    if not any(plan):
        return None
    varied = list(inputs)
    for i, axes in enumerate(plan):
        for axis in axes:
            varied[i] = torch.cat([varied[i], varied[i]], dim=axis)
    varied = tuple(varied)
    try:
        with torch.no_grad():
            expected = _flatten(module(*_fresh(varied)))
    except Exception as exc:  # the module itself cannot take them: nothing to check the export against
        logger.info("torch export: the dynamic axes are checked at the example sizes only (forward fails at twice "
                    "them: %s)", first_line(exc))
        return None
    shapes = ", ".join(f"{n} {list(t.shape)}" for n, t, axes in zip(input_names, varied, plan) if axes)
    return f"the dynamic axes at twice the example size ({shapes})", [t.cpu().numpy().copy() for t in varied], expected


def _fresh(inputs: tuple) -> tuple:
    return tuple(t.clone() for t in inputs)


def _check_names(input_names, output_names, dynamic_axes, inputs: tuple) -> None:
    """Names and dynamic axes that torch would silently ignore are errors here."""
    for kind, names in (("input_names", input_names), ("output_names", output_names)):
        if names is None:
            continue
        if isinstance(names, str) or not all(isinstance(n, str) and n for n in names):
            raise UsageError(f"{kind} must be a list of non-empty strings, not {names!r}")
        if len(set(names)) != len(names):
            raise UsageError(f"{kind} has a repeated name: {list(names)}")
    if input_names and len(input_names) > len(inputs):
        raise UsageError(f"{len(input_names)} input name(s) for {len(inputs)} example input(s)")
    if not dynamic_axes:
        return
    if not isinstance(dynamic_axes, Mapping):
        raise UsageError(f"dynamic_axes must be a dict of name -> {{axis: name}}, not {type(dynamic_axes).__name__}")
    ranks = {n: t.dim() for n, t in zip(input_names or [], inputs)}
    known = set(ranks) | set(output_names or [])
    for key, axes in dynamic_axes.items():
        if key not in known:
            raise UsageError(f"dynamic_axes names {key!r}, which is not in input_names or output_names "
                             f"({', '.join(sorted(known)) or 'none given'}); torch would ignore it and keep the axis fixed")
        axis_list = list(axes.keys()) if isinstance(axes, Mapping) else list(axes) if isinstance(axes, (list, tuple)) else None
        if axis_list is None or not all(isinstance(a, int) and not isinstance(a, bool) for a in axis_list):
            raise UsageError(f"dynamic_axes[{key!r}] must map axis numbers to names (or list axis numbers), not {axes!r}")
        rank = ranks.get(key)
        bad = [a for a in axis_list if rank is not None and not 0 <= a < rank]
        if bad:
            raise UsageError(f"dynamic_axes[{key!r}]: axis {bad[0]} is out of range for a {rank}-d input")


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


