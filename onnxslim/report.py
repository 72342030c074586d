"""The run report: what ran, what it cost, what it bought, and whether outputs still match.

``Report.to_dict()`` follows a versioned schema (``SCHEMA``); the CLI writes it with --report.
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


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for dist in ("onnxslim", "onnx", "onnxruntime", "onnx-graphsurgeon", "numpy"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "not installed"
    return found


def file_digest(path: str | os.PathLike) -> dict[str, Any]:
    """sha256 and size of a model file and of its external-data files beside it."""
    path = Path(path)
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return {"path": str(path), "bytes": path.stat().st_size, "sha256": h.hexdigest()}


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
            "passes": [r.to_dict() for r in self.passes],
            "verification": self.verification.to_dict() if self.verification else None,
            "verify_each": self.verify_each,
            "notes": self.notes,
            "seconds": self.seconds,
        }

    def write_json(self, path: str | os.PathLike) -> None:
        from onnxslim.io import staged  # atomic like every other output

        path = Path(path)
        with staged(path) as tmp:
            tmp_file = tmp / path.name
            tmp_file.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")
            os.replace(tmp_file, path)
