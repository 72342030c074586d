"""The run report: what ran, what it cost, what it bought, and whether outputs still match.

``Report.to_dict()`` follows a versioned schema (``SCHEMA``, documented field by field in
docs/report-schema.md); the CLI writes it with --report and renders it with --html. Fields are
only ever added within one schema version; a change that breaks a reader bumps the version.
``onnxslim optimize --from-report report.json`` reruns the recorded options on the recorded
input (checked by sha256), which reproduces the output byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from onnxslim.pipeline import PassRecord
from onnxslim.stats import ModelStats
from onnxslim.verify import VerificationResult

SCHEMA = "onnxslim.report/1"


SCHEMA_PREFIX = "onnxslim.report/"
# Small model files are parsed for external-data references (large ones hold their weights).
_EXTERNAL_DATA_PROBE_BYTES = 64 * 2**20


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for dist in ("onnxslim", "onnx", "onnxruntime", "onnx-graphsurgeon", "numpy", "protobuf", "click"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "not installed"
    return found


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_digest(path: str | os.PathLike, with_hash: bool = True) -> dict[str, Any]:
    """sha256 and size of a model file and of its external-data files beside it.

    ``bytes`` is the model file's size, ``total_bytes`` adds its external data; ``external_data``
    lists each data file (path relative to the model's folder, bytes, sha256), empty when none.
    ``with_hash=False`` leaves the sha256 fields out (hashing gigabytes costs seconds; the CLI
    hashes only when a report is written).
    """
    path = Path(path)
    size = path.stat().st_size
    digest = sha256_file if with_hash else (lambda p: None)
    data = [{"path": name, "bytes": (path.parent / name).stat().st_size, "sha256": digest(path.parent / name)}
            for name in _external_data_files(path)]
    return {"path": str(path), "bytes": size, "sha256": digest(path), "external_data": data,
            "total_bytes": size + sum(d["bytes"] for d in data)}


def _external_data_files(path: Path) -> list[str]:
    """Locations of external data a (small) model file refers to, that exist beside it."""
    if path.stat().st_size > _EXTERNAL_DATA_PROBE_BYTES:
        return []
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # not a model we can parse: the digest of the file itself still stands
        return []
    names: set[str] = set()
    tensors = list(model.graph.initializer) + [a.t for n in model.graph.node for a in n.attribute if a.HasField("t")]
    for tensor in tensors:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            names.update(e.value for e in tensor.external_data if e.key == "location")
    return sorted(n for n in names if (path.parent / n).is_file())


def path_digest(path: str | os.PathLike) -> dict[str, Any]:
    """sha256 of a file, or of a folder (over its files' relative paths and contents, sorted)."""
    path = Path(path)
    if path.is_file():
        return {"path": str(path), "bytes": path.stat().st_size, "sha256": sha256_file(path)}
    h, total, count = hashlib.sha256(), 0, 0
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path).as_posix()
        h.update(rel.encode() + b"\0" + sha256_file(file).encode() + b"\n")
        total += file.stat().st_size
        count += 1
    return {"path": str(path), "bytes": total, "files": count, "sha256": h.hexdigest()}


def load_report(path: str | os.PathLike) -> dict[str, Any]:
    """A report written by --report; UsageError when it is not one or its schema is unknown."""
    from onnxslim.errors import UsageError

    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{path}: no such report") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: not a JSON report: {exc}") from None
    except RecursionError:  # "[[[[..." nested deeper than the decoder goes
        raise UsageError(f"{path}: not a JSON report: nested too deeply") from None
    schema = data.get("schema") if isinstance(data, dict) else None
    if not isinstance(schema, str) or not schema.startswith(SCHEMA_PREFIX):
        raise UsageError(f"{path}: not an onnxslim report (no {SCHEMA_PREFIX}N schema field)")
    if schema != SCHEMA:
        raise UsageError(f"{path}: report schema {schema!r} is not the one this onnxslim reads ({SCHEMA!r})")
    problem = _shape_problem(data)
    if problem:
        raise UsageError(f"{path}: malformed report: {problem}")
    return data


# Top-level fields of schema 1 and their JSON kind (null is allowed for each); list fields hold objects.
_OBJECT_FIELDS = ("versions", "input", "output", "options", "stats", "verification", "seconds", "calibration",
                  "option_files", "config", "reproduced_from")
_LIST_FIELDS = ("pass_totals", "passes", "verify_each", "notes", "stages", "fail_if")


