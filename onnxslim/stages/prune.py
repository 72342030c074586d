"""``--prune``: structured channel pruning by dependency group (the prune_channels pass).

    onnxslim optimize model.onnx --prune 0.3 [--prune-criterion l1|l2|bn|activation]
        [--prune-round-to 8] [--calib-data calib/] -o model.pruned.onnx
    onnxslim optimize model.onnx --prune-macs 0.5 ...        # remove half the MACs
    onnxslim optimize model.onnx --prune ratios.json ...     # {"group or layer name": ratio, "*": default}

With ``--calib-data`` the layer after each pruned tensor is refit by least squares
(``--no-prune-reconstruct`` turns that off; ``--prune-reconstruct`` forces it, on synthetic
inputs when no data is given). The cleanup pipeline runs first, so BatchNormalization is usually
folded already (``--skip fuse_conv_bn`` keeps it, for ``--prune-criterion bn``). Calibration
samples are checked against the model's inputs up front (one-line error); a request that removes
nothing (``--prune 0``, groups too small, every group left alone) or a MAC target that cannot be
reached is a warning.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import click
import onnx

from onnxslim.errors import UsageError
from onnxslim.pipeline import PassContext
from onnxslim.stages import Stage, warn_left_over

PASS_NAME = "prune_channels"
CRITERIA = ("l1", "l2", "bn", "activation")


def parse_ratio(text: Any, what: str) -> float:
    """A fraction in [0, 1); UsageError otherwise."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise UsageError(f"{what} expects a fraction in [0, 1) or a JSON file, got {text!r}") from None
    if not math.isfinite(value) or not 0.0 <= value < 1.0:
        raise UsageError(f"{what} must be a fraction in [0, 1), got {text!r}")
    return value


def prune_file(text: Any) -> Path | None:
    """The JSON file that ``--prune`` names, or None when it is a ratio. A number is always a
    ratio, even where a file of that name exists."""
    if text is None:
        return None
    stripped = str(text).strip()
    try:
        float(stripped)
        return None
    except ValueError:
        return Path(stripped)


def parse_prune(text: str) -> tuple[float | None, dict[str, float] | None]:
    """``--prune``: a ratio, or a JSON file mapping group/layer names to ratios."""
    stripped = str(text).strip()
    path = prune_file(text)
    if path is not None:
        if not path.is_file():
            if path.suffix.lower() != ".json":
                raise UsageError(f"--prune expects a fraction in [0, 1) or a JSON file, got {text!r}")
            raise UsageError(f"--prune {text}: no such file")
        try:
            table = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"--prune {text}: not valid JSON ({exc})") from None
        if not isinstance(table, dict) or not table:
            raise UsageError(f"--prune {text}: expected a JSON object of name -> ratio")
        for key, value in table.items():
            if isinstance(value, bool):
                raise UsageError(f"--prune {text}: ratio of {key!r} is not a number")
            table[key] = parse_ratio(value, f"--prune {text}: ratio of {key!r}")
        return None, table
    return parse_ratio(stripped, "--prune"), None


class PruneStage(Stage):
    """Adds ``--prune``, ``--prune-macs``, ``--prune-criterion``, ``--prune-round-to`` and ``--prune-reconstruct``."""

    name = "prune"
    order = 10

    def click_options(self) -> list[click.Option]:
        return [
            click.Option(["--prune", "prune"], metavar="RATIO|FILE.json",
                         help="Structured channel pruning: remove this fraction of every group's channels, "
                              "or per group/layer from a JSON file {name: ratio, '*': default}."),
            click.Option(["--prune-macs", "prune_macs"], metavar="FRACTION",
                         help="Prune channels until this fraction of the MACs is removed (e.g. 0.5)."),
            click.Option(["--prune-criterion", "prune_criterion"], type=click.Choice(CRITERIA), default=None,
                         help="Channel importance: weight L1/L2 norm, BN gamma, or mean |activation| on --calib-data (default: activation with --calib-data, else l1)."),
            click.Option(["--prune-round-to", "prune_round_to"], type=int, metavar="N",
                         help="Keep channel counts multiples of N (default 1)."),
            click.Option(["--prune-reconstruct/--no-prune-reconstruct", "prune_reconstruct"], default=None,
                         help="Refit the next layer by least squares on calibration data (default: on with --calib-data)."),
        ]

    def configure(self, values: dict[str, Any], model: onnx.ModelProto, ctx: PassContext) -> list[str]:
        prune, macs = values.get("prune"), values.get("prune_macs")
        extras = {k: values.get(k) for k in ("prune_criterion", "prune_round_to", "prune_reconstruct")}
        if prune is None and macs is None:
            used = [k for k, v in extras.items() if v is not None]
            if used:
                raise UsageError(f"--{used[0].replace('_', '-')} only applies with --prune or --prune-macs")
            return []
        if prune is not None and macs is not None:
            raise UsageError("give either --prune or --prune-macs, not both")
        options: dict[str, Any] = {}
        if prune is not None:
            options["ratio"], options["per_layer"] = parse_prune(prune)
        else:
            options["macs"] = parse_ratio(macs, "--prune-macs")
        round_to = extras["prune_round_to"]
        if round_to is not None and not 1 <= int(round_to) <= 4096:
            raise UsageError(f"--prune-round-to must be between 1 and 4096, got {round_to}")
        options["criterion"] = extras["prune_criterion"]  # None: activation with --calib-data, else l1
        options["round_to"] = int(round_to or 1)
        options["reconstruct"] = extras["prune_reconstruct"]
        warn_left_over(model, ctx, "--prune")
        ctx.options[PASS_NAME] = options
        return [PASS_NAME, "infer_shapes"]

