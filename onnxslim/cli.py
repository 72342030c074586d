"""The ``onnxslim`` command line: optimize, inspect, verify, passes, report.

Exit codes (stable; docs/ci.md): 0 success; 1 verification failed, or a ``--fail-if`` condition
holds; 2 bad input or usage; 3 internal error; 130 interrupted. Errors are one line on stderr,
never a traceback (``-v`` adds it for bugs). ``optimize`` also reads ./onnxslim.toml or
``--config`` (:mod:`onnxslim.config`); command-line flags override the file.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import click

from onnxslim import api, config, io
from onnxslim.errors import OnnxSlimError, OutputError, UsageError, VerificationFailedError
from onnxslim.graph import import_model
from onnxslim.pipeline import DEFAULT_PIPELINE, PassContext, get_pass, registry
from onnxslim.progress import progress_disabled, say
from onnxslim.report import Report, file_digest, path_digest
from onnxslim.reporting import failif
from onnxslim.reporting.charts import require_matplotlib
from onnxslim.reporting.html import write_html
from onnxslim.stages.prune import prune_file
from onnxslim.stats import compute as compute_stats, human, human_bytes

EXIT_OK, EXIT_VERIFY, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def _fail(message: str, code: int) -> None:
    message = " ".join(part.strip() for part in str(message).splitlines() if part.strip())  # one line, always
    click.echo(f"onnxslim: error: {message}", err=True)
    sys.exit(code)


def handle_errors(fn: Callable) -> Callable:
    """Turn every error into one line on stderr and a documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except OnnxSlimError as exc:  # a failed verification's report is written by _run_and_finish
            _fail(str(exc), exc.exit_code)
        except KeyboardInterrupt as exc:  # raised with a message where some output was already written
            _fail(f"interrupted; {exc.args[0] if exc.args else 'no output written'}", EXIT_INTERRUPTED)
        except MemoryError:
            _fail("out of memory", EXIT_INTERNAL)
        except click.exceptions.Exit:
            raise
        except Exception as exc:  # a bug of ours: one line, traceback only with -v
            if logging.getLogger().isEnabledFor(logging.DEBUG):
                logging.getLogger("onnxslim").exception("internal error")
            _fail(f"internal error: {type(exc).__name__}: {exc} (please report it; -v shows the traceback)", EXIT_INTERNAL)

    return wrapper


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING
    if quiet:
        level = logging.ERROR
    elif verbose == 1:
        level = logging.INFO
    elif verbose >= 2:
        level = logging.DEBUG
    logging.basicConfig(level=level, format="onnxslim: %(levelname)s: %(message)s", stream=sys.stderr, force=True)


def parse_input_shapes(values: tuple[str, ...]) -> dict[str, list[int]]:
    """``name:1,3,224,224`` (repeatable) -> {name: [1, 3, 224, 224]}."""
    shapes: dict[str, list[int]] = {}
    for value in values:
        name, sep, dims = value.rpartition(":")
        if not sep or not name:
            raise UsageError(f"--input-shape {value!r}: expected NAME:D1,D2,... (e.g. input:1,3,224,224)")
        try:
            parsed = [int(d) for d in dims.replace("x", ",").split(",") if d.strip()]
        except ValueError:
            raise UsageError(f"--input-shape {value!r}: dimensions must be integers") from None
        if not parsed and dims.strip():
            raise UsageError(f"--input-shape {value!r}: no dimensions given")
        shapes[name] = parsed
    return shapes


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


class _OneLineUsage(click.Group):
    """Click's usage errors (a bad option value, an unknown option or command) as one line in our
    format, exit 2, for every subcommand: click's own is four lines (usage, hint, blank, error)."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        with _usage_errors_on_one_line():
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        with _usage_errors_on_one_line():  # the subcommand's arguments are parsed here
            return super().invoke(ctx)


_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())  # a UsageError since click 8.2


@contextlib.contextmanager
def _usage_errors_on_one_line() -> Iterator[None]:
    try:
        yield
    except _NO_ARGS_IS_HELP:  # bare `onnxslim`: click shows the help
        raise
    except click.UsageError as exc:  # BadParameter, NoSuchOption, MissingParameter, ...
        _fail(" ".join(exc.format_message().splitlines()), EXIT_USAGE)


@click.group(cls=_OneLineUsage, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="onnxslim")
def main() -> None:
    """onnxslim: optimize ONNX models (cleanup, fusion, verification)."""


# --------------------------------------------------------------------------------------------
# optimize


def _stage_options(command):
    """Add every stage's options (``--svd``, ``--quantize``, ...) to the optimize command."""
    from onnxslim.stages import stages

    for stage in stages():
        for option in stage.click_options():
            command.params.append(option)
    return command


