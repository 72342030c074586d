"""Run our optimizer and its peers side by side on the zoo (or given .onnx files), in one run.

    python tools/bench.py --setup                         # create the peers' venvs, then exit
    python tools/bench.py --quick --md bench.md           # smoke run on a few small models
    python tools/bench.py [MODEL ...] [--zoo zoo] [--tools ours,onnxsim] --md bench.md --json bench.json
    python tools/bench.py quant|prune|svd|targets [ARGS ...]   # the lossy features' benches (see SUITES)

MODEL is a path to an .onnx file or a file name in the zoo (``resnet50.dynamo``); by default,
every model in the zoo. For each model and tool the table gives the output's node count, the
tool's wall time and peak RSS (a fresh process per run, measured by tools/_measure.py), the
output's size, its onnxruntime CPU latency beside the input model's (same run, same inputs,
fixed threads) and how far its outputs are from the input model's on seeded inputs. A tool that
fails gets an "error: ..." row; the bench goes on.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from bench_tools import DEFAULT_VENVS, TOOLS, TOOLS_DIR, Tool, peer_env, select_tools, setup_all, tool_command

log = logging.getLogger("bench")

QUICK_MODELS = ("mobilenetv2.dynamo.onnx", "ppocr_cls.onnx", "minilm_l6.legacy.onnx")


@dataclass
class Row:
    """One line of the results: a model as given ("input") or one tool's output of it."""

    model: str
    tool: str
    status: str = "ok"
    nodes: int | None = None
    bytes: int | None = None
    wall_s: float | None = None
    peak_rss_mb: float | None = None
    latency_ms: float | None = None  # median
    latency_min_ms: float | None = None
    max_abs_diff: float | None = None
    match: bool | None = None
    note: str = ""
    report: str | None = None  # our CLI's report.json, where it wrote one


# --------------------------------------------------------------------------- subprocesses


def _last_json_line(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def measure(command: list[str], timeout: float, cwd: Path, env: dict[str, str]) -> dict:
    """Run ``command`` under the tiny measuring runner (so the peak RSS is the command's own)."""
    runner = [sys.executable, str(TOOLS_DIR / "_measure.py"), "--timeout", str(timeout), "--", *command]
    done = subprocess.run(runner, capture_output=True, text=True, cwd=cwd, env=env)
    result = _last_json_line(done.stdout)
    if result is None:  # the runner itself failed: report it as the tool's failure
        return {"returncode": done.returncode, "wall_s": None, "peak_rss_mb": None, "timed_out": False,
                "stdout_tail": "", "stderr_tail": f"measuring runner failed: {done.stderr.strip()[-300:]}"}
    return result


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Failure)\b.*")


def error_line(measured: dict) -> str:
    """One line for a failed run: the last exception line of its output, else its last line."""
    if measured["timed_out"]:
        return f"timed out after {measured['wall_s']:.0f} s"
    lines = [line.strip() for line in (measured["stderr_tail"] or measured["stdout_tail"]).splitlines() if line.strip()]
    exceptions = [line for line in lines if _EXCEPTION_LINE.match(line)]
    detail = exceptions[-1] if exceptions else lines[-1] if lines else "no output"
    return f"exit {measured['returncode']}: {detail}"


def evaluate(mode: str, models: Sequence[Path], work: Path, opts: argparse.Namespace, spec: dict | None = None) -> dict:
    """Run tools/bench_eval.py in a fresh process; its JSON answer, or {"error": ...}."""
    command = [
        sys.executable, str(TOOLS_DIR / "bench_eval.py"), mode, *map(str, models), "--work", str(work),
        "--spec", json.dumps(spec or {}), "--runs", str(opts.runs), "--threads", str(opts.threads), "--min-time", str(opts.min_time),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=opts.timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"{mode} timed out after {opts.timeout:.0f} s"}
    result = _last_json_line(done.stdout)
    if result is None:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        return {"error": f"{mode} crashed (exit {done.returncode}): {lines[-1] if lines else ''}"}
    return result


# --------------------------------------------------------------------------- the run


def model_spec(path: Path) -> dict:
    """Input shapes etc. for ``path`` from the manifest of its folder, if the zoo wrote one."""
    manifest = path.parent / "manifest.json"
    if not manifest.is_file():
        return {}
    entry = json.loads(manifest.read_text()).get("files", {}).get(path.name, {})
    return {key: entry[key] for key in ("shapes", "dims", "ranges", "text_image") if key in entry}