def _shape_problem(data: dict[str, Any]) -> str:
    """What is wrong with the structure of a loaded report ('' when nothing): a hand-edited or
    foreign file must be a usage error, not a crash of whoever reads it."""
    def kind(value: Any) -> str:
        return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(type(value), "a number")

    for name in _OBJECT_FIELDS:
        if data.get(name) is not None and not isinstance(data[name], dict):
            return f"{name!r} is {kind(data[name])}, expected an object"
    for name in _LIST_FIELDS:
        value = data.get(name)
        if value is not None and not isinstance(value, list):
            return f"{name!r} is {kind(value)}, expected a list"
        bad = next((i for i, item in enumerate(value or []) if not isinstance(item, dict)), None)
        if bad is not None:
            return f"{name}[{bad}] is {kind(value[bad])}, expected an object"
    if data.get("pipeline") is not None and not isinstance(data["pipeline"], str):
        return f"'pipeline' is {kind(data['pipeline'])}, expected a string"
    for side in ("before", "after"):
        stats = (data.get("stats") or {}).get(side)
        if stats is not None and not isinstance(stats, dict):
            return f"stats.{side} is {kind(stats)}, expected an object"
    return ""


@dataclass
class Report:
    pipeline: str
    options: dict[str, Any] = field(default_factory=dict)
    passes: list[PassRecord] = field(default_factory=list)
    before: ModelStats | None = None
    after: ModelStats | None = None
    verification: VerificationResult | None = None
    verify_each: list[dict[str, Any]] = field(default_factory=list)
    notes: list[dict[str, str]] = field(default_factory=list)
    input: dict[str, Any] = field(default_factory=dict)
    output: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    # Added in place within schema 1 (readers ignore what they do not know):
    stages: list[dict[str, Any]] = field(default_factory=list)  # input, cleanup, each lossy pass, output
    pass_stats: dict[int, dict[str, Any]] = field(default_factory=dict)  # index in passes -> stats before/after it
    calibration: dict[str, Any] | None = None  # digest of --calib-data
    option_files: dict[str, Any] = field(default_factory=dict)  # flag -> digest of the file it named (--prune FILE.json)
    config: dict[str, Any] | None = None  # the config file that supplied options, and its digest
    reproduced_from: dict[str, Any] | None = None  # the report an --from-report run followed
    fail_if: list[dict[str, Any]] = field(default_factory=list)  # --fail-if conditions and whether they held

    def pass_totals(self) -> list[dict[str, Any]]:
        """Time, runs and node delta per pass name, in first-run order."""
        totals: dict[str, dict[str, Any]] = {}
        for r in self.passes:
            t = totals.setdefault(r.name, {"name": r.name, "runs": 0, "changed": 0, "seconds": 0.0, "nodes_removed": 0, "counters": {}})
            t["runs"] += 1
            t["changed"] += int(r.changed)
            t["seconds"] += r.seconds
            t["nodes_removed"] += r.nodes_before - r.nodes_after
            for k, v in r.counters.items():
                t["counters"][k] = t["counters"].get(k, 0) + v
        return list(totals.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "versions": versions(),
            "input": self.input,
            "output": self.output,
            "pipeline": self.pipeline,
            "options": self.options,
            "stats": {
                "before": self.before.to_dict() if self.before else None,
                "after": self.after.to_dict() if self.after else None,
            },
            "pass_totals": self.pass_totals(),
            "passes": [self._pass_dict(i, r) for i, r in enumerate(self.passes)],
            "verification": self.verification.to_dict() if self.verification else None,
            "verify_each": self.verify_each,
            "notes": self.notes,
            "seconds": self.seconds,
            "stages": self.stages,
            "calibration": self.calibration,
            "option_files": self.option_files,
            "config": self.config,
            "reproduced_from": self.reproduced_from,
            "fail_if": self.fail_if,
        }

    def _pass_dict(self, index: int, record: PassRecord) -> dict[str, Any]:
        out = record.to_dict()
        if index in self.pass_stats:
            out["stats"] = self.pass_stats[index]  # {"before": ..., "after": ...}, changed passes only
        return out

    def write_json(self, path: str | os.PathLike) -> None:
        from onnxslim.io import staged  # atomic like every other output

        path = Path(path)
        with staged(path) as tmp:
            tmp_file = tmp / path.name
            tmp_file.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")
            os.replace(tmp_file, path)
