"""``onnxslim.toml``: a reviewed, checked-in pipeline and its options, so a CI step is one line.

    # onnxslim.toml (read from the current folder, or given with --config PATH)
    [optimize]
    model = "models/detector.onnx"          # the MODEL argument
    output = "build/detector.opt.onnx"      # -o/--output
    passes = "infer_shapes,[fold_constants,eliminate_dead]*8"
    input-shape = ["images:1,3,640,640"]    # repeatable options take a list (or one string)
    quantize = "int8"
    calib-data = "calib/"
    report = "build/report.json"
    html = "build/report.html"
    fail-if = ["nodes-increased", "cosine<0.99"]

Keys are the long option names of ``onnxslim optimize`` without the dashes (``calib-data``,
``no-verify``, ``fail-if``; ``model`` and ``output`` too); values have the option's type (a
boolean for a flag, a list for a repeatable option). An unknown key or table is an error that
names it. Relative paths are relative to the config file's folder. Options given on the command
line override the file. ``--config`` and ``--from-report`` cannot appear in it.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from onnxslim.errors import UsageError

CONFIG_NAME = "onnxslim.toml"
SECTION = "optimize"
NOT_IN_CONFIG = ("config", "from-report")


@dataclass
class Config:
    path: Path
    values: dict[str, Any]  # click parameter name -> converted value
    sha256: str

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.path), "sha256": self.sha256, "keys": sorted(self.values)}


def find(explicit: str | Path | None, folder: Path | None = None) -> Path | None:
    """The config to read: ``--config`` (must exist), else ./onnxslim.toml when present."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise UsageError(f"--config {path}: no such file")
        return path
    default = folder / CONFIG_NAME if folder is not None else Path(CONFIG_NAME)
    return default if default.is_file() else None


def _keys(command: click.Command) -> dict[str, click.Parameter]:
    """Config key -> parameter: every ``--long`` name without its dashes; arguments by name."""
    keys: dict[str, click.Parameter] = {}
    for param in command.params:
        if isinstance(param, click.Argument):
            keys[param.name] = param
            continue
        for opt in param.opts:
            if opt.startswith("--"):
                keys[opt[2:]] = param
    return keys


def load(path: Path, command: click.Command, ctx: click.Context) -> Config:
    """Read and check ``path`` against ``command``'s options; UsageError (one line) on any problem."""
    import hashlib

    raw = path.read_bytes()
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"{path}: invalid TOML: {exc}") from None
    for key in data:
        if key != SECTION:
            raise UsageError(f"{path}: unknown key {key!r} (the options go in an [{SECTION}] table)")
    table = data.get(SECTION, {})
    if not isinstance(table, dict):
        raise UsageError(f"{path}: {SECTION!r} must be a table ([{SECTION}])")
    known = _keys(command)
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key in NOT_IN_CONFIG or key not in known:
            where = "cannot be set in a config file" if key in NOT_IN_CONFIG else "is not an option of onnxslim optimize"
            raise UsageError(f"{path}: unknown key {key!r} in [{SECTION}] ({key!r} {where})")
        param = known[key]
        values[param.name] = _convert(path, key, param, value, ctx)
    return Config(path, values, hashlib.sha256(raw).hexdigest())


def _convert(path: Path, key: str, param: click.Parameter, value: Any, ctx: click.Context) -> Any:
    if isinstance(value, dict):
        raise UsageError(f"{path}: key {key!r}: a table is not a valid value")
    if getattr(param, "is_flag", False) and not getattr(param, "count", False):
        if not isinstance(value, bool):
            raise UsageError(f"{path}: key {key!r} is a flag: write {key} = true or false")
    elif param.multiple:
        value = [value] if not isinstance(value, list) else value
    elif isinstance(value, list):
        raise UsageError(f"{path}: key {key!r} takes one value, not a list")
    if isinstance(param.type, click.Path):
        value = [_relative_to(path, v) for v in value] if param.multiple else _relative_to(path, value)
    elif param.name == "prune":
        from onnxslim.stages.prune import prune_file

        if prune_file(value) is not None:  # RATIO or FILE.json: the file is found beside the config
            value = _relative_to(path, value)
    whole = param.type is click.INT or isinstance(param.type, click.IntRange)
    if whole and isinstance(value, (bool, float)):  # click would read 2.7 as 2 and true as 1
        raise UsageError(f"{path}: key {key!r}: expected a whole number, got {str(value).lower()}")
    if (param.type is click.FLOAT or isinstance(param.type, click.FloatRange)) and isinstance(value, bool):
        raise UsageError(f"{path}: key {key!r}: expected a number, got {str(value).lower()}")
    try:
        return param.type_cast_value(ctx, value)
    except click.BadParameter as exc:
        raise UsageError(f"{path}: key {key!r}: {exc.format_message()}") from None


def _relative_to(config_path: Path, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    p = Path(value)
    return str(p if p.is_absolute() else config_path.parent / p)


def merge(ctx: click.Context, params: dict[str, Any], config: Config) -> dict[str, Any]:
    """``params`` with the config's values wherever the command line left the default."""
    out = dict(params)
    for name, value in config.values.items():
        source = ctx.get_parameter_source(name)
        if source in (None, click.core.ParameterSource.DEFAULT, click.core.ParameterSource.DEFAULT_MAP):
            out[name] = value
    return out
