"""Pass protocol, registry, pipeline strings and the pass manager.

A pipeline string is a comma-separated list of steps. A step is a pass name, or a fixed-point
group ``[a,b,c]`` (optionally ``[a,b,c]*N`` to cap it at N rounds, default 10) that repeats until
no pass in it reports a change. Examples::

    infer_shapes,[fold_constants,eliminate_identity,eliminate_dead]*8,infer_shapes
    fuse_conv_bn

Passes live in :mod:`onnxslim.passes`, one module each; every subclass of :class:`Pass` with a
``name`` found there is registered. Per-pass options travel in :class:`PassContext`.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import logging
import pkgutil
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import onnx_graphsurgeon as gs

from onnxslim.errors import OnnxSlimError, PassFailedError, StrictModeError, UnknownPassError, UsageError
from onnxslim.graph import node_count, sweep

logger = logging.getLogger(__name__)

DEFAULT_FIXED_POINT_CAP = 10

# The cleanup pipeline `onnxslim optimize` runs when no --passes is given.
CLEANUP_PASSES = (
    "fold_constants",
    "fold_shapes",
    "inline_if",
    "simplify_reshape_shape",
    "eliminate_identity",
    "collapse_reshapes",
    "fuse_conv_bn",
    "fuse_conv_affine",
    "fuse_input_affine",
    "fuse_pad",
    "fuse_gemm",
    "fuse_hardswish",
    "dedupe",
    "eliminate_dead",
)
DEFAULT_PIPELINE = "infer_shapes,[" + ",".join(CLEANUP_PASSES) + ",infer_shapes]*10"


# --------------------------------------------------------------------------------------------
# Passes


@dataclass
class PassResult:
    """What a pass did: whether the graph changed and its own counters (e.g. nodes folded)."""

    changed: bool
    counters: dict[str, int | float] = field(default_factory=dict)
    # Per-layer rows for the report (lossy passes: ranks, ranges, groups, fallbacks, ...).
    details: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class PassContext:
    """Everything a pass may read besides the graph.

    ``options`` maps a pass name to that pass's options, so that lossy passes and targets add
    their own settings without widening a global namespace. ``input_shapes`` fixes dynamic input
    dimensions. ``notes`` collects reasons why optional rewrites did not apply (see :meth:`decline`).
    """

    target: str = "ort"
    device: str = "x86"
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    strict: bool = False
    notes: list[dict[str, str]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)  # e.g. calibration readers, set by callers

    def options_for(self, pass_name: str) -> dict[str, Any]:
        return self.options.get(pass_name, {})

    def decline(self, pass_name: str, where: str, reason: str) -> None:
        """Record that an optional rewrite at ``where`` did not apply, and why.

        Logged at debug level; with ``strict`` it raises :class:`StrictModeError`.
        """
        logger.debug("%s: skipped %s: %s", pass_name, where, reason)
        if self.strict:
            raise StrictModeError(f"{pass_name}: cannot rewrite {where}: {reason}")
        if len(self.notes) < 1000:
            self.notes.append({"pass": pass_name, "where": where, "reason": reason})


class Pass:
    """Base class of all passes. Subclasses set ``name`` and implement :meth:`run`.

    The first line of the class docstring is the pass's one-line description.
    """

    name: ClassVar[str] = ""
    lossy: ClassVar[bool] = False

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def description(cls) -> str:
        doc = inspect.getdoc(cls) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""


def discover(package: Any, base: type) -> list[type]:
    """Named subclasses of ``base`` defined in the modules of ``package`` (modules in name order;
    modules starting with ``_`` skipped). Shared by the pass registry and the CLI stages."""
    found = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, base) and obj is not base and obj.name and obj.__module__ == module.__name__:
                found.append(obj)
    return found


@functools.lru_cache(maxsize=1)
def registry() -> dict[str, type[Pass]]:
    """All passes found in :mod:`onnxslim.passes`, by name (sorted)."""
    import onnxslim.passes as package

    found: dict[str, type[Pass]] = {}
    for cls in discover(package, Pass):
        if cls.name in found and found[cls.name] is not cls:
            raise RuntimeError(f"two passes are named {cls.name!r}")
        found[cls.name] = cls
    return dict(sorted(found.items()))


def get_pass(name: str) -> type[Pass]:
    passes = registry()
    if name not in passes:
        close = [n for n in passes if n.startswith(name[:4])] if name else []
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UnknownPassError(f"unknown pass {name!r}{hint}; run `onnxslim passes` for the list")
    return passes[name]


# --------------------------------------------------------------------------------------------
# Pipeline strings


@dataclass(frozen=True)
class PassStep:
    name: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class FixedPoint:
    steps: tuple[PassStep, ...]
    cap: int = DEFAULT_FIXED_POINT_CAP

    def __str__(self) -> str:
        inner = ",".join(str(s) for s in self.steps)
        return f"[{inner}]" + (f"*{self.cap}" if self.cap != DEFAULT_FIXED_POINT_CAP else "")


Step = PassStep | FixedPoint

_TOKEN = re.compile(r"\s*(\[|\]\*\d+|\]|,|[A-Za-z_][A-Za-z0-9_]*)\s*")


def parse_pipeline(text: str) -> tuple[Step, ...]:
    """Parse a pipeline string into steps. Raises UsageError with the offending position."""
    text = text.strip()
    if not text:
        raise UsageError("empty pipeline string")
    pos, tokens = 0, []
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise UsageError(f"malformed pipeline {text!r}: unexpected {text[pos:pos + 10]!r} at column {pos + 1}")
        tokens.append(m.group(1))
        pos = m.end()
    steps: list[Step] = []
    group: list[PassStep] | None = None
    expect_name = True
    for tok in tokens:
        if tok == ",":
            if expect_name:
                raise UsageError(f"malformed pipeline {text!r}: empty step")
            expect_name = True
        elif tok == "[":
            if group is not None or not expect_name:
                raise UsageError(f"malformed pipeline {text!r}: nested or misplaced '['")
            group = []
        elif tok.startswith("]"):
            if group is None or not group or expect_name:
                raise UsageError(f"malformed pipeline {text!r}: misplaced ']'")
            cap = int(tok[2:]) if tok.startswith("]*") else DEFAULT_FIXED_POINT_CAP
            if not 1 <= cap <= 1000:
                raise UsageError(f"malformed pipeline {text!r}: fixed-point cap must be 1..1000")
            steps.append(FixedPoint(tuple(group), cap))
            group = None
            expect_name = False
        else:
            if not expect_name:
                raise UsageError(f"malformed pipeline {text!r}: missing ',' before {tok!r}")
            get_pass(tok)
            (group if group is not None else steps).append(PassStep(tok))
            expect_name = False
    if group is not None:
        raise UsageError(f"malformed pipeline {text!r}: unclosed '['")
    if expect_name:
        raise UsageError(f"malformed pipeline {text!r}: trailing ','")
    return tuple(steps)


def format_pipeline(steps: tuple[Step, ...]) -> str:
    return ",".join(str(s) for s in steps)


def without_passes(steps: tuple[Step, ...], skip: set[str]) -> tuple[Step, ...]:
    """The pipeline with the named passes removed (empty groups dropped)."""
    for name in skip:
        get_pass(name)
    out: list[Step] = []
    for step in steps:
        if isinstance(step, FixedPoint):
            kept = tuple(s for s in step.steps if s.name not in skip)
            if kept:
                out.append(FixedPoint(kept, step.cap))
        elif step.name not in skip:
            out.append(step)
    return tuple(out)


# --------------------------------------------------------------------------------------------
# The pass manager


@dataclass
class PassRecord:
    """One execution of one pass."""

    name: str
    round: int  # 1-based round inside its fixed-point group; 1 outside groups
    changed: bool
    seconds: float
    nodes_before: int
    nodes_after: int
    counters: dict[str, int | float]
    details: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Called after each pass that changed the graph; may raise to stop the pipeline (verify-each).
AfterPassHook = Callable[[PassRecord, gs.Graph], None]


class Pipeline:
    """An ordered list of steps built from a pipeline string."""

    def __init__(self, steps: tuple[Step, ...] | str = DEFAULT_PIPELINE):
        self.steps = parse_pipeline(steps) if isinstance(steps, str) else tuple(steps)

    def __str__(self) -> str:
        return format_pipeline(self.steps)

    @property
    def lossy(self) -> bool:
        return any(get_pass(n).lossy for n in self.pass_names())

    def pass_names(self) -> list[str]:
        names: list[str] = []
        for step in self.steps:
            names.extend(s.name for s in (step.steps if isinstance(step, FixedPoint) else (step,)))
        return names

    def run(self, graph: gs.Graph, ctx: PassContext, after_pass: AfterPassHook | None = None) -> list[PassRecord]:
        records: list[PassRecord] = []
        instances = {name: get_pass(name)() for name in self.pass_names()}
        for step in self.steps:
            if isinstance(step, PassStep):
                records.append(self._run_one(instances[step.name], graph, ctx, 1, after_pass))
                continue
            for round_no in range(1, step.cap + 1):
                changed = False
                for sub in step.steps:
                    record = self._run_one(instances[sub.name], graph, ctx, round_no, after_pass)
                    records.append(record)
                    changed |= record.changed
                if not changed:
                    break
            else:
                logger.info("fixed point %s stopped at its cap of %d rounds", step, step.cap)
        return records

    @staticmethod
    def _run_one(p: Pass, graph: gs.Graph, ctx: PassContext, round_no: int, after_pass: AfterPassHook | None) -> PassRecord:
        nodes_before = node_count(graph)
        start = time.perf_counter()
        try:
            result = p.run(graph, ctx)
            if result.changed:
                sweep(graph)
                graph.toposort(recurse_subgraphs=False, recurse_functions=False)
        except OnnxSlimError:
            raise
        except Exception as exc:  # a bug in a pass: name it, never let it pass silently
            logger.debug("pass %s raised", p.name, exc_info=True)
            raise PassFailedError(
                f"pass {p.name!r} failed: {type(exc).__name__}: {exc} (re-run with --skip {p.name} to work around it)"
            ) from exc
        record = PassRecord(
            name=p.name,
            round=round_no,
            changed=bool(result.changed),
            seconds=time.perf_counter() - start,
            nodes_before=nodes_before,
            nodes_after=node_count(graph),
            counters=dict(result.counters),
            details=list(result.details),
        )
        logger.debug("%s (round %d): changed=%s %s", p.name, round_no, record.changed, record.counters)
        if record.changed and after_pass is not None:
            after_pass(record, graph)
        return record