_FROM_REPORT_ALLOWED = {"model", "output", "report_path", "html_path", "fail_if", "quiet", "verbose", "from_report"}


@_stage_options
@main.command(epilog="Exit codes: 0 ok; 1 verification failed or a --fail-if condition holds; 2 bad input or usage; "
                     "3 internal error; 130 interrupted. Options also come from ./onnxslim.toml or --config (see docs/ci.md).")
@click.argument("model", required=False, type=click.Path(dir_okay=True, path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Output file (default: <name>.opt.onnx beside the input).")
@click.option("--passes", "passes", help="Pipeline string, e.g. 'infer_shapes,[fold_constants,eliminate_dead]*8'.")
@click.option("--skip", help="Comma-separated passes to leave out of the pipeline.")
@click.option("--input-shape", "input_shapes", multiple=True, help="Fix an input's shape: NAME:1,3,224,224 (repeatable).")
@click.option("--no-verify", is_flag=True, help="Do not compare outputs with the original model.")
@click.option("--verify-each", is_flag=True, help="Verify after every pass; name the first pass that breaks outputs.")
@click.option("--tolerance", type=float, help="Verification tolerance relative to max |output| (default 1e-4 for fp32).")
@click.option("--inputs", "inputs_file", type=click.Path(path_type=Path), help="Verify on these inputs (.npz: input name -> array).")
@click.option("--calib-data", type=click.Path(path_type=Path), help="Calibration data for lossy passes: .npz, a folder of .npy/.npz, or a folder of images with preprocess.json.")
@click.option("--calib-size", type=int, help="Use at most N calibration samples.")
@click.option("--holdout", type=click.IntRange(min=0), default=None, metavar="N",
              help="Lossy stages: --calib-data samples held out to measure fidelity, choose --calib-method auto and size "
                   "--max-error fallbacks (default 8; at most a fifth of the data).")
@click.option("--min-cosine", type=click.FloatRange(-1, 1), help="Lossy pipelines: fail (exit 1) when an output's cosine to the original falls below this.")
@click.option("--target", type=click.Choice(["ort", "tensorrt", "tvm"]), default="ort", show_default=True, help="Deployment target.")
@click.option("--device", type=click.Choice(["x86", "arm", "cuda"]), default="x86", show_default=True, help="Target device.")
@click.option("--report", "report_path", type=click.Path(path_type=Path), help="Write a machine-readable JSON report (docs/report-schema.md).")
@click.option("--html", "html_path", type=click.Path(path_type=Path), help="Write a self-contained HTML report with charts (needs onnxslim[report]).")
@click.option("--fail-if", "fail_if", multiple=True, metavar="COND",
              help="CI gate: exit 1 when COND holds, e.g. nodes-increased, bytes-increased, 'cosine<0.99', 'macs-reduction<0.2' "
                   "(repeatable or comma-separated; grammar in docs/ci.md).")
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="Read options from this TOML file (default: ./onnxslim.toml when present).")
@click.option("--from-report", "from_report", type=click.Path(path_type=Path),
              help="Rerun the run recorded in this report.json on its input (or MODEL), refusing an input whose sha256 differs.")
@click.option("--save-external-data", is_flag=True, default=None, help="Write weights to <output>.data (automatic above 2 GB).")
@click.option("--strict", is_flag=True, help="Fail when an optional rewrite cannot apply.")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True, help="Seed for synthesized verification inputs.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@handle_errors
def optimize(**params) -> None:
    """Optimize MODEL with the cleanup pipeline (plus any lossy stages asked for) and verify it."""
    ctx = click.get_current_context()
    _setup_logging(params["verbose"], params["quiet"])
    if params["from_report"] is not None:
        _optimize_from_report(ctx, params)
        return
    found = config.find(params["config_path"])
    loaded = config.load(found, ctx.command, ctx) if found else None
    if loaded is not None:
        params = config.merge(ctx, params, loaded)
        _setup_logging(params["verbose"], params["quiet"])
    if params["model"] is None:
        raise UsageError("no MODEL given (on the command line, or as 'model' in onnxslim.toml)")
    _optimize(params, config_used=loaded.describe() if loaded else None)


def _optimize(params: dict[str, Any], config_used: dict[str, Any] | None = None) -> None:
    p = dict(params)
    model, report_path, html_path = p.pop("model"), p.pop("report_path"), p.pop("html_path")
    conditions, quiet = failif.parse_conditions(p.pop("fail_if") or ()), p.pop("quiet")
    for name in ("verbose", "config_path", "from_report"):
        p.pop(name)
    if p["tolerance"] is not None and not p["tolerance"] > 0:
        raise UsageError("--tolerance must be a positive number")
    if p["inputs_file"] is not None and not Path(p["inputs_file"]).is_file():
        raise UsageError(f"--inputs {p['inputs_file']}: no such file")
    shapes = parse_input_shapes(p.pop("input_shapes"))
    output, passes, skip = p.pop("output"), p.pop("passes"), _split(p.pop("skip"))
    options = dict(
        passes=passes, skip=skip, verify=not p.pop("no_verify"), verify_each=p.pop("verify_each"), input_shapes=shapes,
        inputs_file=p.pop("inputs_file"), tolerance=p.pop("tolerance"),
        external_data=True if p.pop("save_external_data") else None, strict=p.pop("strict"), seed=p.pop("seed"),
        target=p.pop("target"), device=p.pop("device"), calib_data=p.pop("calib_data"), calib_size=p.pop("calib_size"),
        min_cosine=p.pop("min_cosine"), stage_values=p,
    )
    holdout = p.pop("holdout")
    if holdout is not None:
        options["holdout"] = holdout
    _check_outputs(model, output, options, report_path, html_path, {"--config": (config_used or {}).get("path")})
    failif.check_measurable(conditions, options["verify"], _asks_lossy(passes, options["stage_values"]))
    _run_and_finish(model, output, options, report_path, html_path, conditions, quiet, {"config": config_used})


_LOSSY_STAGE_OPTIONS = ("quantize", "prune", "prune_macs", "svd")


def _asks_lossy(passes: str | None, stage_values: dict[str, Any]) -> bool:
    """Whether the command line asks for a lossy stage or names a lossy pass in --passes."""
    if any(stage_values.get(name) is not None for name in _LOSSY_STAGE_OPTIONS):
        return True
    if passes:
        try:
            return api.build_pipeline(passes).lossy
        except OnnxSlimError:
            return False  # the run reports the bad pipeline itself
    return False


def _check_outputs(model, output, options: dict[str, Any], report_path, html_path, given: dict[str, Any]) -> None:
    """Before any work: no output (-o or its default, --report, --html, --emit DIR) may replace a
    file the user gave us (MODEL, the --calib-data file or anything in its folder, --inputs, the
    --prune JSON file, and ``given``: --config, --from-report) nor another output. Paths compare resolved, like the
    -o == MODEL check: a symlink, a hard link or another spelling of a file is that file."""
    io.check_input_file(model)  # a missing MODEL is the first thing to say
    prune = prune_file((options.get("stage_values") or {}).get("prune"))
    sources = {"the input model": model, "--calib-data": options.get("calib_data"), "--inputs": options.get("inputs_file"),
               "--prune": prune, **given}
    sources = {name: Path(path) for name, path in sources.items() if path is not None}
    outputs = {"-o" if output is not None else "the output model": output if output is not None else api.default_output(model),
               "--report": report_path, "--html": html_path}
    for flag, path in outputs.items():
        if path is None:
            continue
        io.check_output_path(path, [model])
        for name, source in sources.items():
            clash = _clash(path, name, source)
            if clash:
                raise OutputError(f"{flag} {path}: {clash}; choose another path")
        sources[flag] = Path(path)  # the outputs after it must not land on it either
    emit = (options.get("stage_values") or {}).get("emit")
    for name, source in sources.items() if emit is not None else ():
        clash = _clash(emit, name, source)
        if not clash and not source.is_dir() and _same(source.parent, emit):  # emit writes model.onnx, emit.json, ... into DIR
            clash = f"holds {_what(name, source)} {source}, which the emitted files could replace"
        if clash:
            raise OutputError(f"--emit {emit}: {clash}; choose another folder")
    if html_path is not None:
        require_matplotlib()


def _clash(path, name: str, source: Path) -> str:
    """How writing ``path`` would replace ``source``: 'is the --inputs file', 'is inside the
    --calib-data folder c/', or '' when it would not."""
    if _same(path, source):
        return f"is {_what(name, source)}"
    if _within(path, source):
        return f"is inside {_what(name, source)}"
    return ""


def _what(name: str, source: Path) -> str:
    """'the input model', 'the --inputs file', 'the --calib-data folder c/'."""
    if not name.startswith("-"):
        return name
    return f"the {name} folder {source}" if source.is_dir() else f"the {name} file"


def _same(a, b) -> bool:
    """One file under two names: equal resolved paths (symlinks followed), or hard links."""
    try:
        a, b = Path(a).resolve(), Path(b).resolve()
        return a == b or (a.exists() and b.exists() and os.path.samefile(a, b))
    except (OSError, RuntimeError):  # a symlink loop names no file
        return False


def _within(path, folder) -> bool:
    """``path`` lies under the existing folder ``folder``, at any depth."""
    try:
        folder = Path(folder).resolve()
        return folder.is_dir() and Path(path).resolve().is_relative_to(folder)
    except (OSError, RuntimeError):
        return False


def _run_and_finish(model, output, options: dict[str, Any], report_path, html_path, conditions, quiet: bool,
                    extra: dict[str, Any]) -> Report:
    with progress_disabled(quiet):
        try:
            hashed = bool(report_path or html_path or extra.get("reproduced_from"))
            report = api.optimize_file(model, output, **{**options, "digests": hashed})
        except VerificationFailedError as exc:
            report = getattr(exc, "report", None)
            if report is not None:
                _describe(report, options, extra)
                if not quiet:
                    say(format_summary(report))
                _write_reports(report, report_path, html_path)
            _fail(str(exc), exc.exit_code)
    _describe(report, options, extra)
    problem = None
    if conditions:
        try:
            report.fail_if = failif.evaluate(conditions, report.to_dict())
        except UsageError as exc:  # a metric this run did not measure
            problem = exc
    _write_reports(report, report_path, html_path)
    if not quiet:
        say(format_summary(report))
    if problem is not None:
        raise problem
    if any(row["holds"] for row in report.fail_if):
        _fail(failif.failure_line(report.fail_if), EXIT_VERIFY)
    return report


def _describe(report: Report, options: dict[str, Any], extra: dict[str, Any]) -> None:
    """What the report needs beyond the API's record: calibration digest, config file, origin."""
    if options.get("calib_data") is not None and Path(options["calib_data"]).exists():
        report.calibration = path_digest(options["calib_data"])
    prune = prune_file((options.get("stage_values") or {}).get("prune"))
    if prune is not None and prune.is_file():
        report.option_files["--prune"] = path_digest(prune)
    for key, value in extra.items():
        if value is not None:
            setattr(report, key, value)


def _write_reports(report: Report, report_path, html_path) -> None:
    if report_path:
        report.write_json(report_path)
    if html_path:
        write_html(report.to_dict(), html_path)


def _optimize_from_report(ctx: click.Context, params: dict[str, Any]) -> None:
    """Rerun a recorded run: its options, on its input (checked by sha256), into -o or the default output."""
    from onnxslim.report import load_report, sha256_file
    from onnxslim.reporting import reproduce

    source = ctx.get_parameter_source
    changed = [name for name in params if name not in _FROM_REPORT_ALLOWED and source(name) == click.core.ParameterSource.COMMANDLINE]
    if changed:
        flag = next(o for o in ctx.command.params if o.name == changed[0]).opts[-1]
        raise UsageError(f"--from-report reruns the recorded options; {flag} cannot change them "
                         "(allowed with it: MODEL, -o, --report, --html, --fail-if, -q, -v)")
    recorded = load_report(params["from_report"])
    model, options = reproduce.prepare(recorded, params["model"])
    conditions = failif.parse_conditions(params["fail_if"] or ())
    _check_outputs(model, params["output"], options, params["report_path"], params["html_path"],
                   {"--from-report": params["from_report"]})
    failif.check_measurable(conditions, options.get("verify", True), _asks_lossy(options.get("passes"), options.get("stage_values") or {}))
    origin = {"path": str(params["from_report"]), "sha256": sha256_file(params["from_report"]),
              "output_sha256": (recorded.get("output") or {}).get("sha256")}
    report = _run_and_finish(model, params["output"], options, params["report_path"], params["html_path"], conditions,
                             params["quiet"], {"reproduced_from": origin, "config": recorded.get("config")})
    if origin["output_sha256"] and report.output.get("sha256") != origin["output_sha256"]:
        logging.getLogger("onnxslim").warning("the output differs from the recorded one (recorded with %s)",
                                              ", ".join(f"{k} {v}" for k, v in (recorded.get("versions") or {}).items()))


def _delta(before: float, after: float, fmt: Callable[[float], str]) -> list[str]:
    change = "" if before == 0 else f"{(after - before) / before * 100:+.1f}%"
    return [fmt(before), fmt(after), change]


def format_summary(report: Report) -> str:
    """The before/after table, op changes, time per pass and the verification line."""
    b, a = report.before, report.after
    lines = []
    if b and a:
        rows = [
            ["nodes", *_delta(b.nodes, a.nodes, lambda v: f"{int(v)}")],
            ["parameters", *_delta(b.parameters, a.parameters, human)],
            ["MACs" + ("" if a.macs_exact else " (approx.)"), *_delta(b.macs, a.macs, human)],
            ["weight bytes", *_delta(b.constant_bytes, a.constant_bytes, human_bytes)],
        ]
        size_in = report.input.get("total_bytes", report.input.get("bytes"))  # external data included, like --fail-if bytes
        size_out = report.output.get("total_bytes", report.output.get("bytes"))
        if size_in and size_out:
            rows.append(["file bytes", *_delta(size_in, size_out, human_bytes)])
        lines += _table(["", "before", "after", "change"], rows)
        changes = []
        for op in sorted(set(b.ops) | set(a.ops)):
            x, y = b.ops.get(op, 0), a.ops.get(op, 0)
            if x != y:
                changes.append(f"{op} {x}->{y}")
        if changes:
            lines.append("ops: " + ", ".join(changes))
    totals = [t for t in report.pass_totals() if t["changed"] or t["seconds"] > 0.05]
    if totals:
        lines.append("")
        lines += _table(["pass", "runs", "changed", "nodes removed", "seconds"],
                        [[t["name"], str(t["runs"]), str(t["changed"]), str(t["nodes_removed"]), f"{t['seconds']:.3f}"] for t in totals])
    choice = [d for p in report.passes for d in (p.details or []) if d.get("detail") == "method_choice"]
    if choice:
        kept = next(d["method"] for d in choice if d["chosen"])
        lines.append(f"--calib-method auto kept {kept}; cosine on {choice[0]['held_out']} held-out sample(s): "
                     + ", ".join(f"{d['method']} {d['cosine']:.5f}" for d in choice))
    if report.verification is not None:
        lines.append("")
        lines.append(report.verification.summary())
    emit = report.output.get("emit")
    if emit:
        lines.append("emit: " + ", ".join(str(f) for f in emit.get("files", [])) + ("" if emit.get("ok", True) else " (a check failed: see emit.json)"))
    if report.output.get("path"):
        lines.append(f"wrote {report.output['path']} in {report.seconds.get('total', 0):.2f}s")
    return "\n".join(lines)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    numeric = [i > 0 and all(_is_number(r[i]) for r in rows) for i in range(len(header))]

    def fmt(row: list[str]) -> str:
        cells = [str(c).rjust(w) if num else str(c).ljust(w) for c, w, num in zip(row, widths, numeric)]
        return "  ".join(cells).rstrip()

    return [fmt(header), fmt(["-" * w for w in widths]), *[fmt(r) for r in rows]]


def _is_number(text: str) -> bool:
    return bool(text) and (text[0].isdigit() or text[0] in "+-.") and text[-1] not in ":"


# --------------------------------------------------------------------------------------------
# report


@main.command(name="report")
@click.argument("report_json", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--html", "html_path", type=click.Path(path_type=Path), required=True, help="Write the HTML page here.")
@handle_errors
def render_report(report_json, html_path) -> None:
    """Render a saved report.json as a self-contained HTML page (needs onnxslim[report])."""
    _setup_logging(0, True)
    from onnxslim.report import load_report

    data = load_report(report_json)
    if _same(html_path, report_json):  # io.check_output_path would name -o, which this command has not
        raise OutputError(f"--html {html_path}: is the report being read; choose another path")
    io.check_output_path(html_path, [report_json])
    write_html(data, html_path, source=report_json)


# --------------------------------------------------------------------------------------------
# inspect


def _value_info(v, fixed: Sequence[int] | None = None) -> dict[str, Any]:
    """Name, dtype and dims of a graph input/output (``fixed``: the dims --input-shape gave it)."""
    from onnx import helper

    t = v.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
    if fixed is not None:
        dims = [int(d) for d in fixed]
    try:
        dtype = helper.tensor_dtype_to_np_dtype(t.elem_type).name if t.elem_type else "?"
    except (KeyError, TypeError):
        dtype = str(t.elem_type)
    return {"name": v.name, "dtype": dtype, "shape": dims}


@main.command()
@click.argument("model", type=click.Path(dir_okay=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
@click.option("--input-shape", "input_shapes", multiple=True, help="Fix an input's shape for MACs: NAME:1,3,224,224.")
@handle_errors
def inspect(model, as_json, input_shapes) -> None:
    """Describe MODEL: inputs, outputs, opsets, ops, parameters, MACs, largest tensors."""
    _setup_logging(0, True)
    proto, weights = api.load_mapped(model)  # counting needs shapes, not weights: pages are read only where needed
    graph = import_model(proto)
    api._attach_weights(graph, weights)
    fixed = parse_input_shapes(input_shapes)
    api.apply_input_shapes(graph, fixed)
    if "infer_shapes" in registry():
        get_pass("infer_shapes")().run(graph, PassContext())
    stats = compute_stats(graph)
    inits = {i.name for i in proto.graph.initializer}
    # with --input-shape, the output dims that follow from it (where shape inference knows them)
    inferred = {t.name: t.shape for t in graph.outputs
                if fixed and t.shape is not None and all(isinstance(d, int) and d >= 0 for d in t.shape)}
    info = {
        "path": str(model),
        "file_bytes": Path(model).stat().st_size,
        "total_bytes": file_digest(model, with_hash=False)["total_bytes"],  # external data included
        "ir_version": proto.ir_version,
        "producer": f"{proto.producer_name} {proto.producer_version}".strip(),
        "opsets": {(o.domain or "ai.onnx"): o.version for o in proto.opset_import},
        "inputs": [_value_info(v, fixed.get(v.name)) for v in proto.graph.input if v.name not in inits],
        "outputs": [_value_info(v, inferred.get(v.name)) for v in proto.graph.output],
        **stats.to_dict(),
    }
    if as_json:
        say(json.dumps(info, indent=2))
        return
    size = human_bytes(info["total_bytes"])
    if info["total_bytes"] != info["file_bytes"]:
        size += f" with external data; {human_bytes(info['file_bytes'])} the .onnx file"
    say(f"{model}  (IR {info['ir_version']}, {info['producer'] or 'unknown producer'}, {size})")
    say("opsets: " + ", ".join(f"{k} {v}" for k, v in info["opsets"].items()))
    for kind in ("inputs", "outputs"):
        say(f"{kind}:")
        for v in info[kind]:
            say(f"  {v['name']}: {v['dtype']}[{', '.join(str(d) for d in v['shape'])}]")
    approx = " (approx.: dynamic dims counted as 1, layers of unknown shape as 0)"
    say(f"nodes: {stats.nodes}   parameters: {human(stats.parameters)}   weight bytes: {human_bytes(stats.constant_bytes)}   "
        f"MACs: {human(stats.macs)}{'' if stats.macs_exact else approx}")
    say("ops: " + (", ".join(f"{k} {v}" for k, v in sorted(stats.ops.items(), key=lambda kv: (-kv[1], kv[0]))) or "none"))
    if stats.macs_by_op:
        say("MACs by op: " + ", ".join(f"{k} {human(v)}" for k, v in stats.macs_by_op.items()))
    if stats.largest_tensors:
        say("largest tensors:")
        for t in stats.largest_tensors:
            say(f"  {t['name']}: {t['dtype']}{t['shape']} {human_bytes(t['bytes'])}")


# --------------------------------------------------------------------------------------------
# verify


@main.command()
@click.argument("model_a", type=click.Path(dir_okay=True, path_type=Path))
@click.argument("model_b", type=click.Path(dir_okay=True, path_type=Path))
@click.option("--inputs", "inputs_file", type=click.Path(path_type=Path), help="Inputs (.npz: input name -> array).")
@click.option("--input-shape", "input_shapes", multiple=True, help="Shape for synthesized inputs: NAME:1,3,224,224.")
@click.option("--tolerance", type=float, help="Tolerance relative to max |output| (default 1e-4 for fp32).")
@click.option("--samples", type=click.IntRange(1, 1000), default=1, show_default=True, help="Synthesized samples.")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True)
@handle_errors
def verify(model_a, model_b, inputs_file, input_shapes, tolerance, samples, seed) -> None:
    """Run MODEL_A and MODEL_B on identical inputs and compare every output (exit 1 on mismatch)."""
    _setup_logging(0, True)
    from onnxslim.verify import verify as verify_models

    if tolerance is not None and not tolerance > 0:
        raise UsageError("--tolerance must be a positive number")
    shapes = parse_input_shapes(input_shapes)
    headers = [io.load(m, load_external_data=False) for m in (model_a, model_b)]
    for header in headers:
        api.check_model(header)
    inputs = [api.proto_input_shapes(h) for h in headers]
    if set(inputs[0]) != set(inputs[1]):
        raise UsageError(f"the models take different inputs: {model_a} has {', '.join(sorted(inputs[0])) or 'none'}, "
                         f"{model_b} has {', '.join(sorted(inputs[1])) or 'none'}")
    api.check_input_shapes(inputs[0], shapes)
    if inputs_file is not None:  # wrong dtype or shape: a usage error, not an onnxruntime failure
        api.check_inputs_file(inputs_file, headers[0], shapes)
    result = verify_models(model_a, model_b, input_shapes=shapes, inputs_file=inputs_file,
                           tolerance=tolerance, seed=seed, samples=samples)
    if result.outputs:
        say("\n".join(_table(["output", "shape", "dtype", "max abs", "max rel", "result"],
                                    [[o.name, str(o.shape), o.dtype, f"{o.max_abs:.3g}", f"{o.max_rel:.3g}", "ok" if o.ok else f"FAIL {o.problem}"] for o in result.outputs])))
    say(result.summary())
    if result.status == "skipped":
        sys.exit(EXIT_USAGE)
    if result.status == "failed":
        sys.exit(EXIT_VERIFY)


# --------------------------------------------------------------------------------------------
# passes


@main.command(name="lint-trt")
@click.argument("model", type=click.Path(dir_okay=True, path_type=Path))
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Also write the findings as JSON.")
@handle_errors
def lint_trt(model, json_path) -> None:
    """Check MODEL against TensorRT's ONNX op support and Q/DQ placement rules (exit 1 on findings)."""
    from onnxslim.targets.lint import main as lint_main

    sys.exit(lint_main([str(model)] + (["--json", str(json_path)] if json_path else []), prog="onnxslim"))


@main.command(name="passes")
@click.option("--json", "as_json", is_flag=True)
def list_passes(as_json) -> None:
    """List every registered pass, its description and whether it is lossy."""
    rows = [{"name": n, "lossy": cls.lossy, "description": cls.description()} for n, cls in registry().items()]
    if as_json:
        say(json.dumps({"default_pipeline": DEFAULT_PIPELINE, "passes": rows}, indent=2))
        return
    say("\n".join(_table(["pass", "lossy", "description"], [[r["name"], "yes" if r["lossy"] else "no", r["description"]] for r in rows])))
    say(f"\ndefault pipeline: {DEFAULT_PIPELINE}")


if __name__ == "__main__":
    main()
