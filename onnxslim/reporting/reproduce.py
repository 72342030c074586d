"""``onnxslim optimize --from-report report.json``: rerun a recorded run, on the recorded input only.

The report's ``options`` are the keyword arguments of :func:`onnxslim.api.optimize_file`; the
input (the report's ``input.path``, or the MODEL given) must have the recorded sha256, and so
must its external data, the calibration data and files that options name (--prune FILE.json), else the rerun is refused (exit 2): another
model would not reproduce the recorded output.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from onnxslim.errors import UsageError
from onnxslim.report import file_digest, path_digest


def prepare(recorded: dict[str, Any], model: str | Path | None) -> tuple[Path, dict[str, Any]]:
    """(input path, optimize_file keyword arguments) for rerunning ``recorded``; UsageError when it cannot."""
    model = Path(model) if model is not None else Path((recorded.get("input") or {}).get("path") or "")
    if not str(model) or str(model) == "." or not model.is_file():
        raise UsageError(f"--from-report: the recorded input {str(model) if str(model) != '.' else '(none)'!r} is not a file; give MODEL")
    check_digest(model, recorded.get("input") or {}, "input")
    options = options_from_report(recorded.get("options") or {})
    calib = options.get("calib_data")
    if calib is not None and recorded.get("calibration"):
        if not Path(calib).exists() or path_digest(calib)["sha256"] != recorded["calibration"]["sha256"]:
            raise UsageError(f"--from-report: calibration data {calib} is missing or differs from the recorded one (sha256 mismatch)")
    for flag, digest in (recorded.get("option_files") or {}).items():
        path = Path(digest.get("path") or "")
        if not path.is_file() or path_digest(path)["sha256"] != digest.get("sha256"):
            raise UsageError(f"--from-report: the {flag} file {path} is missing or differs from the recorded one (sha256 mismatch)")
    return model, options


def check_digest(path: Path, recorded: dict[str, Any], what: str) -> None:
    want = recorded.get("sha256")
    if not want:
        raise UsageError(f"--from-report: the report records no sha256 of its {what}")
    have = file_digest(path)
    if have["sha256"] != want:
        raise UsageError(f"--from-report: {path} is not the recorded {what} (sha256 {have['sha256'][:12]}... "
                         f"!= recorded {want[:12]}...); refusing to reproduce on another model")
    recorded_data = {d["path"]: d["sha256"] for d in recorded.get("external_data") or []}
    actual_data = {d["path"]: d["sha256"] for d in have.get("external_data") or []}
    if recorded_data != actual_data:
        raise UsageError(f"--from-report: the external data of {path} differs from the recorded {what}'s")


def options_from_report(recorded: dict[str, Any]) -> dict[str, Any]:
    """The recorded ``options`` as keyword arguments of :func:`onnxslim.api.optimize_file`."""
    from onnxslim.api import Options

    known = {f.name for f in dataclasses.fields(Options)}
    unknown = sorted(set(recorded) - known)
    if unknown:
        raise UsageError(f"--from-report: the report has option {unknown[0]!r}, which this onnxslim does not know")
    options = dict(recorded)
    if isinstance(options.get("stage_values"), dict):  # click gives repeatable options as tuples; JSON made them lists
        options["stage_values"] = {k: tuple(v) if isinstance(v, list) else v for k, v in options["stage_values"].items()}
    from onnxslim.api import _options

    try:
        _options(options)  # a hand-edited report: wrong kinds are a usage error here, not a crash later
    except UsageError as exc:
        raise UsageError(f"--from-report: the report's {exc}") from None
    return options