def run_tool(tool: Tool, name: str, src: Path, work: Path, setup_errors: dict[str, str], opts: argparse.Namespace) -> tuple[Row, Path | None]:
    """Run one tool on one model and check its output; the row and the output's path if it runs."""
    if tool.name in setup_errors:
        return Row(name, tool.name, status=f"error: {setup_errors[tool.name]}"), None
    output, report = work / f"{tool.name}.onnx", work / f"{tool.name}.report.json"
    for stale in (output, report):
        stale.unlink(missing_ok=True)
    log.info("%s: %s", name, tool.name)
    measured = measure(tool_command(tool, opts.venvs, src, output, work), opts.timeout, work, peer_env())
    row = Row(name, tool.name, wall_s=measured["wall_s"], peak_rss_mb=measured["peak_rss_mb"])
    if measured["returncode"] != 0 or measured["timed_out"]:
        row.status = f"error: {error_line(measured)}"
        return row, None
    if not output.is_file():
        row.status = "error: no output file written"
        return row, None
    result = evaluate("check", [output], work, opts)
    if "error" in result:
        row.status = f"error: output does not run: {result['error']}"
        return row, None
    row.report = str(report) if report.is_file() else None
    for key in ("nodes", "bytes", "max_abs_diff", "match", "note"):
        if key in result:
            setattr(row, key, result[key])
    return row, output


def bench_model(path: Path, tools: Sequence[Tool], setup_errors: dict[str, str], opts: argparse.Namespace) -> list[Row]:
    """The input's row and one row per tool for the model at ``path``."""
    name = path.name.removesuffix(".onnx")
    work = (opts.out / name).resolve()
    work.mkdir(parents=True, exist_ok=True)
    src = path.resolve()
    base = evaluate("baseline", [src], work, opts, model_spec(path))
    if "error" in base:
        return [Row(name, "input", status=f"error: {base['error']}")]
    rows = [Row(name, "input", nodes=base["nodes"], bytes=base["bytes"])]
    timed = {src: rows[0]}
    for tool in tools:
        row, output = run_tool(tool, name, src, work, setup_errors, opts)
        rows.append(row)
        if output is not None:
            timed[output] = row
    log.info("%s: timing %d models", name, len(timed))
    result = evaluate("time", list(timed), work, opts)
    rows[0].note = f"{result.get('rounds', '?')} timed rounds" if "error" not in result else ""
    for model, row in timed.items():
        if "error" in result:
            row.note = f"no latency: {result['error']}"
        else:
            row.latency_ms = result["latency_ms"][str(model)]
            row.latency_min_ms = result["latency_min_ms"][str(model)]
    return rows


def resolve_models(names: Sequence[str], zoo: Path, quick: bool) -> list[Path]:
    if not names:
        if quick:
            missing = [m for m in QUICK_MODELS if not (zoo / m).is_file()]
            if missing:
                raise SystemExit(f"{', '.join(missing)} not in {zoo}: run python tools/zoo.py --quick --out {zoo}")
            return [zoo / m for m in QUICK_MODELS]
        found = sorted(zoo.glob("*.onnx"))
        if not found:
            raise SystemExit(f"no .onnx files in {zoo}: run python tools/zoo.py --out {zoo}")
        return found
    paths = []
    for name in names:
        candidates = [Path(name), zoo / name, zoo / f"{name}.onnx"]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise SystemExit(f"model not found: {name} (looked in . and {zoo})")
        paths.append(found)
    return paths


# --------------------------------------------------------------------------- output


def _cell(value, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def render_markdown(rows: Sequence[Row], header: dict) -> str:
    """The results as a Markdown table, one row per (model, tool), the input model first."""
    lines = [
        f"Bench: {header.get('date', '')}, {header.get('machine', '')}; onnxruntime {header.get('onnxruntime', '')} CPU, "
        f"{header.get('threads', '')} intra-op thread(s); latency = median of >= {header.get('runs', '')} runs "
        f"(>= {header.get('min_time_s', '')} s) per model, round-robin; load average at start {header.get('load_average', '')}.",
        "",
        "vs input = the input model's min latency / this output's min latency.",
        "",
    ]
    if (header.get("load_average") or [0.0])[0] > (os.cpu_count() or 1):
        lines += ["Warning: the machine was loaded (load average above the core count): medians reflect CPU sharing; trust the minimums.", ""]
    lines += [
        "| model | tool | nodes | Δ nodes | MB | time s | peak RSS MB | median ms | min ms | vs input | max abs diff | match | status |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|---|",
    ]
    baseline: dict[str, Row] = {}
    for row in rows:
        base = baseline.setdefault(row.model, row) if row.tool == "input" else baseline.get(row.model)
        delta = ""
        speedup = ""
        if row.tool != "input" and base is not None and row.nodes is not None and base.nodes is not None:
            delta = f"{row.nodes - base.nodes:+d}"
        if row.tool != "input" and base is not None and row.latency_min_ms and base.latency_min_ms:
            speedup = f"{base.latency_min_ms / row.latency_min_ms:.2f}x"
        match = "" if row.match is None else ("yes" if row.match else "NO")
        status = row.status if not row.note else f"{row.status} ({row.note})"
        status = status.replace("|", "\\|").replace("\n", " ")
        if len(status) > 140:
            status = status[:137] + "..."
        lines.append(
            f"| {row.model} | {row.tool} | {_cell(row.nodes, 'd')} | {delta} | "
            f"{'' if row.bytes is None else f'{row.bytes / 1e6:.1f}'} | {_cell(row.wall_s, '.1f')} | "
            f"{_cell(row.peak_rss_mb, '.0f')} | {_cell(row.latency_ms, '.2f')} | {_cell(row.latency_min_ms, '.2f')} | {speedup} | "
            f"{_cell(row.max_abs_diff, '.1e')} | {match} | {status} |"
        )
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def run_header(opts: argparse.Namespace, tools: Sequence[Tool]) -> dict:
    import onnxruntime

    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "onnxruntime": onnxruntime.__version__,
        "threads": opts.threads,
        "runs": opts.runs,
        "min_time_s": opts.min_time,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "tools": {t.name: {"summary": t.summary, "requirements": list(t.requirements)} for t in tools},
    }


def write_outputs(rows: Sequence[Row], header: dict, opts: argparse.Namespace) -> str:
    markdown = render_markdown(rows, header)
    if opts.md:
        write_atomic(opts.md, markdown)
    if opts.json:
        write_atomic(opts.json, json.dumps({"header": header, "rows": [asdict(r) for r in rows]}, indent=1))
    return markdown


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run ours and peer ONNX optimizers side by side.")
    parser.add_argument("models", nargs="*", help="ONNX files or zoo file names (default: the whole zoo)")
    parser.add_argument("--zoo", type=Path, default=Path("zoo"), help="zoo folder (default: ./zoo)")
    parser.add_argument("--quick", action="store_true", help=f"smoke run on {', '.join(QUICK_MODELS)}")
    parser.add_argument("--tools", help=f"comma-separated subset of: {', '.join(TOOLS)}")
    parser.add_argument("--setup", action="store_true", help="create the peers' venvs and exit")
    parser.add_argument("--venvs", type=Path, default=DEFAULT_VENVS, help=f"peers' venvs (default: {DEFAULT_VENVS})")
    parser.add_argument("--out", type=Path, default=Path("bench-out"), help="work folder for outputs (default: ./bench-out)")
    parser.add_argument("--runs", type=int, default=10, help="timed onnxruntime runs per model and tool, at least (default: 10)")
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds of timed runs per model and tool, at least (default: 1)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default: 1)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per tool run (default: 600)")
    parser.add_argument("--md", type=Path, help="write the Markdown table here")
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    return parser.parse_args(argv)


# The lossy features' benches, each side by side with its peer in one run: ``bench.py quant ...``
# is ``bench_quant.py ...`` (INT8 vs ORT's quantize_static), and so on.
SUITES = {"quant": "bench_quant", "prune": "bench_prune", "svd": "bench_svd", "targets": "bench_targets"}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUITES:
        import importlib

        suite = importlib.import_module(SUITES[argv[0]])
        return suite.main(argv[1:])
    opts = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    log.setLevel(logging.INFO)
    tools = select_tools(opts.tools)
    setup_errors = setup_all(tools, opts.venvs)
    if opts.setup:
        return 1 if setup_errors else 0
    models = resolve_models(opts.models, opts.zoo, opts.quick)
    opts.out.mkdir(parents=True, exist_ok=True)
    header = run_header(opts, tools)
    rows: list[Row] = []
    start = time.monotonic()
    for path in models:
        rows.extend(bench_model(path, tools, setup_errors, opts))
        write_outputs(rows, header, opts)  # partial results survive an interrupted run
    header["total_s"] = round(time.monotonic() - start, 1)
    sys.stdout.write(write_outputs(rows, header, opts))
    log.info("done in %.0f s", header["total_s"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
